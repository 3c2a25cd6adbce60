"""Shared pieces of the training benchmarks: a stand-in model, memory probes, a 2-rank launcher with a memory guard.

The stand-in is the 4M shape (encoder + decoder of pre-norm blocks, bias-free LayerNorm, SwiGLU MLP with hidden
2/3 x 4d, no biases, decoder cross-attends to the encoder, `scaled_dot_product_attention`), so its parameter count
per size matches the paper's: B 198M, L 705M in the blocks. It is used where `pipeline/model` is not available.
"""

from __future__ import annotations

import gc
import os
import re
import threading
import time
from dataclasses import dataclass

import psutil
import torch
import torch.nn.functional as F
from torch import nn

GiB = 1024 ** 3


@dataclass(frozen=True)
class Flavor:
    enc_blocks: int
    dec_blocks: int
    width: int
    heads: int
    vocab: int = 8192


# Same block counts and widths as 4M's B and L; S is a small size of the same shape (the pretrain configs' S).
FLAVORS = {
    "tiny": Flavor(2, 2, 128, 4, 1024),
    "S": Flavor(6, 6, 512, 8),
    "B": Flavor(12, 12, 768, 12),
    "L": Flavor(24, 24, 1024, 16),
}


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class SwiGLU(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        hidden = int(2 * 4 * width / 3)
        self.gate_up = nn.Linear(width, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, cross: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, bias=False)
        self.attn = Attention(width, heads)
        self.cross = Attention(width, heads) if cross else None
        self.norm_c = nn.LayerNorm(width, bias=False) if cross else None
        self.norm2 = nn.LayerNorm(width, bias=False)
        self.mlp = SwiGLU(width)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h)
        if self.cross is not None:
            x = x + self.cross(self.norm_c(x), memory)
        return x + self.mlp(self.norm2(x))


class EncoderDecoder(nn.Module):
    """Masked encoder-decoder of the 4M shape: tokens in, per-target-slot logits out."""

    def __init__(self, flavor: Flavor):
        super().__init__()
        self.embed = nn.Embedding(flavor.vocab, flavor.width)
        self.encoder = nn.ModuleList(Block(flavor.width, flavor.heads, False) for _ in range(flavor.enc_blocks))
        self.decoder = nn.ModuleList(Block(flavor.width, flavor.heads, True) for _ in range(flavor.dec_blocks))
        self.norm = nn.LayerNorm(flavor.width, bias=False)
        self.head = nn.Linear(flavor.width, flavor.vocab, bias=False)

    def forward(self, enc_tokens: torch.Tensor, dec_input: torch.Tensor, dec_target: torch.Tensor) -> torch.Tensor:
        x = self.embed(enc_tokens)
        for block in self.encoder:
            x = block(x)
        y = self.embed(dec_input)
        for block in self.decoder:
            y = block(y, x)
        logits = self.head(self.norm(y))
        return F.cross_entropy(logits.flatten(0, 1), dec_target.flatten())


def build_model(size: str) -> nn.Module:
    return EncoderDecoder(FLAVORS[size])


def param_count(size: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(size).parameters())


def random_batch(size: str, batch: int, tokens: int, seed: int) -> dict[str, torch.Tensor]:
    vocab = FLAVORS[size].vocab
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randint(0, vocab, (batch, tokens), generator=g) for k in ("enc_tokens", "dec_input", "dec_target")}


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
