"""Chaos scenarios 4 and 5 (bench/chaos.py): the storage under a job fails.

4. `s3://` through a fault-injecting proxy in front of moto's server (bench/s3_fault_proxy.py): preprocess (label,
   then tokenize) and a tiny pretrain, once against moto directly and once through the proxy; same shards (member
   hashes), same loss curve and weights, and no partial shard ever listed while the faulty jobs ran.
5. The output's disk fills up (a small tmpfs) or is not writable (the job runs as an unprivileged user): the job ends
   with one clear line, leaves nothing a reader could take for a shard, and a rerun once the cause is fixed writes
   the undisturbed run's shards.

Both read and write through Tessera's own `Storage` and manifest reader; the jobs run as subprocesses, as a user
would run them, and every number comes from their outputs.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import logging
import os
import secrets
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import yaml

from jobs.cli import REPO_ROOT
from pipeline.data.manifest import QUARANTINE_FILE, read_manifest, shard_location
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from schemas.common import StorageConfig
from schemas.corpus import SampleCorpusConfig

from s3_fault_proxy import FaultProxy  # beside this module (bench/ is sys.path[0] under chaos.py)

S3_FAULT = "s3 through a faulty proxy (drops, 5xx, delays)"
DISK_FAULT = "disk full / permission denied on output"
# A corpus of its own, small: every request of these jobs crosses a Python proxy and moto's Python server.
SAMPLES, IMAGE_SIZE, SAMPLES_PER_SHARD, RESOLUTION = 1000, 64, 125, 32
FAULT_RATE, SLOW_S = 0.1, 1.0  # share of S3 requests faulted; delay of a slow answer (below any read timeout)
TEXT_MODALITIES = ("caption", "color_palette", "metadata")
TEXT_VOCAB = 4_700  # jobs/demo.py's: the sample corpus's captions run out of new pieces just above it
PRETRAIN = ("steps=12", "log_every=4", "checkpoint_every=6", "workers=2", "loader.batch_size=8",
            "masking.input_tokens=32", "masking.target_tokens=32", "optim.warmup_steps=4", "precision=fp32",
            "zero.stage=2")
NOBODY = 65534  # owns the folder the permission-denied job may not write in
# Root's capabilities to pass over file modes, dropped from the bounding set: a process started so (and whatever it
# starts) is held to the mode bits like any user. (Switching to an unprivileged uid instead would also lock it out
# of this machine's Python, which lives under /root.)
UNPRIVILEGED = "--bounding-set=-dac_override,-dac_read_search,-fowner"


# ---------------------------------------------------------------- outputs, read back through Tessera's reader

@dataclasses.dataclass
class Digest:
    shards: dict[str, str]  # folder/shard -> sha256 of its member names and bytes
    keys: dict[str, collections.Counter]  # folder -> how often each sample key appears
    quarantined: int

    def compare(self, clean: "Digest", samples: int, injected: int, fault: str, ok: bool) -> dict:
        """The chaos table's row for this (faulty) output against the undisturbed one."""
        lost = sum(len(set(keys) - set(self.keys.get(folder, {}))) for folder, keys in clean.keys.items())
        duplicated = sum(n - 1 for keys in self.keys.values() for n in keys.values() if n > 1)
        ok = ok and self.shards == clean.shards and lost == 0 and duplicated == 0 and injected > 0
        return {"fault": fault, "injected": injected, "samples in": samples,
                "written": len(set().union(*self.keys.values())) if self.keys else 0,
                "quarantined": self.quarantined, "lost": lost, "duplicated": duplicated,
                "result": "pass" if ok else "FAIL"}


