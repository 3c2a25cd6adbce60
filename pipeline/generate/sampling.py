"""Drawing tokens from logits, the MaskGIT schedule, and the model calls generation makes (encode, decode, one head;
the cached decoder step of token-by-token decoding).

Everything here is single-device torch on the plain model of `pipeline/model`: no Ray, no DeepSpeed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.model.fourm import FourM
from pipeline.model.kv_cache import DecoderCache


@dataclass
class Sampler:
    """Temperature / top-k sampling with its own seeded generator, so equal seeds give equal outputs."""

    temperature: float
    top_k: int
    generator: torch.Generator

    @classmethod
    def seeded(cls, temperature: float, top_k: int, seed: int) -> Sampler:
        return cls(temperature, top_k, torch.Generator().manual_seed(seed))

    @classmethod
    def greedy(cls) -> Sampler:
        """Argmax at every draw (temperature 0): deterministic, its generator never used."""
        return cls.seeded(0.0, 0, 0)

    def draw(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (n,), confidence (n,)) for logits (n, V): the drawn token and its probability under the model's
        untempered distribution (what MaskGIT ranks by). Temperature 0 is argmax."""
        logits = logits.float().cpu()
        probs = torch.softmax(logits, dim=-1)
        if self.temperature == 0:
            ids = logits.argmax(-1)
        else:
            scaled = logits / self.temperature
            if 0 < self.top_k < scaled.shape[-1]:
                kth = scaled.topk(self.top_k, dim=-1).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            ids = torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=self.generator).squeeze(-1)
        return ids, probs.gather(-1, ids[:, None]).squeeze(-1)


def still_masked(total: int, step: int, steps: int) -> int:
    """Tokens left masked after round `step` (0-based) of `steps`: MaskGIT's cosine schedule, none after the last."""
    return int(math.floor(total * math.cos(math.pi / 2 * (step + 1) / steps)))


def restrict(logits: torch.Tensor, vocab: int | None, banned: tuple[int, ...] = ()) -> torch.Tensor:
    """Logits with ids the tokenizer cannot decode (>= its vocabulary; the head spans the run's larger one) and
    `banned` ids made impossible."""
    logits = logits.float().clone()
    if vocab is not None and vocab < logits.shape[-1]:
        logits[..., vocab:] = float("-inf")
    if banned:
        logits[..., list(banned)] = float("-inf")
    return logits


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(array).to(device) for name, array in batch.items()}


@torch.no_grad()
def target_logits(model: FourM, batch: dict[str, torch.Tensor], modality: int,
                  memory: tuple[torch.Tensor, torch.Tensor] | None = None, slot: int | None = None) -> torch.Tensor:
    """(B, T, V) logits of the head of `modality` at every decoder slot, or (B, V) at `slot` alone (the head over
    a 30k vocabulary costs more than the decoder). `memory`: the encoder's output, reused when only the decoder
    side changed."""
    features, pad = memory if memory is not None else model.encode(batch)
    hidden = model.decode(batch, features, pad)
    return model.heads[modality](hidden if slot is None else hidden[:, slot])


@torch.no_grad()
def next_logits(model: FourM, cache: DecoderCache, fed: torch.Tensor, modality: int) -> torch.Tensor:
    """(B, V) logits of the head of `modality` at the last of `n` new slots of a causal run, fed the ids `fed`
    (B, n) at positions `cache.length`... (a sequence's run: position = slot), through the decoder's key/value
    cache: a step costs its new slots, not the whole run."""
    position = torch.arange(cache.length, cache.length + fed.shape[1], device=fed.device).expand_as(fed)
    hidden = model.decode_step(fed, torch.full_like(fed, modality), position, cache)
    return model.heads[modality](hidden[:, -1])
