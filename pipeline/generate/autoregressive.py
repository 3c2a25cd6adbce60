"""Token-by-token decoding of a sequence modality (caption, palette, metadata, boxes...), as 4M decodes text.

Training shows a fully masked sequence as one sentinel `S_0` in the encoder and the target run `S_0 tokens... EOS`
in the decoder, fed shifted right behind SOS (pipeline/data/masking.py). Generation asks the same question: the
encoder holds the given modalities and the sentinel; the decoder is fed `SOS S_0` and then its own draws, until it
draws EOS or the run reaches its bound. The first target, `S_0`, is not drawn but given, since a whole-sequence
question has only that answer. Sentinels, PAD and SOS can never be drawn afterwards: the run has one span.

No KV cache: each new token reruns the decoder over the run so far (the encoder runs once). Runs are at most a few
hundred tokens, and correctness is easier to see this way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.data.masking import EOS_ID, PAD_ID, SENTINEL_IDS, SOS_ID
from pipeline.generate.sampling import Sampler, restrict, target_logits, to_torch
from pipeline.generate.slots import Row, Run, given_runs, pack_runs, sentinel_run
from pipeline.model.fourm import FourM
from schemas.batch import ModalityTable

BANNED = (PAD_ID, SOS_ID, *SENTINEL_IDS)


def generate_sequence(model: FourM, table: ModalityTable, rows: Sequence[Row], target: str, sampler: Sampler,
                      vocab: int | None = None, max_tokens: int | None = None) -> list[np.ndarray]:
    """One id row of `target` per sample, as the tokenizer stores it: the generated tokens, then EOS."""
    spec, index = table[target], table.index(target)
    bound = min(spec.max_tokens, max_tokens or spec.max_tokens)  # the run: S_0, tokens, EOS
    device = next(model.parameters()).device
    encoder = [[*given_runs(table, row), sentinel_run(table, target)] for row in rows]
    encoder = [sorted(runs, key=lambda run: run.modality) for runs in encoder]
    run = np.zeros((len(rows), bound), np.int64)  # the target run drawn so far
    run[:, 0] = SENTINEL_IDS[0]
    done = np.zeros(len(rows), bool)
    memory = None
    for length in range(1, bound):
        fed = np.concatenate([np.full((len(rows), 1), SOS_ID), run[:, :length]], axis=1)
        decoder = [[Run(index, run[b, :length + 1], np.arange(length + 1), fed[b], causal=True)]
                   for b in range(len(rows))]
        batch = to_torch(pack_runs(encoder, decoder), device)
        if memory is None:
            memory = model.encode(batch)
        logits = restrict(target_logits(model, batch, index, memory, slot=length), vocab, BANNED)
        if length == bound - 1:  # the bound leaves room for EOS alone
            drawn = torch.full((len(rows),), EOS_ID)
        else:
            drawn, _ = sampler.draw(logits)
        run[:, length] = np.where(done, PAD_ID, drawn.numpy())
        done |= run[:, length] == EOS_ID
        if done.all():
            break
    return [_stored_row(r) for r in run]


def _stored_row(run: np.ndarray) -> np.ndarray:
    """`S_0 tokens... EOS [PAD...]` -> `tokens... EOS`."""
    body = run[1:].tolist()
    end = body.index(EOS_ID) if EOS_ID in body else len(body)
    return np.array([*body[:end], EOS_ID], np.int64)
