"""Write one work unit's shards and commit it.

A unit becomes shard N (N = unit index) in every output folder, all holding the same keys in the same order. Each
tar is committed atomically, then the unit's record (its manifest rows and quarantine records) is committed last:
the record is what marks the unit done, so a crash anywhere before it simply makes a rerun redo the unit, which
writes the same bytes again.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

import numpy as np
import ray

from pipeline.data.decode import stored_crop_settings
from pipeline.data.encoding import encode_json, encode_npy
from pipeline.data.stages import Batch, ok_mask, payload_column
from pipeline.data.storage import Storage
from pipeline.data.tar_io import commit_shard
from schemas.keys import encode_key_hashes
from schemas.modalities import get_modality
from schemas.shards import (
    ANNOTATIONS_FOLDER,
    CROP_SETTINGS_FOLDER,
    SOURCE_FOLDER,
    QuarantineRecord,
    Reason,
    Stage,
    UnitRecord,
    member_name,
    shard_relpath,
    token_folder,
)

UNITS_DIR = "_units"
BASE_RUN = "base"


class AlignmentError(RuntimeError):
    """An added modality would not hold exactly the keys the output already has: writing it would misalign shards."""


@dataclass(frozen=True)
class WritePlan:
    """What one run writes. The base run writes every requested modality plus the aux folders and decides which
    samples exist; a later run that adds modalities writes only their folders, for exactly those samples."""

    run: str  # BASE_RUN, "add-<modalities>" or "tokenize-<modalities>"
    modalities: tuple[str, ...]
    kind: str = "label"  # label: raw samples -> label folders; tokenize: label folders -> tok_<modality> folders

    @property
    def is_base(self) -> bool:
        return self.run == BASE_RUN

    @property
    def folders(self) -> tuple[str, ...]:
        return tuple(token_folder(m) for m in self.modalities) if self.kind == "tokenize" else self.modalities

    @property
    def records_dir(self) -> str:
        return UNITS_DIR if self.is_base else f"{UNITS_DIR}/{self.run}"

    def record_path(self, index: int) -> str:
        return f"{self.records_dir}/unit-{index:06d}.json"

    def done(self, storage: Storage) -> set[int]:
        """Indices of the units this run has committed: one listing, not one request per unit (S3 bills both)."""
        committed = set(storage.list(self.records_dir))
        prefix = f"{self.records_dir}/unit-"
        names = (p[len(prefix) :] for p in committed if p.startswith(prefix))
        return {int(name.removesuffix(".json")) for name in names if "/" not in name}


def existing_keys(storage: Storage, index: int) -> list[str]:
    """Keys of shard `index` as the base run wrote them (from its small `source` tar)."""
    return source_keys(storage.read_bytes(source_relpath(index)))


def source_relpath(index: int) -> str:
    return shard_relpath(SOURCE_FOLDER, index)


def source_keys(payload: bytes) -> list[str]:
    """The keys a `source` shard holds, in order."""
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        return [name.split(".", 1)[0] for name in tar.getnames()]


def write_unit(batch: Batch, *, storage: Storage, plan: WritePlan, unit_label: dict[int, str]) -> Batch:
    """Ray Data stage: write the unit in `batch` and return a one-row summary: its record and where it ran."""
    if len(batch["unit"]) == 0:  # a unit with no members at all: the driver commits it empty at the end
        return {"unit": np.array([], dtype=np.int64), "record": np.array([], dtype=object),
                "node": np.array([], dtype=object), "refused": np.array([], dtype=object)}
    units = set(batch["unit"].tolist())
    if len(units) != 1 or len(batch["unit"]) != int(batch["unit_rows"][0]):
        # Should never happen (blocks are not split); if it does, writing would silently lose samples.
        raise RuntimeError(f"writer got a partial or mixed unit: units {sorted(units)}, {len(batch['unit'])} rows")
    (index,) = units
    # Where the unit ran, for the report (not in the record: a resumed run must not differ from a whole one).
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    try:
        record = commit_unit(storage, index, unit_label[index], batch, plan)
    except AlignmentError as exc:
        # Returned, not raised: Ray Data wraps an exception raised in a task into its own type and the driver could
        # no longer tell a refusal (one clear line for the user) from a crash. The driver raises it again.
        return {"unit": np.array([index]), "record": np.array([""], dtype=object),
                "node": np.array([node], dtype=object), "refused": np.array([str(exc)], dtype=object)}
    return {"unit": np.array([index]), "record": np.array([record.to_json().decode()], dtype=object),
            "node": np.array([node], dtype=object), "refused": np.array([""], dtype=object)}


def commit_unit(storage: Storage, index: int, label: str, batch: Batch | None, plan: WritePlan) -> UnitRecord:
    """Commit unit `index`: its shard in every folder of the plan, then its record. `batch` is None for a unit
    that had no readable members: its shards are then empty, so every shard number exists in every folder."""
    good = [] if batch is None else np.flatnonzero(ok_mask(batch)).tolist()
    keys = [batch["key"][i] for i in good]
    if not plan.is_base:
        _check_aligned(storage, index, keys, batch)
    folders: dict[str, tuple[str | None, str, list[bytes]]] = {}
    for modality in plan.modalities:
        payloads = [batch[payload_column(modality)][i] for i in good]
        folders[modality] = (modality, get_modality(modality).ext, payloads)
    if plan.is_base:
        folders[CROP_SETTINGS_FOLDER] = (None, "npy", [
            encode_npy(stored_crop_settings(batch["pixels"][i].shape[0])) for i in good
        ])
        folders[SOURCE_FOLDER] = (None, "json", [
            encode_json({"uri": batch["source_uri"][i], "key": batch["key"][i],
                         "crop": batch["crop"][i][:4].tolist()}) for i in good
        ])
        folders[ANNOTATIONS_FOLDER] = (None, "json", [batch["annotations"][i] for i in good])
    manifest = tuple(
        commit_shard(storage, folder, index, [(member_name(k, ext), p) for k, p in zip(keys, payloads)],
                     modality=modality, source_units=(label,))
        for folder, (modality, ext, payloads) in folders.items()
    )
    quarantined = () if batch is None or not plan.is_base else tuple(
        QuarantineRecord(batch["source_uri"][i], batch["key"][i], Stage(batch["stage"][i]), Reason(batch["reason"][i]),
                         batch["detail"][i])
        for i in range(len(batch["key"])) if batch["reason"][i] != ""
    )
    record = UnitRecord(unit=index, source=label, samples_in=len(keys) + len(quarantined), samples_written=len(keys),
                        manifest=manifest, quarantine=quarantined,
                        key_hashes=encode_key_hashes(keys) if plan.is_base else None)
    storage.write_atomic(plan.record_path(index), record.to_json())
    return record


def _check_aligned(storage: Storage, index: int, keys: list[str], batch: Batch | None) -> None:
    expected = existing_keys(storage, index)
    if keys == expected:
        return
    failed = [] if batch is None else [
        f"{batch['key'][i]} ({batch['reason'][i]}: {batch['detail'][i]})"
        for i in range(len(batch["key"])) if batch["reason"][i] != "" and batch["key"][i] in set(expected)
    ]
    raise AlignmentError(
        f"shard {index}: the added modalities cover {len(keys)} of the {len(expected)} existing samples"
        + (f"; failed: {'; '.join(failed[:5])}" if failed else "; the input changed since the first run")
    )
