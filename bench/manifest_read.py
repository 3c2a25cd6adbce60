"""What a reader of an output's manifest holds: bytes of RSS per row returned by `read_manifest`.

    python bench/manifest_read.py [--units 10000] [--folders 24]

Builds a manifest of `--units` shards in each of `--folders` folders, rows as bench/scale_out.py's
`--driver-memory` builds them (real-looking sha256 digests, one source unit per row), published by the job's own
`write_manifest`; then, each in a fresh process so that one reading's heap does not serve the next, reads it back
three ways with the code that ships: every row (`read_manifest(storage)`, as `inspect` does), one folder's rows
(`read_manifest(storage, [folder])`, as the loader, the eval tasks and the tokenizer trainer do), and the folder
list alone (`manifest_folders`, what the mixture and the eval runner need). It prints the RSS held after each read
(and its peak) above the process's RSS before it, per row returned, and the seconds each read took.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.manifest import manifest_folders, read_manifest, write_manifest  # noqa: E402
from pipeline.data.storage import Storage  # noqa: E402
from schemas.common import StorageConfig  # noqa: E402
from schemas.shards import ManifestRow  # noqa: E402

SAMPLES_PER_UNIT = 1_000


def folder_name(index: int) -> str:
    return f"folder_{index:02d}"


def write_rows(root: Path, units: int, folders: int) -> int:
    """Publish the manifest of `units` units x `folders` folders under `root`; its size in bytes."""
    def rows():
        for unit in range(units):
            label = f"laion/part-{unit // 1000:05d}/{unit:08d}.tar"  # WorkUnit's label for a tar unit
            for name in map(folder_name, range(folders)):
                yield ManifestRow(folder=name, modality=name, shard=unit, uri=f"{name}/shard-{unit:08d}.tar",
                                  samples=SAMPLES_PER_UNIT, bytes=900 * 2**20,
                                  sha256=hashlib.sha256(f"{name}/{unit}".encode()).hexdigest(), source_units=(label,))

    write_manifest(Storage(str(root), StorageConfig()), rows())
    return (root / "manifest.parquet").stat().st_size


def read(root: Path, how: str) -> list:
    storage = Storage(str(root), StorageConfig())
    if how == "all":
        return read_manifest(storage)
    if how == "folder":
        return read_manifest(storage, [folder_name(7)])
    return manifest_folders(storage)


def release_freed() -> None:
    """Hand back what the read freed (Python objects, Arrow's pool, glibc's heap), so that RSS counts what the
    result holds: a long-lived worker reuses that freed memory for its next allocations anyway."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(work: Path, how: str) -> dict:
    """One reading in this process: RSS held by its result and the peak during the read (sampled every 10 ms),
    above the RSS before it. The same read of a one-unit manifest comes first, so that the libraries it loads
    (Arrow's compute kernels) are in the baseline rather than counted against the rows."""
    import psutil

    process, peak, stop = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], process.memory_info().rss)

    read(work / "warm-up", how)
    release_freed()
    before = process.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = read(work / "manifest", how)
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    release_freed()
    held = process.memory_info().rss
    return {"rows": len(result), "held": held - before, "peak": max(peak[0], held) - before, "s": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=10_000)
    parser.add_argument("--folders", type=int, default=24)
    parser.add_argument("--measure", nargs=2, metavar=("WORK", "HOW"), help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1])))
        return 0
    work = Path(tempfile.mkdtemp(prefix="tessera-manifest-"))
    try:
        write_rows(work / "warm-up", 1, args.folders)
        size = write_rows(work / "manifest", args.units, args.folders)
        print(f"{args.units} units x {args.folders} folders: {args.units * args.folders:,} rows, manifest "
              f"{size / 2**20:.1f} MiB")
        for how, what in (("all", "every row"), ("folder", "one folder's rows"), ("folders", "the folder list")):
            child = subprocess.run([sys.executable, __file__, "--measure", str(work), how],
                                   check=True, capture_output=True, text=True)
            got = json.loads(child.stdout)
            per_row = f", {got['held'] / got['rows']:,.0f} B per row" if how != "folders" else ""
            print(f"  {what}: {got['rows']:,} returned in {got['s']:.2f} s; RSS held {got['held'] / 2**20:.1f} MiB"
                  f"{per_row} (peak during the read {got['peak'] / 2**20:.1f} MiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
