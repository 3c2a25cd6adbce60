"""Typed config of the any-to-any model: a named size from the registry, optionally overridden field by field."""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import Field

from schemas.config import ConfigModel

SizeName = Literal["tiny", "S", "B", "L", "XL", "custom"]


class ModelConfig(ConfigModel):
    size: SizeName = "tiny"
    # Overrides of the size's dimensions (all four are required for `custom`).
    dim: int | None = Field(default=None, ge=8)
    encoder_depth: int | None = Field(default=None, ge=1)
    decoder_depth: int | None = Field(default=None, ge=1)
    heads: int | None = Field(default=None, ge=1)
    mlp_ratio: float = Field(default=4.0, gt=0)
    norm_eps: float = Field(default=1e-6, gt=0)
    # Recompute each block's activations in backward: memory for compute, as large sizes need.
    activation_checkpointing: bool = False

    @pydantic.model_validator(mode="after")
    def _custom_is_complete(self) -> "ModelConfig":
        if self.size == "custom" and None in (self.dim, self.encoder_depth, self.decoder_depth, self.heads):
            raise ValueError("size custom needs dim, encoder_depth, decoder_depth and heads")
        # 2-D sin-cos positions split the width into four sin/cos quarters (row and column).
        if self.dim is not None and self.dim % 4:
            raise ValueError(f"dim {self.dim} must be divisible by 4")
        # A width override alone is checked against the size's heads when the model is built (pipeline/model/sizes).
        if self.dim is not None and self.heads is not None and self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        return self
