"""Runs that size a modality's token table and head to its tokenizer (`PretrainConfig.vocab_sizes`): the size is
validated against the registry's bound, travels with the run's table into checkpoints (so evaluation builds the same
model), changes the parameter and FLOP counts, and an id beyond it is a clear error, not an index fault."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.masking import Masker
from pipeline.model import FourM, resolve
from pipeline.model.sizes import param_counts
from schemas.batch import ModalitySpec, ModalityTable
from schemas.config import ConfigError, load_config
from schemas.loading import MaskingConfig
from schemas.model import ModelConfig
from schemas.pretrain import PretrainConfig

MODEL = ModelConfig(size="custom", dim=16, encoder_depth=1, decoder_depth=1, heads=2)


def test_a_sized_table_round_trips_and_shrinks_the_model():
    sized = ModalityTable.of([ModalitySpec.from_registry("caption", 32, 4700),
                              ModalitySpec.from_registry("metadata", 19)])
    again = ModalityTable.from_json(sized.to_json())
    assert again == sized and again["caption"].vocab_size == 4700 and again["metadata"].vocab_size == 30_000
    # a table written before vocabularies could be sized has no "vocab": the registry's
    assert ModalityTable.from_json([{"name": "caption", "tokens": 32}])["caption"].vocab_size == 30_000
    model = FourM(MODEL, sized)
    assert model.heads[0].out_features == 4700
    counted = param_counts(resolve(MODEL), [4700, 30_000])["params_total"]
    assert sum(p.numel() for p in model.parameters()) == counted < param_counts(resolve(MODEL), [30_000] * 2)[
        "params_total"]


@pytest.mark.parametrize("sizes, message", [
    ({"caption": 40_000}, "above the registry's 30000"),
    ({"smell": 10}, "unknown modality 'smell'"),
    ({"caption": 0}, "greater than or equal to 1"),
])
def test_vocab_sizes_are_checked(sizes, message):
    overrides = [f"vocab_sizes={{{', '.join(f'{k}: {v}' for k, v in sizes.items())}}}"]
    with pytest.raises(ConfigError, match=message):
        load_config(PretrainConfig, None, overrides)


def test_an_id_beyond_the_sized_table_is_a_clear_error():
    table = ModalityTable.of([ModalitySpec.from_registry("caption", 32, 100)])
    masker = Masker(table, MaskingConfig(input_tokens=8, target_tokens=8))
    rng = np.random.default_rng(0)
    masker.batch([{"caption": np.array([[5, 6, 99, 3]])}], rng)  # inside: fine
    with pytest.raises(ValueError, match=r"caption: token ids 3\.\.100 outside the run's vocabulary of 100"):
        masker.batch([{"caption": np.array([[5, 6, 100, 3]])}], rng)
