"""The processes of one local Ray node, and how to stop them for sure.

A node is its `ray start --block` process (the leader of a session of its own), everything below it, and any
survivors of its process group. Pids are matched with their start time so a reused pid is never signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable

import psutil


@dataclasses.dataclass
class NodeProcess:
    """One node: its `ray start --block` process (a session and process-group leader) and where it writes."""

    name: str  # also the Ray node name: ray.nodes()[i]["NodeName"]
    pid: int
    create_time: float  # tells our process from a later one that reuses the pid
    temp_dir: str
    log_path: str  # `ray start` console output; Ray's own logs are under temp_dir
    killed: bool = False

    def leader(self) -> psutil.Process | None:
        """The node's `ray start` process, while it runs."""
        try:
            proc = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return None
        return proc if abs(proc.create_time() - self.create_time) <= 0.01 and alive(proc) else None

    def processes(self) -> list[psutil.Process]:
        """The node's live processes: the leader, its descendants (the raylet's workers start sessions of their
        own, so the process group alone misses them) and its process group (orphans of a leader that died)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            if abs(psutil.Process(self.pid).create_time() - self.create_time) > 0.01:
                return []  # Linux hands our pid to a new process only once no process of our group is left
        leader = self.leader()
        found = {proc.pid: proc for proc in [leader, *leader.children(recursive=True)]} if leader else {}
        for proc in psutil.process_iter():
            if proc.pid not in found and proc.pid != self.pid and _pgid(proc) == self.pid and alive(proc):
                found[proc.pid] = proc
        return list(found.values())


def stop_processes(procs: list[psutil.Process], leaders: set[int], grace_s: float) -> None:
    """SIGTERM the leaders, give them grace_s to stop their nodes, then SIGKILL whatever is left."""
    if grace_s > 0:
        for proc in procs:
            if proc.pid in leaders:
                _signal(proc, psutil.Process.terminate)
        procs = _wait_gone(procs, grace_s)
    for proc in procs:
        _signal(proc, psutil.Process.kill)
    if alive := _wait_gone(procs, timeout_s=10):
        raise RuntimeError(f"processes survived SIGKILL: {[proc.pid for proc in alive]}")


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until the processes are gone; return those still alive at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.wait(timeout=0)  # reaps it if it is our child (a leader), else just checks
        procs = [proc for proc in procs if alive(proc)]
        if not procs or time.monotonic() > deadline:
            return procs
        time.sleep(0.05)


def _signal(proc: psutil.Process, send: Callable[[psutil.Process], None]) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        send(proc)  # psutil refuses if the pid now belongs to another process


def alive(proc: psutil.Process) -> bool:
    """Running, and still the process we met (not a later one with its pid). A zombie counts as gone: it runs
    nothing, and reaping it is up to its parent (init, for orphans, which can take its time)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except ProcessLookupError:
        return None


def die_with_parent() -> None:
    """Runs in a node's `ray start` between fork and exec: Linux kills it when its parent dies, so that a crashed
    test run leaves no cluster behind. Ray's own processes die with `ray start` (Ray sets the same signal on
    them); only the dashboard and runtime-env agents linger, about a minute, waiting for the GCS that is gone.
    SIGKILL, because a graceful stop blocks on that GCS too."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1
# Looked up before any fork: the child may only make the call, not load libraries.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


CAN_DIE_WITH_PARENT = _prctl is not None
