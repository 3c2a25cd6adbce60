"""The shared WordPiece vocabulary of captions and every text-like modality (4M-21: ~30k tokens).

Ids are fixed for the reserved tokens and learned after them:

    0 [PAD]   1 [UNK]   2 [SOS]   3 [EOS]   4..203 [S_0]..[S_199] (sentinels for span masking)
    204..4203 v0=0..v3=999 (value bins, see sequence.py)   then the serializers' fixed words (metadata keys),
    then the alphabet and the learned word pieces.

Reserved tokens are atomic: the pre-tokenizer never splits `v0=123` or `[S_7]`. Value bins and structure words
are ordinary (non-special) tokens, so any decoder keeps them; PAD, UNK, SOS, EOS and sentinels are special.
Text is normalised BERT-style (lowercase, accents stripped) and split on whitespace and punctuation.

`tokenizer.json` appends [EOS] to every encoding (Tessera's rows are EOS-terminated). apple/ml-4m's masking
appends [EOS] itself after `Tokenizer.encode`, so the same vocabulary is saved beside as `tokenizer_ml4m.json`,
without that post-processor: give ml-4m that file (its `text_tokenizer_path`). The ids of PAD, EOS, the
sentinels and the value bins are those of ml-4m's own 30k vocabulary (0, 3, 4..203, 204..4203).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pydantic import Field
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import WordPiece

from pipeline.tokenizers.base import Tokenizer, TokenizerConfig, register_family
from pipeline.tokenizers.sequence import (
    VALUE_BINS,
    VALUE_GROUPS,
    encode_records,
    get_serializer,
    structure_words,
    value_tokens,
)
from schemas.config import ConfigModel
from schemas.modalities import SHARED_TEXT_VOCAB, TokenizerFamily

PAD, UNK, SOS, EOS = "[PAD]", "[UNK]", "[SOS]", "[EOS]"
NUM_SENTINELS = 200
TOKENIZER_FILE = "tokenizer.json"
ML4M_TOKENIZER_FILE = "tokenizer_ml4m.json"  # the same vocabulary for ml-4m: no [EOS] appended on encode
SUBWORD_PREFIX = "##"
# Characters outside the alphabet become [UNK]; extend it for other scripts. Text is lowercased first.
ASCII_ALPHABET = string.ascii_lowercase + string.digits + string.punctuation


def sentinel_token(index: int) -> str:
    if not 0 <= index < NUM_SENTINELS:
        raise ValueError(f"sentinel {index} is outside [0, {NUM_SENTINELS})")
    return f"[S_{index}]"


class WordPieceSettings(ConfigModel):
    """How the vocabulary was trained; stored in tessera.json so a tokenizer says what it is."""

    requested_vocab_size: int = Field(gt=0)
    min_frequency: int = Field(ge=0)
    alphabet: str = Field(min_length=1)
    num_sentinels: int = NUM_SENTINELS
    value_groups: int = VALUE_GROUPS
    value_bins: int = VALUE_BINS
    structure_words: tuple[str, ...] = ()


def special_tokens() -> list[str]:
    return [PAD, UNK, SOS, EOS, *(sentinel_token(i) for i in range(NUM_SENTINELS))]


def corpus_alphabet(texts: Iterable[str], min_count: int = 1) -> str:
    """ASCII plus every character the normalised corpus uses at least `min_count` times (CJK, Greek, emoji...),
    sorted, so the alphabet is a function of the corpus alone."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    counts: dict[str, int] = {}
    for text in texts:
        for char in normalizer.normalize_str(text):
            if not char.isspace():
                counts[char] = counts.get(char, 0) + 1
    return "".join(sorted(set(ASCII_ALPHABET) | {c for c, n in counts.items() if n >= min_count}))


