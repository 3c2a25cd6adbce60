"""Image-like and feature-map tokenizers: a convolutional autoencoder with an FSQ or VQ bottleneck.

The encoder halves the resolution once per stage after the first (`widths` = one width per stage), so a 64 px map
with four stages becomes an 8x8 grid: 64 tokens, row-major, as the batch contract numbers grid positions. Unless
`widths` is set, the stage count follows `schemas.token_grids.image_patch_size`: 4M's 16 px patches from 224 px up
(five stages: 224 px -> 14x14 = 196 tokens, 4M-21's shape), 8 px below (four stages: 64 px -> 8x8). The
decoder mirrors it with nearest upsampling + convolution. 4M uses ViT tokenizers at 224 px on GPUs; residual convs
reach the same kind of discrete bottleneck at a fraction of the compute, which is what a CPU-sized tokenizer
needs, and nothing else in Tessera depends on the choice. Feature maps (CLIP/DINOv2 patch features) already are
grids: one stage, no downsampling, one token per patch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pydantic
import torch
from pydantic import Field
from torch import nn

from pipeline.tokenizers.base import register_family
from pipeline.tokenizers.neural import NeuralSettings, NeuralTokenizer
from pipeline.tokenizers.quantizers import Quantized
from schemas.modalities import TokenizerFamily
from schemas.token_grids import image_patch_size

WIDTHS = (16, 32, 64, 128, 256)  # per stage; the first four make 64 px an 8x8 grid, all five 224 px 14x14


class ImageSettings(NeuralSettings):
    resolution: int = Field(default=64, ge=1)  # input side (pixels, or patches for feature maps)
    widths: tuple[int, ...] = Field(default=(), min_length=1)  # default: WIDTHS up to the resolution's patch
    blocks: int = Field(default=1, ge=0)  # residual blocks per stage

    @pydantic.model_validator(mode="before")
    @classmethod
    def _default_widths(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("widths") is None:
            stages = int(math.log2(image_patch_size(int(data.get("resolution", 64))))) + 1
            data = {**data, "widths": WIDTHS[:stages]}
        return data

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.widths) - 1)

    @property
    def grid(self) -> int:
        if self.resolution % self.downsample:
            raise ValueError(f"resolution {self.resolution} is not divisible by the downsampling {self.downsample}")
        return self.resolution // self.downsample


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if channels % g == 0), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvAutoencoder(nn.Module):
    def __init__(self, settings: ImageSettings):
        super().__init__()
        widths, blocks = settings.widths, settings.blocks
        self.grid = settings.grid
        self.quantizer = settings.quantizer.build()
        dim = settings.quantizer.dim
        encoder: list[nn.Module] = [nn.Conv2d(settings.in_channels, widths[0], 3, padding=1)]
        for i, width in enumerate(widths):
            encoder += [ResBlock(width) for _ in range(blocks)]
            if i + 1 < len(widths):
                encoder.append(nn.Conv2d(width, widths[i + 1], 4, stride=2, padding=1))
        encoder += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], dim, 1)]
        decoder: list[nn.Module] = [nn.Conv2d(dim, widths[-1], 3, padding=1)]
        for i in reversed(range(len(widths))):
            decoder += [ResBlock(widths[i]) for _ in range(blocks)]
            if i > 0:
                decoder += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i], widths[i - 1], 3,
                                                                                   padding=1)]
        decoder += [_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], settings.out_channels, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)

    @property
    def tokens_per_sample(self) -> int:
        return self.grid * self.grid

    def _quantize(self, x: torch.Tensor) -> tuple[Quantized, tuple[int, ...]]:
        z = self.encoder(x)  # (N, D, h, w)
        n, d, h, w = z.shape
        return self.quantizer(z.permute(0, 2, 3, 1).reshape(-1, d)), (n, h, w, d)

    def _decode_codes(self, codes: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        n, h, w, d = shape
        return self.decoder(codes.reshape(n, h, w, d).permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        quantized, shape = self._quantize(x)
        return self._decode_codes(quantized.codes, shape), quantized

    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        quantized, (n, h, w, _) = self._quantize(x)
        return quantized.ids.reshape(n, h * w)

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        codes = self.quantizer.lookup(ids.reshape(-1))
        return self._decode_codes(codes, (ids.shape[0], self.grid, self.grid, codes.shape[-1]))


@register_family
class ImageTokenizer(NeuralTokenizer):
    """RGB, depth, normals, edges, segmentation: any `image_like` modality with a codec."""

    family = TokenizerFamily.IMAGE_VQ
    settings_model = ImageSettings

    @classmethod
    def build_network(cls, settings: ImageSettings) -> ConvAutoencoder:
        return ConvAutoencoder(settings)

    @property
    def input_resolution(self) -> int:
        return self.settings.resolution

    def check_shape(self, sample: np.ndarray) -> None:
        side = self.settings.resolution
        if tuple(np.shape(sample)[:2]) != (side, side):
            raise ValueError(f"{self.tokenizer_id} encodes {side}x{side} maps, got {np.shape(sample)}; "
                             f"preprocess at image.resolution={side} or train a tokenizer at this resolution")


@register_family
class FeatureMapTokenizer(ImageTokenizer):
    """CLIP / DINOv2 patch-feature maps: the same network over the patch grid, one token per patch."""

    family = TokenizerFamily.FEATURE_VQ
    default_model = {"widths": (128,)}  # the patch grid is already coarse: no downsampling
