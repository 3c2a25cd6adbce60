"""Per-family tokenizers: each turns one kind of modality into discrete tokens, and back.

`base` is the interface they share (encode/decode, vocab size, files + content hash, save/load); `text` is the
shared WordPiece vocabulary of captions and text-like modalities; `sequence` writes structured labels (boxes,
palettes, metadata) as text in that vocabulary; `image` (image-like and feature maps) and `global_mlp` (global
embeddings) are the neural families, built on `neural`, `quantizers` (FSQ, VQ) and `codecs` (what each kind of
label value looks like to a network), trained with `fit`. Importing this package registers every family.
"""

from pipeline.tokenizers.base import Tokenizer, TokenizerConfig, load_tokenizer, tokenizer_from_files
from pipeline.tokenizers.global_mlp import GlobalEmbeddingTokenizer
from pipeline.tokenizers.graph import GraphTokenizer
from pipeline.tokenizers.image import FeatureMapTokenizer, ImageTokenizer
from pipeline.tokenizers.instances import InstanceMaskTokenizer
from pipeline.tokenizers.members import encode_members
from pipeline.tokenizers.neural import NeuralTokenizer
from pipeline.tokenizers.signal import SignalTokenizer
from pipeline.tokenizers.sequence import (
    decode_records,
    dequantize,
    encode_records,
    get_serializer,
    quantize,
)
from pipeline.tokenizers.table import TableTokenizer
from pipeline.tokenizers.text import TextTokenizer, train_wordpiece

__all__ = [
    "FeatureMapTokenizer",
    "GlobalEmbeddingTokenizer",
    "GraphTokenizer",
    "ImageTokenizer",
    "InstanceMaskTokenizer",
    "NeuralTokenizer",
    "TableTokenizer",
    "SignalTokenizer",
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
