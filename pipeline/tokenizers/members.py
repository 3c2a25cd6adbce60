"""Label-shard member bytes -> one token row per sample, for any tokenizer family.

This is what the preprocess tokenize stage calls, so data code never asks which family a modality uses: each
family's class says how it turns its modality's members into ids (`Tokenizer.member_rows`: WordPiece parses the
record and writes it as text in the shared vocabulary; neural families read the array through their codec and run
their encoder). The family classes are the one tokenizer registry (`base.FAMILIES`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.tokenizers.base import Tokenizer
from schemas.modalities import get_modality


def encode_members(tokenizer: Tokenizer, modality: str, payloads: Sequence[bytes]) -> list[np.ndarray]:
    """Token rows (1-D, the modality's token dtype, no padding) for the members of one shard."""
    expected = get_modality(modality).tokenizer
    if tokenizer.family is not expected:
        raise ValueError(f"{modality} is tokenized by the {expected.value} family; "
                         f"{tokenizer.tokenizer_id} is {tokenizer.family.value}")
    dtype = get_modality(modality).token_dtype
    return [row.astype(dtype) for row in tokenizer.member_rows(modality, payloads)]
