"""Preprocess throughput: the Ray Data pipeline versus the same stage functions in one plain process, in one run.

    python bench/preprocess.py [--samples 8192] [--samples-per-unit 256] [--resolution 224] [--cpus 2]

All paths run exactly the same per-unit functions (read_stage -> decode_stage -> write_unit): the baseline calls
them in a loop in one process (half of the units before the other paths, half after, so that the machine's drift
weighs on both sides); `--cpus` plain processes (no Ray) split the units between them, which is what the
machine itself gives when every core runs this work; the pipeline runs them through Ray Data. The speed-up is the
pipeline against the loop; Ray's own overhead is the pipeline against the plain processes. Prints a table and
appends nothing: copy it into BENCHMARKS.md with the command line.

The pipeline is timed as a job reaches a cluster: `python -m jobs.preprocess --address ...`, its own driver
process, joins the running Ray instance, and its time runs from its plan line (imports done, connected, input
listed) to its summary line (manifest and report written); the whole process's time is printed beside it. Before
it, a first job on one unit has run on the fresh instance and started Ray Data's per-cluster helper actors
(`_StatsActor` and the autoscaling coordinator, both detached), as any earlier job on a cluster has: a detached
actor cannot take a job's prestarted worker and spawns its own process, ~2.5 s on the 2-core box, once per
cluster. That first job's pipeline time is printed too; `--cold` skips it, so the timed job pays that start-up.

It also says where the pipeline's time goes (the profile the issue asks for when the target is missed): CPU seconds
of every process on the machine during the Ray run, grouped by role (the workers running the units, Ray Data's own
actors, Ray's daemons, the driver), the start-up before the first unit completes, and the steady-state rate between
the first and the last completion against the plain processes' rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import ray

from cluster.connect import connect
from jobs.cli import REPO_ROOT
from pipeline.data.preprocess import split_labelers
from pipeline.data.readers import list_units
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.shard_writer import BASE_RUN, WritePlan, write_unit
from pipeline.data.stages import decode_stage, read_stage
from pipeline.data.storage import Storage
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.preprocess import PreprocessConfig


ROLES = (  # process title or command line -> role; the first match wins
    ("ray::MapBatches", "unit workers (the per-sample work)"),
    ("ray::_StatsActor", "Ray Data stats actor"),
    ("AutoscalingCoordinator", "Ray Data autoscaling coordinator"),
    ("ray::IDLE", "idle Ray workers"),
    ("raylet", "raylet"),
    ("gcs_server", "GCS"),
    ("dashboard", "dashboard and its agents"),
    ("log_monitor", "log monitor"),
    ("monitor.py", "monitor"),
    ("jobs.preprocess", "job driver (start-up, Ray Data's executor)"),
    ("bench/preprocess.py", "this benchmark (profile sampling)"),
)


class ProcessProfile:
    """CPU seconds of every process on the machine while the block runs, by role (`ROLES`). A process is named by
    every title it showed while sampled (Ray workers retitle themselves per task), so a worker that ran units counts
    as a unit worker even if it idled at the end."""

    def __enter__(self):
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._titles: dict[int, set[str]] = {}
        self._stop = threading.Event()
        self._sample()
        self._start = dict(self._last)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        for process in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            info = process.info
            if info["cpu_times"] is None:
                continue
            self._last[info["pid"]] = info["cpu_times"].user + info["cpu_times"].system
            self._titles.setdefault(info["pid"], set()).add(" ".join(info["cmdline"] or ()))

    def _run(self):
        # Reading /proc for every process costs ~10 ms of CPU; once a second keeps this sampler near 1% of a core
        # (its cost shows as this benchmark's own row).
        while not self._stop.wait(1.0):
            self._sample()

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self.by_role: dict[str, float] = {}
        for pid, seconds in self._last.items():
            used = seconds - self._start.get(pid, 0.0)
            if used <= 0.01:
                continue
            titles = " | ".join(sorted(self._titles[pid]))
            role = next((name for pattern, name in ROLES if pattern in titles), "other processes")
            self.by_role[role] = self.by_role.get(role, 0.0) + used


class CpuSampler:
    """Mean machine-wide CPU utilisation (0..100% of all cores) while the block runs."""

    def __enter__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        psutil.cpu_percent(None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.25):
            self.samples.append(psutil.cpu_percent(None))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.mean = sum(self.samples) / max(len(self.samples), 1)


def run_units(config: PreprocessConfig, indices: list[int] | None = None) -> None:
    """The pipeline's per-unit functions called in a loop (every unit, or those in `indices`)."""
    source, output = Storage(config.input, config.storage), Storage(config.output, config.storage)
    fused = split_labelers(config, config.modalities).fused
    plan = WritePlan(BASE_RUN, config.modalities)
    units = list_units(source, config.reader)
    labels = {u.index: u.label for u in units}
    for unit in units:
        if indices is not None and unit.index not in indices:
            continue
        batch = read_stage({"unit": [dataclasses.asdict(unit)]}, storage=source, config=config.reader)
        batch = decode_stage(batch, image=config.image, caption=config.caption, fused=fused)
        write_unit(batch, storage=output, plan=plan, unit_label=labels)


