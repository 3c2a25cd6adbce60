"""Generation's batches in the contract of `schemas/batch.py`: what the encoder sees and what the decoder asks.

While a target is being generated, the encoder holds every token the sample has so far: each given (or already
generated) modality whole, in table order, sequences without their EOS as the training masker feeds an unmasked run,
and the tokens of the current target decided in earlier rounds at their own positions (MaskGIT moves them from the
decoder to the encoder, as 4M does). A sequence target appears in the encoder as the one sentinel standing for its
whole run, exactly what training shows for a fully masked sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.masking import EOS_ID, SENTINEL_IDS, empty_batch
from schemas.batch import ModalityTable

Row = Mapping[str, np.ndarray]  # modality -> 1-D token ids of one sample (sequences end with EOS)


@dataclass(frozen=True)
class Run:
    """Slots of one modality in one sample: token ids at their positions (and, for the decoder, what is fed)."""

    modality: int  # index into the ModalityTable
    tokens: np.ndarray
    positions: np.ndarray
    fed: np.ndarray | None = None  # decoder only: the ids fed to causal slots
    causal: bool = False


def content(row: np.ndarray, autoregressive: bool) -> np.ndarray:
    """A stored row as the encoder takes it: sequences lose their closing EOS."""
    row = np.asarray(row, np.int64).reshape(-1)
    return row[:-1] if autoregressive and len(row) and row[-1] == EOS_ID else row


def given_runs(table: ModalityTable, row: Row) -> list[Run]:
    """Every modality of `row`, whole, in table order."""
    runs = []
    for name in sorted(row, key=table.index):
        spec = table[name]
        tokens = content(row[name], spec.autoregressive)[:spec.max_tokens]
        runs.append(Run(table.index(name), tokens, np.arange(len(tokens))))
    return runs


def sentinel_run(table: ModalityTable, target: str) -> Run:
    """A sequence target in the encoder: one sentinel for the whole masked run."""
    return Run(table.index(target), np.array([SENTINEL_IDS[0]], np.int64), np.zeros(1, np.int64))


def pack_runs(encoder: Sequence[Sequence[Run]], decoder: Sequence[Sequence[Run]]) -> dict[str, np.ndarray]:
    """One batch (numpy, every field of the contract) from per-sample encoder and decoder runs, padded."""
    width_in = max(1, max(sum(len(r.tokens) for r in runs) for runs in encoder))
    width_out = max(1, max(sum(len(r.tokens) for r in runs) for runs in decoder))
    batch = empty_batch(len(encoder), width_in, width_out)
    for b, (enc_runs, dec_runs) in enumerate(zip(encoder, decoder, strict=True)):
        _place(batch, "enc", b, enc_runs)
        _place(batch, "dec", b, dec_runs)
    return batch


def _place(batch: dict[str, np.ndarray], side: str, b: int, runs: Sequence[Run]) -> None:
    start = 0
    for run in runs:
        end = start + len(run.tokens)
        values = {"modality": run.modality, "position": run.positions}
        if side == "enc":
            values["tokens"] = run.tokens
        else:
            values.update(target=run.tokens, input=run.fed if run.fed is not None else 0, causal=run.causal)
        for name, value in values.items():
            batch[f"{side}_{name}"][b, start:end] = value
        batch[f"{side}_pad"][b, start:end] = False
        start = end
