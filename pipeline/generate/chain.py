"""Chained generation (4M): targets generated one after another, each one joining the inputs of the next.

Given "rgb -> caption, depth", the caption is generated from the image, then depth from the image and the
generated caption. A modality's family alone decides how it is decoded: sequences token by token, every other
family MaskGIT-style in parallel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.generate.autoregressive import generate_sequence
from pipeline.generate.parallel import generate_parallel
from pipeline.generate.sampling import Sampler
from pipeline.generate.slots import Row
from pipeline.model.fourm import FourM
from schemas.batch import ModalityTable
from schemas.generate import SamplingConfig


def generate(model: FourM, table: ModalityTable, rows: Sequence[Row], targets: Sequence[str],
             sampling: SamplingConfig, vocab: Mapping[str, int] | None = None, seed: int = 0,
             batch_size: int = 8) -> list[dict[str, np.ndarray]]:
    """Each sample's rows plus one generated row per target (stored-row format: sequences end with EOS).

    `vocab`: per modality, the tokenizer's vocabulary, which bounds what may be drawn (the run's table can be
    larger). The same seed gives the same outputs for the same batch size."""
    vocab = vocab or {}
    for target in targets:
        table.index(target)  # a target outside the run's table fails here, naming the table
    out: list[dict[str, np.ndarray]] = []
    for start in range(0, len(rows), batch_size):
        sampler = Sampler.seeded(sampling.temperature, sampling.top_k, seed + start)
        known = [dict(row) for row in rows[start:start + batch_size]]
        for target in targets:
            if any(target in row for row in known):
                raise ValueError(f"{target} is both given and generated")
            name = table[target].name
            if table[target].autoregressive:
                made = generate_sequence(model, table, known, target, sampler, vocab.get(name), sampling.max_tokens)
            else:
                made = generate_parallel(model, table, known, target, sampling.steps, sampler, vocab.get(name))
            for row, ids in zip(known, made):
                row[name] = ids
        out.extend(known)
    return out
