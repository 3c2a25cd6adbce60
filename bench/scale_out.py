"""Scale-out rehearsal: the labeling run of bench/labeling.py on a local multi-node cluster against one node.

    python bench/scale_out.py [--samples 512] [--samples-per-unit 64] [--nodes 3]
    python bench/scale_out.py --driver-memory 10000,100000 [--folders 24]

The same job (`python -m jobs.preprocess`, DPT depth and DINOv2 in actor pools laid out by the job, rgb and caption
fused into the decode tasks) runs twice: on a local Ray instance of one node, and on a `cluster.local` cluster of
`--nodes` worker nodes of one CPU each (plus a head with no CPUs, which runs GCS and the driver, as on a real
cluster). Both outputs must hold byte-identical shards (bench/chaos.py's digest of every shard's members); the
multi-node run must have used every worker node. How the work split across nodes comes from two places: the unit
records (`units_per_node_this_run` in the report: the node that wrote each unit) and Ray's state API (every task and
actor of the job with the node it ran on).

`--driver-memory` measures what the driver holds and writes per unit at the sizes docs/scaling.md extrapolates from:
for N units it builds the unit listing (`WorkUnit`s, and the items Ray Data's `from_items` is given), one unit record
per unit as the writer commits it (`--folders` manifest rows each: 12 label and 12 token folders in the 4M-21
recipe) written to disk, then runs finalize's own streamed merge over them and publishes the manifest; it prints the
driver's RSS growth (and peak) at each step, the bytes of records and manifest, and the seconds each step took. No
Ray is started.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.chaos import output_digest, private_ray_env  # noqa: E402
from cluster.local import ClusterSpec, LocalCluster  # noqa: E402
from jobs.cli import REPO_ROOT  # noqa: E402
from pipeline.data.sample_corpus import write_corpus  # noqa: E402
from schemas.corpus import SampleCorpusConfig  # noqa: E402

MODELS = ("depth", "dinov2_feature")
SAMPLES_PER_UNIT = 1_000  # --driver-memory's units


def run_job(corpus: Path, output: Path, weights: dict[str, Path], address: str | None, cpus: int) -> float:
    command = [sys.executable, "-u", "-m", "jobs.preprocess", "--input", str(corpus), "--output", str(output),
               "--modalities", ",".join(("rgb", "caption", *MODELS)),
               *(arg for m in MODELS for arg in ("--set", f"labelers.{m}.weights={weights[m]}"))]
    command += ["--address", address] if address else ["--set", f"ray.num_cpus={cpus}"]
    started = time.perf_counter()
    job = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if job.returncode != 0:
        tail = (job.stdout + job.stderr).strip().splitlines()[-3:]
        raise SystemExit(f"preprocess on {address or 'one node'} failed: {' / '.join(tail)}")
    return time.perf_counter() - started


STATE_QUERY = """
import collections, json, sys
from ray.util.state import list_actors, list_tasks
from cluster.connect import connect
connect(sys.argv[1])
split = collections.defaultdict(collections.Counter)
for task in list_tasks(limit=10_000, raise_on_missing_output=False):
    if "MapBatches" in task.name or "MapWorker" in task.name:
        split[task.node_id or "?"]["task " + task.name] += 1
for actor in list_actors(limit=1_000, raise_on_missing_output=False):
    if "MapWorker" in actor.class_name:
        split[actor.node_id or "?"]["actor " + actor.class_name] += 1