def digest(output: Storage) -> Digest:
    """Every shard the manifest lists, read whole and checked against its sha256 (chaos.py's `output_digest`, for
    any storage)."""
    shards, keys = {}, collections.defaultdict(collections.Counter)
    for row in read_manifest(output):
        storage, relpath = shard_location(output, row.uri)
        payload = storage.read_bytes(relpath)
        if hashlib.sha256(payload).hexdigest() != row.sha256:
            raise RuntimeError(f"{row.uri}: sha256 is not the manifest's")
        members = tar_members(payload)
        content = hashlib.sha256()
        for name, data in members:
            content.update(name.encode() + b"\0" + data)
        for key in {name.split(".", 1)[0] for name, _ in members}:
            keys[row.folder][key] += 1
        shards[f"{row.folder}/{row.shard}"] = content.hexdigest()
    quarantined = 0
    if output.exists(QUARANTINE_FILE):
        import pyarrow.parquet as pq

        quarantined = pq.read_metadata(io.BytesIO(output.read_bytes(QUARANTINE_FILE))).num_rows
    return Digest(shards, dict(keys), quarantined)


def tar_members(payload: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of each file in a whole tar; a truncated one raises (tarfile.TarError, EOFError, ValueError).
    Whole means read to the end-of-archive marker (two zero blocks), which every tar Tessera writes has: a tar cut
    exactly between two members would otherwise read as a shorter, valid one."""
    if len(payload) % 512 or payload[-1024:] != bytes(1024):
        raise ValueError("no end-of-archive marker")
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def corrupt_files(output: Storage) -> list[str]:
    """What a reader of `output` could mistake for data: temporary files, and tars that are not whole or (when a
    manifest exists) not what the manifest says."""
    listed = {}
    try:
        listed = {shard_location(output, row.uri)[1]: row.sha256 for row in read_manifest(output)}
    except Exception:  # noqa: BLE001 (no manifest, or a half-written one: then that file is the corrupt one)
        if output.exists("manifest.parquet"):
            return ["manifest.parquet"]
    bad = []
    for relpath in output.list():
        if os.path.basename(relpath).startswith(".tmp-"):
            bad.append(relpath)
        elif relpath.endswith(".tar"):
            payload = output.read_bytes(relpath)
            try:
                tar_members(payload)
            except (tarfile.TarError, EOFError, ValueError):
                bad.append(relpath)
                continue
            if relpath in listed and hashlib.sha256(payload).hexdigest() != listed[relpath]:
                bad.append(relpath)
    bad += [relpath for relpath in listed if not output.exists(relpath)]  # listed but missing
    return bad


class ShardWatcher:
    """Polls an output while a job writes it: every listed tar (each version once) must be whole and, once the
    manifest lists it, match its checksum. Reads through `output` (moto directly, not the faulty proxy)."""

    def __init__(self, output: Storage, period_s: float = 0.3) -> None:
        self.output, self.period_s = output, period_s
        self.checked, self.partial, self.listings, self.errors = 0, [], 0, []
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ShardWatcher":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # the output as the job left it

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 (e.g. a listed object replaced before it was read: next poll)
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def poll(self) -> None:
        versions = {p: v for p, v in self.output.signature().items() if p.endswith(".tar")}
        self.listings += 1
        fresh = {p: v for p, v in versions.items() if f"{p}@{v}" not in self._seen}
        if not fresh:
            return
        manifest = {}
        if self.output.exists("manifest.parquet"):
            manifest = {shard_location(self.output, r.uri)[1]: r.sha256 for r in read_manifest(self.output)}
        for relpath, version in fresh.items():
            payload = self.output.read_bytes(relpath)
            try:
                tar_members(payload)
                whole = relpath not in manifest or hashlib.sha256(payload).hexdigest() == manifest[relpath]
            except (tarfile.TarError, EOFError, ValueError):
                whole = False
            self.checked += 1
            self._seen.add(f"{relpath}@{version}")
            if not whole:
                self.partial.append(relpath)


# ---------------------------------------------------------------- running the jobs

def run(command: list[str], *, unprivileged: bool = False) -> tuple[int, str]:
    """(exit code, combined output) of `python -m <command...>` from the repository root; `unprivileged`: with
    mode bits that bind (see `UNPRIVILEGED`)."""
    prefix = ["setpriv", UNPRIVILEGED] if unprivileged else []
    done = subprocess.run([*prefix, sys.executable, "-u", "-m", *command], cwd=REPO_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return done.returncode, done.stdout


def require(result: tuple[int, str], what: str) -> str:
    code, out = result
    if code != 0:
        raise RuntimeError(f"{what} failed ({code}): {last_line(out)}")
    return out


def last_line(out: str) -> str:
    return (out.strip().splitlines() or ["(no output)"])[-1]


def small_corpus(work: Path) -> Path:
    """The corpus both scenarios read (made once per chaos run)."""
    corpus = work / "small-corpus"
    if not corpus.exists():
        write_corpus(SampleCorpusConfig(out=str(corpus), samples=SAMPLES, image_size=IMAGE_SIZE,
                                        samples_per_shard=SAMPLES_PER_SHARD, workers=2))
    return corpus


def config_file(path: Path, base: str, storage: StorageConfig, **sections) -> Path:
    """A job config: `base` (a file under configs/) plus a storage section and others. Credentials go in a file of
    the owner's only: a job that joins a cluster refuses them on its command line (jobs/cli.py)."""
    config = yaml.safe_load((REPO_ROOT / base).read_text()) or {}
    config.update(sections, storage={k: v.get_secret_value() if hasattr(v, "get_secret_value") else v
                                     for k, v in storage.model_dump().items() if v is not None})
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config))
    return path


