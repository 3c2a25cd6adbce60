"""Discrete bottlenecks shared by the neural tokenizer families: finite scalar quantization and a VQ codebook.

Both map latent vectors (N, D) to ids in [0, vocab_size) and back, and pass gradients straight through:

- `FSQ` (Mentzer et al., 2023) bounds each of D channels and rounds it to one of `levels[d]` values; the id is the
  mixed-radix number of the D digits. There is no codebook to learn, so no code can die: usage stays high.
- `VectorQuantizer` looks up the nearest of K learned codes. It carries the usual fixes against codebook collapse:
  l2-normalised codes and latents (nearest = highest cosine), codes updated as exponential moving averages of the
  latents assigned to them (no codebook gradient), and codes unused for `restart_after` steps restarted on random
  latents of the current batch.

Data parallel training: the EMA statistics of one step are summed over ranks by `sync` (the trainer sets it to an
all-reduce); codes and statistics are buffers, so DDP's buffer broadcast keeps every rank's codebook identical.
Quantizers know nothing else of distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from pydantic import Field
from torch.nn import functional as F

from schemas.config import ConfigModel


@dataclass
class Quantized:
    codes: torch.Tensor  # (N, D) quantized latents, straight-through gradient to the input
    ids: torch.Tensor  # (N,) int64
    loss: torch.Tensor  # scalar auxiliary loss (VQ commitment; 0 for FSQ)


class FSQ(nn.Module):
    def __init__(self, levels: Sequence[int]):
        super().__init__()
        if not levels or any(level < 2 for level in levels):
            raise ValueError(f"FSQ levels must each be at least 2, got {list(levels)}")
        self.levels = tuple(int(level) for level in levels)
        levels_t = torch.tensor(self.levels, dtype=torch.float32)
        # Digit d of an id has weight prod(levels[:d]) (mixed radix, least significant first).
        radix = torch.cumprod(torch.tensor((1, *self.levels[:-1]), dtype=torch.int64), dim=0)
        self.register_buffer("_levels", levels_t, persistent=False)
        self.register_buffer("_radix", radix, persistent=False)

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def vocab_size(self) -> int:
        return math.prod(self.levels)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash each channel into an interval that rounds to exactly `level` integers (even levels are offset by
        half a step so that they stay symmetric)."""
        half = (self._levels - 1) * (1 - 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: torch.Tensor) -> Quantized:
        bounded = self._bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        half_width = torch.div(self._levels, 2, rounding_mode="floor")
        digits = (torch.round(bounded) + half_width).long()
        ids = (digits * self._radix).sum(-1)
        return Quantized(rounded / half_width, ids, z.new_zeros(()))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> quantized latents (..., D), exactly what `forward` produced for them."""
        digits = torch.div(ids[..., None], self._radix, rounding_mode="floor") % self._levels.long()
        half_width = torch.div(self._levels, 2, rounding_mode="floor")
        return (digits.float() - half_width) / half_width


class VectorQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_size: int, *, decay: float = 0.99, commitment: float = 0.25,
                 restart_after: int = 100, l2_normalize: bool = True):
        super().__init__()
        self.dim, self.codebook_size = dim, codebook_size
        self.decay, self.commitment = decay, commitment
        self.restart_after, self.l2_normalize = restart_after, l2_normalize
        codes = torch.randn(codebook_size, dim)
        codes = F.normalize(codes, dim=-1) if l2_normalize else codes
        self.register_buffer("codebook", codes)
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", codes.clone())
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.int64))
        self.sync: Callable[[torch.Tensor], torch.Tensor] = lambda t: t

    @property
    def vocab_size(self) -> int:
        return self.codebook_size

    def _prepare(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=-1) if self.l2_normalize else z

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        if self.l2_normalize:
            return (z @ self.codebook.T).argmax(-1)
        return torch.cdist(z, self.codebook).argmin(-1)

    def forward(self, z: torch.Tensor) -> Quantized:
        z = self._prepare(z)
        ids = self.nearest(z.detach())
        codes = self.codebook[ids]
        if self.training:
            self._update(z.detach(), ids)
        loss = self.commitment * F.mse_loss(z, codes.detach())
        return Quantized(z + (codes - z).detach(), ids, loss)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.codebook[ids]

    @torch.no_grad()
    def _update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        count = self.sync(torch.bincount(ids, minlength=self.codebook_size).float())
        total = self.sync(torch.zeros_like(self.ema_sum).index_add_(0, ids, z))
        self.ema_count.mul_(self.decay).add_(count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(total, alpha=1 - self.decay)
        # Laplace smoothing keeps a rarely used code from being divided by ~0.
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + self.codebook_size * 1e-5) * n
        codes = self.ema_sum / smoothed[:, None]
        self.codebook.copy_(self._prepare(codes))
        self.steps_unused.add_(1).masked_fill_(count > 0, 0)
        dead = (self.steps_unused >= self.restart_after).nonzero().squeeze(-1)
        if len(dead):
            # Restart dead codes on latents the encoder produces now, so they are used again at once.
            picks = z[torch.randint(len(z), (len(dead),), device=z.device)]
            self.codebook[dead] = picks
            self.ema_sum[dead] = picks
            self.ema_count[dead] = 1.0
            self.steps_unused[dead] = 0


class QuantizerSettings(ConfigModel):
    """The bottleneck of a neural tokenizer; `kind` is the one switch between FSQ and a VQ codebook."""

    kind: Literal["fsq", "vq"] = "fsq"
    # FSQ: vocabulary prod(levels), latent dim len(levels). 875 codes: 27.3 dB and 94% of codes used on held-out
    # RGB at 64 px after 10 CPU minutes, where 1000 codes left 15% unused (BENCHMARKS.md).
    levels: tuple[int, ...] = (7, 5, 5, 5)
    codebook_size: int = Field(default=1024, ge=2)  # VQ
    code_dim: int = Field(default=32, ge=1)  # VQ latent dim
    ema_decay: float = Field(default=0.99, gt=0, lt=1)
    commitment: float = Field(default=0.25, ge=0)
    restart_after: int = Field(default=100, ge=1)
    l2_normalize: bool = True

    @property
    def dim(self) -> int:
        return len(self.levels) if self.kind == "fsq" else self.code_dim

    @property
    def vocab_size(self) -> int:
        return math.prod(self.levels) if self.kind == "fsq" else self.codebook_size

    def build(self) -> FSQ | VectorQuantizer:
        if self.kind == "fsq":
            return FSQ(self.levels)
        return VectorQuantizer(self.code_dim, self.codebook_size, decay=self.ema_decay, commitment=self.commitment,
                               restart_after=self.restart_after, l2_normalize=self.l2_normalize)


def codebook_stats(ids: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """Usage (fraction of ids ever used) and perplexity (exp of the entropy of id frequencies) of a set of ids."""
    counts = torch.bincount(ids.reshape(-1).long(), minlength=vocab_size).double()
    probs = counts / counts.sum().clamp(min=1)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {"usage": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}
