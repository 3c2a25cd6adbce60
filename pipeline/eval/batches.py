"""Deterministic packing of eval samples into `schemas/batch.py` batches: no random masking, everything shown.

Evaluation asks fixed questions: "given all of these input modalities, predict all of that target". Inputs fill
the encoder slots in table order with every token (sequences without their EOS, as the training masker feeds an
unmasked run); the target fills the decoder slots: every grid position for parallel modalities, and for
autoregressive ones the run the masker makes when the whole sequence is masked (`S_0 tokens... EOS`, fed shifted
right behind SOS), so teacher forcing scores the model on the distribution it was trained on. Only a modality's
family (via its `ModalitySpec`) decides how it is packed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.data.masking import EOS_ID, SENTINEL_IDS, SOS_ID, empty_batch
from schemas.batch import ModalityTable

Row = Mapping[str, np.ndarray]  # modality -> 1-D token ids of one sample


def _content(row: np.ndarray, autoregressive: bool) -> np.ndarray:
    row = np.asarray(row, np.int64).reshape(-1)
    return row[:-1] if autoregressive and len(row) and row[-1] == EOS_ID else row


def _input_run(table: ModalityTable, modality: str, row: np.ndarray, fully_masked: bool) -> np.ndarray:
    spec = table[modality]
    if fully_masked:  # a target sequence appears in the input as the one sentinel standing for its whole run
        return np.array([SENTINEL_IDS[0]], np.int64)
    return _content(row, spec.autoregressive)[:spec.max_tokens]


def target_run(table: ModalityTable, modality: str, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(target ids, decoder input ids) of the whole modality."""
    spec = table[modality]
    if not spec.autoregressive:
        ids = np.asarray(row, np.int64).reshape(-1)[:spec.max_tokens]
        return ids, np.zeros_like(ids)
    run = np.concatenate([[SENTINEL_IDS[0]], _content(row, True), [EOS_ID]])[:spec.max_tokens]
    return run, np.concatenate([[SOS_ID], run[:-1]])


def pack(table: ModalityTable, rows: Sequence[Row], inputs: Sequence[str], target: str | None = None) -> dict:
    """One batch: every token of `inputs` in the encoder and, if given, all of `target` in the decoder.

    A sequence target also leaves its sentinel among the inputs, as the training masker does."""
    order = sorted(inputs, key=table.index)
    encoder, decoder = [], []
    for row in rows:
        runs = [(m, _input_run(table, m, row[m], False)) for m in order]
        if target is not None and table[target].autoregressive:
            runs.append((target, _input_run(table, target, row[target], True)))
        encoder.append(runs)
        decoder.append(target_run(table, target, row[target]) if target is not None else None)
    width_in = max(1, max(sum(len(r) for _, r in runs) for runs in encoder))
    width_out = max(1, max((len(d[0]) for d in decoder if d is not None), default=1))
    batch = empty_batch(len(rows), width_in, width_out)
    for b, runs in enumerate(encoder):
        start = 0
        for modality, run in runs:
            end = start + len(run)
            batch["enc_tokens"][b, start:end] = run
            batch["enc_modality"][b, start:end] = table.index(modality)
            batch["enc_position"][b, start:end] = np.arange(len(run))
            batch["enc_pad"][b, start:end] = False
            start = end
        if decoder[b] is not None:
            ids, fed = decoder[b]
            n = len(ids)
            batch["dec_target"][b, :n], batch["dec_input"][b, :n] = ids, fed
            batch["dec_modality"][b, :n] = table.index(target)
            batch["dec_position"][b, :n] = np.arange(n)
            batch["dec_causal"][b, :n] = table[target].autoregressive
            batch["dec_pad"][b, :n] = False
    return batch
