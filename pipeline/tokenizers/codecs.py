"""What a neural tokenizer sees of a modality: label member -> array -> network input, network output -> array.

One codec per `Values` kind of the modality registry, so every modality of a kind (say every class map) shares one
implementation and no tokenizer code asks for a modality by name. A codec also owns the kind's reconstruction loss
and the score that says how good a reconstruction is:

    color        RGB in [-1, 1]; L1 + L2 (no perceptual network is available offline)     PSNR (dB)
    depth        log depth standardised with fitted statistics; L1 in log space plus the  abs-rel, delta < 1.25
                 scale-invariant log term (Eigen et al.), so errors count relative to depth
    classes      one-hot input, cross-entropy on per-class logits                         mIoU, pixel accuracy
    binary       {0, 1} input, BCE weighted by the fitted positive rate (edges are sparse) F1 of positive pixels
    unit_vector  normals in [-1, 1]; L1 + (1 - cosine)                                     mean angle (degrees)
    features     per-channel standardised feature maps; MSE + (1 - cosine)                cosine similarity
    vector       standardised embeddings; MSE + (1 - cosine)                               cosine similarity

`fit_stats` computes the normalisation a kind needs from training samples once, before training; the statistics
are stored in the tokenizer's settings, so encoding anywhere later uses exactly the same transform.
"""

from __future__ import annotations

import abc
import io
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from schemas.modalities import Values, get_modality
from schemas.registry import Registry

Stats = dict[str, list[float]]
EPS = 1e-6


def read_member(modality: str, payload: bytes) -> np.ndarray:
    """A label-shard member as the array its labeler wrote: `.npy` as stored (float32), images as pixels."""
    if get_modality(modality).ext == "npy":
        return np.load(io.BytesIO(payload), allow_pickle=False).astype(np.float32)
    with Image.open(io.BytesIO(payload)) as image:
        return np.asarray(image.convert("RGB") if image.mode not in ("L", "P", "RGB") else image)


