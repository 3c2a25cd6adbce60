"""4M's multimodal masking: one sample's token rows -> the packed encoder and decoder slots of `schemas/batch.py`.

Per sample (a dict modality -> 1-D token row; a modality the sample lacks is simply absent):

0. With a mixture of strategies (4M-21; pipeline/data/masking_strategies.py) one is drawn for the sample first; its
   concentrations replace the plain ones below, and a concentration of 0 keeps a modality off that side. A sequence
   that may only be an input then goes in whole, one that may only be a target is masked as one span.
1. Sequence (autoregressive) modalities are span-masked first, T5-style: a fraction of the tokens (uniform in
   `span_mask_ratio`) is cut into spans; the *input run* keeps the other tokens and puts one sentinel where each span
   was, the *target run* is `S_0 span_0... S_1 span_1... EOS`. A sequence's stored row ends with EOS, which is
   dropped before masking (the target run brings its own). With nothing masked the target run is empty.
2. Two Dirichlet draws over the present modalities (concentration `alpha`, per-modality overrides) weight the
   input budget I and the target budget T. `split_budget` turns weights into whole slot counts that never exceed
   what a modality can give and hand any excess to the others, so the counts add up to exactly I (and T) whenever
   the sample has that many slots to give; otherwise it gives everything and the rest is padding. What a modality
   can give: grid and other parallel modalities, their tokens (inputs first, then targets from the tokens left:
   input and target never share a token); sequences, the length of their input and target runs (disjoint by
   construction); nothing on a side the strategy keeps it off. A run longer than its share is cut at the end.
3. Parallel modalities pick their input and target positions uniformly at random (slots sorted by position).
   Sequences take a prefix of each run; `dec_input` is the target run shifted right behind SOS, so slot j is fed
   the token of slot j-1 (SOS for the first), the usual teacher forcing: we start from SOS rather than the first
   sentinel so that the first sentinel is itself predicted like every other target token.

Positions are the grid index (row-major) for grid and other parallel modalities, and the index in the run for
sequences. Everything random comes from the numpy Generator passed in, so equal seeds give equal batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.masking_strategies import StrategyMixture, StrategyPlan
from pipeline.tokenizers.text import EOS, NUM_SENTINELS, PAD, SOS, sentinel_token, special_tokens
from schemas.batch import BATCH_FIELDS, BOOL_FIELDS, PRESENT, STRATEGY, ModalityTable, ModalitySpec
from schemas.loading import MaskingConfig
from schemas.modalities import TokenizerFamily, get_modality

# The shared WordPiece vocabulary reserves its special tokens first, in this order, so their ids are fixed.
_RESERVED = special_tokens()
PAD_ID, SOS_ID, EOS_ID = (_RESERVED.index(t) for t in (PAD, SOS, EOS))
_SENTINELS = [_RESERVED.index(sentinel_token(i)) for i in range(NUM_SENTINELS)]
SENTINEL_IDS = tuple(_SENTINELS)  # S_0 .. S_199, in span order
_SENTINEL_SET = frozenset(_SENTINELS)


def empty_batch(batch_size: int, input_tokens: int, target_tokens: int) -> dict[str, np.ndarray]:
    """All-padding arrays of a batch: pad flags True, everything else 0."""
    batch = {}
    for name in BATCH_FIELDS:
        width = input_tokens if name.startswith("enc_") else target_tokens
        dtype = bool if name in BOOL_FIELDS else np.int64
        batch[name] = np.zeros((batch_size, width), dtype=dtype)
    batch["enc_pad"][:] = True
    batch["dec_pad"][:] = True
    return batch


def split_budget(budget: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """Whole slot counts close to `budget * weights`, each at most its cap, summing to min(budget, sum(caps)).

    Water-filling: a modality whose share reaches its cap gets the cap and the rest is re-split over the others in
    proportion to their weights; the last fractional slots go to the largest remainders. (Plain Python: the lists
    are a handful of modalities long, where numpy's per-call cost dominates.)
    """
    caps = [int(c) for c in caps]
    alloc = [0] * len(caps)
    remaining = min(int(budget), sum(caps))
    active = [i for i, c in enumerate(caps) if c > 0]
    while remaining > 0:
        total = sum(weights[i] for i in active)
        # When the weight sits on modalities already full, the rest is shared evenly.
        share = {i: (weights[i] / total if total > 0 else 1 / len(active)) * remaining for i in active}
        full = [i for i in active if share[i] >= caps[i] - alloc[i]]
        if full:
            for i in full:
                remaining -= caps[i] - alloc[i]
                alloc[i] = caps[i]
            active = [i for i in active if i not in full]
            continue
        for i in active:
            whole = int(share[i])
            alloc[i] += whole
            remaining -= whole
        for i in sorted(active, key=lambda i: share[i] - int(share[i]), reverse=True)[:remaining]:
            alloc[i] += 1
        remaining = 0
    return alloc


def _composition(total: int, parts: int, rng: np.random.Generator) -> list[int]:
    """`total` split into `parts` positive integers, uniformly over all such splits."""
    cuts = sorted((rng.permutation(total - 1)[:parts - 1] + 1).tolist())
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


def span_mask(content: np.ndarray, ratio: float, mean_span: float, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """T5 span masking of one sequence (EOS not included) -> (input run, target run).

    round(ratio * n) tokens are masked in about that / mean_span spans (at most 200, one per sentinel); spans are
    separated by at least one kept token, so every sentinel in the input stands for exactly one span.
    """
    tokens = np.asarray(content).tolist()  # rows are at most a few hundred tokens: lists beat numpy calls here
    n = len(tokens)
    masked = int(round(ratio * n))
    if masked == 0:
        return np.array(tokens, dtype=np.int64), np.empty(0, np.int64)
    spans = min(max(1, int(round(masked / mean_span))), masked, n - masked + 1, NUM_SENTINELS)
    span_lengths = _composition(masked, spans, rng)
    # Kept tokens form spans + 1 gaps, the inner ones at least 1 long: a composition of n - masked + 2 into
    # spans + 1 positive parts, less 1 at both ends.
    gaps = _composition(n - masked + 2, spans + 1, rng)
    gaps[0] -= 1
    gaps[-1] -= 1
    input_run: list[int] = []
    target_run: list[int] = []
    at = 0
    for gap, length, sentinel in zip(gaps, span_lengths, _SENTINELS):
        input_run += tokens[at:at + gap]
        input_run.append(sentinel)
        target_run.append(sentinel)
        target_run += tokens[at + gap:at + gap + length]
        at += gap + length
    input_run += tokens[at:]
    target_run.append(EOS_ID)
    return np.array(input_run, dtype=np.int64), np.array(target_run, dtype=np.int64)


def fill_spans(input_run: np.ndarray, target_run: np.ndarray) -> np.ndarray:
    """Inverse of `span_mask`: each sentinel of the input run replaced by its span from the target run."""
    spans: dict[int, list[int]] = {}
    current = None
    for token in (int(t) for t in target_run):
        if token == EOS_ID:
            break
        if token in _SENTINEL_SET:
            current = spans.setdefault(token, [])
        elif current is not None:
            current.append(token)
    out: list[int] = []
    for token in (int(t) for t in input_run):
        out.extend(spans[token] if token in _SENTINEL_SET else [token])
    return np.array(out, dtype=np.int64)




@dataclass(frozen=True)
class _Present:
    """One modality of one sample, ready to be split: its table index, spec and what it can give."""

    index: int
    spec: ModalitySpec
    tokens: np.ndarray  # parallel: the row; sequence: the input run
    target_run: np.ndarray | None  # sequences only


class Masker:
    """Applies `MaskingConfig` for one run's `ModalityTable`; call `fill` per sample or `batch` per list.
    `strategy_names[i]` names the strategy that `fill` returns i for (the plain Dirichlet last)."""

    def __init__(self, table: ModalityTable, config: MaskingConfig):
        for spec in table.specs:
            if spec.autoregressive and get_modality(spec.name).tokenizer is not TokenizerFamily.WORDPIECE:
                raise ValueError(f"{spec.name}: span masking uses the shared WordPiece sentinels, but the modality is "
                                 f"tokenized by {get_modality(spec.name).tokenizer.value}")
        self.table = table
        self.config = config
        self.strategies = StrategyMixture(table, config)
        self.strategy_names = self.strategies.names
        self._indices = {name: i for i, name in enumerate(table.names)}

    def _index_of(self, name: str) -> int:
        return self._indices[name] if name in self._indices else self.table.index(name)  # aliases, clear errors

    def batch(self, samples: Sequence[Mapping[str, np.ndarray]], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Mask and pack samples into one batch of fixed-shape arrays, with the modalities each sample has and the
        strategy each was masked with (indices into `strategy_names`): the training metrics count those."""
        batch = empty_batch(len(samples), self.config.input_tokens, self.config.target_tokens)
        batch[PRESENT] = np.zeros((len(samples), len(self.table)), dtype=bool)
        batch[STRATEGY] = np.array([self.fill(batch, row, sample, rng) for row, sample in enumerate(samples)],
                                   np.int64)
        return batch

    def fill(self, batch: dict[str, np.ndarray], row: int, sample: Mapping[str, np.ndarray],
             rng: np.random.Generator) -> int:
        """Mask one sample and write its slots into row `row` of `batch` (which must be all padding there); returns
        the index of the strategy used. The budgets are split over the modalities the sample has tokens of (those
        the strategy allows on each side); a modality it lacks gets no slot."""
        rows = self._rows(sample)
        drawn = self.strategies.draw([index for index, _ in rows], rng)
        plan = self.strategies.plans[drawn]
        if rows and PRESENT in batch:
            batch[PRESENT][row, [index for index, _ in rows]] = True
        present = self._split(rows, plan, rng)
        if not present:
            return drawn
        index = [p.index for p in present]
        input_alpha, target_alpha = plan.input_alpha[index], plan.target_alpha[index]
        input_caps = np.where(input_alpha > 0, self._input_caps(present, target_alpha > 0), 0)
        inputs = split_budget(self.config.input_tokens, _weights(input_alpha, rng), input_caps)
        target_caps = [len(p.target_run) if p.target_run is not None else len(p.tokens) - used
                       for p, used in zip(present, inputs)]
        target_caps = np.where(target_alpha > 0, target_caps, 0)
        targets = split_budget(self.config.target_tokens, _weights(target_alpha, rng), target_caps)
        enc = {"tokens": [], "position": []}
        dec = {"input": [], "target": [], "position": []}
        for item, n_in, n_tgt in zip(present, inputs, targets):
            if item.target_run is None:
                order = rng.permutation(len(item.tokens))
                enc_pos, dec_pos = np.sort(order[:n_in]), np.sort(order[n_in:n_in + n_tgt])
                enc["tokens"].append(item.tokens[enc_pos])
                dec["target"].append(item.tokens[dec_pos])
                dec["input"].append(np.zeros(n_tgt, np.int64))  # parallel targets: the model feeds its mask embedding
            else:
                enc_pos, dec_pos = np.arange(n_in), np.arange(n_tgt)
                enc["tokens"].append(item.tokens[:n_in])
                dec["target"].append(item.target_run[:n_tgt])
                dec["input"].append(np.concatenate([[SOS_ID], item.target_run[:n_tgt - 1]]) if n_tgt else dec_pos)
            enc["position"].append(enc_pos)
            dec["position"].append(dec_pos)
        n_enc, n_dec = sum(inputs), sum(targets)
        for name, pieces in enc.items():
            batch[f"enc_{name}"][row, :n_enc] = np.concatenate(pieces)
        for name, pieces in dec.items():
            batch[f"dec_{name}"][row, :n_dec] = np.concatenate(pieces)
        batch["enc_modality"][row, :n_enc] = np.repeat(index, inputs)
        batch["dec_modality"][row, :n_dec] = np.repeat(index, targets)
        batch["dec_causal"][row, :n_dec] = np.repeat([p.target_run is not None for p in present], targets)
        batch["enc_pad"][row, :n_enc] = False
        batch["dec_pad"][row, :n_dec] = False
        return drawn

    def _input_caps(self, present: list[_Present], can_target: np.ndarray) -> list[int]:
        """How many tokens of each modality the encoder may take. For a sample smaller than both budgets together
        (a 19-token series, a 14-column table row) a parallel modality that can be a target keeps back its share of
        the target budget: otherwise the input budget would hand all of it to the encoder and leave the decoder
        nothing to predict, and such modalities would never be trained on. Sequences are split into their two runs
        already."""
        budget_in, budget_out = self.config.input_tokens, self.config.target_tokens
        caps = [len(p.tokens) for p in present]
        available = sum(n + (len(p.target_run) if p.target_run is not None else 0) for p, n in zip(present, caps))
        if available >= budget_in + budget_out:
            return caps
        return [n - n * budget_out // (budget_in + budget_out) if p.target_run is None and target else n
                for p, n, target in zip(present, caps, can_target)]

    def _rows(self, sample: Mapping[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
        """The sample's non-empty modalities in table order, as (table index, row); a sequence's row without its
        EOS. Checks the rows against the table; draws nothing."""
        rows = []
        for index, row in sorted((self._index_of(name), row) for name, row in sample.items()):
            spec = self.table.specs[index]
            row = np.asarray(row, dtype=np.int64).reshape(-1)
            if len(row) and not 0 <= row.min() <= row.max() < spec.vocab_size:
                raise ValueError(f"{spec.name}: token ids {row.min()}..{row.max()} outside the run's vocabulary of "
                                 f"{spec.vocab_size} (a tokenizer larger than vocab_sizes.{spec.name}?)")
            if spec.grid is not None and len(row) not in (0, spec.max_tokens):
                raise ValueError(f"{spec.name}: a row of {len(row)} tokens, the run's table says {spec.max_tokens} "
                                 f"(a {spec.grid[0]}x{spec.grid[1]} grid)")
            if not spec.autoregressive and len(row) > spec.max_tokens:
                raise ValueError(f"{spec.name}: a row of {len(row)} tokens, the run's table allows {spec.max_tokens}")
            if spec.autoregressive and len(row) and row[-1] == EOS_ID:
                row = row[:-1]
            if len(row):
                rows.append((index, row))
        return rows

    def _split(self, rows: list[tuple[int, np.ndarray]], plan: StrategyPlan, rng: np.random.Generator
               ) -> list[_Present]:
        """The rows `plan` lets take part, ready to be split; sequences span-masked into their two runs (whole
        into the input when they cannot be a target, one span when they cannot be an input)."""
        present = []
        for index, row in rows:
            spec = self.table.specs[index]
            as_input, as_target = plan.input_alpha[index] > 0, plan.target_alpha[index] > 0
            if not (as_input or as_target):
                continue
            if not spec.autoregressive:
                present.append(_Present(index, spec, row, None))
                continue
            if as_input and as_target:
                ratio = rng.uniform(*self.config.span_mask_ratio)
            else:
                ratio = 0.0 if as_input else 1.0
            input_run, target_run = span_mask(row, ratio, self.config.span_mean_length, rng)
            # Positions index the runs; the model has max_tokens of them per modality.
            present.append(_Present(index, spec, input_run[:spec.max_tokens], target_run[:spec.max_tokens]))
        return present


def _weights(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dirichlet weights over the modalities with a positive concentration, 0 for the others."""
    live = alpha > 0
    weights = np.zeros(len(alpha))
    if live.any():
        weights[live] = _dirichlet(alpha[live], rng)
    return weights


def _dirichlet(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    weights = rng.dirichlet(alpha) if len(alpha) > 1 else np.ones(1)
    # Very small concentrations can underflow to all zeros or NaN; split evenly then rather than fail.
    return weights if np.all(np.isfinite(weights)) and weights.sum() > 0 else np.full(len(alpha), 1 / len(alpha))
