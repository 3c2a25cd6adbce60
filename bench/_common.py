"""Shared pieces of the training benchmarks: the job's config, model size and random batches, memory probes, a
2-rank launcher with a memory guard.

The benchmarks train the model that ships (`pipeline/model`, sizes from its registry `pipeline/model/sizes.py`) on
the S recipe's modalities; there is no stand-in model.
"""

from __future__ import annotations

import gc
import os
import re
import threading
import time

import numpy as np
import psutil
import torch

from bench.loader import token_row
from bench.pretrain_job import MODALITIES
from pipeline.data.loader import to_torch
from pipeline.data.masking import Masker
from pipeline.model.sizes import param_counts, resolve
from schemas.batch import ModalitySpec, ModalityTable
from schemas.loading import LoaderConfig, MaskingConfig
from schemas.model import ModelConfig
from schemas.pretrain import PretrainConfig, ZeroConfig

GiB = 1024 ** 3


# ---------------------------------------------------------------- the job's model on random tokens

def job_config(size: str, stage: int, batch: int, tokens: int, dtype: str = "fp32",
               modalities: tuple[str, ...] = MODALITIES) -> PretrainConfig:
    """The pretrain config a memory benchmark stands for: the real model of the size registry (pipeline/model) on
    the S recipe's modalities, `tokens` input and `tokens` target slots per sample, the job's ZeRO settings."""
    return PretrainConfig(
        name="bench", modalities=modalities, precision=dtype, model=ModelConfig(size=size),
        masking=MaskingConfig(input_tokens=tokens, target_tokens=tokens), loader=LoaderConfig(batch_size=batch),
        zero=ZeroConfig(stage=stage))


def job_table(config: PretrainConfig) -> ModalityTable:
    """The run's modality table at the registry's token counts (224 px: 196 tokens per image-like map)."""
    return ModalityTable.of(ModalitySpec.from_registry(name) for name in config.modalities)


def param_count(config: PretrainConfig) -> int:
    """Parameters of the job's model, by the closed form that tests/test_sizes.py checks against the built model."""
    vocab_sizes = [spec.vocab_size for spec in job_table(config).specs]
    return param_counts(resolve(config.model), vocab_sizes)["params_total"]


def random_batch(config: PretrainConfig, seed: int) -> dict[str, torch.Tensor]:
    """One batch of random samples (every modality present, token rows as bench/loader.py writes them) through
    the job's own masking and packing, so its shape and padding are what the training loop feeds."""
    rng = np.random.default_rng(seed)
    samples = [{name: token_row(name, rng)[0] for name in config.modalities} for _ in range(config.loader.batch_size)]
    return to_torch(Masker(job_table(config), config.masking).batch(samples, rng))


# ---------------------------------------------------------------- memory probes

def _status_kib(field: str) -> int:
    text = open("/proc/self/status").read()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def rss() -> int:
    return _status_kib("VmRSS") * 1024


def rss_peak() -> int:
    """RSS high-water mark of this process (VmHWM) since start or the last `reset_rss_peak`."""
    return _status_kib("VmHWM") * 1024


def reset_rss_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0), so a phase's own peak can be read.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def live_tensor_bytes(groups: dict[str, list[torch.Tensor]], report_other: bool = False) -> dict[str, int]:
    """Bytes of every live tensor storage reachable from Python, split by the named groups (first match wins).

    Storages are deduplicated, so flat buffers and the views that parameters are made of count once.
    Whatever no group claims is reported as "other" (communication buckets, temporaries, activations kept alive).
    """
    owner: dict[int, str] = {}
    for name, tensors in groups.items():
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                owner.setdefault(t.untyped_storage().data_ptr(), name)
    seen: dict[int, tuple[str, int]] = {}
    gc.collect()
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu" or obj.is_meta:
                continue
            st = obj.untyped_storage()
        except Exception:
            continue
        ptr = st.data_ptr()
        if ptr and ptr not in seen:
            seen[ptr] = (owner.get(ptr, "other"), st.nbytes())
            if report_other and ptr not in owner and st.nbytes() > 16 << 20:
                print(f"    other: {tuple(obj.shape)} {obj.dtype} {st.nbytes() / 2**20:.0f} MiB", flush=True)
    # Tensors held only by groups (e.g. .grad, optimizer state inside dicts) are not always gc-tracked objects.
    for name, tensors in groups.items():
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                ptr = t.untyped_storage().data_ptr()
                if ptr and ptr not in seen:
                    seen[ptr] = (name, t.untyped_storage().nbytes())
    out = {name: 0 for name in groups} | {"other": 0}
    for name, nbytes in seen.values():
        out[name] += nbytes
    return out


class MemoryGuard:
    """Kills the given processes (and their children) if their summed RSS passes `limit` bytes.

    This machine is shared and has no cgroup scopes for users, so a run that overshoots must end itself before the
    kernel's OOM killer picks someone else's process.
    """

    def __init__(self, pids: list[int], limit: int, period: float = 0.2):
        self.pids, self.limit, self.period = pids, limit, period
        self.peak_total = 0
        self.tripped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _procs(self) -> list[psutil.Process]:
        procs = []
        for pid in self.pids:
            try:
                p = psutil.Process(pid)
                procs += [p] + p.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        return procs

    def _watch(self) -> None:
        while not self._stop.is_set():
            total = 0
            procs = self._procs()
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak_total = max(self.peak_total, total)
            if total > self.limit:
                self.tripped = True
                for p in procs:
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass
                return
            time.sleep(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def check_free_memory(needed: int) -> None:
    """Refuse to start a run that would leave this shared machine with less than 4 GiB available."""
    available = psutil.virtual_memory().available
    if available < needed + 4 * GiB:
        raise SystemExit(f"only {available / GiB:.1f} GiB available; this run needs {needed / GiB:.1f} GiB + 4 GiB "
                         f"headroom -- try again later or with a smaller size")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_rank_env(rank: int, world: int, port: int) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))


class SelfRssLimit:
    """Kill this process if its own RSS passes `limit` bytes, after writing the figure to `marker` (if given).

    Used inside Ray Train workers, whose pids the driver does not know: an overrun ends only this run.
    """

    def __init__(self, limit: int, marker: str | None = None, period: float = 0.2):
        self.limit, self.marker, self.period = limit, marker, period
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        import signal

        while True:
            now = rss()
            if now > self.limit:
                if self.marker:
                    with open(self.marker, "w") as f:
                        f.write(str(now))
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(self.period)


class SavedTensorBytes:
    """Bytes autograd saves for backward while the block runs (activations), each storage counted once.

    Tensors whose storage is in `exclude` (parameters and flat parameter buffers: a Linear saves its weight) are
    model states, not activations, and are skipped.
    """

    def __init__(self, exclude: set[int] = frozenset()):
        self.nbytes = 0
        self._seen: set[int] = set(exclude)

    def _pack(self, t: torch.Tensor):
        if t.device.type == "cpu":
            st = t.untyped_storage()
            if st.data_ptr() not in self._seen:
                self._seen.add(st.data_ptr())
                self.nbytes += st.nbytes()
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
