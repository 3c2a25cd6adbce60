"""MaskGIT-style decoding of a parallel modality (grid, global embedding, signal...), as 4M decodes image tokens.

Every slot of the target starts masked. Each round the decoder predicts every still-masked slot (parallel queries
fed the mask embedding, as in training), a token is drawn for each, and the most confident ones are kept; how many
stay masked follows the cosine schedule over `steps`, none after the last round. Kept tokens join the encoder's
inputs at their positions for the next round; the others are masked again and predicted anew. With steps=1 and
temperature 0 this is exactly one-pass argmax prediction of the whole target.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.generate.sampling import Sampler, restrict, still_masked, target_logits, to_torch
from pipeline.generate.slots import Row, Run, given_runs, pack_runs
from pipeline.model.fourm import FourM
from schemas.batch import ModalityTable


def generate_parallel(model: FourM, table: ModalityTable, rows: Sequence[Row], target: str, steps: int,
                      sampler: Sampler, vocab: int | None = None) -> list[np.ndarray]:
    """One (max_tokens,) id row of `target` per sample of `rows` (which must not hold `target`)."""
    spec, index = table[target], table.index(target)
    total = spec.max_tokens
    device = next(model.parameters()).device
    ids = np.zeros((len(rows), total), np.int64)
    known = np.zeros((len(rows), total), bool)
    given = [given_runs(table, row) for row in rows]
    for step in range(steps):
        keep_masked = still_masked(total, step, steps)
        encoder, decoder = [], []
        for b, runs in enumerate(given):
            at, open_ = np.flatnonzero(known[b]), np.flatnonzero(~known[b])
            decided = [Run(index, ids[b, at], at)] if len(at) else []
            encoder.append(sorted([*runs, *decided], key=lambda run: run.modality))
            decoder.append([Run(index, np.zeros(len(open_), np.int64), open_)])
        batch = to_torch(pack_runs(encoder, decoder), device)
        logits = restrict(target_logits(model, batch, index), vocab)
        for b in range(len(rows)):
            open_ = np.flatnonzero(~known[b])
            drawn, confidence = sampler.draw(logits[b, :len(open_)])
            # The most confident draws are kept this round; ties go to the lower position (stable sort).
            chosen = np.argsort(-confidence.numpy(), kind="stable")[:len(open_) - keep_masked]
            ids[b, open_[chosen]] = drawn.numpy()[chosen]
            known[b, open_[chosen]] = True
    return list(ids)


def random_tokens(count: int, length: int, vocab: int, seed: int) -> np.ndarray:
    """(count, length) uniformly random ids: the baseline generation has to beat."""
    return torch.randint(0, vocab, (count, length), generator=torch.Generator().manual_seed(seed)).numpy()
