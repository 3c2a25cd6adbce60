"""Label-shard member bytes -> one token row per sample, for any tokenizer family.

This is what the preprocess tokenize stage calls, so data code never asks which family a modality uses: each
family registers how it turns its modality's members into ids (WordPiece: parse the record, write it as text in
the shared vocabulary, encode; neural families: read the array through their codec and run their encoder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pipeline.tokenizers.base import Tokenizer
from pipeline.tokenizers.neural import NeuralTokenizer
from pipeline.tokenizers.sequence import encode_records, get_serializer
from pipeline.tokenizers.text import TextTokenizer
from schemas.modalities import TokenizerFamily, get_modality

MemberEncoder = Callable[[Tokenizer, str, Sequence[bytes]], list[np.ndarray]]
NEURAL_BATCH = 64  # samples per forward pass of a neural tokenizer
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


def _neural(tokenizer: NeuralTokenizer, modality: str, payloads: Sequence[bytes]) -> list[np.ndarray]:
    if tokenizer.modality != get_modality(modality).name:
        raise ValueError(f"{tokenizer.tokenizer_id} was trained on {tokenizer.modality}, not {modality}")
    ids = np.zeros((0, tokenizer.tokens_per_sample), dtype=np.int32)
    for start in range(0, len(payloads), NEURAL_BATCH):
        batch = [tokenizer.read(p) for p in payloads[start:start + NEURAL_BATCH]]
        ids = np.concatenate([ids, tokenizer.encode(batch)])
    return list(ids)


MEMBER_ENCODERS[TokenizerFamily.WORDPIECE] = _wordpiece
for _family in (TokenizerFamily.IMAGE_VQ, TokenizerFamily.FEATURE_VQ, TokenizerFamily.GLOBAL_MLP):
    MEMBER_ENCODERS[_family] = _neural
