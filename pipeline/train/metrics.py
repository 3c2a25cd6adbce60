"""A pretrain run's metrics in its run directory (local or s3://): `metrics.jsonl`, TensorBoard events under `tb/`,
and the driver's loss plots. Written through `Storage`, so they land beside the checkpoints wherever rank 0 runs;
progress lines go to the console (`print_progress`)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.data.storage import Storage
from schemas.common import StorageConfig

METRICS = "metrics.jsonl"
EVENTS = "tb"  # `tensorboard --logdir RUN_DIR/tb`
PLOT = "loss.png"
# The x axes a loss curve can have: a metrics row's column for each. Runs of different sizes compare against tokens
# or FLOPs, not steps.
X_AXES = {"step": "step", "tokens": "tokens_seen", "flops": "flops_seen"}
# TensorBoard steps are int64: FLOPs pass 9.2e18 in a large run, so the FLOPs axis counts GFLOPs.
BY = {"by_tokens": ("tokens_seen", 1), "by_gflops": ("flops_seen", 1e9)}


def print_progress(line: str) -> None:
    """A progress line from a Ray Train worker, printed once. Ray Train V2 swaps `print` in its workers for one that,
    because Ray has replaced sys.stdout there, both prints and logs to the console: every line reached the driver
    twice. The process's own stdout passes through that patch untouched and is still forwarded to the driver (and a
    submitted job's log), without turning off Ray's capture of everything else."""
    print(line, file=sys.__stdout__, flush=True)


def plot_name(x: str) -> str:
    return PLOT if x == "step" else f"loss_by_{x}.png"


class RunMetrics:
    """Rank 0's writer. S3 has no append, so a flush rewrites the JSONL whole in one atomic commit and copies up the
    TensorBoard event files, which TensorBoard writes to a local scratch directory. On local storage every log
    flushes; on remote storage at most every `remote_flush_s` seconds, and always when asked (at checkpoints and
    at the end), so that a long run logging often uploads a bounded number of times, not once per log row."""

    def __init__(self, run: Storage, remote_flush_s: float = 30.0):
        from tensorboardX import SummaryWriter

        self.run = run
        # A resumed run continues the rows it already has, including those past its checkpoint (they are history).
        self.rows = read_metrics(run.uri(METRICS), run.config)
        self._scratch = tempfile.TemporaryDirectory(prefix="tessera-tb-")
        self.events = SummaryWriter(self._scratch.name)
        self.flush_every_s = remote_flush_s if run.is_remote else 0.0
        self._flushed_at = time.monotonic()

    def log(self, report: dict, flush: bool = False) -> None:
        self.rows.append(report)
        step = report["step"]
        for name, value in report.items():
            if name == "peak_rss_gib_by_rank":
                for rank, gib in enumerate(value):
                    self.events.add_scalar(f"peak_rss_gib/rank{rank}", gib, step)
            elif name != "step":
                # One TensorBoard group per family: loss/<modality>, mask_share/<strategy>.
                self.events.add_scalar(name.replace("loss_", "loss/").replace("mask_share_", "mask_share/"), value,
                                       step)
        # The losses again against tokens and FLOPs seen, so that runs of different sizes share an x axis.
        for prefix, (column, unit) in BY.items():
            if column in report:
                for name, value in report.items():
                    if "loss" in name:
                        self.events.add_scalar(f"{prefix}/{name}", value, int(report[column] / unit))
        if flush or time.monotonic() - self._flushed_at >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        self.run.write_atomic(METRICS, "".join(json.dumps(row) + "\n" for row in self.rows).encode())
        self.events.flush()
        for path in Path(self._scratch.name).iterdir():  # one file per writer process, so names never collide
            self.run.write_atomic(f"{EVENTS}/{path.name}", path.read_bytes())
        self._flushed_at = time.monotonic()


def read_metrics(uri: str | Path, storage: StorageConfig | None = None) -> list[dict]:
    """The rows of a metrics.jsonl (a local path or s3:// URI); none if it does not exist yet."""
    directory, _, name = str(uri).rpartition("/")
    files = Storage(directory or ".", storage or StorageConfig())
    if not files.exists(name):
        return []
    return [json.loads(line) for line in files.read_bytes(name).decode().splitlines()]


def plot_loss(metrics: list[dict], run: Storage, x: str = "step") -> str:
    """The total training loss and each modality's, and the held-out losses where validated, against `x` (step,
    tokens or flops: `X_AXES`), as a PNG in the run directory; returns its name (`plot_name(x)`). Rows without the
    x column (older runs) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column = X_AXES[x]
    metrics = [m for m in metrics if column in m]
    xs = np.array([m[column] for m in metrics], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, [m["loss"] for m in metrics], label="loss", linewidth=2)
    for name in sorted({k for m in metrics for k in m if k.startswith("loss_")}):
        ax.plot(xs, [m.get(name, np.nan) for m in metrics], label=name[5:], alpha=0.6)
    validated = [(value, m["val_loss"]) for value, m in zip(xs, metrics) if "val_loss" in m]
    if validated:
        ax.plot(*zip(*validated), "o--", color="black", label="held-out", linewidth=1.5)
    ax.set_xlabel(column.replace("_", " "))
    if x != "step":
        ax.set_xscale("log")
    ax.set_ylabel("cross-entropy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    name = plot_name(x)
    with tempfile.TemporaryDirectory() as scratch:
        fig.savefig(f"{scratch}/{name}", dpi=120)
        run.write_atomic(name, Path(scratch, name).read_bytes())
    plt.close(fig)
    return name
