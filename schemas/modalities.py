"""The modality registry: one frozen record per modality, read by every stage.

Covers the 21 modalities of 4M-21 and the 12 of Meta-Transformer (text and image are shared with 4M's `caption`
and `rgb`). Adding a modality is one `register(...)` call here (into `MODALITIES`, a `schemas.registry.Registry`)
plus a tokenizer family (and optionally a labeler and an eval task); no stage ever branches on a modality's name.

Token counts are for 224 px inputs as in 4M-21 (patch 16 -> 14x14 = 196; DINOv2/ImageBind maps 16x16 = 256);
`schemas/token_grids.py` gives the grid at other resolutions and the matching ml-4m `MODALITY_INFO` entry.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from schemas.registry import Registry, UnknownNameError


class Family(str, enum.Enum):
    """How a modality's data is shaped, which decides its position embedding and decoding order."""

    IMAGE_LIKE = "image_like"  # dense per-pixel maps: RGB, depth, normals, edges, segmentation
    FEATURE_MAP = "feature_map"  # dense per-patch feature vectors from a frozen network
    GLOBAL_EMBEDDING = "global_embedding"  # one vector per sample
    SEQUENCE = "sequence"  # text and everything written as text (boxes, palette, metadata, poses)
    INSTANCES = "instances"  # a variable number of per-instance token blocks (SAM masks)
    SIGNAL = "signal"  # 1-D signals: audio, time series, IMU
    VOLUME = "volume"  # video, hyperspectral cubes
    POINT_CLOUD = "point_cloud"
    GRAPH = "graph"
    TABLE = "table"


class TokenizerFamily(str, enum.Enum):
    """Which tokenizer family turns the modality into discrete tokens (see pipeline/tokenizers)."""

    WORDPIECE = "wordpiece"  # one shared vocabulary for all text-like sequences
    IMAGE_VQ = "image_vq"  # ViT/conv autoencoder with a VQ or FSQ bottleneck
    FEATURE_VQ = "feature_vq"  # the same bottleneck over feature maps
    GLOBAL_MLP = "global_mlp"  # MLP autoencoder with FSQ, fixed tokens per vector
    MASK_VQ = "mask_vq"  # per-instance mask tokenizer
    DATA2SEQ = "data2seq"  # Meta-Transformer-style front end + discrete bottleneck (point clouds, video: not built)
    SIGNAL_PATCH = "signal_patch"  # 1-D signals (T, C): patches of frames through an autoencoder with FSQ/VQ
    TABLE_BINS = "table_bins"  # table rows: one token per column, numeric columns quantised per column
    GRAPH_SEQ = "graph_seq"  # graphs as a sequence of node and edge tokens


class Values(str, enum.Enum):
    """What a dense or vector modality's label values mean: how a neural tokenizer reads them, which loss fits
    them and which score says how well they were reconstructed (see pipeline/tokenizers/codecs.py)."""

    COLOR = "color"  # uint8 RGB (H, W, 3)
    DEPTH = "depth"  # float (H, W), positive, errors matter relative to the value
    CLASSES = "classes"  # uint8 class ids (H, W)
    BINARY = "binary"  # uint8 0/255 masks (H, W), e.g. edges
    UNIT_VECTOR = "unit_vector"  # uint8 RGB (H, W, 3) = (n + 1) / 2 * 255 of unit vectors n
    FEATURES = "features"  # float (h, w, C) per-patch features of a frozen network
    VECTOR = "vector"  # float (C,) one embedding per sample
    SIGNAL = "signal"  # float (T, C) frames of a 1-D signal: log-mel frames, series values, IMU channels
    INSTANCE_MASKS = "instance_masks"  # (N, S, S) overlapping instance masks, bit-packed (schemas/instances.py)


class Source(str, enum.Enum):
    FOURM21 = "4M-21"
    META_TRANSFORMER = "Meta-Transformer"
    TESSERA = "Tessera"


SHARED_TEXT_VOCAB = 30_000  # 4M-21: captions, boxes, metadata, palette and poses share one WordPiece vocabulary


