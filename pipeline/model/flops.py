"""Analytic FLOPs of one training sample: matmuls only (2 per multiply-add), backward = 2x forward (Kaplan et al.)."""

from __future__ import annotations

from pipeline.model.sizes import Dims


def forward_flops(dims: Dims, input_tokens: int, target_tokens: int, head_vocab: float) -> int:
    """Encoder on I input slots, decoder on T target slots with self- and cross-attention, heads over `head_vocab`
    (the mean vocabulary of the target slots' modalities)."""
    d, h, i, t = dims.dim, dims.mlp_hidden, input_tokens, target_tokens
    encoder = 2 * i * (4 * d * d + 3 * d * h) + 4 * i * i * d  # projections + MLP, then QK^T and AV
    decoder = (2 * t * (4 * d * d + 3 * d * h) + 4 * t * t * d  # self-attention block + MLP
               + 2 * t * 2 * d * d + 2 * i * 2 * d * d + 4 * t * i * d)  # cross: q/proj on T, k/v on I, scores
    return int(dims.encoder_depth * encoder + dims.decoder_depth * decoder + 2 * t * d * head_vocab)


def training_flops(dims: Dims, input_tokens: int, target_tokens: int, head_vocab: float) -> int:
    return 3 * forward_flops(dims, input_tokens, target_tokens, head_vocab)
