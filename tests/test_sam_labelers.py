"""SAM pseudo-labels (sam_instance, sam_edge) on a tiny random-weight SamModel, their post-processing on hand-made
masks, the instance ground truth of the sample corpus, and the instance-mask tokenizer (row layout, round trip,
refusals, the tokenize stage and the training masker)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from model_weights import save_tiny_model
from PIL import Image

from pipeline.data.decode import Crop
from pipeline.data.ground_truth import ground_truth_payload, member_ext
from pipeline.data.inspect import iter_members, verify_output
from pipeline.data.labelers import DecodedBatch, get_labeler
from pipeline.data.labelers.sam import instance_edges, mask_nms, point_grid, stability_scores
from pipeline.data.masking import Masker
from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from pipeline.tokenizers import encode_members, load_tokenizer
from pipeline.tokenizers.codecs import read_member
from pipeline.tokenizers.fit import Objective, evaluate, new_tokenizer
from pipeline.tokenizers.instances import BOX_TOKENS, box_pixels
from schemas.batch import ModalitySpec, ModalityTable
from schemas.common import StorageConfig
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.instances import InstanceFormatError, masks_from_id_map, read_instances, write_instances
from schemas.loading import MaskingConfig
from schemas.preprocess import LabelerConfig, PreprocessConfig

SIZE = 32
EVERY_MASK = {"points_per_side": 3, "pred_iou_threshold": 0.0, "stability_threshold": 0.0, "max_instances": 64}
TINY_TOKENIZER = {"widths": (8, 16, 32), "blocks": 0}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return str(save_tiny_model("sam_instance", tmp_path_factory.mktemp("tiny-sam")))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("sam-corpus")
    write_corpus(SampleCorpusConfig(out=str(root), samples=16, image_size=SIZE, samples_per_shard=16,
                                    real_fraction=0.0))
    return root


@pytest.fixture(scope="module")
def truth(corpus) -> list[bytes]:
    """The corpus's instance ground truth as sam_instance members, through the preprocess ground-truth path."""
    members = []
    for shard in sorted(corpus.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith("." + member_ext("sam_instance")):
                    payload = tar.extractfile(member).read()
                    members.append(ground_truth_payload("sam_instance", payload, Crop(0, 0, SIZE, SIZE),
                                                        (SIZE, SIZE), SIZE))
    return members


@pytest.fixture(scope="module")
def tokenizer(truth, tmp_path_factory):
    """A tiny instance tokenizer trained briefly on the ground truth, with the objective jobs.train_tokenizer runs,
    saved and loaded back; `untrained` scores the same network before training."""
    torch.manual_seed(0)
    samples = [read_member("sam_instance", m) for m in truth]  # what jobs.train_tokenizer's driver reads
    fresh = new_tokenizer("sam_instance", "sam_instance-test", samples, TINY_TOKENIZER)
    untrained = evaluate(fresh, samples)["mask_iou"]
    objective = Objective(fresh.network.train(), fresh.codec)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=3e-3)
    inputs, targets = fresh.codec.to_input(samples), fresh.codec.target(samples)
    for _ in range(50):
        loss = objective(inputs, targets)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fresh.network.eval()
    loaded = load_tokenizer(fresh.save(tmp_path_factory.mktemp("sam-tokenizer")))
    assert loaded.content_hash == fresh.content_hash
    return loaded, untrained


