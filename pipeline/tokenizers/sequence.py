"""The one place where structured labels become text-like token runs in the shared WordPiece vocabulary.

4M-21 writes boxes, palettes, metadata (and poses) as text in the caption vocabulary, with quantised values spelled
as atomic value-bin tokens `v0=0` ... `v3=999` (four groups of 1000 bins; the group says which slot a value fills).
Each labelled modality has one `SequenceSerializer`, looked up by modality name in one registry:

    det            v0=x0 v1=y0 v2=x1 v3=y1 class words ...   (coordinates in 1000 bins of the image size)
    color_palette  v0=n v1=r v2=g v3=b ...                    (n colours, channels in 256 bins: exact)
    metadata       key v0=bin key v0=bin ...                  (per-key ranges in METADATA_KEYS)
    caption        the caption itself
    human_poses    v0=x0 v1=y0 v2=x1 v3=y1 v0=k v1=x v2=y ... (per person; pipeline/tokenizers/poses.py)

A serializer cuts a record into elements (one box, colour, key or word each) in priority order; when a record
does not fit the modality's `max_tokens` (EOS included), trailing elements are dropped whole, so a row never ends
inside a box or a key. Each `parse` inverts the serializer on decoded text, within quantisation error.
"""

from __future__ import annotations

import abc
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np

from schemas.labels import read_detections, read_palette
from schemas.modalities import TokenizerFamily, get_modality
from schemas.registry import Registry

if TYPE_CHECKING:
    from pipeline.tokenizers.text import TextTokenizer

VALUE_GROUPS = 4
VALUE_BINS = 1000
_VALUE_TOKEN = re.compile(r"^v([0-9])=([0-9]+)$")


def value_token(group: int, bin_index: int) -> str:
    """The atomic token for `bin_index` in value group `group`: `v2=17`."""
    if not (0 <= group < VALUE_GROUPS and 0 <= bin_index < VALUE_BINS):
        raise ValueError(f"value token v{group}={bin_index} is outside {VALUE_GROUPS} groups x {VALUE_BINS} bins")
    return f"v{group}={bin_index}"


def value_tokens() -> list[str]:
    """All value-bin tokens, group by group: their order fixes their ids in the vocabulary."""
    return [value_token(g, b) for g in range(VALUE_GROUPS) for b in range(VALUE_BINS)]


class Value(NamedTuple):
    group: int
    bin: int


def parse_value_token(token: str) -> Value | None:
    """(group, bin) of a value-bin token, or None for any other word."""
    match = _VALUE_TOKEN.match(token)
    if match is None:
        return None
    value = Value(int(match[1]), int(match[2]))
    return value if value.group < VALUE_GROUPS and value.bin < VALUE_BINS else None


def quantize(value: float, low: float, high: float, bins: int = VALUE_BINS) -> int:
    """The bin of `value` among `bins` equal bins over [low, high]; values outside are clipped, `high` is bins-1."""
    if not high > low or bins < 1:
        raise ValueError(f"quantize needs low < high and bins >= 1, got [{low}, {high}] with {bins} bins")
    if not math.isfinite(value):
        raise ValueError(f"cannot quantize {value!r}")
    return min(max(math.floor((value - low) / (high - low) * bins), 0), bins - 1)


def dequantize(bin_index: int, low: float, high: float, bins: int = VALUE_BINS) -> float:
    """The centre of bin `bin_index`: in-range values come back within half a bin width."""
    if not 0 <= bin_index < bins:
        raise ValueError(f"bin {bin_index} is outside [0, {bins})")
    return low + (bin_index + 0.5) * (high - low) / bins


@dataclass(frozen=True)
class ValueRange:
    """How one scalar is binned. Integer ranges dequantize to floor(bin centre), so unit-wide bins are exact."""

    low: float
    high: float
    bins: int = VALUE_BINS
    integer: bool = False

    @property
    def bin_width(self) -> float:
        return (self.high - self.low) / self.bins

    def quantize(self, value: float) -> int:
        return quantize(value, self.low, self.high, self.bins)

    def dequantize(self, bin_index: int) -> float | int:
        centre = dequantize(bin_index, self.low, self.high, self.bins)
        return math.floor(centre) if self.integer else centre