class Codec(abc.ABC):
    values: ClassVar[Values]
    spatial: ClassVar[bool] = True  # maps (N, C, H, W) or vectors (N, C)

    def __init__(self, stats: Stats | None = None, num_classes: int | None = None):
        self.stats = stats or {}
        self.num_classes = num_classes

    def channels(self, sample: np.ndarray) -> tuple[int, int]:
        """(input channels, output channels) of the network for arrays shaped like `sample`."""
        c = sample.shape[-1] if sample.ndim == 3 or not self.spatial else 1
        return c, c

    @classmethod
    def fit_stats(cls, arrays: Sequence[np.ndarray]) -> Stats:
        return {}

    def _stack(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack([np.asarray(a, dtype=np.float32) for a in arrays]))
        if not self.spatial:
            return x
        return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)

    def to_input(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        return self._stack(arrays)

    def target(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """What `loss` compares the output with; the input itself unless the kind says otherwise."""
        return self.to_input(arrays)

    @abc.abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def to_arrays(self, output: torch.Tensor) -> list[np.ndarray]:
        """Network output -> arrays in the label format (dtype and layout of what the labeler wrote)."""

    @abc.abstractmethod
    def scores(self, pred: Sequence[np.ndarray], true: Sequence[np.ndarray]) -> dict[str, float]: ...

    def preview(self, array: np.ndarray) -> np.ndarray:
        """Something `imshow` can draw: RGB as is, single-channel maps with a colour map."""
        return array

    @staticmethod
    def _channels_last(output: torch.Tensor) -> np.ndarray:
        array = output.detach().float().cpu()
        return (array.permute(0, 2, 3, 1) if array.ndim == 4 else array).numpy()


class ColorCodec(Codec):
    values = Values.COLOR

    def to_input(self, arrays):
        return self._stack(arrays) / 127.5 - 1

    def loss(self, output, target):
        return F.l1_loss(output, target) + F.mse_loss(output, target)

    def to_arrays(self, output):
        pixels = ((output.clamp(-1, 1) + 1) * 127.5).round()
        return list(self._channels_last(pixels).astype(np.uint8))

    def scores(self, pred, true):
        psnr = []
        for p, t in zip(pred, true):
            mse = np.mean((p.astype(np.float64) - t.astype(np.float64)) ** 2)
            psnr.append(100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse))
        return {"psnr": float(np.mean(psnr))}


class DepthCodec(Codec):
    values = Values.DEPTH

    @classmethod
    def fit_stats(cls, arrays):
        logs = np.log(np.maximum(np.concatenate([a.ravel() for a in arrays]), EPS))
        return {"log_mean": [float(logs.mean())], "log_std": [float(logs.std() + EPS)]}

    def to_input(self, arrays):
        (mean,), (std,) = self.stats["log_mean"], self.stats["log_std"]
        return (self._stack(arrays).clamp(min=EPS).log() - mean) / std

    def loss(self, output, target):
        std = self.stats["log_std"][0]
        diff = (output - target) * std  # in natural-log units, so the loss does not depend on the fitted spread
        scale_invariant = diff.pow(2).mean(dim=(1, 2, 3)) - 0.5 * diff.mean(dim=(1, 2, 3)).pow(2)
        return diff.abs().mean() + scale_invariant.mean()

    def to_arrays(self, output):
        (mean,), (std,) = self.stats["log_mean"], self.stats["log_std"]
        return list(np.exp(self._channels_last(output * std + mean)[..., 0]).astype(np.float32))

    def scores(self, pred, true):
        p = np.concatenate([x.ravel() for x in pred]).astype(np.float64)
        t = np.maximum(np.concatenate([x.ravel() for x in true]).astype(np.float64), EPS)
        p = np.maximum(p, EPS)
        ratio = np.maximum(p / t, t / p)
        return {"abs_rel": float(np.mean(np.abs(p - t) / t)), "delta1": float(np.mean(ratio < 1.25))}


class ClassesCodec(Codec):
    values = Values.CLASSES

    def channels(self, sample):
        if self.num_classes is None:
            raise ValueError("a class-map tokenizer needs num_classes")
        return self.num_classes, self.num_classes

    def _ids(self, arrays) -> torch.Tensor:
        ids = torch.from_numpy(np.stack([np.asarray(a, dtype=np.int64) for a in arrays]))
        if ids.numel() and int(ids.max()) >= self.num_classes:
            raise ValueError(f"class id {int(ids.max())} is outside the tokenizer's {self.num_classes} classes")
        return ids

    def to_input(self, arrays):
        return F.one_hot(self._ids(arrays), self.num_classes).permute(0, 3, 1, 2).float()

    def target(self, arrays):
        return self._ids(arrays)

    def loss(self, output, target):
        return F.cross_entropy(output, target)

    def to_arrays(self, output):
        return list(output.argmax(1).to(torch.uint8).cpu().numpy())

    def scores(self, pred, true):
        p = np.concatenate([x.ravel() for x in pred]).astype(np.int64)
        t = np.concatenate([x.ravel() for x in true]).astype(np.int64)
        ious = []
        for c in np.union1d(np.unique(p), np.unique(t)):
            union = np.sum((p == c) | (t == c))
            ious.append(np.sum((p == c) & (t == c)) / union)
        return {"miou": float(np.mean(ious)), "pixel_accuracy": float(np.mean(p == t))}


class BinaryCodec(Codec):
    values = Values.BINARY

    @classmethod
    def fit_stats(cls, arrays):
        rate = float(np.mean([np.mean(a > 127) for a in arrays]))
        return {"positive_rate": [min(max(rate, 1e-3), 0.5)]}

    def to_input(self, arrays):
        return (self._stack(arrays) > 127).float()

    def loss(self, output, target):
        rate = self.stats.get("positive_rate", [0.5])[0]
        weight = torch.tensor((1 - rate) / rate, device=output.device)  # balance sparse positives
        return F.binary_cross_entropy_with_logits(output, target, pos_weight=weight.sqrt())

    def to_arrays(self, output):
        return list(((output > 0).to(torch.uint8) * 255)[:, 0].cpu().numpy())

    def scores(self, pred, true):
        p = np.concatenate([x.ravel() for x in pred]) > 127
        t = np.concatenate([x.ravel() for x in true]) > 127
        tp = np.sum(p & t)
        precision, recall = tp / max(np.sum(p), 1), tp / max(np.sum(t), 1)
        return {"f1": float(2 * precision * recall / max(precision + recall, EPS))}


class UnitVectorCodec(Codec):
    values = Values.UNIT_VECTOR

    def to_input(self, arrays):
        return self._stack(arrays) / 127.5 - 1

    def loss(self, output, target):
        return F.l1_loss(output, target) + (1 - F.cosine_similarity(output, target, dim=1)).mean()

    def to_arrays(self, output):
        unit = F.normalize(output, dim=1, eps=EPS)
        return list(self._channels_last(((unit + 1) * 127.5).round().clamp(0, 255)).astype(np.uint8))

    def scores(self, pred, true):
        def unit(x):
            v = np.concatenate([a.reshape(-1, 3) for a in x]).astype(np.float64) / 127.5 - 1
            return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), EPS)

        cosine = np.clip(np.sum(unit(pred) * unit(true), axis=1), -1, 1)
        return {"mean_angle_deg": float(np.degrees(np.arccos(cosine)).mean())}