@dataclass(frozen=True)
class Modality:
    """One modality: what it is, how it is stored in label shards, and how it becomes tokens.

    `num_tokens` is the fixed token count of dense/global modalities; `max_tokens` bounds variable-length ones.
    Exactly one of the two is set. `ext` is the tar member extension of the modality's label-stage value;
    tokenized modalities are stored as `.npy` of `token_dtype` in token shards.
    """

    name: str
    family: Family
    tokenizer: TokenizerFamily
    vocab_size: int
    ext: str
    sources: tuple[Source, ...]
    description: str
    num_tokens: int | None = None
    max_tokens: int | None = None
    implemented: bool = False
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # Values are class ids, not magnitudes: resampled with nearest neighbour, scored with IoU, never averaged.
    categorical: bool = False
    values: Values | None = None  # for the neural tokenizer families; None for text-like and unbuilt ones

    def __post_init__(self) -> None:
        if (self.num_tokens is None) == (self.max_tokens is None):
            raise ValueError(f"modality {self.name!r}: set exactly one of num_tokens and max_tokens")
        if self.vocab_size <= 0:
            raise ValueError(f"modality {self.name!r}: vocab_size must be positive")
        if "." in self.name or "/" in self.name or "." in self.ext:
            raise ValueError(f"modality {self.name!r}: names and extensions hold no dots or slashes")

    @property
    def token_dtype(self) -> np.dtype:
        """Smallest signed integer type that holds every token id (ml-4m stores int16 where it fits)."""
        return np.dtype(np.int16) if self.vocab_size <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)

    @property
    def token_budget(self) -> int:
        """Tokens this modality contributes at most per sample."""
        return self.num_tokens if self.num_tokens is not None else self.max_tokens  # type: ignore[return-value]


class UnknownModalityError(UnknownNameError):
    pass


class ModalityNotImplementedError(NotImplementedError):
    pass


MODALITIES: Registry[Modality] = Registry("modality", "modalities", error=UnknownModalityError)


def register(modality: Modality) -> Modality:
    return MODALITIES.register(modality.name, modality, aliases=modality.aliases)


def get_modality(name: str) -> Modality:
    """Look a modality up by name or alias; an unknown name is an error listing the known ones."""
    return MODALITIES.get(name)


def require_implemented(name: str) -> Modality:
    """Return the modality if Tessera can produce it today, else raise a clear error."""
    modality = get_modality(name)
    if not modality.implemented:
        raise ModalityNotImplementedError(
            f"modality {modality.name!r} ({modality.family.value}, from {', '.join(s.value for s in modality.sources)})"
            f" is registered but not implemented yet; implemented modalities: {', '.join(implemented_names())}"
        )
    return modality


def all_modalities() -> list[Modality]:
    return sorted(MODALITIES.values(), key=lambda m: m.name)


def implemented_names() -> list[str]:
    return [m.name for m in all_modalities() if m.implemented]


_F, _T, _S = Family, TokenizerFamily, Source
_4M, _MT, _TS = (_S.FOURM21,), (_S.META_TRANSFORMER,), (_S.TESSERA,)
_BOTH = (_S.FOURM21, _S.META_TRANSFORMER)

# --- 4M-21 -----------------------------------------------------------------------------------------------------
register(Modality("rgb", _F.IMAGE_LIKE, _T.IMAGE_VQ, 16_384, "jpg", _BOTH, "RGB image", num_tokens=196,
                  implemented=True, aliases=("image",), values=Values.COLOR))
register(Modality("caption", _F.SEQUENCE, _T.WORDPIECE, SHARED_TEXT_VOCAB, "txt", _BOTH, "caption / free text",
                  max_tokens=256, implemented=True, aliases=("text",)))
# 4M-21 feeds T5-XXL's states as input-only continuous features; Tessera's model reads tokens only, so the (L, C)
# states (L caption tokens, zero-padded) are tokenized as a 1-D signal (frames = T5 tokens) and can be targets too.
register(Modality("t5_caption", _F.SIGNAL, _T.SIGNAL_PATCH, 8_192, "npy", _4M,
                  "T5 encoder states of the caption as (L, C) frames of a 1-D signal", max_tokens=256,
                  implemented=True, values=Values.SIGNAL))
register(Modality("det", _F.SEQUENCE, _T.WORDPIECE, SHARED_TEXT_VOCAB, "json", _4M,
                  "bounding boxes as `xmin ymin xmax ymax class` runs with 1000 coordinate bins", max_tokens=256,
                  implemented=True))
register(Modality("semseg", _F.IMAGE_LIKE, _T.IMAGE_VQ, 4_096, "png", _4M, "COCO semantic segmentation",
                  num_tokens=196, implemented=True, categorical=True, values=Values.CLASSES))
register(Modality("depth", _F.IMAGE_LIKE, _T.IMAGE_VQ, 8_192, "npy", _4M, "monocular depth", num_tokens=196,
                  implemented=True, values=Values.DEPTH))
register(Modality("normal", _F.IMAGE_LIKE, _T.IMAGE_VQ, 8_192, "png", _4M, "surface normals", num_tokens=196,
                  implemented=True, values=Values.UNIT_VECTOR))
register(Modality("canny_edge", _F.IMAGE_LIKE, _T.IMAGE_VQ, 8_192, "png", _4M, "Canny edges", num_tokens=196,
                  implemented=True, values=Values.BINARY))
register(Modality("sam_edge", _F.IMAGE_LIKE, _T.IMAGE_VQ, 8_192, "png", _4M, "edges of SAM instances",
                  num_tokens=196, implemented=True, values=Values.BINARY))