def train_wordpiece(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
                    alphabet: str | None = None, name: str = "shared_text") -> TextTokenizer:
    """Train the shared vocabulary on `texts`; equal inputs give byte-identical files and content hash.

    `vocab_size` counts every token, reserved ones included; a small corpus may stop below it. Feed captions and,
    if the corpus has them, serialized structured labels (class names then get their own pieces). `alphabet`
    defaults to ASCII plus the characters of the corpus (`corpus_alphabet`), so unicode text round-trips.
    """
    texts = list(texts)
    alphabet = corpus_alphabet(texts) if alphabet is None else alphabet
    words = structure_words()
    reserved = [*special_tokens(), *value_tokens(), *words]
    # HF's trainer creates each `##c` piece when it first meets it while iterating a hash map, so ids, and through
    # merge tie-breaking the vocabulary itself, change from run to run (huggingface/tokenizers#1794). Reserving
    # every `##c` of a fixed alphabet up front, and dropping characters outside it, removes that order dependence.
    alphabet = "".join(sorted(set(alphabet.lower())))
    seeds = [SUBWORD_PREFIX + c for c in alphabet]
    minimum = len(reserved) + 2 * len(alphabet)
    if not minimum <= vocab_size <= SHARED_TEXT_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} must be in [{minimum}, {SHARED_TEXT_VOCAB}]: reserved tokens and "
                         f"the alphabet need {minimum}, the modality registry allows {SHARED_TEXT_VOCAB}")
    hf = HFTokenizer(WordPiece(unk_token=UNK, continuing_subword_prefix=SUBWORD_PREFIX))
    hf.normalizer = normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix=SUBWORD_PREFIX, cleanup=False)  # HF's cleanup rewrites "do not"
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=[AddedToken(t, single_word=True, normalized=False) for t in [*reserved, *seeds]],
        initial_alphabet=list(alphabet), limit_alphabet=len(alphabet), continuing_subword_prefix=SUBWORD_PREFIX,
    )
    hf.train_from_iterator(texts, trainer)
    hf.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, reserved.index(EOS))])

    # The trainer registers all its special tokens as special added tokens: keep only the reserved ones (the seeds
    # stay in the model's vocabulary as ordinary pieces) and make value bins and structure words non-special.
    spec = json.loads(hf.to_str())
    special = set(special_tokens())
    spec["added_tokens"] = [{**t, "special": t["content"] in special} for t in spec["added_tokens"]
                            if t["content"] not in set(seeds)]
    tokenizer_json = HFTokenizer.from_str(json.dumps(spec)).to_str(pretty=True).encode("utf-8")
    settings = WordPieceSettings(requested_vocab_size=vocab_size, min_frequency=min_frequency, alphabet=alphabet,
                                 structure_words=words)
    config = TokenizerConfig(family=TokenizerFamily.WORDPIECE, tokenizer_id=f"wordpiece/{name}",
                             vocab_size=hf.get_vocab_size(with_added_tokens=True),
                             files=(TOKENIZER_FILE, ML4M_TOKENIZER_FILE),
                             settings=settings.model_dump(mode="json"))
    return TextTokenizer(config, tokenizer_json)


def without_eos(tokenizer_json: bytes) -> bytes:
    """The HF tokenizer file with no post-processor: `encode` returns the text's tokens only, as ml-4m expects."""
    spec = json.loads(tokenizer_json)
    spec["post_processor"] = None
    return HFTokenizer.from_str(json.dumps(spec)).to_str(pretty=True).encode("utf-8")


# WordPiece loses the spacing around punctuation; decoding puts it back by fixed English rules: no space before
# closing punctuation, none after "(", none around hyphens, apostrophes and slashes, none inside "3.5".
_CJK = "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
_SPACING_RULES = [
    (re.compile(r" ([.,;:!?%)])"), r"\1"),
    (re.compile(r"\( "), "("),
    (re.compile(r" ?([-'/]) ?"), r"\1"),
    (re.compile(r"(\d)\. (\d)"), r"\1.\2"),
    # The BERT normaliser splits CJK ideographs and kana into one word each; those scripts write no spaces.
    (re.compile(f"(?<={_CJK}) (?={_CJK})"), ""),
]


def restore_spacing(text: str) -> str:
    for pattern, replacement in _SPACING_RULES:
        text = pattern.sub(replacement, text)
    return text