class FeatureCodec(Codec):
    """Feature maps (h, w, C) and embeddings (C,): standardised per channel with fitted statistics."""

    values = Values.FEATURES

    @classmethod
    def fit_stats(cls, arrays):
        flat = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays]).astype(np.float64)
        return {"mean": flat.mean(0).tolist(), "std": (flat.std(0) + EPS).tolist()}

    def _affine(self, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1) if ndim == 4 else (1, -1)
        return (torch.tensor(self.stats["mean"]).view(shape), torch.tensor(self.stats["std"]).view(shape))

    def to_input(self, arrays):
        x = self._stack(arrays)
        mean, std = self._affine(x.ndim)
        return (x - mean) / std

    def loss(self, output, target):
        return F.mse_loss(output, target) + (1 - F.cosine_similarity(output, target, dim=1)).mean()

    def to_arrays(self, output):
        mean, std = self._affine(output.ndim)
        return list(self._channels_last(output.cpu() * std + mean).astype(np.float16))

    def scores(self, pred, true):
        p = np.concatenate([a.reshape(-1, a.shape[-1]) for a in pred]).astype(np.float64)
        t = np.concatenate([a.reshape(-1, a.shape[-1]) for a in true]).astype(np.float64)
        cosine = np.sum(p * t, 1) / np.maximum(np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1), EPS)
        return {"cosine": float(cosine.mean())}


    def preview(self, array):
        return np.linalg.norm(array.astype(np.float32), axis=-1)  # feature magnitude per patch


class VectorCodec(FeatureCodec):
    values = Values.VECTOR
    spatial = False

    def preview(self, array):
        side = int(np.ceil(np.sqrt(array.size)))  # the vector's values as a small square image
        return np.pad(array.astype(np.float32), (0, side * side - array.size)).reshape(side, side)


# Keyed by the Values member each codec reads (a str enum, so "color" finds ColorCodec too). Codecs defined
# elsewhere (pipeline/tokenizers/signal.py) add themselves with `register_codec` when their module is imported.
CODECS: Registry[type[Codec]] = Registry("codec")


def register_codec(cls: type[Codec]) -> type[Codec]:
    """The codec of `cls.values` (one per Values member)."""
    return CODECS.register(cls.values, cls)


for _codec in (ColorCodec, DepthCodec, ClassesCodec, BinaryCodec, UnitVectorCodec, FeatureCodec, VectorCodec):
    register_codec(_codec)


def codec_class(modality: str) -> type[Codec]:
    spec = get_modality(modality)
    if spec.values is None or spec.values not in CODECS:
        raise ValueError(f"modality {spec.name!r} has no neural tokenizer codec (values: {spec.values})")
    return CODECS[spec.values]
