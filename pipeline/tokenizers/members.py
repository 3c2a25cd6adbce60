"""Label-shard member bytes -> one token row per sample, for any tokenizer family.

This is what the preprocess tokenize stage calls, so data code never asks which family a modality uses: each
family registers how it turns its modality's members into ids (WordPiece: parse the record, write it as text in
the shared vocabulary, encode; image families will decode pixels and run their encoder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pipeline.tokenizers.base import Tokenizer
from pipeline.tokenizers.sequence import encode_records, get_serializer
from pipeline.tokenizers.text import TextTokenizer
from schemas.modalities import TokenizerFamily, get_modality

MemberEncoder = Callable[[Tokenizer, str, Sequence[bytes]], list[np.ndarray]]
MEMBER_ENCODERS: dict[TokenizerFamily, MemberEncoder] = {}


def encode_members(tokenizer: Tokenizer, modality: str, payloads: Sequence[bytes]) -> list[np.ndarray]:
    """Token rows (1-D, the modality's token dtype, no padding) for the members of one shard."""
    expected = get_modality(modality).tokenizer
    if tokenizer.family is not expected:
        raise ValueError(f"{modality} is tokenized by the {expected.value} family; "
                         f"{tokenizer.tokenizer_id} is {tokenizer.family.value}")
    if tokenizer.family not in MEMBER_ENCODERS:
        raise NotImplementedError(f"no tokenize stage for the {tokenizer.family.value} family yet")
    dtype = get_modality(modality).token_dtype
    return [row.astype(dtype) for row in MEMBER_ENCODERS[tokenizer.family](tokenizer, modality, payloads)]


def _wordpiece(tokenizer: TextTokenizer, modality: str, payloads: Sequence[bytes]) -> list[np.ndarray]:
    serializer = get_serializer(modality)
    if not payloads:
        return []
    ids = encode_records(modality, [serializer.read_payload(p) for p in payloads], tokenizer)
    return [row[row != tokenizer.pad_id] for row in ids]  # PAD only ever trails: rows are stored at their own length


MEMBER_ENCODERS[TokenizerFamily.WORDPIECE] = _wordpiece