# ---------------------------------------------------------------- scenario 4: S3 through a faulty proxy

def s3_faulty_proxy(cluster, corpus: Path, work: Path, args, rng) -> list[dict]:
    """Preprocess (label, tokenize) and pretrain on s3://, undisturbed and through the faulty proxy."""
    import boto3
    from moto.server import ThreadedMotoServer

    corpus = small_corpus(work)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request at INFO
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    proxy = FaultProxy(endpoint, rate=FAULT_RATE, seed=rng.randrange(2**31), delay_s=SLOW_S).start()
    try:
        direct = StorageConfig(endpoint_url=endpoint, region="us-east-1", access_key_id=secrets.token_hex(8),
                               secret_access_key=secrets.token_hex(16))
        faulty = direct.model_copy(update={"endpoint_url": proxy.url})
        bucket = "tessera-chaos"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id=direct.access_key_id.get_secret_value(),
                     aws_secret_access_key=direct.secret_access_key.get_secret_value()).create_bucket(Bucket=bucket)
        raw = Storage(f"s3://{bucket}/raw", direct)
        for path in sorted(corpus.iterdir()):
            raw.write_atomic(path.name, path.read_bytes())
        (work / "s3").mkdir()
        return s3_runs(cluster, work / "s3", bucket, direct, faulty, proxy)
    finally:
        proxy.stop()
        moto.stop()


