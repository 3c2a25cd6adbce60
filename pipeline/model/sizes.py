"""The size registry: 4M's S/B/L/XL plus tiny for tests; one place for the numbers (read by the model, the FLOP
counter and `python -m jobs.sizes`).

B, L and XL are 4M's (CONTEXT.md). S is 4M's public `fm_small_8e_8d` shape (8 + 8 blocks at width 512, 8 heads),
which the paper does not report. The SwiGLU hidden width is rounded up to a multiple of 64 for matmul efficiency,
so the block parameters are B 198M (as 4M), L 708M (4M: 705M) and XL 2.83B (4M: 2.82B).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from schemas.model import ModelConfig
from schemas.registry import Registry


@dataclass(frozen=True)
class Dims:
    dim: int
    encoder_depth: int
    decoder_depth: int
    heads: int
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"width {self.dim} is not divisible by {self.heads} heads")

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU hidden width: 2/3 of mlp_ratio * dim (same parameters as a GELU MLP), rounded up to 64."""
        hidden = int(2 * self.mlp_ratio * self.dim / 3)
        return (hidden + 63) // 64 * 64


SIZES: Registry[Dims] = Registry("model size")
SIZES.register("tiny", Dims(dim=64, encoder_depth=2, decoder_depth=2, heads=4))  # tests and the demo
SIZES.register("S", Dims(dim=512, encoder_depth=8, decoder_depth=8, heads=8))  # 4M's fm_small
SIZES.register("B", Dims(dim=768, encoder_depth=12, decoder_depth=12, heads=12))  # 4M-B
SIZES.register("L", Dims(dim=1024, encoder_depth=24, decoder_depth=24, heads=16))  # 4M-L, ~0.7B
SIZES.register("XL", Dims(dim=2048, encoder_depth=24, decoder_depth=24, heads=32))  # 4M-XL


def resolve(config: ModelConfig) -> Dims:
    """The dimensions a config asks for: its size's, with any field the config sets replacing the size's own."""
    # `custom` sets all four dimensions (ModelConfig checks), so any base will do for it.
    base = SIZES.get("tiny" if config.size == "custom" else config.size)
    overrides = {k: getattr(config, k) for k in ("dim", "encoder_depth", "decoder_depth", "heads")
                 if getattr(config, k) is not None}
    return replace(base, mlp_ratio=config.mlp_ratio, **overrides)


def param_counts(dims: Dims, vocab_sizes: list[int]) -> dict[str, int]:
    """Closed-form parameter counts (what `python -m jobs.sizes` prints; a test checks them against the model).

    Encoder block: 2 norms, attention 4 D^2, SwiGLU 3 D H. Decoder block: 4 norms, self- and cross-attention,
    SwiGLU. Embeddings: the shared token table, modality embeddings, the mask embedding; heads: one per modality.
    """
    d, h, m = dims.dim, dims.mlp_hidden, len(vocab_sizes)
    encoder = dims.encoder_depth * (2 * d + 4 * d * d + 3 * d * h) + d
    decoder = dims.decoder_depth * (4 * d + 8 * d * d + 3 * d * h) + d
    embeddings_heads = 2 * sum(vocab_sizes) * d + m * d + d
    return {"params_encoder": encoder, "params_decoder": decoder, "params_embeddings_heads": embeddings_heads,
            "params_total": encoder + decoder + embeddings_heads}
