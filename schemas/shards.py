"""Shard layout, manifest and quarantine schemas.

Layout (ml-4m compatible): one folder per modality, `ROOT/<folder>/shard-000042.tar`, members `<key>.<ext>`.
Shard N of every folder holds the same keys in the same order, so ml-4m's loader (which zips the tars) and any
WebDataset reader can read them. Two auxiliary folders ride along with every output: `crop_settings` (the crop each
token row was made from) and `source` (where each sample came from).
"""

from __future__ import annotations

import enum
import re
import json
from dataclasses import asdict, dataclass

import pyarrow as pa

FORMAT_VERSION = 1
SHARD_DIGITS = 6
SHARD_PATTERN = re.compile(rf"^shard-(\d{{{SHARD_DIGITS}}})\.tar$")

MANIFEST_FILE = "manifest.parquet"
REPORT_FILE = "report.json"
QUARANTINE_DIR = "quarantine"

# <key>.npy, int32 (n_crops, 5): top, left, height, width, hflip of the crop each token row was made from, in the
# stored RGB's pixels (ml-4m's meaning): [[0, 0, side, side, 0]], since the stored RGB already is the crop.
CROP_SETTINGS_FOLDER = "crop_settings"
# <key>.json: {"uri": ..., "key": ..., "crop": [top, left, height, width]} of the raw sample, the crop in its pixels
SOURCE_FOLDER = "source"
# <key>.json: the raw sample's own JSON (img2dataset metadata, the sample corpus's objects), {} when it had none.
# Evaluation reads its per-sample annotations (object classes, counts) from here.
ANNOTATIONS_FOLDER = "annotations"
AUX_FOLDERS = (CROP_SETTINGS_FOLDER, SOURCE_FOLDER, ANNOTATIONS_FOLDER)


def shard_name(index: int) -> str:
    if not 0 <= index < 10**SHARD_DIGITS:
        raise ValueError(f"shard index {index} outside 0..{10**SHARD_DIGITS - 1}")
    return f"shard-{index:0{SHARD_DIGITS}d}.tar"


def shard_index(name: str) -> int:
    """Inverse of shard_name; raises ValueError for anything else."""
    match = SHARD_PATTERN.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a shard name like {shard_name(42)!r}")
    return int(match.group(1))


def token_folder(modality: str) -> str:
    """Folder of a modality's token arrays, beside its label folder (ml-4m names them `tok_<modality>`)."""
    return f"tok_{modality}"


def shard_relpath(folder: str, index: int) -> str:
    """Path of a shard relative to the output root; always '/'-separated so it works for s3:// too."""
    return f"{folder}/{shard_name(index)}"


def member_name(key: str, ext: str) -> str:
    return f"{key}.{ext}"


def braceexpand_pattern(root: str, folders: list[str], num_shards: int) -> str:
    """The brace pattern ml-4m and WebDataset accept, e.g. ROOT/[rgb,caption]/shard-{000000..000009}.tar."""
    names = folders[0] if len(folders) == 1 else "[" + ",".join(folders) + "]"
    last = f"{num_shards - 1:0{SHARD_DIGITS}d}"
    return f"{root.rstrip('/')}/{names}/shard-{{{0:0{SHARD_DIGITS}d}..{last}}}.tar"


# --- manifest ------------------------------------------------------------------------------------------------------
# One row per (folder, shard). Writers commit a shard atomically, then append its row; readers trust the manifest,
# never a directory listing, so a half-written or stray file is never read.
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("folder", pa.string(), nullable=False),  # modality, tok_<modality> or an aux folder
        pa.field("modality", pa.string(), nullable=True),  # null for aux folders
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),  # relative to the output root
        pa.field("samples", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("token_count", pa.int64(), nullable=True),  # null for untokenized folders
        # Tokens in the shard's longest row: what the training side sizes its ModalityTable from. Null for
        # untokenized folders; absent from manifests written before it existed (readers treat that as null).
        pa.field("longest_row", pa.int64(), nullable=True),
        pa.field("tokenizer_id", pa.string(), nullable=True),
        pa.field("tokenizer_hash", pa.string(), nullable=True),
        pa.field("source_units", pa.list_(pa.string()), nullable=False),
        pa.field("format_version", pa.int32(), nullable=False),
    ],
    metadata={"tessera.format_version": str(FORMAT_VERSION)},
)


