"""The preprocess job: raw corpus -> label shards -> token shards, as Ray Data pipelines.

    label:    units --read--> samples --decode + cheap labelers--> [model labeler pools] --write--> label shards
    tokenize: label shard N --encode with the modality's tokenizer--> tok_<modality>/shard N

Work units come from the sorted input listing; unit N becomes shard N in every output folder. An output is made of
runs (the base label run, runs that add label modalities, tokenize runs; see `plan_runs`), each done unit by unit:
a unit is done when its record exists under `_units/`, so a rerun skips done units, a crash at any point costs only
the units in flight, and an uninterrupted run and a resumed one write the same bytes. At the end the unit records
are merged into `manifest.parquet`, `quarantine/quarantine.parquet` and `report.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from functools import partial

import ray.data

from pipeline.data.labelers import get_labeler
from pipeline.data.labelers.weights import required_weights
from pipeline.data.finalize import manifest_current, merge_records
from pipeline.data.output_checks import STATE_FILE
from pipeline.data.pool_layout import layout_for_run
from pipeline.data.progress import log_plan, log_unit, set_data_context
from pipeline.data.raw import RAW_READERS
from pipeline.data.raw_units import list_input_units, raw_reader
from pipeline.data.readers import WorkUnit
from pipeline.data.shard_writer import BASE_RUN, UNITS_DIR, AlignmentError, WritePlan, commit_unit, write_unit
from pipeline.data.stages import Batch, PooledLabelStage, decode_stage, read_stage
from pipeline.data.storage import Storage
from schemas.preprocess import LabelerConfig, PreprocessConfig
from schemas.shards import AUX_FOLDERS, REPORT_FILE, token_folder


class OutputConflictError(RuntimeError):
    """The output holds a run made from another input or config."""


def fingerprint(config: PreprocessConfig, units: list[WorkUnit]) -> dict:
    """What decides which samples the output holds and how they are cut: the recipe and the unit listing. Not where
    it runs or reads from, nor which modalities or token folders it has: those may grow run by run."""
    recipe = config.model_dump(mode="json", exclude={"input", "output", "overwrite", "ray", "storage", "modalities",
                                                     "stages", "tokenizers", "labelers"})
    units_digest = hashlib.sha256("\n".join(u.label for u in units).encode()).hexdigest()
    return {"recipe": recipe, "units": len(units), "units_sha256": units_digest}


def plan_runs(storage: Storage, config: PreprocessConfig, units: list[WorkUnit] | None) -> list[WritePlan]:
    """The runs this output is made of, in order: the base label run, runs that add label modalities, and runs
    that tokenize label folders.

    A first call registers the base run with the requested modalities. A later call asking for label modalities
    (stage label) or token folders (stage tokenize) the output lacks registers a run that writes only those.
    Every registered run is then (re)done unit by unit until complete, so a crash in any run is resumed by
    rerunning the same command. `units` is None when only tokenizing (the input is not needed then).
    """
    if config.overwrite:  # forget every unit; shards are rewritten in place and the manifest names only current ones
        storage.remove(UNITS_DIR)
    if storage.exists(STATE_FILE):
        state = json.loads(storage.read_bytes(STATE_FILE))
    elif units is None:
        raise OutputConflictError(f"{storage.root} holds no labelled output to tokenize; run the label stage first")
    else:
        state = {**fingerprint(config, units), "runs": []}
    if units is not None:
        expected = fingerprint(config, units)
        if {k: state[k] for k in expected} != expected:
            raise OutputConflictError(
                f"{storage.root} holds output of a different input or recipe; rerun with --overwrite to replace it"
            )
    runs = [WritePlan(r["run"], tuple(r["modalities"]), r.get("kind", "label")) for r in state["runs"]]
    labelled = {m for run in runs if run.kind == "label" for m in run.modalities}
    tokenized = {m for run in runs if run.kind == "tokenize" for m in run.modalities}
    if "label" in config.stages and (new := tuple(m for m in config.modalities if m not in labelled)):
        runs.append(WritePlan(BASE_RUN if not runs else "add-" + "+".join(new), new))
        labelled |= set(new)
    if "tokenize" in config.stages and (new := tuple(m for m in config.tokenizers if m not in tokenized)):
        missing = sorted(set(new) - labelled)
        if missing:
            raise OutputConflictError(f"cannot tokenize {missing}: {storage.root} has no label folders for them")
        runs.append(WritePlan("tokenize-" + "+".join(new), new, "tokenize"))
    made_by = tokenizers_of_runs(storage, config, state, runs)
    if [r.run for r in runs] != [r["run"] for r in state["runs"]] or \
            made_by != {r["run"]: r["tokenizers"] for r in state["runs"] if "tokenizers" in r}:
        state["runs"] = [{"run": r.run, "modalities": list(r.modalities), "kind": r.kind,
                          **({"tokenizers": made_by[r.run]} if r.run in made_by else {})} for r in runs]
        storage.write_atomic(STATE_FILE, json.dumps(state, sort_keys=True).encode())
    return runs


def tokenizers_of_runs(storage: Storage, config: PreprocessConfig, state: dict,
                       runs: list[WritePlan]) -> dict[str, dict[str, str]]:
    """Tokenize run -> modality -> content hash of the tokenizer that run writes with: recorded when the run first
    meets it, and from then on the only one it accepts. A rerun configured with another tokenizer for a folder
    already begun would leave one folder written by two tokenizers: refused, unless --overwrite starts afresh."""
    made_by = {r["run"]: dict(r.get("tokenizers", {})) for r in state["runs"] if r.get("kind") == "tokenize"}
    tokenize_runs = [plan for plan in runs if plan.kind == "tokenize"]
    if "tokenize" not in config.stages or not tokenize_runs:
        return made_by
    # Here, not at the top: loading a tokenizer imports torch, which a label run never needs.
    from pipeline.data.tokenize import tokenizer_hashes

    wanted = {m for plan in tokenize_runs for m in plan.modalities}
    configured = tokenizer_hashes({m: uri for m, uri in config.tokenizer_uris().items() if m in wanted},
                                  config.storage)
    for plan in tokenize_runs:
        hashes = made_by.setdefault(plan.run, {})
        for modality in plan.modalities:
            if modality in configured and hashes.setdefault(modality, configured[modality]) != configured[modality]:
                raise OutputConflictError(
                    f"{storage.uri(token_folder(modality))} was begun with another tokenizer (content hash "
                    f"{hashes[modality][:12]}) than the one configured for {modality} ({configured[modality][:12]}); "
                    f"rerun preprocess with --overwrite to retokenize it all")
    return made_by


@dataclasses.dataclass(frozen=True)
class LabelPlan:
    """How each modality of a run is made: inside the decode tasks, in its own actor pool, or from the corpus."""

    fused: dict[str, LabelerConfig]
    pooled: dict[str, LabelerConfig]
    ground_truth: tuple[str, ...]


def split_labelers(config: PreprocessConfig, modalities: tuple[str, ...]) -> LabelPlan:
    """Cheap labelers with no concurrency set run inside the decode tasks; the rest, and every labeler that loads a
    model, get actor pools (sized by `layout_for_run` unless concurrency pins them); `source: ground_truth`
    modalities need no labeler, nor does a raw primary modality (its plug-in made its member). Missing weights, and
    labelers that need an image in a corpus without one, fail here, before any Ray work starts, not later inside an
    actor."""
    fused, pooled, truth = {}, {}, []
    reader = raw_reader(config)  # also refuses a primary that is neither an image nor a raw modality
    raw = reader.modality if reader is not None else None
    for modality in modalities:
        if modality == raw:
            continue
        if modality in RAW_READERS:
            raise ValueError(f"{modality} is read from its own files, not labelled: preprocess a {modality} corpus "
                             f"on its own with primary: {modality}")
        labeler_config = config.labelers.get(modality, LabelerConfig())
        if labeler_config.source == "ground_truth" and raw is None:
            truth.append(modality)
            continue
        labeler = get_labeler(modality)
        if raw is not None and (labeler.reads_pixels or labeler_config.source == "ground_truth"):
            raise ValueError(f"modality {modality!r} is labelled from images, and a {raw} corpus has none; with "
                             f"primary {raw} list only {raw} and modalities made from the caption")
        if labeler.needs_weights:
            required_weights(modality, labeler_config)
        if labeler_config.concurrency is None and not labeler.needs_pool:
            fused[modality] = labeler_config
        else:
            concurrency = 1 if labeler_config.concurrency is None else labeler_config.concurrency
            pooled[modality] = labeler_config.model_copy(update={"concurrency": concurrency})
    return LabelPlan(fused, pooled, tuple(truth))


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
    labels = split_labelers(config, plan.modalities)
    set_data_context(single_operator=not labels.pooled)
    raw = raw_reader(config)
    read = partial(read_stage, storage=source, config=config.reader, ground_truth=labels.ground_truth, raw=raw)
    decode = partial(decode_stage, image=config.image, caption=config.caption, fused=labels.fused,
                     ground_truth=labels.ground_truth, raw=raw.modality if raw is not None else None)
    write = partial(write_unit, storage=output, plan=plan,
                    unit_label={u.index: u.label for u in units})
    items = [{"unit": dataclasses.asdict(u)} for u in units]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    if not labels.pooled:  # everything in one task per unit
        return ds.map_batches(chain(read, decode, write), batch_size=1)
    # Who gets the CPUs and GPUs, where the recipe leaves it to the job: see pipeline/data/pool_layout.py.
    layout = layout_for_run(config, labels.pooled, read, decode, items[0])
    ds = ds.map_batches(chain(read, decode), batch_size=1, num_cpus=layout.decode_cpus,
                        concurrency=layout.decode_tasks)
    for modality, labeler_config in layout.pools.items():
        ds = ds.map_batches(
            PooledLabelStage, batch_size=None, fn_constructor_args=(modality, labeler_config, config.storage),
            concurrency=labeler_config.concurrency, num_cpus=labeler_config.num_cpus,
            num_gpus=labeler_config.num_gpus or None,
            # Any node (an empty selector), stated so that the pools' remote args differ from the decode tasks':
            # with equal ones Ray Data fuses the decode tasks into the first pool's actors, and decode then no
            # longer scales apart from that model (BENCHMARKS.md, "Labeling throughput").
            label_selector={},
        )
    # The writer shares the decode tasks' CPU slots: with a default whole CPU it could not start until the decode
    # tasks and pools let go of theirs, and every unit would be written at the end of the run.
    return ds.map_batches(write, batch_size=None, num_cpus=layout.decode_cpus)


def run_preprocess(config: PreprocessConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or resume, or extend with new modalities or token folders) the job in `config`; returns its report."""
    if not config.output:
        raise ValueError("preprocess needs an output (--output or output: in the config)")
    started = time.perf_counter()
    if "label" in config.stages:
        split_labelers(config, config.modalities)  # a labeler without its weights fails now, before any output exists
    output = Storage(config.output, config.storage)
    source = Storage(config.input, config.storage) if config.input else None
    units = list_input_units(source, config) if source is not None else None
    runs = plan_runs(output, config, units)
    shards = len(units) if units is not None else json.loads(output.read_bytes(STATE_FILE))["units"]
    processed: set[int] = set()
    nodes: Counter = Counter()  # Ray node id -> units labelled there in this run
    for plan in runs:
        if plan.kind == "tokenize":
            # Imported here: it imports the tokenizers and with them torch (~1.3 s), which a label run never needs.
            from pipeline.data.tokenize import run_tokenize

            run_tokenize(config, plan, output, shards, log)
        elif source is None or units is None:
            if not set(range(shards)) <= plan.done(output):
                raise ValueError(f"run {plan.run} is unfinished and needs the raw input (--input) to label")
        else:
            processed |= run_units(config, plan, source, output, units, log, nodes)
    if not processed and output.exists(REPORT_FILE) and _report_covers(output, runs):
        if manifest_current(output, runs, shards):
            return json.loads(output.read_bytes(REPORT_FILE))  # a finished job: rerunning it changes nothing
        log(f"preprocess: {output.uri('manifest.parquet')} is missing or differs from the unit records; rebuilding it")
    report = finalize(output, config, runs, shards, time.perf_counter() - started, processed)
    report["units_per_node_this_run"] = dict(sorted(nodes.items()))
    output.write_atomic(REPORT_FILE, json.dumps(report, indent=2).encode())  # the report's one write
    return report


