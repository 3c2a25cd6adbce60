"""Per-family tokenizers: each turns one kind of modality into discrete tokens, and back.

`base` is the interface they share (encode/decode, vocab size, files + content hash, save/load); `text` is the
shared WordPiece vocabulary of captions and text-like modalities; `sequence` writes structured labels (boxes,
palettes, metadata) as text in that vocabulary. Importing this package registers every family.
"""

from pipeline.tokenizers.base import Tokenizer, TokenizerConfig, load_tokenizer, tokenizer_from_files
from pipeline.tokenizers.members import encode_members
from pipeline.tokenizers.sequence import (
    decode_records,
    dequantize,
    encode_records,
    get_serializer,
    quantize,
)
from pipeline.tokenizers.text import TextTokenizer, train_wordpiece

__all__ = [
    "TextTokenizer",
    "Tokenizer",
    "TokenizerConfig",
    "decode_records",
    "dequantize",
    "encode_members",
    "encode_records",
    "get_serializer",
    "load_tokenizer",
    "quantize",
    "tokenizer_from_files",
    "train_wordpiece",
]