def process_pool(config: PreprocessConfig, processes: int) -> None:
    """The same loop split over `processes` plain processes (units dealt round-robin), no Ray: what the machine
    itself gives when every core runs this work (shared caches and memory bandwidth included)."""
    units = len(list_units(Storage(config.input, config.storage), config.reader))
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as Ray's workers are
    with context.Pool(processes) as pool:
        pool.starmap(run_units, [(config, list(range(i, units, processes))) for i in range(processes)])


@dataclasses.dataclass
class JobRun:
    """A `python -m jobs.preprocess` process on the running instance, timed from the lines it prints."""

    started: float  # process start
    planned: float  # its plan line: imports done, connected, input listed; the pipeline starts here
    finished: float  # its summary line: manifest and report written
    exited: float
    completions: list[float]  # when each unit's completion line arrived


def run_job(corpus: Path, output: Path, args) -> JobRun:
    """The preprocess job as its own driver process joining this instance, as a job reaches a cluster."""
    command = [sys.executable, "-u", "-m", "jobs.preprocess", "--input", str(corpus), "--output", str(output),
               "--address", ray.get_runtime_context().gcs_address, "--set", f"image.resolution={args.resolution}"]
    started = time.perf_counter()
    planned = finished = 0.0
    completions: list[float] = []
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True) as job:
        for line in job.stdout:
            now = time.perf_counter()
            if line.startswith("preprocess ["):
                planned = now
            elif line.lstrip().startswith("unit"):
                completions.append(now)
            elif line.startswith("preprocess done"):
                finished = now
    if job.returncode != 0 or not (planned and finished):
        raise RuntimeError(f"{' '.join(command)} failed with exit code {job.returncode}")
    return JobRun(started, planned, finished, time.perf_counter(), completions)


def run_first_job(work: Path, args) -> JobRun:
    """One unit as a first job on the fresh instance, which starts Ray Data's per-cluster actors."""
    corpus = work / "first-job-corpus"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=args.samples_per_unit, image_size=256,
                                    samples_per_shard=args.samples_per_unit, workers=1))
    return run_job(corpus, work / "first-job-output", args)