class SequenceSerializer(abc.ABC):
    """Turns one modality's label records into text in the shared vocabulary, and decoded text back."""

    modality: ClassVar[str]
    words: ClassVar[tuple[str, ...]] = ()  # fixed words it writes; kept atomic in the vocabulary (one id each)

    def read_payload(self, payload: bytes) -> Any:
        """A label-shard member's bytes -> the record `elements` takes (JSON unless overridden)."""
        return json.loads(payload)

    @abc.abstractmethod
    def elements(self, record: Any) -> list[str]:
        """Text runs, one per box / colour / key / word, in the order they are kept under truncation."""

    def join(self, elements: Sequence[str]) -> str:
        """The text of the kept elements. A header added here must have a token count independent of the count."""
        return " ".join(elements)

    @abc.abstractmethod
    def parse(self, text: str, image_size: tuple[int, int] | None = None) -> Any:
        """Decoded text -> a record like the labeler's. Malformed runs (from a model, say) are skipped."""

    def to_text(self, record: Any) -> str:
        return self.join(self.elements(record))


SERIALIZERS: Registry[SequenceSerializer] = Registry("sequence serializer")


def register_serializer(cls: type[SequenceSerializer]) -> type[SequenceSerializer]:
    modality = get_modality(cls.modality)
    if modality.name != cls.modality:
        raise ValueError(f"register {cls.__name__} under the modality's name {modality.name!r}, not an alias")
    if modality.tokenizer is not TokenizerFamily.WORDPIECE or modality.max_tokens is None:
        raise ValueError(f"modality {modality.name!r} is not a variable-length WordPiece sequence")
    SERIALIZERS.register(modality.name, cls())
    return cls


def get_serializer(modality: str) -> SequenceSerializer:
    """The serializer of a modality, by name or alias."""
    return SERIALIZERS.get(get_modality(modality).name)


def structure_words() -> tuple[str, ...]:
    """Every fixed word a serializer writes, sorted: reserved as atomic tokens when the vocabulary is trained."""
    return tuple(sorted({word for serializer in SERIALIZERS.values() for word in serializer.words}))


def kept_elements(counts: Sequence[int], overhead: int, budget: int) -> int:
    """How many leading elements fit in `budget` tokens when the header costs `overhead`."""
    used, kept = overhead, 0
    for count in counts:
        if used + count > budget:
            break
        used, kept = used + count, kept + 1
    return kept


def max_tokens(modality: str) -> int:
    """The modality registry's bound on a row of this modality, EOS included."""
    bound = get_modality(modality).max_tokens
    assert bound is not None, "register_serializer admits only modalities with max_tokens"
    return bound


def fit_texts(modality: str, records: Sequence[Any], tokenizer: TextTokenizer) -> list[str]:
    """Each record as text that fits the modality's `max_tokens` with EOS, dropping trailing elements whole."""
    serializer, budget = get_serializer(modality), max_tokens(modality) - 1
    per_record = [serializer.elements(record) for record in records]
    flat_counts = tokenizer.token_counts([element for elements in per_record for element in elements])
    overhead = int(tokenizer.token_counts([serializer.join([])])[0])
    texts, start = [], 0
    for elements in per_record:
        counts = flat_counts[start : start + len(elements)]
        start += len(elements)
        texts.append(serializer.join(elements[: kept_elements(counts, overhead, budget)]))
    return texts


def encode_records(modality: str, records: Sequence[Any], tokenizer: TextTokenizer) -> np.ndarray:
    """Label records of a WordPiece modality -> int32 ids (len(records), max_tokens), EOS-terminated, PAD-padded."""
    bound = max_tokens(modality)
    texts = fit_texts(modality, records, tokenizer)
    too_long = [t for t, n in zip(texts, tokenizer.token_counts(texts)) if n > bound - 1]
    if too_long:  # element counts add up by construction; only a header that grows with the count breaks that
        raise RuntimeError(f"{modality}: {len(too_long)} fitted texts exceed {bound} tokens, e.g. {too_long[0]!r}")
    return tokenizer.encode(texts, max_len=bound)