def s3_runs(cluster, work: Path, bucket: str, direct: StorageConfig, faulty: StorageConfig, proxy) -> list[dict]:
    from pipeline.train.wordpiece import run_train_wordpiece
    from schemas.train_tokenizer import TrainTokenizerConfig

    address = ["--address", cluster.address]

    def preprocess(storage: StorageConfig, out: str, stage: str, tokenizer: str) -> tuple[int, str]:
        tokenizers = {"tokenizers": {m: tokenizer for m in TEXT_MODALITIES}} if stage == "tokenize" else {}
        config = config_file(work / f"{out}-{stage}.yaml", "configs/preprocess/default.yaml", storage, **tokenizers)
        return run(["jobs.preprocess", "--config", str(config), "--input", f"s3://{bucket}/raw", "--output",
                    f"s3://{bucket}/{out}", "--stages", stage, "--set", f"image.resolution={RESOLUTION}", *address])

    def pretrain(storage: StorageConfig, out: str) -> tuple[int, str]:
        config = config_file(work / f"{out}-pretrain.yaml", "configs/pretrain/tiny.yaml", storage)
        return run(["jobs.pretrain", "--config", str(config), "--data", f"s3://{bucket}/{out}", "--storage",
                    f"s3://{bucket}/runs-{out}", "--name", "chaos", *[f"--set={o}" for o in PRETRAIN], *address])

    tokenizer = str(work / "wordpiece")
    require(preprocess(direct, "clean", "label", tokenizer), "undisturbed s3 label")
    run_train_wordpiece(TrainTokenizerConfig(modality="caption", input=f"s3://{bucket}/clean", storage=direct,
                                             output=tokenizer, model={"vocab_size": TEXT_VOCAB}))
    require(preprocess(direct, "clean", "tokenize", tokenizer), "undisturbed s3 tokenize")
    require(pretrain(direct, "clean"), "undisturbed s3 pretrain")

    chaos = Storage(f"s3://{bucket}/chaos", direct)  # watched and checked directly, past the proxy
    started = time.perf_counter()
    with ShardWatcher(chaos) as watcher:
        for stage in ("label", "tokenize"):
            require(preprocess(faulty, "chaos", stage, tokenizer), f"s3 {stage} through the faulty proxy")
    preprocess_faults, preprocess_s = dict(proxy.counts), time.perf_counter() - started
    print(f"s3 preprocess through the proxy: {preprocess_s:.0f} s, {preprocess_faults}; shard watcher: "
          f"{watcher.checked} shard versions checked in {watcher.listings} listings, partial: {watcher.partial}, "
          f"polls that failed (retried at the next): {watcher.errors[:3]}",
          flush=True)
    ok = not watcher.partial and not corrupt_files(chaos)
    rows = [digest(chaos).compare(digest(Storage(f"s3://{bucket}/clean", direct)), SAMPLES, proxy.injected(),
                                  "s3 through a faulty proxy: preprocess (label + tokenize)", ok)]
    rows[0]["detail"] = {"faults": preprocess_faults, "shards_checked_while_written": watcher.checked,
                         "partial_shards_listed": len(watcher.partial), "listings": watcher.listings,
                         "failed_polls": len(watcher.errors)}

    before, started = proxy.injected(), time.perf_counter()
    require(pretrain(faulty, "chaos"), "s3 pretrain through the faulty proxy")
    clean, under_faults = (pretrain_result(Storage(f"s3://{bucket}/runs-{out}/chaos", direct))
                           for out in ("clean", "chaos"))
    same = same_run(clean, under_faults)
    counts = {k: v - preprocess_faults.get(k, 0) for k, v in proxy.counts.items()}
    print(f"s3 pretrain through the proxy: {time.perf_counter() - started:.0f} s, {counts}; losses "
          f"{under_faults['losses']} vs undisturbed {clean['losses']}; weights equal: {same}", flush=True)
    # As scenario 2 counts a pretrain: samples_seen at the last step, undisturbed (in) and under faults (written).
    seen, expected = under_faults["samples"], clean["samples"]
    lost, duplicated = max(expected - seen, 0), max(seen - expected, 0)
    injected = proxy.injected() - before
    rows.append({"fault": "s3 through a faulty proxy: pretrain (data + storage_path)", "injected": injected,
                 "samples in": expected, "written": seen, "quarantined": "", "lost": lost, "duplicated": duplicated,
                 "result": "pass" if same and not lost and not duplicated and injected else "FAIL",
                 "detail": {"faults": counts, "losses": under_faults["losses"], "undisturbed": clean["losses"]}})
    return rows


def pretrain_result(run: Storage) -> dict:
    """A pretrain run's logged losses and final weights, read from its run folder."""
    from safetensors.numpy import load

    from schemas.export import WEIGHTS

    summary = json.loads(run.read_bytes("summary.json"))
    losses = [(row["step"], row["loss"]) for row in map(json.loads, run.read_bytes("metrics.jsonl").splitlines())]
    checkpoint = Storage(summary["checkpoint"], run.config)
    last = json.loads(run.read_bytes("metrics.jsonl").splitlines()[-1])
    return {"losses": losses, "samples": last["samples_seen"], "weights": load(checkpoint.read_bytes(WEIGHTS))}


def same_run(a: dict, b: dict) -> bool:
    """Same steps, same losses, same weights (to float32 rounding: the tolerances of tests/test_pretrain.py)."""
    import numpy as np

    steps_a, losses_a = zip(*a["losses"])
    steps_b, losses_b = zip(*b["losses"])
    return (steps_a == steps_b and np.allclose(losses_a, losses_b, rtol=1e-6, atol=0)
            and a["weights"].keys() == b["weights"].keys()
            and all(np.allclose(a["weights"][k], b["weights"][k], rtol=1e-5, atol=1e-6) for k in a["weights"]))


