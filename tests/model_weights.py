"""Tiny random-weight checkpoints of the real labeler architectures, saved as the labelers expect to find them.

Each is what `save_pretrained(dir, safe_serialization=True)` writes for the model plus its image processor's
`preprocessor_config.json`, so a test loads it through exactly the code path a real checkpoint takes. Sizes are
toy (hidden 32, 2 layers, 32 px input, patch 8); the weights are seeded, so every build is the same model.
"""

from __future__ import annotations

from pathlib import Path

TINY_INPUT = 32  # px the tiny models run at, as their processors say
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                image_size=TINY_INPUT, patch_size=8)
TINY_FEATURE_DIM = 32
TINY_CLIP_PROJECTION = 16
TINY_SEMSEG_CLASSES = 5
TINY_DET_CLASSES = ("person", "traffic light", "dog")  # a two-word name too, as COCO's id2label has
TINY_DET_QUERIES = 5
TINY_POSE_INPUT = (64, 48)  # (height, width): ViTPose's 256 x 192 aspect at toy size
TINY_T5_WORDS = ("a photo of the red green blue circle square triangle person dog cat on with and in two one "
                 "sitting standing walking small large image background").split()


def tiny_t5_tokenizer():
    """A T5 tokenizer of a small unigram (sentencepiece-style) vocabulary, trained here: T5's pieces, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer, unigram.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=64, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    unigram.train_from_iterator([" ".join(TINY_T5_WORDS[i:] + TINY_T5_WORDS[:i]) for i in range(8)], trainer)
    unigram.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                           special_tokens=[("</s>", unigram.token_to_id("</s>"))])
    return T5TokenizerFast(tokenizer_object=unigram, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0)


def tiny_dpt_config(input_size: int = TINY_INPUT):
    from transformers import DPTConfig

    return DPTConfig(**{**TINY_VIT, "image_size": input_size}, backbone_out_indices=[0, 1],
                     neck_hidden_sizes=[16, 32], reassemble_factors=[2, 1], fusion_hidden_size=16,
                     is_hybrid=False)


def build_model(modality: str, input_size: int = TINY_INPUT):
    """(model, image processor) of the architecture the `modality` labeler runs, at toy size."""
    import transformers as tf

    from pipeline.data.labelers.dpt_normals import DPTForSurfaceNormals

    size = {"height": input_size, "width": input_size}
    if modality in ("depth", "normal"):
        cls = tf.DPTForDepthEstimation if modality == "depth" else DPTForSurfaceNormals
        # DPT's processor keeps `size`; bicubic and mean/std 0.5 as Intel/dpt-* ship it
        return cls(tiny_dpt_config(input_size)), tf.DPTImageProcessorPil(size=size)
    if modality == "clip_feature":
        config = tf.CLIPVisionConfig(**{**TINY_VIT, "image_size": input_size}, projection_dim=TINY_CLIP_PROJECTION)
        processor = tf.CLIPImageProcessorPil(size={"shortest_edge": input_size}, crop_size=size,
                                             image_mean=CLIP_MEAN, image_std=CLIP_STD)
        return tf.CLIPVisionModelWithProjection(config), processor
    if modality in ("dinov2_feature", "dinov2_global"):
        config = tf.Dinov2Config(**{**TINY_VIT, "image_size": input_size}, mlp_ratio=2)
        processor = tf.BitImageProcessorPil(size={"shortest_edge": input_size * 8 // 7}, crop_size=size,
                                            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
        return tf.Dinov2Model(config), processor
    if modality == "semseg":
        config = tf.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                    patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                                    mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=TINY_SEMSEG_CLASSES)
        return tf.SegformerForSemanticSegmentation(config), tf.SegformerImageProcessorPil(size=size)
    if modality == "human_poses":  # heatmaps of COCO's 17 keypoints at 1/2 of the input (patch 8, upscaled 4x)
        backbone = tf.VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                            image_size=list(TINY_POSE_INPUT), patch_size=[8, 8], out_indices=[2])
        processor = tf.VitPoseImageProcessorPil(size={"height": TINY_POSE_INPUT[0], "width": TINY_POSE_INPUT[1]})
        return tf.VitPoseForPoseEstimation(tf.VitPoseConfig(backbone_config=backbone, num_labels=17)), processor
    if modality == "t5_caption":  # the tokenizer stands in for the image processor: saved beside the weights
        tokenizer = tiny_t5_tokenizer()
        config = tf.T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                             feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
        return tf.T5EncoderModel(config), tokenizer
    if modality in ("sam_instance", "sam_edge"):  # SAM ViT with windowed + global attention, at toy size
        vision = tf.SamVisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                                    mlp_dim=37, image_size=input_size, patch_size=8, window_size=2,
                                    global_attn_indexes=[1], num_pos_feats=16)
        prompt = tf.SamPromptEncoderConfig(hidden_size=32, image_size=input_size, patch_size=8, mask_input_channels=4)
        decoder = tf.SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
        processor = tf.SamImageProcessorPil(size={"longest_edge": input_size}, pad_size=size)
        return tf.SamModel(tf.SamConfig(vision_config=vision, prompt_encoder_config=prompt,
                                        mask_decoder_config=decoder)), processor
    if modality == "det":  # DETR over transformers' own ResNet (no timm), as the `no_timm` DETR revisions are built
        backbone = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                   out_features=["stage1", "stage2"])
        config = tf.DetrConfig(backbone_config=backbone, d_model=16, encoder_layers=1, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
                               decoder_ffn_dim=16, num_queries=TINY_DET_QUERIES,
                               id2label=dict(enumerate(TINY_DET_CLASSES)),
                               label2id={name: i for i, name in enumerate(TINY_DET_CLASSES)})
        return tf.DetrForObjectDetection(config), tf.DetrImageProcessorPil(size=size)
    raise KeyError(f"no tiny model for {modality!r}")


def save_tiny_model(modality: str, directory: Path, input_size: int = TINY_INPUT, seed: int = 0) -> Path:
    """Write the tiny checkpoint of `modality`'s labeler to `directory` (safetensors only) and return it."""
    import torch

    torch.manual_seed(seed)
    model, processor = build_model(modality, input_size)
    with torch.no_grad():  # a random head on ReLU outputs can be all zeros; spread the outputs so tests see values
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    return Path(directory)
