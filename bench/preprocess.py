"""Preprocess throughput: the Ray Data pipeline versus the same stage functions in one plain process, in one run.

    python bench/preprocess.py [--samples 8192] [--samples-per-unit 256] [--resolution 224] [--cpus 2]

All paths run exactly the same per-unit functions (read_stage -> decode_stage -> write_unit): the baseline calls
them in a loop in one process; `--cpus` plain processes (no Ray) split the units between them, which is what the
machine itself gives when every core runs this work; the pipeline runs them through Ray Data. The speed-up is the
pipeline against the loop; Ray's own overhead is the pipeline against the plain processes. Prints a table and
appends nothing: copy it into BENCHMARKS.md with the command line.

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
import tempfile
import threading
import time
from pathlib import Path

import psutil

from cluster.connect import connect
from jobs.cli import REPO_ROOT
from pipeline.data.preprocess import run_preprocess, split_labelers
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
    ("bench/preprocess.py", "driver (Ray Data's executor)"),
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
        # Reading /proc for every process costs ~10 ms of CPU; once a second keeps this sampler near 1% of a core,
        # and it reports its own cost (`sampler_seconds`) so that the driver's row can be read without it.
        while not self._stop.wait(1.0):
            self._sample()
        self.sampler_seconds = time.thread_time()

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
    print(f"(the driver's row includes {profile.sampler_seconds:.1f} s of this profile's own sampling)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--samples-per-unit", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--cpus", type=int, default=psutil.cpu_count())
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

        with CpuSampler() as cpu_loop:
            start = time.perf_counter()
            run_units(config("loop"))
            loop_seconds = time.perf_counter() - start
        with CpuSampler() as cpu_pool:
            start = time.perf_counter()
            process_pool(config("pool"), args.cpus)
            pool_seconds = time.perf_counter() - start
        connect(None, num_cpus=args.cpus)
        completions: list[float] = []  # when each unit's completion reached the driver

        def on_log(line: str) -> None:
            if line.lstrip().startswith("unit"):
                completions.append(time.perf_counter())

        with CpuSampler() as cpu_ray, ProcessProfile() as profile:
            start = time.perf_counter()
            run_preprocess(config("ray"), log=on_log)
            ray_seconds = time.perf_counter() - start
        same = all((work / other / p.relative_to(work / "ray")).read_bytes() == p.read_bytes()
                   for p in (work / "ray").rglob("shard-*.tar") for other in ("loop", "pool"))
        per_sample_ms = loop_seconds / args.samples * 1000
        ideal = loop_seconds / args.cpus
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
        print(f"per-sample compute {per_sample_ms:.2f} ms; Ray overhead vs ideal {args.cpus}-way split: "
              f"{(ray_seconds - ideal) / ray_seconds * 100:.0f}% of the pipeline's wall time; vs {args.cpus} plain "
              f"processes: {(ray_seconds - pool_seconds) / ray_seconds * 100:.0f}%")
        print_profile(profile, completions, start, ray_seconds, args, loop_seconds, pool_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
