"""The preprocess stages as plain functions and callable classes over Ray Data batches.

One batch is one work unit: the read stage turns a unit into a single block, and every later stage runs with
`batch_size=None` on a context whose blocks are never split (see pipeline.data.preprocess). That keeps a unit's
samples together and in source order all the way to the writer, which can then commit the unit's shards as a whole.

Rows carry a quarantine status: a sample rejected by any stage keeps flowing with `reason` set, so the writer sees
every input sample exactly once, either as a shard member or as a quarantine record.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.decode import DecodeError, decode_caption, decode_image, decode_metadata
from pipeline.data.encoding import encode_json
from pipeline.data.ground_truth import ground_truth_payload, member_ext
from pipeline.data.labelers import DecodedBatch, get_labeler
from pipeline.data.raw import RawReader
from pipeline.data.raw_units import read_raw_unit
from pipeline.data.readers import RawSample, WorkUnit, read_unit
from pipeline.data.storage import Storage
from schemas.common import StorageConfig
from schemas.preprocess import CaptionConfig, ImageConfig, LabelerConfig, ReaderConfig
from schemas.shards import Reason, Stage

Batch = dict[str, np.ndarray]
STATUS_COLUMNS = ("stage", "reason", "detail")


def payload_column(modality: str) -> str:
    return f"out_{modality}"


def ok_mask(batch: Batch) -> np.ndarray:
    return np.asarray([reason == "" for reason in batch["reason"]], dtype=bool)


def optional_bytes(value) -> bytes | None:
    """A column of bytes and Nones comes back from Arrow as NaN where every value was None."""
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None


def quarantine(batch: Batch, index: int, stage: Stage, reason: Reason, detail: str) -> None:
    batch["stage"][index], batch["reason"][index], batch["detail"][index] = stage.value, reason.value, detail[:1000]


# --- read ----------------------------------------------------------------------------------------------------------
def read_stage(units: Batch, *, storage: Storage, config: ReaderConfig, ground_truth: tuple[str, ...] = (),
               raw: RawReader | None = None) -> Batch:
    """One unit row in, all of that unit's samples and read-stage quarantine records out, in source order.
    `ground_truth` modalities are looked up among each sample's extra members (`<key>.depth.npy`, ...). With a
    `raw` plug-in the unit's files are read through it, and its member rides in the ground-truth column of its
    modality: the sample's own value, taken as it is."""
    (unit_json,) = units["unit"]
    unit = WorkUnit(**{k: tuple(v) if isinstance(v, list) else v for k, v in unit_json.items()})
    if raw is not None:
        ground_truth = (raw.modality,)
    columns = ("key", "source_uri", "image", "caption", "meta", *STATUS_COLUMNS, *map(ground_truth_column, ground_truth))
    rows: dict[str, list] = {c: [] for c in ("unit", *columns)}
    items = read_unit(storage, unit, config) if raw is None else read_raw_unit(storage, unit, config, raw)
    for item in items:
        if isinstance(item, RawSample):
            truths = [item.extras.get(member_ext(m)) for m in ground_truth]
            values = (item.key, item.source_uri, item.image, item.caption, item.meta, "", "", "", *truths)
        else:
            values = (item.source_key, item.source_uri, None, None, None, item.stage.value, item.reason.value,
                      item.detail, *(None for _ in ground_truth))
        for column, value in zip(columns, values):
            rows[column].append(value)
        rows["unit"].append(unit.index)
    batch = {column: np.array(values, dtype=object) for column, values in rows.items()}
    batch["unit"] = np.asarray(rows["unit"], dtype=np.int64)
    batch["unit_rows"] = np.full(len(rows["unit"]), len(rows["unit"]), dtype=np.int64)
    return batch


def ground_truth_column(modality: str) -> str:
    return f"gt_{modality}"


