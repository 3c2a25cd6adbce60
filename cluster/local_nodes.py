"""Launching one node of a local cluster (cluster/local.py): its `ray start --block` command and environment.

A node is a `python -m cluster.loopback start --block ...` process in a session of its own, so that it can be
killed alone; its environment pins token auth, the token file and the cluster's own GCS address.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from cluster.connect import AUTH_MODE_ENV, TOKEN_PATH_ENV
from cluster.loopback import ENABLE_CLUSTER_ENV, LOOPBACK
from cluster.processes import CAN_DIE_WITH_PARENT, NodeProcess, die_with_parent

if TYPE_CHECKING:
    from cluster.local import ClusterSpec

MIB = 1024 * 1024
GCS_WAIT_S = 180


def spawn_node(name: str, role_args: list[str], spec: ClusterSpec, temp_dir: Path, log_path: Path,
               env: dict[str, str], *, detach: bool) -> NodeProcess:
    """Start one node's `ray start --block` (head or worker, by `role_args`) with its output in `log_path`.

    detach: let it outlive this process; otherwise Linux kills it when this process dies.
    """
    command = [
        sys.executable, "-m", "cluster.loopback", "start", "--block",  # Ray's `ray start`, loopback kept
        *([] if spec.listen_all_interfaces else [f"--node-ip-address={LOOPBACK}"]),
        f"--node-name={name}",
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={spec.object_store_mb * MIB}",
        "--disable-usage-stats",
        # Random ports, so that nodes sharing one machine never collide.
        "--min-worker-port=0", "--max-worker-port=0", "--dashboard-agent-listen-port=0",
        *role_args,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killable alone, deaf to our terminal's signals
            preexec_fn=None if detach or not CAN_DIE_WITH_PARENT else die_with_parent,
        )
    return NodeProcess(name, popen.pid, psutil.Process(popen.pid).create_time(), str(temp_dir), str(log_path))


def node_env(spec: ClusterSpec, gcs_address: str, token_path: str | None) -> dict[str, str]:
    """The caller's environment (Ray reads its config from there) with token auth on, the token file pinned (so
    that every node and every worker process it spawns checks the same token) and RAY_ADDRESS set to this
    cluster's GCS."""
    env = dict(os.environ)
    # A node joins the address it is given. What runs on it and looks its cluster up without an address (Ray
    # Train V2's placement-group cleaner, through the State API; a job's `ray.init()`) reads RAY_ADDRESS first,
    # and otherwise scans the machine's processes for GCS servers: with a second Ray instance on the machine
    # that scan fails ("Found multiple active Ray instances"), or would find the wrong one.
    env["RAY_ADDRESS"] = gcs_address
    env[AUTH_MODE_ENV] = "token"
    # On SIGTERM, `ray start` first drains its node for up to 30 s (for Serve on Kubernetes), and waits out
    # that whole time when the head is gone too, as when the process that started the cluster dies.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    # A node's `ray start` gives up on the GCS after ~20 s of failed connects; on a loaded machine the GCS has
    # taken longer to come up. Our own timeouts (`start`, `wait_for_nodes`) decide instead.
    env["RAY_gcs_server_port_wait_time_s"] = str(GCS_WAIT_S)
    # "0": the node's processes that join by the GCS address keep "127.0.0.1" (Ray's Linux default swaps it for
    # the outward address, where a loopback node does not listen): the dashboard agent running a Jobs API
    # submission (which hung there) and a job's `ray.init("auto")`. See cluster/loopback.py.
    env[ENABLE_CLUSTER_ENV] = "1" if spec.listen_all_interfaces else "0"
    if token_path is not None:
        env[TOKEN_PATH_ENV] = token_path
    # Jobs submitted to this cluster run `python ...`: make that the interpreter the nodes run on (the venv's,
    # even when it was never activated), as `python` on a real cluster node is the one Ray was installed into.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def check_running(node: NodeProcess) -> None:
    """Raise with the end of its log if the node's `ray start` has exited."""
    if node.leader() is None:
        tail = Path(node.log_path).read_text(errors="replace")[-3000:]
        raise RuntimeError(f"node {node.name} exited; end of {node.log_path}:\n{tail}")
