"""Keep a Ray node on 127.0.0.1, so that the ports of a private instance or a local cluster answer this machine only.

Every Ray server decides where to listen from its node's IP address: on 127.0.0.1 the GCS, raylet, object manager,
worker, dashboard-agent, runtime-env-agent, metrics and Ray-client ports bind 127.0.0.1; on any other address they
bind all interfaces (0.0.0.0 / ::), where the metrics ports answer without the cluster's token. Ray 2.60 never lets
a node have 127.0.0.1 on Linux: `ray.init(_node_ip_address=...)`, `ray start --node-ip-address=...` and every
bootstrap address pass through `ray._private.services.resolve_ip_for_localhost`, which swaps a loopback host for the
machine's outward IP (so that other machines can reach the node; macOS and Windows keep loopback). `keep_loopback`
makes that function leave loopback hosts alone, in this process: a node started with 127.0.0.1 keeps it, and a
driver given "127.0.0.1:PORT" dials 127.0.0.1, where a loopback GCS listens. Other hosts resolve as before.

`python -m cluster.loopback start ...` is Ray's own `ray start` with this in place (cluster/local.py runs its nodes
so). Most processes a node spawns are handed its address and resolve nothing; those that do (the dashboard agent
when it runs a Jobs API submission, the dashboard's Train and Data pages, a job's `ray.init("auto")`) keep loopback
through ENABLE_CLUSTER_ENV=0, Ray's own switch for the macOS/Windows behaviour, which cluster/local.py and
cluster/connect.py put in the environment of the loopback nodes they start.
`free_ports` picks the ports a local head is given.
"""

from __future__ import annotations

import functools
import socket
import sys

from ray._private import ray_constants, services

LOOPBACK = "127.0.0.1"
# "0": resolve localhost hosts to 127.0.0.1 in every Ray process that inherits it, as on macOS and Windows.
ENABLE_CLUSTER_ENV = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR


def keep_loopback() -> None:
    """Make Ray keep loopback hosts as they are, in this process (idempotent)."""
    resolve = services.resolve_ip_for_localhost
    if getattr(resolve, "keeps_loopback", False):
        return

    @functools.wraps(resolve)
    def resolve_keeping_loopback(host: str) -> str:
        return LOOPBACK if host in (LOOPBACK, "localhost") else resolve(host)

    resolve_keeping_loopback.keeps_loopback = True  # type: ignore[attr-defined]
    services.resolve_ip_for_localhost = resolve_keeping_loopback


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports, held open together while picked so none is handed out twice. Still racy (a
    port free now may be taken before Ray binds it), as Ray's own port picking is: callers retry."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def main() -> None:
    """`ray <args>` (Ray's CLI) with loopback kept."""
    from ray.scripts.scripts import main as ray_cli

    keep_loopback()
    # With ENABLE_CLUSTER_ENV=0 inherited, `ray start --address` refuses to add a node ("multi-node clusters are not
    # supported on Windows and OSX"); the node's own loopback comes from keep_loopback, so let it start as on Linux.
    ray_constants.ENABLE_RAY_CLUSTER = True
    sys.argv[0] = "ray"
    ray_cli()


if __name__ == "__main__":
    main()