def test_post_processing_on_hand_made_masks():
    square = np.zeros((8, 8), bool)
    square[2:6, 2:6] = True
    almost = square.copy()
    almost[5, 5] = False
    corner = np.zeros((8, 8), bool)
    corner[:3, :3] = True
    masks = torch.from_numpy(np.stack([almost, square, corner]))
    kept = mask_nms(masks, torch.tensor([0.8, 0.9, 0.5]), iou_threshold=0.7)
    assert kept.tolist() == [1, 2]  # the better of the two duplicates, then the distinct mask
    assert mask_nms(masks, torch.tensor([0.8, 0.9, 0.5]), iou_threshold=1.0).tolist() == [1, 0, 2]

    logits = torch.full((2, 4, 4), -5.0)
    logits[0, :2] = 5.0  # sharp: the same mask at every threshold
    logits[1, :2], logits[1, 2] = 5.0, 0.5  # a soft row that only the lower threshold takes
    assert stability_scores(logits, 1.0).tolist() == [1.0, pytest.approx(8 / 12)]

    edges = instance_edges(np.stack([square, corner]))
    expected = square.copy()
    expected[3:5, 3:5] = False  # the square's interior
    expected[2, :3] = expected[:3, 2] = True  # the corner's inner sides; its sides on the image border are none
    np.testing.assert_array_equal(edges, expected.astype(np.uint8) * 255)
    assert instance_edges(np.zeros((0, 8, 8), bool)).shape == (8, 8)
    np.testing.assert_allclose(point_grid(2, 32), [[8, 8], [24, 8], [8, 24], [24, 24]])


def test_labelers_share_masks_and_formats(weights):
    config = LabelerConfig(weights=weights, mask_generation=EVERY_MASK)
    instances, edges = (get_labeler(m)(config) for m in ("sam_instance", "sam_edge"))
    assert instances.needs_pool and edges.needs_weights
    pixels = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    pixels[1] = 0
    batch = DecodedBatch(images=pixels, captions=[""] * 3, original_sizes=[(SIZE, SIZE)] * 3)
    for instance_member, edge_member in zip(instances(batch), edges(batch)):
        masks = read_instances(instance_member)
        areas = masks.sum(axis=(1, 2))
        assert masks.shape[1:] == (SIZE, SIZE) and np.all(np.diff(areas) <= 0) and np.all(areas > 0)
        edge = np.asarray(Image.open(io.BytesIO(edge_member)))
        assert edge.dtype == np.uint8 and edge.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(edge, instance_edges(masks))  # the same run's masks, whole
    capped = get_labeler("sam_instance")(LabelerConfig(weights=weights,
                                                       mask_generation={**EVERY_MASK, "max_instances": 2}))
    assert all(len(read_instances(m)) <= 2 for m in capped(batch))


def test_instance_ground_truth_follows_the_crop():
    ids = np.zeros((40, 60), np.uint8)
    ids[5:15, 12:30], ids[20:38, 35:58] = 1, 2  # instance 2 is larger and lies partly outside the crop
    png = io.BytesIO()
    Image.fromarray(ids).save(png, format="PNG")
    masks = read_instances(ground_truth_payload("sam_instance", png.getvalue(), Crop(0, 10, 40, 40), (60, 40), 40))
    np.testing.assert_array_equal(masks, masks_from_id_map(ids[:, 10:50]))
    assert masks.shape == (2, 40, 40) and masks[0].sum() > masks[1].sum()


def test_instance_tokenizer_layout_and_round_trip(tokenizer, truth):
    tok, untrained = tokenizer
    samples = [read_instances(m) for m in truth]
    rows = tok.member_rows("sam_instance", truth)
    codes, bins = tok.settings.codes, tok.settings.box_bins
    assert tok.vocab_size <= 1024 and tok.max_instances == 290 // (BOX_TOKENS + 64) == 4
    for row, masks in zip(rows, samples):
        blocks = row.reshape(-1, BOX_TOKENS + 64)
        assert len(blocks) == min(len(masks), 4)
        assert np.all((blocks[:, :BOX_TOKENS] >= codes) & (blocks[:, :BOX_TOKENS] < codes + bins))
        assert np.all(blocks[:, BOX_TOKENS:] < codes)
    decoded = tok.decode(tok.encode(samples), size=SIZE)
    for masks, out, row in zip(samples, decoded, rows):
        assert out.shape == (min(len(masks), 4), SIZE, SIZE)
        for mask, block in zip(masks, row.reshape(-1, BOX_TOKENS + 64)):
            x0, y0, x1, y1 = box_pixels(block[:BOX_TOKENS] - codes, bins, SIZE)
            assert not mask[:y0].any() and not mask[y1:].any() and not mask[:, :x0].any() and not mask[:, x1:].any()
    trained = tok.codec.scores(decoded, samples)["mask_iou"]
    assert trained > max(0.7, untrained + 0.2), (trained, untrained)
    assert tok.decode([[tok.pad_id] * 10])[0].shape == (0, SIZE, SIZE)  # padding only: no instance


