"""Analytic FLOPs of one training sample, the one formula that training metrics, `jobs.sizes` and scaling fits use.

Matmuls only, 2 FLOPs per multiply-add; norms, softmax, activations and embedding gathers are a fraction of a percent
at every size and are left out, as in Kaplan et al. and nanoGPT's `estimate_mfu`. Attention is counted over every
slot pair that SDPA computes (the masks do not skip work). Backward is twice forward: each matmul needs the
gradients of both its operands. `tests/test_sizes.py` checks this against torch's FlopCounterMode.
"""

from __future__ import annotations

from pipeline.model.sizes import Dims


def forward_flops(dims: Dims, input_tokens: int, target_tokens: int, head_vocab: float) -> int:
    """Encoder on I input slots, decoder on T target slots with self- and cross-attention, heads over `head_vocab`
    (the mean vocabulary of the target slots' modalities: each slot goes through its own modality's head)."""
    d, h, i, t = dims.dim, dims.mlp_hidden, input_tokens, target_tokens
    block = 4 * d * d + 3 * d * h  # q, kv, out projections + SwiGLU's gate, up and down, per token
    encoder = 2 * i * block + 4 * i * i * d  # projections + MLP, then QK^T and AV
    decoder = (2 * t * block + 4 * t * t * d  # self-attention block + MLP
               + 2 * t * 2 * d * d + 2 * i * 2 * d * d + 4 * t * i * d)  # cross: q/out on T, kv on I, QK^T and AV
    return int(dims.encoder_depth * encoder + dims.decoder_depth * decoder + 2 * t * d * head_vocab)


def training_flops(dims: Dims, input_tokens: int, target_tokens: int, head_vocab: float) -> int:
    """Forward + backward (= 2x forward) FLOPs of one sample."""
    return 3 * forward_flops(dims, input_tokens, target_tokens, head_vocab)