# --- decode (+ the cheap labelers, fused into the same task) --------------------------------------------------------
def decode_stage(
    batch: Batch, *, image: ImageConfig, caption: CaptionConfig, fused: dict[str, LabelerConfig],
    ground_truth: tuple[str, ...] = (), raw: str | None = None,
) -> Batch:
    """Image, caption, metadata and ground-truth members -> decoded columns, then the fused labelers. With a `raw`
    primary modality there is no image: its member (already parsed by its plug-in) goes to its payload column,
    and the pixel columns are empty (zero-sized crops), so the writer's layout stays the same."""
    if raw is not None:
        return _decode_raw(batch, raw=raw, caption=caption, fused=fused)
    n = len(batch["key"])
    pixels = np.zeros((n, image.resolution, image.resolution, 3), dtype=np.uint8)
    crops = np.zeros((n, 5), dtype=np.int32)
    captions, sizes, annotations = [""] * n, [(0, 0)] * n, [b"{}"] * n
    truths = {m: np.full(n, None, dtype=object) for m in ground_truth}
    for i in np.flatnonzero(ok_mask(batch)):
        try:
            pixels[i], crop, sizes[i] = decode_image(optional_bytes(batch["image"][i]), image)
            crops[i] = crop.as_array()[0]
            captions[i] = decode_caption(optional_bytes(batch["caption"][i]), caption)
            annotations[i] = encode_json(decode_metadata(optional_bytes(batch["meta"][i])))
            for modality in ground_truth:
                truths[modality][i] = ground_truth_payload(
                    modality, optional_bytes(batch[ground_truth_column(modality)][i]), crop, sizes[i],
                    image.resolution)
        except DecodeError as exc:
            quarantine(batch, i, Stage.DECODE, exc.reason, exc.detail)
    dropped = ("image", "caption", "meta", *map(ground_truth_column, ground_truth))
    out = {k: v for k, v in batch.items() if k not in dropped}
    out.update(pixels=pixels, crop=crops, caption=np.array(captions, dtype=object),
               orig_size=np.asarray(sizes, dtype=np.int64).reshape(n, 2),
               annotations=np.array(annotations, dtype=object))
    out.update({payload_column(m): column for m, column in truths.items()})
    for modality, labeler_config in fused.items():
        apply_labeler(out, get_labeler(modality)(labeler_config), labeler_config.batch_size)
    return out


def _decode_raw(batch: Batch, *, raw: str, caption: CaptionConfig, fused: dict[str, LabelerConfig]) -> Batch:
    n = len(batch["key"])
    captions = [""] * n
    for i in np.flatnonzero(ok_mask(batch)):
        try:
            captions[i] = decode_caption(optional_bytes(batch["caption"][i]), caption)
        except DecodeError as exc:
            quarantine(batch, i, Stage.DECODE, exc.reason, exc.detail)
    dropped = ("image", "caption", "meta", ground_truth_column(raw))
    out = {k: v for k, v in batch.items() if k not in dropped}
    out.update(pixels=np.zeros((n, 0, 0, 3), dtype=np.uint8), crop=np.zeros((n, 5), dtype=np.int32),
               caption=np.array(captions, dtype=object), orig_size=np.zeros((n, 2), dtype=np.int64),
               annotations=np.array([b"{}"] * n, dtype=object))
    out[payload_column(raw)] = np.array([optional_bytes(v) for v in batch[ground_truth_column(raw)]], dtype=object)
    for modality, labeler_config in fused.items():
        apply_labeler(out, get_labeler(modality)(labeler_config), labeler_config.batch_size)
    return out


def apply_labeler(batch: Batch, labeler, batch_size: int) -> None:
    """Run `labeler` over the batch's good rows in mini-batches; a failure quarantines only the samples it hit."""
    n = len(batch["key"])
    column = np.full(n, None, dtype=object)
    good = np.flatnonzero(ok_mask(batch))
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        try:
            payloads = labeler(_decoded(batch, chunk))
        except Exception:  # retry one by one so a single bad sample cannot sink its neighbours
            payloads = []
            for i in chunk:
                try:
                    payloads.extend(labeler(_decoded(batch, np.array([i]))))
                except Exception as exc:
                    payloads.append(None)
                    quarantine(batch, i, Stage.LABEL, Reason.LABEL_FAILED,
                               f"{labeler.modality}: {type(exc).__name__}: {exc}")
        for i, payload in zip(chunk, payloads):
            column[i] = payload
    batch[payload_column(labeler.modality)] = column


def _decoded(batch: Batch, index: np.ndarray) -> DecodedBatch:
    return DecodedBatch(
        images=batch["pixels"][index],
        captions=[batch["caption"][i] for i in index],
        original_sizes=[tuple(batch["orig_size"][i]) for i in index],
    )


class PooledLabelStage:
    """A labeler in its own Ray Data actor pool: built once per actor (weights loaded once), then fed whole units."""

    def __init__(self, modality: str, config: LabelerConfig, storage: StorageConfig):
        self.labeler = get_labeler(modality)(config, storage)
        self.batch_size = config.batch_size

    def __call__(self, batch: Batch) -> Batch:
        apply_labeler(batch, self.labeler, self.batch_size)
        return batch