def print_profile(profile: ProcessProfile, completions: list[float], start: float, ray_seconds: float, args,
                  loop_seconds: float, pool_seconds: float) -> None:
    """Where the pipeline's wall time went: start-up, steady state against the plain processes, and CPU by role."""
    units = len(completions)
    unit_compute = loop_seconds / units  # one unit on one core
    first = completions[0] - start
    steady = (units - args.cpus) / (completions[-1] - completions[args.cpus - 1]) if units > args.cpus else None
    pool_rate = units / pool_seconds
    print(f"\nwhere the pipeline's {ray_seconds:.1f} s went ({units} units of {unit_compute:.2f} s compute each):")
    print(f"- start-up: first unit done after {first:.2f} s, {first - unit_compute:.2f} s more than its compute")
    if steady:
        print(f"- steady state (completions {args.cpus} to {units}): {steady:.3f} units/s against the plain "
              f"processes' {pool_rate:.3f} over their whole run ({steady / pool_rate:.2f}x)")
    print(f"- after the last unit (merging records into the manifest and report): {start + ray_seconds - completions[-1]:.2f} s")
    total = sum(profile.by_role.values())
    print(f"\n| process role | CPU s | share of the run's CPU ({args.cpus} cores x {ray_seconds:.1f} s) |")
    print("|---|---|---|")
    for role, seconds in sorted(profile.by_role.items(), key=lambda item: -item[1]):
        print(f"| {role} | {seconds:.1f} | {seconds / (args.cpus * ray_seconds):.1%} |")
    print(f"| all processes | {total:.1f} | {total / (args.cpus * ray_seconds):.1%} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--samples-per-unit", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--cpus", type=int, default=psutil.cpu_count())
    parser.add_argument("--cold", action="store_true",
                        help="time the pipeline as the first job on a fresh Ray instance (see the module docstring)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    try:
        corpus = write_corpus(SampleCorpusConfig(out=str(work / "corpus"), samples=args.samples, image_size=256,
                                                 samples_per_shard=args.samples_per_unit, workers=args.cpus))
        del corpus

        def config(name: str) -> PreprocessConfig:
            return load_config(PreprocessConfig, REPO_ROOT / "configs/preprocess/default.yaml",
                               [f"input={work / 'corpus'}", f"output={work / name}",
                                f"image.resolution={args.resolution}"])

        # The loop runs in two halves (even units, then odd units after the parallel paths), so that a drift of the
        # machine's speed during the run (seen: 10-20% between minutes on the shared box) weighs on both sides.
        loop_config = config("loop")
        units = len(list_units(Storage(loop_config.input, loop_config.storage), loop_config.reader))
        with CpuSampler() as cpu_loop:
            start = time.perf_counter()
            run_units(loop_config, list(range(0, units, 2)))
            loop_seconds = time.perf_counter() - start
        with CpuSampler() as cpu_pool:
            start = time.perf_counter()
            process_pool(config("pool"), args.cpus)
            pool_seconds = time.perf_counter() - start
        connect(None, num_cpus=args.cpus)
        first = None if args.cold else run_first_job(work, args)
        with CpuSampler() as cpu_ray, ProcessProfile() as profile:
            job = run_job(work / "corpus", work / "ray", args)
        completions = job.completions
        ray_seconds = job.finished - job.planned
        with CpuSampler() as cpu_loop_odd:
            start = time.perf_counter()
            run_units(loop_config, list(range(1, units, 2)))
            loop_seconds += time.perf_counter() - start
        cpu_loop.mean = (cpu_loop.mean + cpu_loop_odd.mean) / 2
        same = all((work / other / p.relative_to(work / "ray")).read_bytes() == p.read_bytes()
                   for p in (work / "ray").rglob("shard-*.tar") for other in ("loop", "pool"))
        per_sample_ms = loop_seconds / args.samples * 1000
        ideal = loop_seconds / args.cpus
        if first is not None:
            print(f"first job on the fresh instance (1 unit of {args.samples_per_unit} samples): pipeline "
                  f"{first.finished - first.planned:.1f} s for {loop_seconds / units:.1f} s of compute; it started "
                  f"Ray Data's per-cluster actors, which the timed job found running")
        print(f"samples={args.samples} resolution={args.resolution} cpus={args.cpus} "
              f"unit={args.samples_per_unit} shards identical={same}")
        print("| path | seconds | samples/s | CPU util | speed-up |")
        print("|---|---|---|---|---|")
        print(f"| single-process loop | {loop_seconds:.1f} | {args.samples / loop_seconds:.1f} | "
              f"{cpu_loop.mean:.0f}% | 1.00x |")
        print(f"| {args.cpus} plain processes (no Ray) | {pool_seconds:.1f} | {args.samples / pool_seconds:.1f} | "
              f"{cpu_pool.mean:.0f}% | {loop_seconds / pool_seconds:.2f}x |")
        print(f"| Ray Data pipeline | {ray_seconds:.1f} | {args.samples / ray_seconds:.1f} | "
              f"{cpu_ray.mean:.0f}% | {loop_seconds / ray_seconds:.2f}x |")
        print(f"(the pipeline is timed from the job's plan line to its summary; the whole job process, with its "
              f"imports and connection to Ray: {job.exited - job.started:.1f} s)")
        print(f"per-sample compute {per_sample_ms:.2f} ms; Ray overhead vs ideal {args.cpus}-way split: "
              f"{(ray_seconds - ideal) / ray_seconds * 100:.0f}% of the pipeline's wall time; vs {args.cpus} plain "
              f"processes: {(ray_seconds - pool_seconds) / ray_seconds * 100:.0f}%")
        print_profile(profile, completions, job.planned, ray_seconds, args, loop_seconds, pool_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
