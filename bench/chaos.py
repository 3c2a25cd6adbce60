"""Chaos suite: Tessera's jobs on a local multi-node Ray cluster while faults are injected; prints a table.

    python bench/chaos.py [--samples 20000] [--kills 3] [--out bench_out/chaos] [--only pretrain,...]
                          [--scenario-timeout 900] [--torch-extensions DIR]      (or: make chaos)

Each scenario runs the job once undisturbed and once under faults and compares the outputs. Counts come from the
outputs themselves (the manifest and the tars it lists), never from the job's own report: lost = keys of the
undisturbed run missing under faults, duplicated = keys written more than once per folder. Nothing is reported that
was not measured.

Every scenario gets a fresh cluster of its own (its own state dir), started and stopped in a child process: what one
scenario leaves behind (killed and replacement nodes, actors still being released) never reaches the next. A
scenario past --scenario-timeout is killed with every process below it and reported as one FAIL row; the table
still lists the others.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import multiprocessing
import os
import queue
import random
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from cluster.local import ClusterSpec, LocalCluster
from jobs.cli import REPO_ROOT
from pipeline.data.sample_corpus import write_corpus
from schemas.corpus import SampleCorpusConfig

import chaos_jobs  # beside this script (its folder is sys.path[0]): scenarios 2 and 3
import chaos_storage  # beside it too: scenarios 4 and 5

COLUMNS = ("fault", "injected", "samples in", "written", "quarantined", "lost", "duplicated", "result")
# A scenario is a function(cluster, corpus, work, args, rng) -> [rows]; one that raises is reported as a FAIL row
# with the error's line. Each alone took 3-7 min on the shared 2-core box (RELIABILITY.md); 15 min means stuck.
Scenario = Callable[[LocalCluster, Path, Path, argparse.Namespace, random.Random], list[dict]]
SCENARIO_TIMEOUT_S = 900
CLUSTER = ClusterSpec(workers=2, cpus_per_node=1)
TORCH_EXTENSIONS = "~/.cache/tessera-chaos/torch_extensions"
FORK = multiprocessing.get_context("fork")  # a scenario's child shares this process's imports and arguments as is


def private_ray_env(work: Path) -> None:
    """A token of this run's own and no RAY_ADDRESS, as tests/conftest.py's ray_env: auth stays on."""
    token = work / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ["RAY_AUTH_MODE"] = "token"


def private_torch_extensions(folder: Path) -> None:
    """DeepSpeed JIT-builds its CPU communication op into the torch extensions folder, which every process on the
    machine shares under one lock file: a build by another user's job (seen every few minutes on the shared box)
    stalls ours, and a build killed mid-way (a stopped job) leaves a lock that stalls every later one for good. The
    chaos runs get a folder of their own (the nodes and jobs inherit the variable), built here, not in a Ray worker,
    which runs niced: there the build ran past 5 minutes on the loaded box (8 min unniced; a no-op once built)."""
    os.environ["TORCH_EXTENSIONS_DIR"] = str(folder)
    for lock in folder.glob("*/lock"):  # left by a chaos run stopped mid-build; one chaos run at a time uses it
        lock.unlink()
    build = [sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"]
    subprocess.run(build, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_preprocess(cluster: LocalCluster, corpus: Path, output: Path) -> subprocess.Popen:
    """The preprocess job, its output in `<output>.log`: a file, not a pipe, which nobody would read while the
    killer waits (a full pipe stalls the job's every print)."""
    command = [sys.executable, "-u", "-m", "jobs.preprocess", "--input", str(corpus), "--output", str(output),
               "--address", cluster.address]
    with output.with_suffix(".log").open("w") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)


def finish(job: subprocess.Popen, what: str) -> None:
    job.wait()
    if job.returncode != 0:
        log = Path(job.args[job.args.index("--output") + 1]).with_suffix(".log")
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise RuntimeError(f"{what} failed ({job.returncode}): {tail[0]} (log: {log})")


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


NODE_KILL_FAULT = "preprocess: worker node SIGKILLed (+ replaced)"


def scenario_node_kills(cluster: LocalCluster, corpus: Path, work: Path, args: argparse.Namespace,
                        rng: random.Random) -> list[dict]:
    """Preprocess undisturbed, then again while a random worker node is SIGKILLed `kills` times (a fresh node
    replaces each): the shards must hash the same and every key be there exactly once."""
    samples, kills = args.samples, args.kills
    started = time.perf_counter()
    finish(run_preprocess(cluster, corpus, work / "pre-clean"), "undisturbed preprocess")
    clean_s = time.perf_counter() - started
    job = run_preprocess(cluster, corpus, work / "pre-chaos")
    injected = 0
    # Kills and replacements from this (the main) thread, never a helper thread: a node dies with the thread that
    # started it (Linux's parent-death signal follows the forking thread, cluster/processes.py), so replacements
    # started by a thread that then ended were all killed with it.
    for _ in range(kills):
        if wait_for_exit(job, rng.uniform(0.1, 0.8) * clean_s / kills):
            break
        cluster.kill_node(rng.choice(cluster.live_workers()))
        injected += 1
        cluster.add_worker(timeout_s=120)
    finish(job, "preprocess under node kills")
    clean, clean_keys, _ = output_digest(work / "pre-clean")
    chaos, chaos_keys, quarantined = output_digest(work / "pre-chaos")
    lost = sum(len(set(clean_keys[f]) - set(chaos_keys.get(f, {}))) for f in clean_keys)
    duplicated = sum(n - 1 for f in chaos_keys.values() for n in f.values() if n > 1)
    written = len(set().union(*chaos_keys.values()))  # distinct samples, whatever folders they landed in
    ok = chaos == clean and lost == 0 and duplicated == 0 and injected >= min(kills, 3)
    return [{"fault": NODE_KILL_FAULT, "injected": injected, "samples in": samples, "written": written,
             "quarantined": quarantined, "lost": lost, "duplicated": duplicated, "result": "pass" if ok else "FAIL"}]


