"""The instance-mask tokenizer (`mask_vq`, 4M-21's SAM instances): per instance, its box and its mask as tokens.

Row layout, one fixed-size block per instance, blocks in the label's order (largest instance first):

    [x0, y0, x1, y1, m_0 ... m_63]    4 box tokens, then the 8x8 = 64 codes of the mask inside the box

- box tokens: the instance's bounding box in `box_bins` bins per image side (x0, y0 the bins of its first pixel,
  x1, y1 those of its last: the decoded box spans whole bins and contains the true one), ids
  `codes + bin` (after the mask codes);
- mask codes: the mask cropped to the box, resized to CROP x CROP and encoded by the image-like convolutional
  autoencoder with an FSQ/VQ bottleneck (image.py's `ConvAutoencoder`, trained here on crops with the binary
  codec's loss), ids `0 .. codes - 1`.

A row holds as many whole blocks as fit in the modality's `max_tokens` (290: four instances, 272 tokens), so its
length gives the instance count and no end marker is needed; `PAD` (the last id) only pads rectangular batches
from `encode` and never reaches a token shard. 4M-21 writes the box as text tokens in its shared vocabulary; here
box bins and mask codes share the modality's own 1,024 ids (875 FSQ codes + 128 bins + PAD with the defaults).

Decoding pastes each block's decoded crop back into its box at any resolution; ids out of a slot's range (model
predictions may put any id anywhere) are clamped into it. Trained like the other neural families
(`python -m jobs.train_tokenizer --modality sam_instance`): the codec (`InstanceMaskCodec`) turns each batch of
label members into the crops of their instances, so one training step sees every instance of its samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch.nn import functional as F

from pipeline.tokenizers.base import TokenizerConfig, register_family
from pipeline.tokenizers.codecs import BinaryCodec, register_codec
from pipeline.tokenizers.image import ConvAutoencoder, ImageSettings
from pipeline.tokenizers.neural import WEIGHTS_FILE, NeuralSettings, NeuralTokenizer
from schemas.instances import read_instances, unpack
from schemas.modalities import TokenizerFamily, Values, get_modality

CROP = 32  # px side of the mask crops the autoencoder sees
BOX_TOKENS = 4


def as_masks(array: np.ndarray) -> np.ndarray:
    """A label member as read (the packed array, any numeric dtype) or already unpacked masks -> (N, S, S) bool."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    return unpack(array)


