"""Typed config of the preprocess job (`configs/preprocess/default.yaml`)."""

from __future__ import annotations

import os
import posixpath
from typing import Literal

import pydantic
from pydantic import Field

from schemas.common import RayConfig, StorageConfig
from schemas.config import ConfigModel
from schemas.modalities import require_implemented


def tokenizer_uri(value: str, root: str) -> str:
    """A tokenizer directory, or a bare tokenizer name under `root`; local paths made absolute."""
    is_name = "://" not in value and "/" not in value and value not in (".", "..")
    uri = f"{root.rstrip('/')}/{value}" if is_name else value
    return uri if "://" in uri else os.path.abspath(uri)


class ReaderConfig(ConfigModel):
    format: Literal["auto", "webdataset", "parquet", "folder"] = "auto"
    # Parquet input: which columns hold what. `image_column` holds bytes or a path relative to the parquet file.
    image_column: str = "image"
    caption_column: str = "caption"
    key_column: str | None = "key"
    # Folder and parquet inputs are cut into units of this many samples; a tar is one unit as it stands.
    samples_per_unit: int = Field(default=256, ge=1, le=1_000_000)
    # The most bytes any one input file or tar member may hold (image, caption, metadata, ground-truth map); larger
    # ones are refused from their tar header or file size before a byte is read (reason decompression_bomb).
    max_member_bytes: int = Field(default=64 * 1024 * 1024, ge=1)


class ImageConfig(ConfigModel):
    resolution: int = Field(default=224, ge=8, le=4096)
    min_side: int = Field(default=16, ge=1)
    # Decompression-bomb guard: an image whose header claims more pixels than this is refused before decoding.
    max_pixels: int = Field(default=64_000_000, ge=1)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    # The PIL formats an image may be in, whatever its file is named; anything else is bad_image before a decoder
    # sees it (an EPS file named .jpg would otherwise reach Ghostscript).
    formats: tuple[Literal["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"], ...] = Field(
        default=("JPEG", "PNG", "WEBP"), min_length=1)


class CaptionConfig(ConfigModel):
    max_chars: int = Field(default=4096, ge=1)
    required: bool = False


class MaskGenerationConfig(ConfigModel):
    """SAM's automatic mask generation (sam_instance, sam_edge); the defaults are SAM's own."""

    points_per_side: int = Field(default=32, ge=1)  # a regular grid of point prompts, points_per_side ** 2
    points_per_batch: int = Field(default=64, ge=1)  # prompts per mask-decoder pass
    pred_iou_threshold: float = Field(default=0.88, ge=0, le=1)  # keep masks whose predicted IoU reaches this
    stability_threshold: float = Field(default=0.95, ge=0, le=1)  # ... and whose stability score reaches this
    stability_offset: float = Field(default=1.0, ge=0)  # logit offset the stability score thresholds at
    nms_iou: float = Field(default=0.7, gt=0, le=1)  # a mask overlapping a better one by more is a duplicate
    max_instances: int = Field(default=32, ge=1)  # largest masks kept per image


class LabelerConfig(ConfigModel):
    """Resources of one pseudo-labeler. `concurrency` None runs a cheap CPU labeler inside the decode tasks, and
    gives a model-based one an actor pool laid out by the job (pipeline/data/pool_layout.py: on the GPUs when the
    cluster has any, else CPUs split by a calibration of each stage's cost); `num_cpus`/`num_gpus` left None are
    chosen there too. A number (or [min, max]) pins the pool's size by hand."""

    concurrency: int | tuple[int, int] | None = None
    batch_size: int = Field(default=32, ge=1)
    num_cpus: float | None = Field(default=None, ge=0)  # per actor
    num_gpus: float | None = Field(default=None, ge=0)  # per actor; a fraction lets small models share a GPU
    weights: str | None = None  # local path or s3:// URI of the model weights; nothing is downloaded from a hub
    # model: run the pseudo-labeler. ground_truth: take the corpus's own `<key>.<modality>.<ext>` member (e.g. the
    # sample corpus's depth.npy / semseg.png), cropped and resized exactly like the image; a sample without one is
    # quarantined (missing_ground_truth), never filled in by a model.
    source: Literal["model", "ground_truth"] = "model"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # of model-based labelers; bf16 is the GPU choice
    # det: detections scoring below are not written. 0.6 is ml-4m's reading threshold (schemas/labels.py), so by
    # default what is written is what ml-4m keeps; lower it to keep weaker boxes for other readers.
    score_threshold: float = Field(default=0.6, ge=0.0, le=1.0)
    mask_generation: MaskGenerationConfig = MaskGenerationConfig()  # sam_instance, sam_edge
    # human_poses: weights of the det model that finds the people first (as labelers.det.weights would be);
    # None: the det labeler's offline OpenCV detector.
    detector_weights: str | None = None
    # t5_caption: T5 tokens of the caption kept (shorter captions zero-padded); None: the labeler's default.
    max_length: int | None = Field(default=None, ge=1)