def wait_for_exit(job: subprocess.Popen, seconds: float) -> bool:
    """Wait up to `seconds` for `job` to end; True if it has (its output stays in the pipe for `finish`)."""
    deadline = time.monotonic() + seconds
    while job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return job.poll() is not None


# ---------------------------------------------------------------- one scenario, one cluster, one child process

def run_scenario(fault: str, scenario: Scenario, state_dir: Path, corpus: Path, work: Path,
                 args: argparse.Namespace) -> list[dict]:
    """`scenario` on a fresh cluster of its own, in a child process; killed (with every process below it) and
    reported as a FAIL row past args.scenario_timeout seconds."""
    started = time.perf_counter()
    print(f"[chaos] {fault}: started at {time.strftime('%H:%M:%S')}", flush=True)
    results: multiprocessing.Queue = FORK.Queue()
    # Its own random stream, seeded by name: `--only` makes the same choices as a full run.
    rng = random.Random(f"{args.seed}/{fault}")
    child = FORK.Process(target=scenario_child, args=(results, fault, scenario, state_dir, corpus, work, args, rng))
    child.start()
    rows = None
    while rows is None:
        try:
            rows = results.get(timeout=1.0)
        except queue.Empty:
            if not child.is_alive() and results.empty():
                rows = [{"fault": fault, "result": f"FAIL (scenario process exited with {child.exitcode})"}]
            elif time.perf_counter() - started > args.scenario_timeout:
                kill_tree(child.pid)
                rows = [{"fault": fault, "result": f"FAIL (timed out after {args.scenario_timeout:.0f} s)"}]
    child.join(timeout=60)
    if (state_dir / "state.json").exists():  # a killed scenario's cluster: its temp dir, any orphaned node
        LocalCluster.load(state_dir).down(grace_s=0)
    for lock in Path(os.environ["TORCH_EXTENSIONS_DIR"]).glob("*/lock"):  # a build killed with it, if any
        lock.unlink()
    seconds = time.perf_counter() - started
    rows = [{**row, "seconds": round(seconds)} for row in rows]
    print(f"[chaos] {fault}: {', '.join(row['result'] for row in rows)} in {seconds:.0f} s", flush=True)
    for row in rows:  # the table's row now, so that a run stopped before the end still shows what it measured
        print(f"[chaos] row: {json.dumps({c: row.get(c, '') for c in COLUMNS})}", flush=True)
    return rows


def scenario_child(results: multiprocessing.Queue, fault: str, scenario: Scenario, state_dir: Path, corpus: Path,
                   work: Path, args: argparse.Namespace, rng: random.Random) -> None:
    """The child's side of run_scenario: start the cluster, run the scenario, stop the cluster, hand back rows."""
    try:
        cluster = LocalCluster(CLUSTER, state_dir).start(timeout_s=120)
        try:
            rows = scenario(cluster, corpus, work, args, rng)
        finally:
            cluster.down()
    except Exception as error:  # any failure is this scenario's row, in one line; the others still run
        line = (str(error).strip().splitlines() or [""])[0]
        rows = [{"fault": fault, "result": f"FAIL ({type(error).__name__}: {line})"}]
    results.put(rows)


def unmount_below(root: Path) -> None:
    """Unmount what a scenario stopped mid-way left mounted below `root` (the disk-full scenario's tmpfs)."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if Path(m).is_relative_to(root)), reverse=True):
        subprocess.run(["umount", mount], check=False)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything below it (jobs, cluster nodes, their Ray workers), found before any dies."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


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
    parser.add_argument("--torch-extensions", default=TORCH_EXTENSIONS,
                        help="this suite's own folder for DeepSpeed's JIT-built ops (see private_torch_extensions)")
    parser.add_argument("--scenario-timeout", type=float, default=SCENARIO_TIMEOUT_S,
                        help="seconds after which a scenario is stopped and reported as failed")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="tessera-chaos-"))
    private_ray_env(work)
    private_torch_extensions(Path(args.torch_extensions).expanduser())
    corpus = work / "corpus"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=args.samples, image_size=256,
                                    samples_per_shard=args.samples_per_shard, workers=2))
    scenarios: list[tuple[str, Scenario]] = [
        (NODE_KILL_FAULT, scenario_node_kills),
        (chaos_jobs.PRETRAIN_FAULT, chaos_jobs.scenario_pretrain_kills),
        (chaos_jobs.EVAL_FAULT, chaos_jobs.scenario_eval_kills),
        (chaos_storage.S3_FAULT, chaos_storage.s3_faulty_proxy),
        (chaos_storage.DISK_FAULT, chaos_storage.disk_full_and_permission_denied),
    ]
    selected = [(fault, run) for fault, run in scenarios if fault.startswith(tuple((args.only or "").split(",")))]
    rows = []
    for index, (fault, scenario) in enumerate(selected, 1):
        rows += run_scenario(fault, scenario, work / "ray" / str(index), corpus, work, args)
    command = "python bench/chaos.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_table(rows, Path(args.out), command.strip(), time.perf_counter() - started))
    unmount_below(work)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(row["result"] == "pass" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
