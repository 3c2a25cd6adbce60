"""The preprocess job: raw corpus -> label shards, as one Ray Data pipeline.

    units --read--> samples --decode + cheap labelers--> [model labeler pools] --write--> shards + unit records

Work units come from the sorted input listing; unit N becomes shard N in every output folder. A unit is done when
its record exists under `_units/`; a rerun skips done units, so a crash at any point costs only the units in flight,
and an uninterrupted run and a resumed one write the same bytes. At the end the unit records are merged into
`manifest.parquet`, `quarantine/quarantine.parquet` and `report.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from pipeline.data.readers import WorkUnit, list_units
from pipeline.data.shard_writer import BASE_RUN, UNITS_DIR, WritePlan, commit_unit, write_unit
from pipeline.data.stages import Batch, PooledLabelStage, decode_stage, read_stage
from pipeline.data.storage import Storage
from schemas.preprocess import LabelerConfig, PreprocessConfig
from schemas.shards import (
    AUX_FOLDERS,
    MANIFEST_FILE,
    QUARANTINE_DIR,
    QUARANTINE_SCHEMA,
    REPORT_FILE,
    ManifestRow,
    manifest_table,
)

STATE_FILE = f"{UNITS_DIR}/state.json"


class OutputConflictError(RuntimeError):
    """The output holds a run made from another input or config."""


def fingerprint(config: PreprocessConfig, units: list[WorkUnit]) -> dict:
    """What decides the output's samples and bytes: the recipe (not where it runs, reads from, or which modalities
    it labels: those may grow run by run) and the unit listing."""
    recipe = config.model_dump(mode="json", exclude={"input", "output", "overwrite", "ray", "storage", "modalities"})
    units_digest = hashlib.sha256("\n".join(u.label for u in units).encode()).hexdigest()
    return {"recipe": recipe, "units": len(units), "units_sha256": units_digest}


def plan_runs(storage: Storage, config: PreprocessConfig, units: list[WorkUnit]) -> list[WritePlan]:
    """The runs this output is made of, in order: the base run, then one per later addition of modalities.

    A first call registers the base run with the requested modalities. A later call with modalities the output
    lacks registers a run that adds only those. Every registered run is then (re)done unit by unit until complete,
    so a crash in any run is resumed by rerunning the same command.
    """
    if config.overwrite:  # forget every unit; shards are rewritten in place and the manifest names only current ones
        storage.remove(UNITS_DIR)
    expected = fingerprint(config, units)
    state = json.loads(storage.read_bytes(STATE_FILE)) if storage.exists(STATE_FILE) else {**expected, "runs": []}
    if {k: state[k] for k in expected} != expected:
        raise OutputConflictError(
            f"{storage.root} holds output of a different input or recipe; rerun with --overwrite to replace it"
        )
    runs = [WritePlan(r["run"], tuple(r["modalities"])) for r in state["runs"]]
    have = {m for run in runs for m in run.modalities}
    new = tuple(m for m in config.modalities if m not in have)
    if new:
        runs.append(WritePlan(BASE_RUN if not runs else "add-" + "+".join(new), new))
        state["runs"] = [{"run": r.run, "modalities": list(r.modalities)} for r in runs]
        storage.write_atomic(STATE_FILE, json.dumps(state, sort_keys=True).encode())
    return runs


def split_labelers(
    config: PreprocessConfig, modalities: tuple[str, ...]
) -> tuple[dict[str, LabelerConfig], dict[str, LabelerConfig]]:
    """(fused, pooled): labelers with no concurrency run inside decode tasks, the rest get actor pools."""
    fused, pooled = {}, {}
    for modality in modalities:
        labeler_config = config.labelers.get(modality, LabelerConfig())
        (pooled if labeler_config.concurrency is not None else fused)[modality] = labeler_config
    return fused, pooled


def chain(*stages: Callable[[Batch], Batch]) -> Callable[[Batch], Batch]:
    """Several stages as one Ray Data UDF: one task per unit and no block conversion between them. Ray Data's own
    operator fusion still converts each batch to an Arrow block and back between fused stages, which cost about
    a third of the per-sample compute here (see BENCHMARKS.md)."""

    def run(batch: Batch) -> Batch:
        for stage in stages:
            batch = stage(batch)
        return batch

    return run


def build_dataset(
    config: PreprocessConfig, plan: WritePlan, source: Storage, output: Storage, units: list[WorkUnit]
) -> ray.data.Dataset:
    # Blocks are never split, so one block (= one batch with batch_size=None) stays one work unit end to end.
    ray.data.DataContext.get_current().target_max_block_size = None
    fused, pooled = split_labelers(config, plan.modalities)
    read = partial(read_stage, storage=source, config=config.reader)
    decode = partial(decode_stage, image=config.image, caption=config.caption, fused=fused)
    write = partial(write_unit, storage=output, plan=plan,
                    unit_label={u.index: u.label for u in units})
    items = [{"unit": dataclasses.asdict(u)} for u in units]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    if not pooled:  # everything in one task per unit
        return ds.map_batches(chain(read, decode, write), batch_size=1)
    ds = ds.map_batches(chain(read, decode), batch_size=1)
    for modality, labeler_config in pooled.items():
        ds = ds.map_batches(
            PooledLabelStage, batch_size=None, fn_constructor_args=(modality, labeler_config),
            concurrency=labeler_config.concurrency, num_cpus=labeler_config.num_cpus,
            num_gpus=labeler_config.num_gpus or None,
        )
    return ds.map_batches(write, batch_size=None)


def run_preprocess(config: PreprocessConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or resume, or extend with new modalities) the job described by `config`; returns its report."""
    if not config.input or not config.output:
        raise ValueError("preprocess needs an input and an output (--input/--output or input:/output: in the config)")
    started = time.perf_counter()
    source, output = Storage(config.input, config.storage), Storage(config.output, config.storage)
    units = list_units(source, config.reader)
    runs = plan_runs(output, config, units)
    processed: set[int] = set()
    for plan in runs:
        processed |= run_units(config, plan, source, output, units, log)
    if not processed and output.exists(REPORT_FILE):  # a finished job: rerunning it changes nothing
        return json.loads(output.read_bytes(REPORT_FILE))
    return finalize(output, config, runs, units, time.perf_counter() - started, processed)


