"""Connect a job's driver to Ray: an existing cluster by address, or a fresh local instance.

Every job goes through `connect` (or `connected`) so that two rules hold everywhere:

- no address means a new local instance. Plain `ray.init()` would instead join whatever it finds through
  RAY_ADDRESS or /tmp/ray/ray_current_cluster, so a job could land on a stray cluster by accident;
- Ray token authentication stays on (RAY_AUTH_MODE=token), for local instances and remote clusters alike;
- a private instance listens on 127.0.0.1 only (cluster/loopback.py), unless the job asks for all interfaces.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, TypedDict

import ray

from cluster.loopback import ENABLE_CLUSTER_ENV, LOOPBACK, keep_loopback

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


class ClusterSummary(TypedDict):
    """What a job prints about the cluster it runs on."""

    address: str
    nodes: int  # alive nodes
    resources: dict[str, float]
    # local: this call started a private instance; remote: it joined a running cluster;
    # existing: the process was already connected (a test session, a notebook) and the connection is reused.
    mode: Literal["local", "remote", "existing"]


def token_path() -> Path | None:
    """The file this process reads its Ray auth token from, or None when RAY_AUTH_TOKEN holds the token itself.

    Same precedence as Ray's own loader: RAY_AUTH_TOKEN, then RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token.
    """
    if os.environ.get(TOKEN_ENV):
        return None
    return Path(os.environ.get(TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token")


def require_token_auth(*, create_token: bool) -> Path | None:
    """Turn Ray token auth on for this process and the processes it starts; return the token file in use.

    create_token: write a fresh token if none exists (for clusters we start). A driver joining a remote cluster
    must already hold that cluster's token, so there it is an error instead.
    """
    # Imported here: these are Ray internals, and only this function needs them.
    from ray._raylet import AuthenticationTokenLoader, Config

    mode = os.environ.get(AUTH_MODE_ENV, "token")
    if mode.lower() != "token":
        raise RuntimeError(
            f"{AUTH_MODE_ENV}={mode!r}, but Tessera keeps Ray token authentication on: unset it or set it to 'token'."
        )
    # Ray reads the mode from the environment: Ray processes we spawn inherit it, and this process caches its
    # config when `ray` is imported, hence the re-initialize (what ray.init does when it enables auth itself);
    # never under a live connection, which was set up with the config it has.
    os.environ[AUTH_MODE_ENV] = "token"
    if not ray.is_initialized():
        Config.initialize("")
    path = token_path()
    # Checked here rather than with Ray's loader, which raises when RAY_AUTH_TOKEN_PATH names a missing file.
    if path is not None and not (path.is_file() and path.stat().st_size > 0):
        if not create_token:
            raise RuntimeError(
                f"Ray token auth is on but there is no token in {path} (nor in {TOKEN_ENV}); "
                "copy the cluster's token there."
            )
        _write_new_token(path)
    AuthenticationTokenLoader.instance().reset_cache()  # it may hold a token read from another source
    return path


def _write_new_token(path: Path) -> None:
    # Same format as `ray get-auth-token --generate`, but readable by the owner only (Ray's writer uses the umask).
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process is writing it; overwriting would leave the two with different tokens
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def connect(
    address: str | None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    listen_all_interfaces: bool = False,
) -> ClusterSummary:
    """Connect this driver to Ray and return a summary to print.

    address: a cluster's GCS address ("host:port") or "auto" to join a running cluster; None or "local" to start
    a private local instance sized by num_cpus / object_store_memory (bytes), whatever RAY_ADDRESS says.
    listen_all_interfaces: let that private instance's ports listen on every interface, not 127.0.0.1 only.
    If the process is already connected, that connection is reused, unless `address` names another cluster.
    """
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "auto", "local", current):
            raise RuntimeError(f"already connected to Ray at {current}, not {address}; call ray.shutdown() first")
        return summarize("existing")
    keep_loopback()  # also for joining: "127.0.0.1:PORT" must reach a cluster that listens on loopback only
    if address in (None, "local"):
        require_token_auth(create_token=True)
        # The instance's processes inherit this environment; those that join it by address (the dashboard's Train
        # and Data pages, which hung) must keep 127.0.0.1 too (cluster/loopback.py).
        os.environ[ENABLE_CLUSTER_ENV] = "1" if listen_all_interfaces else "0"
        # "local" (not None) is what keeps ray.init from following RAY_ADDRESS or the last `ray start`.
        ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            # On, on localhost only: the dashboard serves the State API, which Ray Train's placement-group cleaner
            # polls (without it, it warns every few seconds) and `ray list ...` reads.
            include_dashboard=True,
            dashboard_host=LOOPBACK,
            # The node's address decides where all its other ports listen (cluster/loopback.py).
            _node_ip_address=None if listen_all_interfaces else LOOPBACK,
        )
        return summarize("local")
    if num_cpus is not None or object_store_memory is not None or listen_all_interfaces:
        raise ValueError("num_cpus, object_store_memory and listen_all_interfaces shape a local instance; "
                         "a running cluster has its own")
    require_token_auth(create_token=False)
    ray.init(address=address)
    return summarize("remote")


@contextlib.contextmanager
def connected(
    address: str | None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    listen_all_interfaces: bool = False,
) -> Iterator[ClusterSummary]:
    """`connect`, then on exit undo only what it did: stop the local instance it started, or drop the connection
    it opened; a connection that existed before is left alone."""
    summary = connect(address, num_cpus=num_cpus, object_store_memory=object_store_memory,
                      listen_all_interfaces=listen_all_interfaces)
    try:
        yield summary
    finally:
        if summary["mode"] != "existing":
            ray.shutdown()


def summarize(mode: Literal["local", "remote", "existing"]) -> ClusterSummary:
    """Summary of the cluster this process is connected to."""
    return ClusterSummary(
        address=ray.get_runtime_context().gcs_address,
        nodes=sum(1 for node in ray.nodes() if node["Alive"]),
        resources=ray.cluster_resources(),
        mode=mode,
    )