def decode_records(modality: str, ids: np.ndarray, tokenizer: TextTokenizer,
                   image_sizes: Sequence[tuple[int, int]] | None = None) -> list[Any]:
    """Rows of ids -> parsed records (the inverse of `encode_records`, within quantisation error)."""
    serializer = get_serializer(modality)
    texts = tokenizer.decode(ids)
    sizes = image_sizes if image_sizes is not None else [None] * len(texts)
    return [serializer.parse(text, size) for text, size in zip(texts, sizes, strict=True)]


def _words(text: str) -> list[Value | str]:
    """Whitespace-split words of decoded text, value-bin tokens parsed."""
    return [parse_value_token(word) or word for word in text.split()]


def _bins(words: Sequence[Value | str], start: int, groups: Sequence[int]) -> list[int] | None:
    """The bins of the value tokens at words[start:], if they are exactly of `groups`, in order."""
    run = words[start : start + len(groups)]
    values = [w for w in run if isinstance(w, Value)]
    if len(values) != len(groups) or [v.group for v in values] != list(groups):
        return None
    return [v.bin for v in values]


# --- the serializers ----------------------------------------------------------------------------------------------
COORDINATE_BINS = VALUE_BINS


@register_serializer
class BoxesSerializer(SequenceSerializer):
    """`det`: {"width", "height", "objects": [{"box": [x0, y0, x1, y1] in pixels, "class": name}, ...]}, or
    ml-4m's {"instances": [{"boxes", "class_name", "score"}, ...]} (schemas/labels.py; its threshold and order).

    Coordinates are binned relative to the image size (1000 bins per axis); objects keep the labeler's order,
    which is therefore their priority under truncation. Extra keys on objects (scores, ids) are not written.
    """

    modality = "det"

    def elements(self, record: dict) -> list[str]:
        if "instances" in record:  # ml-4m's record (schemas/labels.py): boxes are already fractions of the image
            width = height = 1.0
            objects = [{"box": d.box, "class": d.name} for d in read_detections(record)]
        else:
            width, height, objects = _positive(record, "width"), _positive(record, "height"), record["objects"]
        runs = []
        for obj in objects:
            x0, y0, x1, y1 = (float(v) for v in obj["box"])
            name = " ".join(str(obj["class"]).split())
            if not name or any(parse_value_token(word) for word in name.split()):
                raise ValueError(f"det: class name {obj['class']!r} is empty or looks like a value token")
            pairs = ((x0, width), (y0, height), (x1, width), (y1, height))
            coords = [value_token(g, quantize(v, 0, size, COORDINATE_BINS)) for g, (v, size) in enumerate(pairs)]
            runs.append(" ".join([*coords, name]))
        return runs

    def parse(self, text: str, image_size: tuple[int, int] | None = None) -> dict:
        if image_size is None:
            raise ValueError("det: parsing boxes needs the image size (width, height)")
        width, height = image_size
        words, objects, i = _words(text), [], 0
        while i < len(words):
            bins = _bins(words, i, (0, 1, 2, 3))
            if bins is None:
                i += 1
                continue
            i += 4
            name = []
            while i < len(words) and isinstance(words[i], str):
                name.append(str(words[i]))
                i += 1
            if name:
                sizes = (width, height, width, height)
                box = [dequantize(b, 0, size, COORDINATE_BINS) for b, size in zip(bins, sizes)]
                objects.append({"box": box, "class": " ".join(name)})
        return {"width": width, "height": height, "objects": objects}


CHANNEL_RANGE = ValueRange(0, 256, bins=256, integer=True)  # one bin per 8-bit level: colours round-trip exactly