def run_units(config: PreprocessConfig, plan: WritePlan, source: Storage, output: Storage, units: list[WorkUnit],
              log: Callable[[str], None]) -> set[int]:
    """Do the units of one run that have no record yet; return their indices."""
    pending = [u for u in units if not output.exists(plan.record_path(u.index))]
    what = ", ".join(plan.modalities)
    log(f"preprocess [{plan.run}: {what}]: {len(units)} units in {source.root}; "
        f"{len(units) - len(pending)} already done, {len(pending)} to do")
    if not pending:
        return set()
    done = set()
    for count, row in enumerate(build_dataset(config, plan, source, output, pending).iter_rows(), start=1):
        record = json.loads(row["record"])
        log(f"  unit {record['unit']:>6} done ({count}/{len(pending)}): {record['samples_written']} written, "
            f"{len(record['quarantine'])} quarantined")
        done.add(record["unit"])
    # A unit with no readable members produces no rows and so never reaches the writer: commit it empty here,
    # so every shard number exists in every folder.
    for unit in pending:
        if unit.index not in done:
            empty = {k: [] for k in ("key", "source_uri", "stage", "reason", "detail", "crop")}
            commit_unit(output, unit.index, unit.label, empty, plan)
    return {u.index for u in pending}


def finalize(output: Storage, config: PreprocessConfig, runs: list[WritePlan], units: list[WorkUnit],
             seconds: float, processed: set[int]) -> dict:
    """Merge every run's unit records into the manifest, the quarantine table and the report."""
    records = {plan.run: [json.loads(output.read_bytes(plan.record_path(u.index))) for u in units] for plan in runs}
    base = records[BASE_RUN]
    rows = [ManifestRow(**{**m, "source_units": tuple(m["source_units"])})
            for run in records.values() for r in run for m in r["manifest"]]
    _write_parquet(output, MANIFEST_FILE, manifest_table(rows))
    quarantine = [q for r in base for q in r["quarantine"]]  # only the base run decides which samples exist
    _write_parquet(output, f"{QUARANTINE_DIR}/quarantine.parquet",
                   pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA))
    processed_samples = sum(r["samples_in"] for r in base if r["unit"] in processed)
    report = {
        "input": config.input,
        "output": config.output,
        "units": len(units),
        "shards_per_folder": len(units),
        "folders": [*(m for plan in runs for m in plan.modalities), *AUX_FOLDERS],
        "runs": [{"run": plan.run, "modalities": list(plan.modalities)} for plan in runs],
        "samples_in": sum(r["samples_in"] for r in base),
        "samples_written": sum(r["samples_written"] for r in base),
        "samples_quarantined": len(quarantine),
        "quarantine_reasons": dict(sorted(Counter(q["reason"] for q in quarantine).items())),
        "bytes_per_folder": _bytes_per_folder(rows),
        "seconds": round(seconds, 3),
        "samples_per_second_this_run": round(processed_samples / seconds, 2) if processed_samples else None,
    }
    output.write_atomic(REPORT_FILE, json.dumps(report, indent=2).encode())
    return report


def _bytes_per_folder(rows: list[ManifestRow]) -> dict[str, int]:
    totals: Counter = Counter()
    for row in rows:
        totals[row.folder] += row.bytes
    return dict(sorted(totals.items()))


def _write_parquet(storage: Storage, relpath: str, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_atomic(relpath, sink.getvalue().to_pybytes())
