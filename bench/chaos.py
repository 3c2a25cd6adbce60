"""Chaos suite: Tessera's jobs on a local multi-node Ray cluster while faults are injected; prints a table.

    python bench/chaos.py [--samples 20000] [--kills 3] [--out bench_out/chaos]      (or: make chaos)

Each scenario runs the job once undisturbed and once under faults, on the same cluster, and compares the outputs.
Counts come from the outputs themselves (the manifest and the tars it lists), never from the job's own report:
lost = keys of the undisturbed run missing under faults, duplicated = keys written more than once per folder.
A scenario not implemented yet is listed as "not built"; nothing is reported that was not measured.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from cluster.local import ClusterSpec, LocalCluster
from jobs.cli import REPO_ROOT
from pipeline.data.sample_corpus import write_corpus
from schemas.corpus import SampleCorpusConfig

import chaos_jobs  # beside this script (its folder is sys.path[0]): scenarios 2 and 3
import chaos_storage  # beside it too: scenarios 4 and 5

COLUMNS = ("fault", "injected", "samples in", "written", "quarantined", "lost", "duplicated", "result")
NOT_BUILT: tuple[str, ...] = ()
# Scenario modules beside this one each add (fault name, function(cluster, corpus, work, args, rng) -> [rows]).
# A scenario that raises RuntimeError is reported as a FAIL row with the error's line.


def private_ray_env(work: Path) -> None:
    """A token of this run's own and no RAY_ADDRESS, as tests/conftest.py's ray_env: auth stays on."""
    token = work / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ["RAY_AUTH_MODE"] = "token"


def run_preprocess(cluster: LocalCluster, corpus: Path, output: Path) -> subprocess.Popen:
    command = [sys.executable, "-u", "-m", "jobs.preprocess", "--input", str(corpus), "--output", str(output),
               "--address", cluster.address]
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(job: subprocess.Popen, what: str) -> str:
    out, _ = job.communicate()
    if job.returncode != 0:
        tail = out.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{what} failed ({job.returncode}): {tail[0]}")
    return out


def output_digest(root: Path) -> tuple[dict[str, str], dict[str, collections.Counter], int]:
    """(folder/shard -> sha256 of member names and bytes, folder -> key counts, quarantined rows) of an output."""
    shards: dict[str, str] = {}
    keys: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in pq.read_table(root / "manifest.parquet").to_pylist():
        path = Path(row["uri"]) if Path(row["uri"]).is_absolute() else root / row["uri"]
        digest = hashlib.sha256()
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            for member in members:
                digest.update(member.name.encode() + b"\0" + tar.extractfile(member).read())
            for key in {m.name.split(".", 1)[0] for m in members}:
                keys[row["folder"]][key] += 1
        shards[f"{row['folder']}/{row['shard']}"] = digest.hexdigest()
    quarantine = root / "quarantine" / "quarantine.parquet"
    quarantined = pq.read_metadata(quarantine).num_rows if quarantine.exists() else 0
    return shards, keys, quarantined


def scenario_node_kills(cluster: LocalCluster, corpus: Path, work: Path, samples: int, kills: int,
                        rng: random.Random) -> dict:
    """Preprocess undisturbed, then again while a random worker node is SIGKILLed `kills` times (a fresh node
    replaces each): the shards must hash the same and every key be there exactly once."""
    started = time.perf_counter()
    finish(run_preprocess(cluster, corpus, work / "pre-clean"), "undisturbed preprocess")
    clean_s = time.perf_counter() - started
    job = run_preprocess(cluster, corpus, work / "pre-chaos")
    injected = 0

    def killer() -> None:
        nonlocal injected
        for _ in range(kills):
            time.sleep(rng.uniform(0.1, 0.8) * clean_s / kills)
            if job.poll() is not None:
                return
            cluster.kill_node(rng.choice(cluster.live_workers()))
            injected += 1
            cluster.add_worker(timeout_s=120)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    finish(job, "preprocess under node kills")
    thread.join()
    clean, clean_keys, _ = output_digest(work / "pre-clean")
    chaos, chaos_keys, quarantined = output_digest(work / "pre-chaos")
    lost = sum(len(set(clean_keys[f]) - set(chaos_keys.get(f, {}))) for f in clean_keys)
    duplicated = sum(n - 1 for f in chaos_keys.values() for n in f.values() if n > 1)
    written = len(set().union(*chaos_keys.values()))  # distinct samples, whatever folders they landed in
    ok = chaos == clean and lost == 0 and duplicated == 0 and injected >= min(kills, 3)
    return {"fault": "preprocess: worker node SIGKILLed (+ replaced)", "injected": injected, "samples in": samples,
            "written": written, "quarantined": quarantined, "lost": lost, "duplicated": duplicated,
            "result": "pass" if ok else "FAIL"}


def write_table(rows: list[dict], out: Path, command: str, wall_s: float) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |" for row in rows]
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.md").write_text(f"`{command}` ({wall_s:.0f} s wall)\n\n{table}\n")
    (out / "chaos.json").write_text(json.dumps({"command": command, "wall_s": wall_s, "rows": rows}, indent=2))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_out/chaos", help="folder for chaos.md and chaos.json")
    parser.add_argument("--only", help="run only the scenarios whose fault starts with one of these, comma-separated "
                        "(e.g. pretrain,evaluation); pair with a small --samples when preprocess is not among them")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="tessera-chaos-"))
    private_ray_env(work)
    corpus = work / "corpus"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=args.samples, image_size=256,
                                    samples_per_shard=args.samples_per_shard, workers=2))
    rows = []
    cluster = LocalCluster(ClusterSpec(workers=2, cpus_per_node=1), work / "ray").start(timeout_s=120)
    scenarios = [("preprocess: worker node SIGKILLed (+ replaced)",
                  lambda: [scenario_node_kills(cluster, corpus, work, args.samples, args.kills, rng)])]
    scenarios += [(fault, functools.partial(scenario, cluster, corpus, work, args, rng)) for fault, scenario in (
        (chaos_jobs.PRETRAIN_FAULT, chaos_jobs.scenario_pretrain_kills),
        (chaos_jobs.EVAL_FAULT, chaos_jobs.scenario_eval_kills),
        (chaos_storage.S3_FAULT, chaos_storage.s3_faulty_proxy),
        (chaos_storage.DISK_FAULT, chaos_storage.disk_full_and_permission_denied))]
    scenarios = [(fault, run) for fault, run in scenarios if fault.startswith(tuple((args.only or "").split(",")))]
    try:
        for fault, run in scenarios:
            try:
                rows += run()
            except RuntimeError as error:
                rows.append({"fault": fault, "result": f"FAIL ({error})"})
    finally:
        cluster.down()
    rows += [{"fault": name, "result": "not built"} for name in NOT_BUILT]
    command = "python bench/chaos.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_table(rows, Path(args.out), command.strip(), time.perf_counter() - started))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(row["result"] in ("pass", "not built") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