# ---------------------------------------------------------------- scenario 5: disk full, permission denied

def disk_full_and_permission_denied(cluster, corpus: Path, work: Path, args, rng) -> list[dict]:
    """A preprocess whose output is a tmpfs too small for it, then one into a folder it may not write; each fixed
    (tmpfs grown, folder handed over) and rerun."""
    root = work / "disk"
    root.mkdir()
    command = ["jobs.preprocess", "--input", str(small_corpus(work)), "--set", f"image.resolution={RESOLUTION}"]
    require(run([*command, "--output", str(root / "clean"), "--address", cluster.address]), "undisturbed preprocess")
    clean = digest(Storage(str(root / "clean"), StorageConfig()))
    return [disk_full(cluster, root, command, clean), permission_denied(root, command, clean)]


def disk_full(cluster, root: Path, command: list[str], clean: Digest) -> dict:
    size = sum(p.stat().st_size for p in (root / "clean").rglob("*") if p.is_file())
    mount = root / "small-disk"
    mount.mkdir()
    # 40% of what the output needs: the job gets well under way before the disk is full.
    mount_tmpfs("-t", "tmpfs", "-o", f"size={size * 2 // 5 // 4096 * 4096}", "tmpfs", str(mount))
    try:
        job = [*command, "--output", str(mount / "out"), "--address", cluster.address]
        return failed_then_fixed("disk full (small tmpfs) on output", "No space left on device", run(job),
                                 lambda: mount_tmpfs("-o", f"remount,size={size * 2}", str(mount)),
                                 lambda: run(job), Storage(str(mount / "out"), StorageConfig()), clean)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def mount_tmpfs(*args: str) -> None:
    done = subprocess.run(["mount", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mount {' '.join(args)}: {last_line(done.stdout)} (the disk-full scenario runs as root)")


def permission_denied(root: Path, command: list[str], clean: Digest) -> dict:
    """The output's parent belongs to another user (mode 755). Root would write there anyway, so the job runs
    without the capabilities that let it (`UNPRIVILEGED`; the Ray workers it starts inherit the restriction) on a
    local Ray instance of its own: the cluster's workers keep them."""
    shared = root / "shared"
    shared.mkdir(mode=0o755)
    os.chown(shared, NOBODY, NOBODY)
    job = [*command, "--output", str(shared / "out"), "--set", "ray.num_cpus=2"]
    return failed_then_fixed("permission denied on output", "Permission denied", run(job, unprivileged=True),
                             lambda: os.chown(shared, os.getuid(), os.getgid()),
                             lambda: run(job, unprivileged=True), Storage(str(shared / "out"), StorageConfig()),
                             clean)


def failed_then_fixed(fault: str, expected: str, first: tuple[int, str], fix, rerun, output: Storage,
                      clean: Digest) -> dict:
    """The row of a fault that must stop the job with one clear line naming `expected`, leave nothing corrupt, and
    let a rerun after `fix()` write the undisturbed run's shards."""
    code, out = first
    line = last_line(out)
    clear = code != 0 and line.startswith("error: ") and expected in line and "Traceback" not in line
    left = output.list() if output.exists() else []
    corrupt = corrupt_files(output) if left else []
    print(f"{fault}: exit {code}, last line: {line[:300]}; left {len(left)} files ("
          f"{sum(p.endswith('.tar') for p in left)} shards), corrupt: {corrupt}", flush=True)
    fix()
    rerun_out = require(rerun(), f"rerun after fixing {fault}")
    print(f"{fault}, rerun: {last_line(rerun_out)[:300]}", flush=True)
    row = digest(output).compare(clean, SAMPLES, 1, fault, clear and not corrupt)
    row["detail"] = {"exit_code": code, "last_line": line, "files_left": len(left), "corrupt_files_left": corrupt}
    return row