print(json.dumps(split))
"""


def work_by_node(address: str) -> dict[str, collections.Counter]:
    """Node id -> count of each task and actor name the job ran there, from Ray's state API (finished ones too),
    asked from a process of its own: a driver attached to the cluster from this process lost its GCS twice."""
    query = subprocess.run([sys.executable, "-c", STATE_QUERY, address], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=180)
    if query.returncode != 0:
        print(f"state API query failed: {(query.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
        return {}
    lines = query.stdout.strip().splitlines()
    return {node: collections.Counter(counts) for node, counts in json.loads(lines[-1]).items()}


def driver_memory(units: int, folders: int, work: Path) -> dict:
    """Driver RSS growth, sizes and seconds of a job's bookkeeping for `units` units of 1,000 samples each (the
    unit size docs/scaling.md recommends): the unit records, with their keys' hashes, are written to disk as the
    writers commit them; then finalize's own streamed merge reads them back (`pipeline.data.finalize.gather`), checks
    the keys across units and publishes the manifest, with a sampler thread catching each step's peak."""
    import dataclasses
    import gc
    import threading

    import psutil

    from pipeline.data.finalize import gather
    from pipeline.data.unique_keys import require_unique_keys
    from schemas.keys import encode_key_hashes
    from pipeline.data.readers import WorkUnit
    from pipeline.data.shard_writer import BASE_RUN, WritePlan
    from pipeline.data.storage import Storage
    from schemas.common import StorageConfig
    from schemas.shards import ManifestRow, UnitRecord

    process = psutil.Process()
    gc.collect()
    out, base, started, peak, stop = {}, process.memory_info().rss, time.perf_counter(), [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    def step(name: str) -> None:
        nonlocal started
        gc.collect()
        rss = process.memory_info().rss
        out[name] = {"rss_mb": (rss - base) / 2**20, "peak_mb": (max(peak[0], rss) - base) / 2**20,
                     "s": time.perf_counter() - started}
        started, peak[0] = time.perf_counter(), 0

    listing = [WorkUnit(index=i, format="webdataset", path=f"laion/part-{i // 1000:05d}/{i:08d}.tar")
               for i in range(units)]
    items = [{"unit": dataclasses.asdict(u)} for u in listing]
    step("listing + Ray Data items")
    output = Storage(str(work / f"out-{units}"), StorageConfig())
    plan = WritePlan(BASE_RUN, tuple(f"folder_{f:02d}" for f in range(folders)))
    (work / f"out-{units}" / plan.records_dir).mkdir(parents=True)
    record_bytes = 0
    for u in listing:  # as the writers commit them (not part of the driver's work)
        keys = [f"laion_{u.index:08d}_{k:04d}" for k in range(SAMPLES_PER_UNIT)]
        payload = UnitRecord(unit=u.index, source=u.label, samples_in=SAMPLES_PER_UNIT,
                             samples_written=SAMPLES_PER_UNIT, key_hashes=encode_key_hashes(keys), manifest=tuple(
            ManifestRow(folder=name, modality=name, shard=u.index, uri=f"{name}/shard-{u.index:08d}.tar",
                        samples=SAMPLES_PER_UNIT, bytes=900 * 2**20,
                        sha256=hashlib.sha256(f"{name}/{u.index}".encode()).hexdigest(), source_units=(u.label,))
            for name in plan.folders)).to_json()
        (work / f"out-{units}" / plan.record_path(u.index)).write_bytes(payload)
        record_bytes += len(payload)
    step("unit records written (by the writers, not the driver)")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory(dir=work) as directory:
        merged = gather(output, [plan], units, set(), directory)
        step("records read and merged (finalize's gather)")
        require_unique_keys(output, merged.labels, merged.keys)
        step(f"keys checked across units ({units * SAMPLES_PER_UNIT:,} keys)")
        merged.manifest.publish(output)
        step("manifest published")
    stop.set()
    manifest_bytes = (work / f"out-{units}" / "manifest.parquet").stat().st_size
    del items, listing, merged
    shutil.rmtree(work / f"out-{units}", ignore_errors=True)
    return {"steps": out, "record_bytes": record_bytes, "manifest_bytes": manifest_bytes,
            "peak_rss_mb": process.memory_info().rss / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--samples-per-unit", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--depth-input", type=int, default=64)
    parser.add_argument("--dino-input", type=int, default=64)
    parser.add_argument("--driver-memory", default=None, help="comma-separated unit counts: measure the driver only")
    parser.add_argument("--folders", type=int, default=24)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tessera-scale-"))
    if args.driver_memory:
        for units in map(int, args.driver_memory.split(",")):
            result = driver_memory(units, args.folders, work)
            print(f"{units} units x {args.folders} folders: records {result['record_bytes'] / 2**20:.1f} MiB "
                  f"({result['record_bytes'] / units / 1024:.1f} KiB/unit), manifest "
                  f"{result['manifest_bytes'] / 2**20:.2f} MiB; process RSS {result['peak_rss_mb']:.0f} MiB")
            for name, figures in result["steps"].items():
                print(f"  {name}: RSS {figures['rss_mb']:.0f} MiB above the start (peak in the step "
                      f"{figures['peak_mb']:.0f} MiB), step took {figures['s']:.1f} s")
        shutil.rmtree(work, ignore_errors=True)
        return 0
    from tests.model_weights import save_tiny_model

    private_ray_env(work)
    corpus = work / "corpus"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=args.samples, image_size=128,
                                    samples_per_shard=args.samples_per_unit, workers=2))
    weights = {"depth": save_tiny_model("depth", work / "w-depth", input_size=args.depth_input),
               "dinov2_feature": save_tiny_model("dinov2_feature", work / "w-dino", input_size=args.dino_input)}
    single_s = run_job(corpus, work / "one-node", weights, None, args.nodes)
    cluster = LocalCluster(ClusterSpec(workers=args.nodes, cpus_per_node=1), work / "ray").start(timeout_s=180)
    try:  # everything is reported before the cluster goes down: a driver still attached to it would be ended then
        multi_s = run_job(corpus, work / "multi-node", weights, cluster.address, args.nodes)
        split = work_by_node(cluster.address)
        ok = report(work, split, args, single_s, multi_s)
    finally:
        cluster.down()
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def report(work: Path, split: dict[str, collections.Counter], args, single_s: float, multi_s: float) -> bool:
    one, _, _ = output_digest(work / "one-node")
    many, _, _ = output_digest(work / "multi-node")
    units_per_node = json.loads((work / "multi-node" / "report.json").read_text())["units_per_node_this_run"]
    print(f"scale-out: {args.samples} samples in units of {args.samples_per_unit}; one node ({args.nodes} CPUs) "
          f"{single_s:.1f} s, {args.nodes} worker nodes x 1 CPU {multi_s:.1f} s (whole job processes)")
    print(f"shards: {len(one)} per run, identical: {one == many}")
    print(f"units written per node (unit records): {units_per_node}")
    print("tasks and actors per node (Ray state API):", flush=True)
    for node, counts in sorted(split.items()):
        print(f"  {node[:12]}: " + ", ".join(f"{name} x{n}" for name, n in sorted(counts.items())), flush=True)
    busy = [n for n in split if n != "?"]
    print(f"worker nodes that ran any of the job's tasks or actors: {len(busy)} of {args.nodes}", flush=True)
    return one == many and len(busy) >= args.nodes


if __name__ == "__main__":
    sys.exit(main())
