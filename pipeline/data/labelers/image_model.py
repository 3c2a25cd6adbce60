"""The shared base of labelers that run a Hugging Face vision model over the decoded images.

A model comes from a local directory (or an s3:// copy of one, see weights.py) holding `config.json`,
`model.safetensors` and the `preprocessor_config.json` its image processor saved. Nothing is downloaded and no
pickle is ever unpickled: `from_pretrained(..., local_files_only=True, use_safetensors=True)`.

Preprocessing is done here, in torch and batched, from that preprocessor file: resize to the processor's input size,
rescale, normalise. The decoded image is never cropped again: it already is the sample's crop, and every modality
of a sample must describe the same pixels. Dense outputs are resized back to the sample's resolution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.data.encoding import encode_json, encode_npy, encode_png
from pipeline.data.labelers.base import DecodedBatch, Labeler, torch_device, torch_dtype
from pipeline.data.labelers.weights import required_weights, resolve_weights
from schemas.modalities import get_modality
from schemas.common import StorageConfig
from schemas.preprocess import LabelerConfig

PREPROCESSOR_FILE = "preprocessor_config.json"
RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}  # PIL resample ids, as image processors save them
ENCODERS = {"npy": encode_npy, "png": encode_png, "json": encode_json}  # member extension -> how an output is stored


@dataclass(frozen=True)
class ImageInput:
    """What the model's image processor does to an image, read from its saved config."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float | None  # multiply uint8 pixels by this (1/255), or feed them as they are
    size: tuple[int, int] | None  # (height, width) the model runs at; None: the sample's own resolution
    resample: str

    @classmethod
    def from_dir(cls, path: Path) -> ImageInput:
        file = path / PREPROCESSOR_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: the weights need their image processor's config")
        processor = json.loads(file.read_text())
        normalize = processor.get("do_normalize", True)
        return cls(
            mean=tuple(processor["image_mean"]) if normalize else (0.0, 0.0, 0.0),
            std=tuple(processor["image_std"]) if normalize else (1.0, 1.0, 1.0),
            rescale=processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else None,
            size=processor_size(processor),
            resample=RESAMPLE_MODES.get(processor.get("resample", 2), "bilinear"),
        )


def processor_size(processor: dict) -> tuple[int, int] | None:
    """The input size an image processor feeds its model: the crop if it crops, else the resize target."""
    for key, enabled in (("crop_size", "do_center_crop"), ("size", "do_resize")):
        size = processor.get(key)
        if size is None or not processor.get(enabled, True):
            continue
        if isinstance(size, int):
            return size, size
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:  # our samples are square, so the shortest edge is both sides
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None


class ImageModelLabeler(Labeler):
    """Loads `architecture` from the configured weights once, then labels whole mini-batches with it.

    Subclasses set `architecture` (a transformers class name) and implement `predict`: model inputs in, one output
    per sample out; `encode` turns each output into its tar member's bytes (by default, as the modality's extension
    in the registry says; a subclass whose outputs need more overrides it).
    """

    needs_weights = True
    needs_pool = True
    architecture: ClassVar[str]

    def __init__(self, config: LabelerConfig | None = None, storage: StorageConfig | None = None):
        super().__init__(config, storage)
        import torch  # heavy imports stay out of the decode workers that never build this labeler

        self.torch = torch
        self.dtype, self.device = torch_dtype(self.config), torch_device(self.config)
        # The local copy of the weights, which subclasses read their processor's other files from.
        self.weights_dir = resolve_weights(required_weights(self.modality, self.config), self.storage)
        self.input = ImageInput.from_dir(self.weights_dir)
        self.model = self.load_model(self.weights_dir).to(self.device).eval()

    def model_class(self) -> type:
        """The PreTrainedModel class that `architecture` names."""
        import transformers

        return getattr(transformers, self.architecture)

    def load_model(self, path: Path):
        """The model in `path`, refusing weights of another architecture or ones that leave any of it unset."""
        cls = self.model_class()
        saved = json.loads((path / "config.json").read_text())
        # A vision tower may come inside its composite checkpoint (CLIPVisionModel* from a whole CLIPModel).
        tower = getattr(cls.config_class, "base_config_key", None)
        if saved.get("model_type") != cls.config_class.model_type and not (tower and tower in saved):
            raise ValueError(f"weights at {path} are a {saved.get('model_type')!r} model; labeler {self.modality} "
                             f"runs {self.architecture} ({cls.config_class.model_type!r})")
        # Mismatched shapes are reported, not raised, so that every misfit gets the one error below: a checkpoint
        # without (part of) the head would otherwise label with freshly initialised weights.
        model, info = cls.from_pretrained(path, local_files_only=True, use_safetensors=True, dtype=self.dtype,
                                          output_loading_info=True, ignore_mismatched_sizes=True)
        misfits = [f"{key}: missing" for key in sorted(info["missing_keys"])] + [
            f"{key}: {tuple(saved)} in the checkpoint, {tuple(wanted)} in the model"
            for key, saved, wanted in sorted(info["mismatched_keys"])]
        if misfits:
            raise ValueError(f"weights at {path} do not fit {self.architecture}: {'; '.join(misfits[:4])}"
                             + (f" (and {len(misfits) - 4} more)" if len(misfits) > 4 else ""))
        return model

    def patch_size(self) -> int:
        """Input sides are rounded to a multiple of this (ViT patch size); 1 for models that take any size."""
        patch = getattr(self.model.config, "patch_size", 1)
        return patch if isinstance(patch, int) else 1

    def pixel_values(self, images: np.ndarray):
        """(N, H, W, 3) uint8 -> the normalised (N, 3, h, w) float batch the model expects, on its device."""
        torch = self.torch
        pixels = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float()
        patch = self.patch_size()
        height, width = self.input.size or pixels.shape[-2:]
        size = (max(patch, round(height / patch) * patch), max(patch, round(width / patch) * patch))
        if size != tuple(pixels.shape[-2:]):
            pixels = torch.nn.functional.interpolate(pixels, size=size, mode=self.input.resample,
                                                     align_corners=False, antialias=True).clamp(0, 255)
        if self.input.rescale is not None:
            pixels = pixels * self.input.rescale
        mean = torch.tensor(self.input.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.input.std, device=self.device).view(1, 3, 1, 1)
        return ((pixels - mean) / std).to(self.dtype)

    def predict(self, pixel_values, out_size: tuple[int, int]) -> np.ndarray:
        """One output array per sample, stacked; `out_size` is the samples' (height, width)."""
        raise NotImplementedError

    def resize_to(self, maps, out_size: tuple[int, int]):
        """(N, C, h, w) dense predictions -> (N, C, H, W) float32 at the sample's resolution, bilinearly."""
        maps = maps.float()
        if tuple(maps.shape[-2:]) == tuple(out_size):
            return maps
        return self.torch.nn.functional.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)

    def encode(self, output) -> bytes:
        """One sample's output -> its tar member's bytes."""
        return ENCODERS[get_modality(self.modality).ext](output)

    def label(self, batch: DecodedBatch) -> list[bytes]:
        with self.torch.inference_mode():
            outputs = self.predict(self.pixel_values(batch.images), tuple(batch.images.shape[1:3]))
        return [self.encode(output) for output in outputs]