register(Modality("sam_instance", _F.INSTANCES, _T.MASK_VQ, 1_024, "npy", _4M,
                  "SAM instance masks, 4 box + 64 mask tokens per instance", max_tokens=290, implemented=True,
                  values=Values.INSTANCE_MASKS))
register(Modality("human_poses", _F.SEQUENCE, _T.WORDPIECE, SHARED_TEXT_VOCAB, "json", _4M,
                  "2-D COCO-17 keypoints (ViTPose) per person, binned; 4M-21 has HMR2.0 SMPL parameters",
                  max_tokens=275, implemented=True))
register(Modality("color_palette", _F.SEQUENCE, _T.WORDPIECE, SHARED_TEXT_VOCAB, "json", _4M,
                  "dominant colour palette", max_tokens=23, implemented=True))
register(Modality("metadata", _F.SEQUENCE, _T.WORDPIECE, SHARED_TEXT_VOCAB, "json", _4M,
                  "image metadata computed from pixels and captions", max_tokens=40,
                  implemented=True))
register(Modality("clip_feature", _F.FEATURE_MAP, _T.FEATURE_VQ, 8_192, "npy", _4M, "CLIP-B/16 feature map",
                  num_tokens=196, implemented=True, values=Values.FEATURES))
register(Modality("dinov2_feature", _F.FEATURE_MAP, _T.FEATURE_VQ, 8_192, "npy", _4M, "DINOv2-B/14 feature map",
                  num_tokens=256, implemented=True, values=Values.FEATURES))
register(Modality("dinov2_global", _F.GLOBAL_EMBEDDING, _T.GLOBAL_MLP, 8_192, "npy", _4M,
                  "DINOv2-B/14 global embedding", num_tokens=16, implemented=True, values=Values.VECTOR))
# ImageBind stays unimplemented: transformers has no ImageBind architecture and its weights ship only as a pickled
# torch checkpoint, which Tessera never unpickles (torch.load is weights_only, labelers read safetensors only).
register(Modality("imagebind_feature", _F.FEATURE_MAP, _T.FEATURE_VQ, 8_192, "npy", _4M,
                  "ImageBind-H/14 feature map (not built: no transformers architecture, pickled weights only)",
                  num_tokens=256))
register(Modality("imagebind_global", _F.GLOBAL_EMBEDDING, _T.GLOBAL_MLP, 8_192, "npy", _4M,
                  "ImageBind-H/14 global embedding (not built: no transformers architecture, pickled weights only)",
                  num_tokens=16))
# --- Tessera additions -----------------------------------------------------------------------------------------
register(Modality("caption_embedding", _F.GLOBAL_EMBEDDING, _T.GLOBAL_MLP, 8_192, "npy", _TS,
                  "MiniLM sentence embedding of the caption", num_tokens=16, implemented=True,
                  values=Values.VECTOR))
# --- Meta-Transformer (text and image are `caption` and `rgb` above) --------------------------------------------
register(Modality("point_cloud", _F.POINT_CLOUD, _T.DATA2SEQ, 8_192, "npy", _MT,
                  "point cloud: farthest-point sampling, k-NN groups of 32", max_tokens=512))
register(Modality("audio", _F.SIGNAL, _T.SIGNAL_PATCH, 8_192, "npy", _MT, "audio as log-mel patches",
                  max_tokens=512, implemented=True, values=Values.SIGNAL))
register(Modality("video", _F.VOLUME, _T.DATA2SEQ, 8_192, "npy", _MT, "video as 3-D tubelets", max_tokens=1568))
register(Modality("infrared", _F.IMAGE_LIKE, _T.IMAGE_VQ, 8_192, "png", _MT, "infrared image", num_tokens=196))
register(Modality("hyperspectral", _F.VOLUME, _T.DATA2SEQ, 8_192, "npy", _MT, "hyperspectral cube, band projection",
                  max_tokens=1024))
register(Modality("xray", _F.IMAGE_LIKE, _T.IMAGE_VQ, 8_192, "png", _MT, "X-ray image", num_tokens=196))
register(Modality("tabular", _F.TABLE, _T.TABLE_BINS, 8_192, "json", _MT,
                  "table row, one token per column (numbers binned per column)", max_tokens=256, implemented=True))
register(Modality("graph", _F.GRAPH, _T.GRAPH_SEQ, 8_192, "json", _MT, "graph as node and edge tokens",
                  max_tokens=1024, implemented=True))
register(Modality("time_series", _F.SIGNAL, _T.SIGNAL_PATCH, 8_192, "npy", _MT, "multivariate time series",
                  max_tokens=512, implemented=True, values=Values.SIGNAL))
register(Modality("imu", _F.SIGNAL, _T.SIGNAL_PATCH, 8_192, "npy", _MT, "inertial measurement unit signals",
                  max_tokens=512, implemented=True, values=Values.SIGNAL))