def _report_covers(output: Storage, runs: list[WritePlan]) -> bool:
    report = json.loads(output.read_bytes(REPORT_FILE))
    return [r["run"] for r in report.get("runs", [])] == [plan.run for plan in runs]


def run_units(config: PreprocessConfig, plan: WritePlan, source: Storage, output: Storage, units: list[WorkUnit],
              log: Callable[[str], None], nodes: Counter) -> set[int]:
    """Do the units of one label run that have no record yet; return their indices and count them per node."""
    done_before = plan.done(output)
    pending = [u for u in units if u.index not in done_before]
    log_plan(log, plan, len(units), len(pending), source.root)
    if not pending:
        return set()
    done = set()
    for count, row in enumerate(build_dataset(config, plan, source, output, pending).iter_rows(), start=1):
        if row["refused"]:
            raise AlignmentError(row["refused"])
        record = log_unit(log, row, count, len(pending))
        done.add(record.unit)
        nodes[row["node"]] += 1
    # A unit with no readable members produces no rows and so never reaches the writer: commit it empty here,
    # so every shard number exists in every folder.
    for unit in pending:
        if unit.index not in done:
            commit_unit(output, unit.index, unit.label, None, plan)
    return {u.index for u in pending}


def finalize(output: Storage, config: PreprocessConfig, runs: list[WritePlan], shards: int,
             seconds: float, processed: set[int]) -> dict:
    """Merge every run's unit records into the manifest and the quarantine table; return the report."""
    totals = merge_records(output, runs, shards, processed)
    return {
        "input": config.input,
        "output": config.output,
        "units": shards,
        "shards_per_folder": shards,
        "folders": [*(f for plan in runs for f in plan.folders), *AUX_FOLDERS],
        "runs": [{"run": plan.run, "kind": plan.kind, "modalities": list(plan.modalities)} for plan in runs],
        "samples_in": totals.samples_in,
        "samples_written": totals.samples_written,
        "samples_quarantined": sum(totals.quarantine_reasons.values()),
        "quarantine_reasons": dict(sorted(totals.quarantine_reasons.items())),
        "bytes_per_folder": dict(sorted(totals.bytes_per_folder.items())),
        "tokens": totals.token_stats(),
        "seconds": round(seconds, 3),
        "samples_per_second_this_run": (round(totals.processed_samples / seconds, 2)
                                        if totals.processed_samples else None),
    }