def _location(uri: str) -> tuple[str, str]:
    """(scheme, absolute '/'-path) of a local path or URI, for comparing where two of them point."""
    if "://" in uri and not uri.startswith("file://"):
        scheme, rest = uri.split("://", 1)
        return scheme, posixpath.normpath("/" + rest)
    return "file", os.path.realpath(uri.removeprefix("file://"))


def inside(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies under it (local paths with links resolved; s3://bucket/prefix as written)."""
    (scheme, where), (root_scheme, top) = _location(path), _location(root)
    return scheme == root_scheme and (where == top or where.startswith(top.rstrip("/") + "/"))


class PreprocessConfig(ConfigModel):
    input: str | None = None
    output: str | None = None
    # label: raw corpus -> label shards; tokenize: label shards -> token shards (tok_<modality>/) beside them.
    stages: tuple[Literal["label", "tokenize"], ...] = ("label",)
    modalities: tuple[str, ...] = ("rgb", "caption", "canny_edge", "color_palette", "metadata")
    # The modality a sample is built around: its files are what the reader lists. `rgb` for image corpora; a
    # modality with a raw plug-in (pipeline/data/raw: audio, time_series, imu, ...) for a corpus of such files, whose
    # samples then carry that modality and a caption (from a sidecar `<stem>.txt` or the file itself), no image.
    primary: str = "rgb"
    # Settings of the raw plug-ins by modality (`raw: {audio: {sample_rate: 16000}}`), validated by the plug-in's
    # own settings model when the job starts; only the primary's are used.
    raw: dict[str, dict] = Field(default_factory=dict)
    # modality -> trained tokenizer for the tokenize stage: a directory (local or s3://), or a bare name (a
    # tokenizer id such as `rgb-fsq`) looked up under `tokenizer_root`, where train_tokenizer writes by default.
    tokenizers: dict[str, str] = Field(default_factory=dict)
    tokenizer_root: str = "tokenizers"
    overwrite: bool = False
    reader: ReaderConfig = ReaderConfig()
    image: ImageConfig = ImageConfig()
    caption: CaptionConfig = CaptionConfig()
    labelers: dict[str, LabelerConfig] = Field(default_factory=dict)
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()

    @pydantic.field_validator("modalities")
    @classmethod
    def _modalities_implemented(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        try:
            canonical = tuple(require_implemented(n).name for n in names)
        except (KeyError, NotImplementedError) as exc:
            raise ValueError(str(exc)) from None
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"modality listed twice: {list(names)}")
        return canonical

    @pydantic.field_validator("primary")
    @classmethod
    def _primary_implemented(cls, name: str) -> str:
        try:
            return require_implemented(name).name
        except (KeyError, NotImplementedError) as exc:
            raise ValueError(str(exc)) from None

    @pydantic.field_validator("tokenizers")
    @classmethod
    def _tokenizer_modalities(cls, tokenizers: dict[str, str]) -> dict[str, str]:
        try:
            return {require_implemented(name).name: uri for name, uri in tokenizers.items()}
        except (KeyError, NotImplementedError) as exc:
            raise ValueError(str(exc)) from None

    def tokenizer_uris(self) -> dict[str, str]:
        """Every configured tokenizer as a URI that means the same on every Ray worker (local paths absolute)."""
        return {modality: tokenizer_uri(value, self.tokenizer_root) for modality, value in self.tokenizers.items()}

    @pydantic.model_validator(mode="after")
    def _stages_have_what_they_need(self) -> "PreprocessConfig":
        if "tokenize" in self.stages and not self.tokenizers:
            raise ValueError("the tokenize stage needs tokenizers: {modality: tokenizer dir}")
        if "label" in self.stages and self.input is None and self.output is not None:
            raise ValueError("the label stage needs an input (--input)")
        if self.input is not None and self.output is not None and inside(self.output, self.input):
            # A rerun would read its own shards back as samples (under new keys, or as duplicates).
            raise ValueError(f"output {self.output} is inside input {self.input}; write it somewhere else")
        return self