def box_bins(mask: np.ndarray, bins: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) bins of a non-empty mask's first and last pixel along each axis."""
    size = mask.shape[0]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    first = lambda pixel: min(bins - 1, pixel * bins // size)  # noqa: E731
    last = lambda pixel: min(bins - 1, ((pixel + 1) * bins - 1) // size)  # noqa: E731
    return first(cols[0]), first(rows[0]), last(cols[-1]), last(rows[-1])


def box_pixels(box: Sequence[int], bins: int, size: int) -> tuple[int, int, int, int]:
    """Bins -> the pixel window [x0, x1) x [y0, y1) they cover at `size` px (at least one pixel)."""
    x0, y0, x1, y1 = (int(b) for b in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    lo = lambda b: min(size - 1, b * size // bins)  # noqa: E731
    hi = lambda b, start: max(start + 1, min(size, -(-(b + 1) * size // bins)))  # noqa: E731
    return lo(x0), lo(y0), hi(x1, lo(x0)), hi(y1, lo(y0))


def crops(masks: np.ndarray, boxes: Sequence[Sequence[int]], bins: int) -> torch.Tensor:
    """Each mask inside its box window, resized to (CROP, CROP): (N, 1, CROP, CROP) float in {0, 1}."""
    out = torch.zeros((len(masks), 1, CROP, CROP))
    for i, (mask, box) in enumerate(zip(masks, boxes)):
        x0, y0, x1, y1 = box_pixels(box, bins, mask.shape[0])
        window = torch.from_numpy(mask[y0:y1, x0:x1].astype(np.float32))[None, None]
        out[i] = (F.interpolate(window, size=(CROP, CROP), mode="bilinear", align_corners=False, antialias=True)
                  [0] > 0.5).float()
    return out


def nonempty(masks: np.ndarray) -> np.ndarray:
    return masks[masks.any(axis=(1, 2))] if len(masks) else masks


class InstanceMaskCodec(BinaryCodec):
    """Instance masks as the network sees them: a batch of label members -> the crops of all their instances,
    binary cross-entropy weighted by the crops' positive rate; reconstructions are scored by mask IoU."""

    values = Values.INSTANCE_MASKS
    bins = 128  # box bins used to cut training crops (the tokenizer passes its own)

    def channels(self, sample):
        return 1, 1

    @classmethod
    def fit_stats(cls, arrays):
        stacks = [nonempty(as_masks(a)) for a in arrays]
        boxes = [[box_bins(m, cls.bins) for m in stack] for stack in stacks]
        rate = float(torch.cat([crops(s, b, cls.bins) for s, b in zip(stacks, boxes)] or [torch.zeros(1)]).mean())
        # the label resolution: what `decode` draws at unless told otherwise
        return {"positive_rate": [min(max(rate, 1e-3), 0.5)], "image_size": [float(as_masks(arrays[0]).shape[1])]}

    def to_input(self, arrays):
        stacks = [nonempty(as_masks(a)) for a in arrays]
        x = torch.cat([crops(s, [box_bins(m, self.bins) for m in s], self.bins) for s in stacks]
                      or [torch.zeros((0, 1, CROP, CROP))])
        # A batch of samples without any instance still makes one (empty) crop, so a training step never sees an
        # empty batch.
        return x if len(x) else torch.zeros((1, 1, CROP, CROP))

    def to_arrays(self, output):
        return list((output > 0)[:, 0].cpu().numpy())

    def scores(self, pred, true):
        """Mean IoU of decoded instance i against label instance i, over the instances the rows kept."""
        ious = []
        for p, t in zip(pred, true):
            p, t = as_masks(p), nonempty(as_masks(t))
            for a, b in zip(p, t):
                ious.append(np.sum(a & b) / max(np.sum(a | b), 1))
        return {"mask_iou": float(np.mean(ious)) if ious else 0.0}

    def preview(self, array):
        masks = as_masks(array)
        ids = np.arange(1, len(masks) + 1)[:, None, None] * masks  # larger ids (smaller masks) drawn on top
        return ids.max(axis=0) if len(masks) else np.zeros(masks.shape[1:])


register_codec(InstanceMaskCodec)


class InstanceSettings(NeuralSettings):
    widths: tuple[int, ...] = Field(default=(32, 64, 128), min_length=1)  # 3 stages: 32 px crops -> 8x8 codes
    blocks: int = Field(default=1, ge=0)
    box_bins: int = Field(default=128, ge=2)

    def network_settings(self) -> ImageSettings:
        return ImageSettings(modality=self.modality, quantizer=self.quantizer, in_channels=1, out_channels=1,
                             resolution=CROP, widths=self.widths, blocks=self.blocks)

    @property
    def codes(self) -> int:
        return self.quantizer.vocab_size


@register_family
class InstanceMaskTokenizer(NeuralTokenizer):
    family = TokenizerFamily.MASK_VQ
    settings_model = InstanceSettings

    def __init__(self, config: TokenizerConfig, network=None):
        super().__init__(config, network)
        self.codec.bins = self.settings.box_bins
        self.pad_id = self.vocab_size - 1
        self.block = BOX_TOKENS + self.network.tokens_per_sample

    @classmethod
    def build_network(cls, settings: InstanceSettings) -> ConvAutoencoder:
        return ConvAutoencoder(settings.network_settings())

    @classmethod
    def create(cls, tokenizer_id: str, settings: InstanceSettings) -> InstanceMaskTokenizer:
        vocab = settings.codes + settings.box_bins + 1  # mask codes, box bins, PAD
        limit = get_modality(settings.modality).vocab_size
        if vocab > limit:
            raise ValueError(f"{tokenizer_id}: {settings.codes} mask codes + {settings.box_bins} box bins + PAD "
                             f"exceed {settings.modality}'s registry vocabulary of {limit}")
        return cls(TokenizerConfig(family=cls.family, tokenizer_id=tokenizer_id, vocab_size=vocab,
                                   files=(WEIGHTS_FILE,), settings=settings.model_dump(mode="json")))

    @property
    def tokens_per_sample(self) -> None:
        return None  # variable: BOX_TOKENS + 64 per instance, bounded by the modality's max_tokens

    @property
    def max_instances(self) -> int:
        return get_modality(self.modality).token_budget // self.block

    @torch.no_grad()
    def encode_one(self, masks: np.ndarray) -> np.ndarray:
        """One label's masks -> its row: the blocks of the first instances that fit, unpadded."""
        masks = nonempty(as_masks(masks))[:self.max_instances]
        bins = self.settings.box_bins
        boxes = [box_bins(m, bins) for m in masks]
        if not boxes:
            return np.zeros(0, np.int32)
        codes = self.network.encode_ids(crops(masks, boxes, bins).to(self.device)).cpu().numpy()
        blocks = np.concatenate([np.asarray(boxes) + self.settings.codes, codes], axis=1)
        return blocks.reshape(-1).astype(np.int32)

    def encode(self, batch: Sequence[Any], max_len: int | None = None) -> np.ndarray:
        rows = [self.encode_one(masks) for masks in batch]
        width = max_len if max_len is not None else max((len(r) for r in rows), default=0)
        out = np.full((len(rows), width), self.pad_id, dtype=np.int32)
        for out_row, row in zip(out, rows):
            row = row[:width // self.block * self.block]  # whole instances only
            out_row[:len(row)] = row
        return out

    @torch.no_grad()
    def decode(self, ids: np.ndarray | Sequence[Sequence[int]], size: int | None = None) -> list[np.ndarray]:
        """Rows -> (N, size, size) bool masks, N = whole blocks before the first PAD; `size` defaults to the
        resolution of the labels the tokenizer was fitted on."""
        size = size or int(self.settings.stats.get("image_size", [CROP])[0])
        codes, bins = self.settings.codes, self.settings.box_bins
        out = []
        for row in ids:
            row = np.asarray(row, np.int64).reshape(-1)
            end = np.flatnonzero(row == self.pad_id)
            row = row[:end[0] if len(end) else len(row)]
            blocks = row[:len(row) // self.block * self.block].reshape(-1, self.block)
            masks = np.zeros((len(blocks), size, size), bool)
            if len(blocks):
                boxes = np.clip(blocks[:, :BOX_TOKENS] - codes, 0, bins - 1)
                logits = self.network.decode_ids(torch.as_tensor(np.clip(blocks[:, BOX_TOKENS:], 0, codes - 1),
                                                                 device=self.device))
                for mask, box, crop in zip(masks, boxes, logits.float().cpu()):
                    x0, y0, x1, y1 = box_pixels(box, bins, size)
                    pasted = F.interpolate(crop[None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
                    mask[y0:y1, x0:x1] = pasted[0, 0].numpy() > 0
            out.append(masks)
        return out

    def read(self, payload: bytes) -> np.ndarray:
        return read_instances(payload)  # the header is checked before any mask is unpacked

    def member_rows(self, modality: str, payloads: Sequence[bytes]) -> list[np.ndarray]:
        if self.modality != get_modality(modality).name:
            raise ValueError(f"{self.tokenizer_id} was trained on {self.modality}, not {modality}")
        return [self.encode_one(self.read(p)) for p in payloads]