@register_serializer
class PaletteSerializer(SequenceSerializer):
    """`color_palette`: Tessera's palette {"colors": [[r, g, b], ...], "fractions": [...]} -> `v0=n` then
    `v1=r v2=g v3=b` per colour. The member is the record ml-4m reads (schemas/labels.py), which holds it beside
    ml-4m's palettes of sizes 1-7.

    Colours are most frequent first (the labeler's order); fractions are not written, as in 4M-21, whose 23-token
    budget is exactly 7 colours: 1 + 3 x 7 + EOS.
    """

    modality = "color_palette"

    def elements(self, record: list | dict) -> list[str]:
        runs = []
        for color in read_palette(record).colors:
            if len(color) != 3:
                raise ValueError(f"color_palette: colour {color!r} is not [r, g, b]")
            runs.append(" ".join(value_token(g + 1, CHANNEL_RANGE.quantize(c)) for g, c in enumerate(color)))
        return runs

    def join(self, elements: Sequence[str]) -> str:
        return " ".join([value_token(0, len(elements)), *elements])

    def parse(self, text: str, image_size: tuple[int, int] | None = None) -> dict:
        words = _words(text)
        triples = (_bins(words, i, (1, 2, 3)) for i in range(len(words)))
        # A generated run can hold bins past the 256 a channel has: such a colour is malformed and skipped.
        return {"colors": [[CHANNEL_RANGE.dequantize(b) for b in bins] for bins in triples
                           if bins is not None and max(bins) < CHANNEL_RANGE.bins]}


# Every metadata key and how it is binned, in the order written (and kept under truncation). A labeler that
# writes a new key adds one row here (and its scale in schemas/labels.py); an unknown key is an error, never
# silently dropped. Values are on ml-4m's scales (schemas/labels.py); Tessera bins them finer: 1000 bins over the
# range the values can take, where ml-4m uses 50 over its clipping range.
METADATA_KEYS: dict[str, ValueRange] = {
    "original_width": ValueRange(0, 5000, integer=True),
    "original_height": ValueRange(0, 5000, integer=True),
    "caption_n_chars": ValueRange(0, 1000, integer=True),
    "caption_n_words": ValueRange(0, 1000, integer=True),
    "brightness": ValueRange(0.0, 255.0),  # 8-bit grey levels
    "contrast": ValueRange(0.0, 127.5),  # the largest standard deviation of 8-bit levels
    "saturation": ValueRange(0.0, 255.0),
    "colorfulness": ValueRange(0.0, 150.0),  # ml-4m's clipping point
    "entropy": ValueRange(0.0, 8.0),  # bits of an 8-bit grey histogram
}


@register_serializer
class MetadataSerializer(SequenceSerializer):
    """`metadata`: {key: value} -> `key v0=bin` per key present, in METADATA_KEYS order."""

    modality = "metadata"
    words = tuple(METADATA_KEYS)

    def elements(self, record: dict) -> list[str]:
        unknown = sorted(set(record) - set(METADATA_KEYS))
        if unknown:
            raise ValueError(f"metadata keys {unknown} have no value range; known keys: {list(METADATA_KEYS)}")
        return [f"{key} {value_token(0, METADATA_KEYS[key].quantize(float(record[key])))}"
                for key in METADATA_KEYS if key in record]

    def parse(self, text: str, image_size: tuple[int, int] | None = None) -> dict:
        words, record = _words(text), {}
        for key, value in zip(words, words[1:]):
            if isinstance(key, str) and key in METADATA_KEYS and isinstance(value, Value) and value.group == 0:
                record[key] = METADATA_KEYS[key].dequantize(value.bin)
        return record


@register_serializer
class CaptionSerializer(SequenceSerializer):
    """`caption`: the text itself, cut at word boundaries when it does not fit."""

    modality = "caption"

    def read_payload(self, payload: bytes) -> str:
        return payload.decode("utf-8")

    def elements(self, record: str) -> list[str]:
        return record.split()

    def parse(self, text: str, image_size: tuple[int, int] | None = None) -> str:
        return text


def _positive(record: dict, key: str) -> float:
    value = float(record[key])
    if not value > 0:
        raise ValueError(f"det: {key} must be positive, got {record[key]!r}")
    return value


# Serializers kept in their own modules register on import (after everything above exists: they import it).
from pipeline.tokenizers import poses  # noqa: E402,F401