@dataclass(frozen=True, slots=True)  # slots: a reader may hold 10^6 rows of a folder; no __dict__ per row
class ManifestRow:
    """One manifest row: a committed shard of one folder (see MANIFEST_SCHEMA for what each field holds)."""

    folder: str
    modality: str | None
    shard: int
    uri: str
    samples: int
    bytes: int
    sha256: str
    source_units: tuple[str, ...]
    token_count: int | None = None
    tokenizer_id: str | None = None
    tokenizer_hash: str | None = None
    longest_row: int | None = None
    format_version: int = FORMAT_VERSION

    def as_dict(self) -> dict:
        return {**asdict(self), "source_units": list(self.source_units)}

    @classmethod
    def from_dict(cls, row: dict) -> ManifestRow:
        """A row as the manifest table or a unit record holds it; a column the row predates takes its default."""
        return cls(**{**row, "source_units": tuple(row["source_units"])})


# --- quarantine ----------------------------------------------------------------------------------------------------
class Stage(str, enum.Enum):
    READ = "read"
    DECODE = "decode"
    LABEL = "label"
    TOKENIZE = "tokenize"
    WRITE = "write"


class Reason(str, enum.Enum):
    """Why a sample was rejected; reports count samples per reason, so reasons are a closed set."""

    UNSAFE_MEMBER = "unsafe_member"  # absolute path, '..', link or device in a tar
    TRUNCATED = "truncated"  # the archive ends mid-member
    UNREADABLE = "unreadable"  # the source could not be read at all
    INVALID_KEY = "invalid_key"
    DUPLICATE_KEY = "duplicate_key"
    MISSING_IMAGE = "missing_image"
    BAD_IMAGE = "bad_image"  # not decodable
    DECOMPRESSION_BOMB = "decompression_bomb"
    IMAGE_TOO_SMALL = "image_too_small"
    BAD_CAPTION = "bad_caption"  # not UTF-8, empty or too long
    BAD_METADATA = "bad_metadata"  # JSON that does not parse strictly
    MISSING_GROUND_TRUTH = "missing_ground_truth"  # a modality taken from the corpus, absent for this sample
    BAD_GROUND_TRUTH = "bad_ground_truth"  # present but undecodable, or not the image's size
    BAD_RAW = "bad_raw"  # a signal, table or graph file that does not parse as its modality or breaks a limit
    LABEL_FAILED = "label_failed"
    TOKENIZE_FAILED = "tokenize_failed"


QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("source_key", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),  # the human-readable why: exception text, limits hit
    ],
    metadata={"tessera.format_version": str(FORMAT_VERSION)},
)


@dataclass(frozen=True)
class QuarantineRecord:
    source_uri: str
    source_key: str
    stage: Stage
    reason: Reason
    detail: str = ""

    def as_row(self) -> dict[str, str]:
        return {
            "source_uri": self.source_uri,
            "source_key": self.source_key,
            "stage": self.stage.value,
            "reason": self.reason.value,
            "detail": self.detail[:1000],
        }


    @classmethod
    def from_row(cls, row: dict[str, str]) -> QuarantineRecord:
        return cls(row["source_uri"], row["source_key"], Stage(row["stage"]), Reason(row["reason"]), row["detail"])


# --- unit records --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnitRecord:
    """What one run committed for one work unit (`_units/.../unit-N.json`), written after the unit's shards.

    Its existence marks the unit done; the job's end merges every record into the manifest, the quarantine table and
    the report. It holds nothing about where or when the unit ran, so a resumed run writes the same bytes as a whole
    one.
    """

    unit: int
    source: str  # the input unit's label, or "shard N" for a tokenize run
    samples_in: int
    samples_written: int
    manifest: tuple[ManifestRow, ...]
    quarantine: tuple[QuarantineRecord, ...] = ()
    # The base run's keys as 64-bit hashes (schemas/keys.py:encode_key_hashes), so that the job's end checks keys
    # across units from the records alone; None in other runs' records and in records from before the field.
    key_hashes: str | None = None

    def to_json(self) -> bytes:
        fields = {"unit": self.unit, "source": self.source, "samples_in": self.samples_in,
                  "samples_written": self.samples_written, "manifest": [r.as_dict() for r in self.manifest],
                  "quarantine": [q.as_row() for q in self.quarantine]}
        if self.key_hashes is not None:  # absent otherwise: an older record reads and writes back the same bytes
            fields["key_hashes"] = self.key_hashes
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def from_json(cls, payload: bytes | str) -> UnitRecord:
        record = json.loads(payload)
        return cls(record["unit"], record["source"], record["samples_in"], record["samples_written"],
                   tuple(ManifestRow.from_dict(row) for row in record["manifest"]),
                   tuple(QuarantineRecord.from_row(row) for row in record["quarantine"]), record.get("key_hashes"))
