"""Global-embedding tokenizer (4M-21's MLP tokenizer): one vector -> a fixed number of tokens, and back.

An MLP maps the standardised vector to `tokens` latents of the quantizer's dimension, each quantized on its own
(FSQ by default), so a 384-d MiniLM or 768-d DINOv2 vector becomes e.g. 16 ids; a mirrored MLP reconstructs it.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from pipeline.tokenizers.base import register_family
from pipeline.tokenizers.neural import NeuralSettings, NeuralTokenizer
from pipeline.tokenizers.quantizers import Quantized
from schemas.modalities import TokenizerFamily


class GlobalSettings(NeuralSettings):
    tokens: int = Field(default=16, ge=1)
    hidden: int = Field(default=512, ge=1)
    depth: int = Field(default=2, ge=1)  # hidden layers on each side


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i + 2 < len(sizes):
            layers += [nn.LayerNorm(b), nn.GELU()]
    return nn.Sequential(*layers)


class MLPAutoencoder(nn.Module):
    def __init__(self, settings: GlobalSettings):
        super().__init__()
        self.tokens, dim = settings.tokens, settings.quantizer.dim
        self.quantizer = settings.quantizer.build()
        hidden = [settings.hidden] * settings.depth
        self.encoder = _mlp([settings.in_channels, *hidden, self.tokens * dim])
        self.decoder = _mlp([self.tokens * dim, *hidden, settings.out_channels])

    @property
    def tokens_per_sample(self) -> int:
        return self.tokens

    def _quantize(self, x: torch.Tensor) -> Quantized:
        z = self.encoder(x)
        return self.quantizer(z.reshape(len(x) * self.tokens, -1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        quantized = self._quantize(x)
        return self.decoder(quantized.codes.reshape(len(x), -1)), quantized

    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        return self._quantize(x).ids.reshape(len(x), self.tokens)

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.lookup(ids).reshape(len(ids), -1))


@register_family
class GlobalEmbeddingTokenizer(NeuralTokenizer):
    """Caption embeddings, DINOv2 / CLIP / ImageBind globals: any `global_embedding` modality."""

    family = TokenizerFamily.GLOBAL_MLP
    settings_model = GlobalSettings

    @classmethod
    def build_network(cls, settings: GlobalSettings) -> MLPAutoencoder:
        return MLPAutoencoder(settings)
