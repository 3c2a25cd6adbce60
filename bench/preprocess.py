"""Preprocess throughput: the Ray Data pipeline versus the same stage functions in one plain process, in one run.

    python bench/preprocess.py [--samples 8192] [--samples-per-unit 256] [--resolution 224] [--cpus 2]

All paths run exactly the same per-unit functions (read_stage -> decode_stage -> write_unit): the baseline calls
them in a loop in one process; `--cpus` plain processes (no Ray) split the units between them, which is what the
machine itself gives when every core runs this work; the pipeline runs them through Ray Data. The speed-up is the
pipeline against the loop; Ray's own overhead is the pipeline against the plain processes. Prints a table and
appends nothing: copy it into BENCHMARKS.md with the command line.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--samples-per-unit", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--cpus", type=int, default=psutil.cpu_count())
    args = parser.parse_args()
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
        with CpuSampler() as cpu_ray:
            start = time.perf_counter()
            run_preprocess(config("ray"), log=lambda _: None)
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
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
