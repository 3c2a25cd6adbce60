"""Token-by-token decoding of a sequence modality (caption, palette, metadata, boxes...), as 4M decodes text.

Training shows a fully masked sequence as one sentinel `S_0` in the encoder and the target run `S_0 tokens... EOS`
in the decoder, fed shifted right behind SOS (pipeline/data/masking.py). Generation asks the same question: the
encoder holds the given modalities and the sentinel; the decoder is fed `SOS S_0` and then its own draws, until it
draws EOS or the run reaches its bound. The first target, `S_0`, is not drawn but given, since a whole-sequence
question has only that answer. Sentinels, PAD and SOS can never be drawn afterwards: the run has one span.

The encoder runs once; the decoder keeps a key/value cache (pipeline/model/kv_cache.py), so each step runs it on
the one new slot, not over the run so far (tests/test_kv_cache.py checks the logits against the whole-run decoder).

This is the one decoding loop for sequences: chained generation (chain.py) keeps the ids; the rgb -> det eval task
(pipeline/eval/tasks/detection.py) decodes greedily through it too and also keeps each token's log-probability,
which ranks its boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from pipeline.data.masking import EOS_ID, PAD_ID, SENTINEL_IDS, SOS_ID
from pipeline.generate.sampling import Sampler, next_logits, restrict, to_torch
from pipeline.generate.slots import Row, given_runs, pack_runs, sentinel_run
from pipeline.model.fourm import FourM
from schemas.batch import ModalityTable

BANNED = (PAD_ID, SOS_ID, *SENTINEL_IDS)


class ScoredRow(NamedTuple):
    """A generated row as the tokenizer stores it (`tokens... EOS`) and, per id, the log-probability the model gave
    it: untempered, over the ids that could be drawn (below `vocab`, none of BANNED)."""

    ids: np.ndarray
    logps: np.ndarray


def generate_sequence(model: FourM, table: ModalityTable, rows: Sequence[Row], target: str, sampler: Sampler,
                      vocab: int | None = None, max_tokens: int | None = None) -> list[np.ndarray]:
    """One id row of `target` per sample, as the tokenizer stores it: the generated tokens, then EOS."""
    return [row.ids for row in generate_scored_sequence(model, table, rows, target, sampler, vocab, max_tokens)]


@torch.no_grad()
def generate_scored_sequence(model: FourM, table: ModalityTable, rows: Sequence[Row], target: str,
                             sampler: Sampler, vocab: int | None = None,
                             max_tokens: int | None = None) -> list[ScoredRow]:
    """`generate_sequence`, keeping the log-probability of every id it chose."""
    spec, index = table[target], table.index(target)
    bound = min(spec.max_tokens, max_tokens or spec.max_tokens)  # the run: S_0, tokens, EOS
    device = next(model.parameters()).device
    encoder = [[*given_runs(table, row), sentinel_run(table, target)] for row in rows]
    encoder = [sorted(runs, key=lambda run: run.modality) for runs in encoder]
    run = np.zeros((len(rows), bound), np.int64)  # the target run drawn so far
    run[:, 0] = SENTINEL_IDS[0]
    logps = np.zeros((len(rows), bound), np.float32)  # S_0 is given, not drawn: log 1
    done = np.zeros(len(rows), bool)
    batch = to_torch(pack_runs(encoder, [[] for _ in rows]), device)  # the encoder's side alone: it runs once
    cache = model.start_decoding(*model.encode(batch), capacity=bound)
    for length in range(1, bound):
        # Slot i of the run is fed its token i - 1 (SOS at slot 0) and the cache holds the slots before
        # `cache.length`: the first step feeds `SOS S_0`, each later one the last draw alone.
        fed = np.concatenate([np.full((len(rows), 1), SOS_ID), run[:, :length]], axis=1)[:, cache.length:]
        logits = restrict(next_logits(model, cache, torch.from_numpy(fed).to(device), index), vocab, BANNED)
        if length == bound - 1:  # the bound leaves room for EOS alone
            drawn = torch.full((len(rows),), EOS_ID)
        else:
            drawn, _ = sampler.draw(logits)
        chosen = logits.log_softmax(-1).gather(-1, drawn[:, None].to(logits.device))[:, 0]
        run[:, length] = np.where(done, PAD_ID, drawn.numpy())
        logps[:, length] = np.where(done, 0.0, chosen.cpu().numpy())
        done |= run[:, length] == EOS_ID
        if done.all():
            break
    return [_stored_row(r, p) for r, p in zip(run, logps)]


def _stored_row(run: np.ndarray, logps: np.ndarray) -> ScoredRow:
    """`S_0 tokens... EOS [PAD...]` -> `tokens... EOS`, with the log-probabilities of those ids (0 for an EOS
    added because the run had none: a bound of 1 leaves no slot to draw it)."""
    body = run[1:].tolist()
    end = body.index(EOS_ID) if EOS_ID in body else len(body)
    return ScoredRow(np.array([*body[:end], EOS_ID], np.int64), np.append(logps[1:], 0.0)[:end + 1])