@register_family
class TextTokenizer(Tokenizer):
    """A trained shared vocabulary: `tokenizer.json` (HF tokenizers, loadable on its own) plus tessera.json."""

    family = TokenizerFamily.WORDPIECE

    def __init__(self, config: TokenizerConfig, tokenizer_json: bytes):
        super().__init__(config)
        self.settings = WordPieceSettings.model_validate(config.settings)
        self._tokenizer_json = tokenizer_json
        self._hf = HFTokenizer.from_str(tokenizer_json.decode("utf-8"))
        if self._hf.get_vocab_size(with_added_tokens=True) != config.vocab_size:
            raise ValueError(f"{config.tokenizer_id}: {TOKENIZER_FILE} holds {self._hf.get_vocab_size()} tokens, "
                             f"the config says {config.vocab_size}")
        self.pad_id, self.unk_id, self.sos_id, self.eos_id = (self.token_id(t) for t in (PAD, UNK, SOS, EOS))

    @property
    def tokens_per_sample(self) -> None:
        return None  # variable length; each modality's `max_tokens` bounds it

    def token_id(self, token: str) -> int:
        """Id of one whole token (`[S_3]`, `v1=42`, `circle`); unknown tokens are an error, not [UNK]."""
        token_id = self._hf.token_to_id(token)
        if token_id is None:
            raise KeyError(f"{token!r} is not a token of {self.tokenizer_id}")
        return token_id

    def sentinel_id(self, index: int) -> int:
        return self.token_id(sentinel_token(index))

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens per text, EOS not counted."""
        encodings = self._hf.encode_batch(list(texts), add_special_tokens=False)
        return np.array([len(e.ids) for e in encodings], dtype=np.int64)

    def encode(self, batch: Sequence[str], max_len: int | None = None) -> np.ndarray:
        """Texts -> int32 ids (len(batch), max_len): tokens, EOS, then PAD.

        Truncation: a text longer than max_len - 1 tokens keeps its first max_len - 1, and EOS still closes the
        row. Structured modalities go through sequence.encode_records, which drops whole elements instead.
        """
        if max_len is None or max_len < 1:
            raise ValueError(f"max_len must be a positive token count, got {max_len!r}")
        rows = np.full((len(batch), max_len), self.pad_id, dtype=np.int32)
        for row, encoding in zip(rows, self._hf.encode_batch(list(batch), add_special_tokens=True)):
            ids = encoding.ids if len(encoding.ids) <= max_len else [*encoding.ids[: max_len - 1], self.eos_id]
            row[: len(ids)] = ids
        return rows

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """Rows of ids -> texts (lowercased, spacing restored); each row ends at its first EOS, PAD is dropped.
        Sentinels and value bins are kept, so span-masked and structured rows decode to parseable text."""
        texts = []
        for row in ids:
            row = [int(i) for i in row]
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            text = self._hf.decode([i for i in row if i != self.pad_id], skip_special_tokens=False)
            texts.append(restore_spacing(text))
        return texts

    def member_rows(self, modality: str, payloads: Sequence[bytes]) -> list[np.ndarray]:
        """Parse each record, write it as text in the shared vocabulary (sequence.py), encode."""
        serializer = get_serializer(modality)
        if not payloads:
            return []
        ids = encode_records(modality, [serializer.read_payload(p) for p in payloads], self)
        return [row[row != self.pad_id] for row in ids]  # PAD only ever trails: rows are stored at their own length

    def payload_files(self) -> dict[str, bytes]:
        # Tokenizers saved before the ml-4m variant existed list only tokenizer.json; their identity stays the same.
        files = {TOKENIZER_FILE: self._tokenizer_json, ML4M_TOKENIZER_FILE: without_eos(self._tokenizer_json)}
        return {name: data for name, data in files.items() if name in self.config.files}

    @classmethod
    def from_payload(cls, config: TokenizerConfig, files: Mapping[str, bytes]) -> TextTokenizer:
        tokenizer = cls(config, files[TOKENIZER_FILE])
        ml4m = files.get(ML4M_TOKENIZER_FILE)
        if ml4m is not None and ml4m != tokenizer.payload_files()[ML4M_TOKENIZER_FILE]:
            raise ValueError(f"{config.tokenizer_id}: {ML4M_TOKENIZER_FILE} is not {TOKENIZER_FILE} without [EOS]")
        return tokenizer