def test_instance_members_are_refused_when_malformed(tokenizer):
    tok, _ = tokenizer
    floats = io.BytesIO()
    np.save(floats, np.zeros((2, SIZE, SIZE), np.float32))
    wrong_width = io.BytesIO()
    np.save(wrong_width, np.zeros((2, SIZE, SIZE), np.uint8))  # unpacked masks: not (N, S, ceil(S / 8))
    for payload in (b"not an npy file", floats.getvalue(), wrong_width.getvalue(), b"\x93NUMPY\x01\x00"):
        with pytest.raises(InstanceFormatError):
            tok.member_rows("sam_instance", [payload])
    with pytest.raises(InstanceFormatError):
        write_instances(np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError, match="image_vq"):
        encode_members(tok, "sam_edge", [write_instances(np.zeros((1, 4, 4), bool))])


def test_sam_edge_in_an_actor_pool_with_instance_ground_truth(tmp_path, corpus, weights, truth, tokenizer,
                                                              ray_session):
    """One label run: sam_edge from SAM in its actor pool, sam_instance from the corpus's ground truth; the
    instances tokenized as the tokenize stage does (encode_members; the stage itself is family-blind and tested in
    test_preprocess.py) and masked for training."""
    tok, _ = tokenizer
    generation = ", ".join(f"{k}: {v}" for k, v in EVERY_MASK.items())
    pool = f"weights: {weights}, concurrency: 1, num_cpus: 0.5, batch_size: 8, mask_generation: {{{generation}}}"
    config = load_config(PreprocessConfig, None, [
        f"input={corpus}", f"output={tmp_path / 'out'}", f"image.resolution={SIZE}",
        "modalities=[rgb, caption, sam_instance, sam_edge]",
        f"labelers={{sam_instance: {{source: ground_truth}}, sam_edge: {{{pool}}}}}",
    ])
    assert run_preprocess(config, log=lambda _: None)["samples_written"] == 16
    output = Storage(config.output, StorageConfig())
    assert {"sam_instance", "sam_edge"} <= set(verify_output(output).folders)
    instances = dict(iter_members(output, "sam_instance"))
    assert sorted(instances.values()) == sorted(truth)  # 32 px scenes at 32 px: the identity crop
    for _, member in iter_members(output, "sam_edge"):
        edge = np.asarray(Image.open(io.BytesIO(member)))
        assert edge.shape == (SIZE, SIZE) and set(np.unique(edge)) <= {0, 255}
    rows = dict(zip(instances, encode_members(tok, "sam_instance", list(instances.values()))))
    for key, row in rows.items():
        assert len(row) == (BOX_TOKENS + 64) * min(len(read_instances(instances[key])), 4) <= 290
    # The training masker takes the rows as a parallel modality with 1-D positions, whatever their length.
    table = ModalityTable.of([ModalitySpec.from_registry("sam_instance", vocab=tok.vocab_size)])
    masker = Masker(table, MaskingConfig(input_tokens=64, target_tokens=64))
    batch = masker.batch([{"sam_instance": row} for row in rows.values() if len(row)], np.random.default_rng(0))
    live = ~batch["enc_pad"]
    assert live.any() and batch["enc_position"][live].max() < 290 and not batch["dec_causal"].any()
