"""A masking config's strategies over one run's modality table, and the per-sample draw of one of them.

Each strategy becomes two rows of Dirichlet concentrations over the table's modalities, one for the input budget and
one for the target budget (0: the modality never takes that side). The plain `alpha` Dirichlet of the config is the
last row, named `PLAIN_STRATEGY`: every sample's strategy when the config has no mixture, and the fallback of a
mixture for a sample no strategy fits.

The draw (4M-21 samples one `alphas_mixture` column per sample by `sampling_weights`, as here): with two or more
strategies, each sample takes one uniform number from the masking Generator, so equal seeds give equal batches and
the loader, which saves that Generator's state, resumes exactly; with one or none, nothing is drawn, and a config
without a mixture gives the batches it gave before mixtures existed.

A strategy fits a sample when some modality the sample has can be an input under it and some can be a target; the
draw is among the strategies that fit, in proportion to their weights (a text-only sample in a mixture with
rgb -> all spreads that strategy's share over the others). When none fits (say a caption-only sample in a mixture
of rgb -> all and caption-biased alone), the plain Dirichlet masks it, so no sample is left with targets and no
inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.batch import ModalityTable
from schemas.loading import PLAIN_STRATEGY, MaskingConfig


@dataclass(frozen=True)
class StrategyPlan:
    """One strategy's concentrations over the run's table (index = table index)."""

    name: str
    input_alpha: np.ndarray  # (M,) float, 0 = never an input
    target_alpha: np.ndarray  # (M,) float, 0 = never a target


class StrategyMixture:
    """The config's strategies as `StrategyPlan`s, the plain Dirichlet last; `draw` picks one per sample."""

    def __init__(self, table: ModalityTable, config: MaskingConfig):
        config.check_modalities(table.names)
        plain = np.array([config.alpha_of(name) for name in table.names], dtype=float)
        self.plans = (*(StrategyPlan(s.name, np.array([s.input_alpha_of(name) for name in table.names]),
                                     np.array([s.target_alpha_of(name) for name in table.names]))
                        for s in config.mixture),
                      StrategyPlan(PLAIN_STRATEGY, plain, plain))
        self.weights = np.array([s.weight for s in config.mixture], dtype=float)
        # Which modalities each strategy lets take each side, to find the strategies that fit a sample.
        mixture = self.plans[:-1]
        self._can_input = np.stack([p.input_alpha > 0 for p in mixture]) if mixture else None
        self._can_target = np.stack([p.target_alpha > 0 for p in mixture]) if mixture else None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.plans)

    @property
    def plain(self) -> int:
        """Index of the plain Dirichlet in `plans` (and `names`)."""
        return len(self.plans) - 1

    def draw(self, present: list[int], rng: np.random.Generator) -> int:
        """The index of the plan that masks a sample with tokens of the table modalities `present`."""
        if self._can_input is None:
            return self.plain
        fits = self._can_input[:, present].any(axis=1) & self._can_target[:, present].any(axis=1)
        if len(fits) == 1:  # nothing to choose: no draw, so one strategy with the plain alphas is the plain masking
            return 0 if fits[0] else self.plain
        u = rng.random()
        weights = np.where(fits, self.weights, 0.0)
        total = weights.sum()
        if total == 0:
            return self.plain
        # side="right" never lands on a zero weight; the bound guards u * total rounding up to total.
        index = int(np.searchsorted(np.cumsum(weights), u * total, side="right"))
        return min(index, int(np.flatnonzero(weights)[-1]))
