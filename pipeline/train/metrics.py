"""A pretrain run's metrics in its run directory (local or s3://): `metrics.jsonl`, TensorBoard events under `tb/`,
and the driver's `loss.png`. Written through `Storage`, so they land beside the checkpoints wherever rank 0 runs."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.data.storage import Storage
from schemas.preprocess import StorageConfig

METRICS = "metrics.jsonl"
EVENTS = "tb"  # `tensorboard --logdir RUN_DIR/tb`
PLOT = "loss.png"


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
                self.events.add_scalar(name.replace("loss_", "loss/"), value, step)
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


def plot_loss(metrics: list[dict], run: Storage) -> None:
    """loss.png in the run directory: the total loss and each modality's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([m["step"] for m in metrics])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [m["loss"] for m in metrics], label="loss", linewidth=2)
    for name in sorted({k for m in metrics for k in m if k.startswith("loss_")}):
        ax.plot(steps, [m.get(name, np.nan) for m in metrics], label=name[5:], alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as scratch:
        fig.savefig(f"{scratch}/{PLOT}", dpi=120)
        run.write_atomic(PLOT, Path(scratch, PLOT).read_bytes())
    plt.close(fig)
