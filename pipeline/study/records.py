"""The study folder's layout and each run's bookkeeping record (`schemas.study.RunRecord`), one JSON file per run.

    <storage>/<study>/spec.yaml           the spec the study was started with (a rerun must match it)
    <storage>/<study>/runs/<run>/         each run's Ray Train directory: checkpoints, metrics.jsonl, summary.json
    <storage>/<study>/records/<run>.json  each run's status, attempts and errors
    <storage>/<study>/tune/               Ray Tune's experiment state (what `Tuner.restore` resumes)
    <storage>/<study>/results.parquet     the results table (and .csv)
"""

from __future__ import annotations

import time

from pipeline.data.storage import Storage
from pipeline.train.ray_trainer import storage_root
from schemas.config import dump_config
from schemas.study import RunRecord, StudySpec

SPEC_FILE = "spec.yaml"
RUNS = "runs"
RECORDS = "records"
TUNE = "tune"
RESULTS = "results"  # .parquet and .csv
MAX_ERROR_CHARS = 4_000  # a worker's error carries its traceback snippet; the record keeps the end of it


class StudyMismatchError(ValueError):
    """The study folder was started from a different spec."""


def study_storage(spec: StudySpec, storage: str) -> Storage:
    """`<storage>/<spec.name>`, local (made absolute: Tune trials run in their own working directories) or s3://."""
    return Storage(f"{storage_root(storage)}/{spec.name}", spec.pretrain.storage)


def claim_folder(study: Storage, spec: StudySpec) -> None:
    """Write the spec into a new study folder, or check that an existing folder's spec is the same: a resumed study
    whose runs changed under it would mix checkpoints of two recipes."""
    text = dump_config(spec)
    if not study.exists(SPEC_FILE):
        study.write_atomic(SPEC_FILE, text.encode())
        return
    if study.read_bytes(SPEC_FILE).decode() != text:
        raise StudyMismatchError(
            f"{study.uri()} holds a study started from a different spec ({study.uri(SPEC_FILE)}); rerun it with "
            "that spec, or give this one another name")


def read_record(study: Storage, run: str) -> RunRecord | None:
    path = f"{RECORDS}/{run}.json"
    return RunRecord.model_validate_json(study.read_bytes(path)) if study.exists(path) else None


def write_record(study: Storage, record: RunRecord) -> RunRecord:
    study.write_atomic(f"{RECORDS}/{record.run}.json", record.model_dump_json(indent=2).encode())
    return record


def start_attempt(study: Storage, run: str) -> RunRecord:
    previous = read_record(study, run)
    record = RunRecord(run=run, status="running", attempts=(previous.attempts if previous else 0) + 1,
                       errors=previous.errors if previous else (), started_at=time.time(),
                       seconds=previous.seconds if previous else 0.0)
    return write_record(study, record)


def finish_attempt(study: Storage, record: RunRecord, *, error: str | None = None,
                   evaluation: dict[str, float] | None = None) -> RunRecord:
    now = time.time()
    update = {"status": "error" if error else "done", "finished_at": now,
              "seconds": record.seconds + now - record.started_at}
    if error:
        update["errors"] = (*record.errors, error[-MAX_ERROR_CHARS:])
    if evaluation:
        update["evaluation"] = evaluation
    return write_record(study, record.model_copy(update=update))


def mark_failed(study: Storage, run: str, error: str) -> RunRecord:
    """A run whose retries are spent. `error` is the trial's error, for a run that died before writing a record."""
    record = read_record(study, run)
    if record is None:
        record = RunRecord(run=run, status="failed", attempts=1, errors=(error[-MAX_ERROR_CHARS:],),
                           started_at=time.time())
    return write_record(study, record.model_copy(update={"status": "failed"}))


def error_line(error: str) -> str:
    """The line of an error that says what went wrong: the last non-empty one (a worker error ends with the
    exception raised on the worker, after the traceback)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[-1] if lines else ""
