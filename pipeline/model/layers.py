"""Transformer pieces as 4M builds them: pre-norm, no biases, SwiGLU, attention through SDPA.

Everything is plain `nn.Linear` + `scaled_dot_product_attention`, and every parameter is used only inside the
forward of the module that owns it, which is what DeepSpeed ZeRO-3's per-module gathering needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.kv_cache import LayerCache


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Attention(nn.Module):
    """Self-attention (context None) or cross-attention to `context`. `mask` is boolean, True where a query may
    attend a key, broadcastable to (B, heads, queries, keys). Keys and values share one projection (one matmul)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(x, *self.keys_values(x if context is None else context), mask)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, v), each (B, heads, S, head_dim), of the (B, S, D) slots `source`: what the decoder cache keeps."""
        k, v = self.kv(source).view(*source.shape[:2], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return k, v

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The queries of `x` (B, Q, D) against keys/values from `keys_values` (mask None: every key)."""
        batch, queries, dim = x.shape
        q = self.q(x).view(batch, queries, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(batch, queries, dim))


class Block(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention to the encoder, SwiGLU MLP; bias-free RMSNorm.

    Cross-attention normalises its context per block (as 4M's decoder blocks do), so every decoder block reads the
    encoder output on its own scale.
    """

    def __init__(self, dim: int, heads: int, mlp_hidden: int, eps: float, cross: bool = False):
        super().__init__()
        self.norm1 = nn.RMSNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.cross = cross
        if cross:
            self.norm_cross = nn.RMSNorm(dim, eps=eps)
            self.norm_context = nn.RMSNorm(dim, eps=eps)
            self.cross_attn = Attention(dim, heads)
        self.norm2 = nn.RMSNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        if self.cross:
            x = x + self.cross_attn(self.norm_cross(x), context_mask, self.norm_context(context))
        return x + self.mlp(self.norm2(x))

    def decode_step(self, x: torch.Tensor, mask: torch.Tensor | None, cache: LayerCache, start: int,
                    memory_mask: torch.Tensor) -> torch.Tensor:
        """`forward` of a decoder block for new slots `x` (B, n, D) of a causal run whose first `start` slots are
        in `cache` (generation only): their keys/values join the cache, the memory's come from it."""
        h = self.norm1(x)
        x = x + self.attn.attend(h, *cache.update(start, *self.attn.keys_values(h)), mask)
        x = x + self.cross_attn.attend(self.norm_cross(x), cache.cross_k, cache.cross_v, memory_mask)
        return x + self.mlp(self.norm2(x))


def sincos_1d(positions: int, dim: int) -> torch.Tensor:
    """(positions, dim) fixed sin-cos embeddings (Transformer / MAE)."""
    omega = 1.0 / 10_000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(rows: int, cols: int, dim: int) -> torch.Tensor:
    """(rows * cols, dim), row-major: half the channels encode the row, half the column (MAE / 4M)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embeddings need a width divisible by 4, got {dim}")
    row = sincos_1d(rows, dim // 2)[:, None, :].expand(rows, cols, dim // 2)
    col = sincos_1d(cols, dim // 2)[None, :, :].expand(rows, cols, dim // 2)
    return torch.cat([row, col], dim=-1).reshape(rows * cols, dim)
