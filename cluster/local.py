"""A multi-node Ray cluster on one machine: a head and N worker nodes, each its own `ray start --block`.

Every node runs in a session of its own, so one node can be killed to simulate a node failure, and `down` stops
exactly this cluster's processes, never another Ray instance on the machine (`cluster/local_nodes.py` launches one
node). The address, pids and temp dir are kept in `<state dir>/state.json`, so `down` and `status` also work from
another process:

    python -m cluster.local up --nodes 2 [--cpus-per-node 1] [--object-store-mb 200] [--state-dir DIR]
                               [--listen-all-interfaces]
    python -m cluster.local status [--state-dir DIR]
    python -m cluster.local down [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cluster.command import run_command
from cluster.connect import AUTH_MODE_ENV, TOKEN_PATH_ENV, require_token_auth
from cluster.local_nodes import check_running, node_env, spawn_node
from cluster.loopback import ENABLE_CLUSTER_ENV, LOOPBACK, free_ports
from cluster.processes import NodeProcess, stop_processes

# What a head process logs when a port picked as free was taken before it bound: the GCS says the first, Ray's
# client server the second.
PORT_TAKEN = ("address already in use", "failed to bind to address")

DEFAULT_STATE_DIR = Path(".tessera/cluster")
HEAD = "head"
MIN_OBJECT_STORE_MB = 75  # ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES
# A node's unix sockets live at <temp root>/<node>/session_<date>_<pid>/sockets/plasma_store: about 75 bytes
# past the root, and a socket path must fit in 107. Hence a root in /tmp, not under the state dir.
MAX_TEMP_ROOT_CHARS = 32
RAY_STARTUP_TIMEOUT = "The current node timed out during startup"  # `ray start`'s own error (ray/_private/node.py)


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """Shape of a local cluster."""

    workers: int = 2
    cpus_per_node: int = 1
    head_cpus: int = 0  # tasks go to workers; the head runs GCS, dashboard and the drivers that attach to it
    object_store_mb: int = 200  # per node; Ray's minimum is 75
    dashboard: bool = True  # bound to 127.0.0.1 either way
    # False: every other port of every node listens on 127.0.0.1 too (cluster/loopback.py); True opens them on every
    # interface, for nodes on other machines to join (token auth stays on, but the metrics ports ignore it).
    listen_all_interfaces: bool = False
    # Ray declares a node dead after 5 missed health checks, 3 s apart by default: 15 s. Probing every second
    # is cheap on one machine; a busy but alive raylet is still judged by the RPC timeout, not by the period.
    health_check_period_ms: int = 1000

    def __post_init__(self) -> None:
        if self.workers < 0 or self.cpus_per_node < 0 or self.head_cpus < 0:
            raise ValueError(f"workers and cpus must be >= 0: {self}")
        if self.object_store_mb < MIN_OBJECT_STORE_MB:
            raise ValueError(f"object_store_mb={self.object_store_mb}: Ray needs at least {MIN_OBJECT_STORE_MB}")


class LocalCluster:
    """Start, inspect, break and stop a local multi-node Ray cluster."""

    def __init__(self, spec: ClusterSpec, state_dir: Path = DEFAULT_STATE_DIR, *, detach: bool = False) -> None:
        """detach: let the nodes outlive this process (the CLI's `up`); otherwise they stop when it dies."""
        self.spec = spec
        self.state_dir = Path(state_dir).resolve()
        self.detach = detach
        self.address: str | None = None  # GCS address, for ray.init(address=...)
        self.dashboard_url: str | None = None
        self.temp_root: Path | None = None
        self.token_path: str | None = None
        self.nodes: dict[str, NodeProcess] = {}
        self._gcs = None

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> LocalCluster:
        """Start the head and the workers; return once every node is alive in Ray, or stop them all and raise."""
        if self.state_file.exists():
            previous = LocalCluster.load(self.state_dir)
            if previous.pids():
                raise RuntimeError(f"a cluster from {self.state_file} is still running; run `down` first")
            previous.down()
        path = require_token_auth(create_token=True)
        self.token_path = str(path) if path else None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.temp_root = Path(tempfile.mkdtemp(prefix="tessera-ray-"))
        if len(str(self.temp_root)) > MAX_TEMP_ROOT_CHARS:
            shutil.rmtree(self.temp_root)
            raise RuntimeError(f"temp dir {self.temp_root} is too long for Ray's unix sockets; set TMPDIR=/tmp")
        try:
            self._start_head(timeout_s)
            self._start_workers(self.spec.workers, timeout_s)
        except BaseException:
            self.down(grace_s=0)
            raise
        return self

    def add_worker(self, timeout_s: float = 60.0) -> str:
        """Start one more worker node (say, to replace a killed one) and return its name once it is alive.

        Unless detached, a node dies with the *thread* that started it (Linux's parent-death signal follows the
        forking thread): call this from a thread that lives as long as the node should, not a short-lived helper.
        """
        return self._start_workers(1, timeout_s)[0]

    def kill_node(self, name: str) -> None:
        """SIGKILL a worker node's processes, as if its machine died; Ray notices through missed health checks."""
        if name == HEAD:
            raise ValueError("killing the head ends the cluster; use down()")
        node = self.nodes[name]
        stop_processes(node.processes(), leaders={node.pid}, grace_s=0)
        node.killed = True
        self.save()

    def down(self, grace_s: float = 10.0) -> None:
        """Stop every process of this cluster (workers first, then the head) and delete its state and temp dir.

        Each node's `ray start` gets SIGTERM and stops its own processes in order (about 2 s); whatever is left
        after grace_s is killed. Signalling all the processes at once is slower: GCS and raylet then wait for
        each other (30 s seen).
        """
        workers = [node for name, node in self.nodes.items() if name != HEAD]
        head = [self.nodes[HEAD]] if HEAD in self.nodes else []
        for group in (workers, head):
            procs = [proc for node in group for proc in node.processes()]
            stop_processes(procs, leaders={node.pid for node in group}, grace_s=grace_s)
        self.state_file.unlink(missing_ok=True)
        if self.temp_root is not None:
            shutil.rmtree(self.temp_root, ignore_errors=True)
        self._gcs = None

    def __enter__(self) -> LocalCluster:
        return self.start() if not self.nodes else self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- inspection -----------------------------------------------------------------------------------------

    def pids(self) -> set[int]:
        """Pids of all live processes of this cluster."""
        return {proc.pid for node in self.nodes.values() for proc in node.processes()}

    def live_workers(self) -> list[str]:
        """Names of the worker nodes not killed."""
        return [name for name, node in self.nodes.items() if name != HEAD and not node.killed]

    def node_states(self, timeout_s: float = 10.0) -> dict[str, bool]:
        """Ray's view, without a driver: node name -> alive, as recorded by the GCS."""
        from ray._raylet import GcsClient  # ray.nodes() would need a driver; this is the client Ray's CLI uses
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        if self._gcs is None:
            self._gcs = GcsClient(address=self.address)
        infos = self._gcs.get_all_node_info(timeout=timeout_s).values()
        return {info.node_name: info.state == GcsNodeInfo.GcsNodeState.ALIVE for info in infos}

    def wait_for_nodes(self, timeout_s: float) -> None:
        """Wait until every node not killed is alive in Ray; raise with the failing node's log if one exits."""
        from ray.exceptions import RpcError

        expected = {name for name, node in self.nodes.items() if not node.killed}
        deadline = time.monotonic() + timeout_s
        while True:
            for name in expected:
                check_running(self.nodes[name])
            try:
                states = self.node_states()
            except RpcError:  # the GCS answers late on a loaded machine; the deadline, not one RPC, decides
                states = {}
            if all(states.get(name) for name in expected):
                return
            if time.monotonic() > deadline:
                missing = sorted(name for name in expected if not states.get(name))
                raise TimeoutError(f"nodes {missing} not alive after {timeout_s:.0f} s; logs in {self.state_dir}")
            time.sleep(0.2)

    # -- state file -----------------------------------------------------------------------------------------

    def save(self) -> None:
        state = {
            "spec": dataclasses.asdict(self.spec),
            "address": self.address,
            "dashboard_url": self.dashboard_url,
            "temp_root": str(self.temp_root),
            "token_path": self.token_path,
            "nodes": [dataclasses.asdict(node) for node in self.nodes.values()],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)  # a reader never sees half a file

    @classmethod
    def load(cls, state_dir: Path = DEFAULT_STATE_DIR) -> LocalCluster:
        """The cluster recorded in `<state_dir>/state.json` (by `up`, possibly in another process)."""
        cluster = cls(ClusterSpec(), state_dir)
        state = json.loads(cluster.state_file.read_text())
        cluster.spec = ClusterSpec(**state["spec"])
        cluster.address = state["address"]
        cluster.dashboard_url = state["dashboard_url"]
        cluster.temp_root = Path(state["temp_root"])
        cluster.token_path = state["token_path"]
        cluster.nodes = {node["name"]: NodeProcess(**node) for node in state["nodes"]}
        return cluster

    # -- starting nodes -------------------------------------------------------------------------------------

    def _start_head(self, timeout_s: float, attempts: int = 3) -> None:
        """Start the head; a port taken between picking and binding it (see free_ports) costs one more try."""
        for attempt in range(1, attempts + 1):
            gcs_port, client_port, dashboard_port = free_ports(3)
            args = [
                "--head",
                f"--port={gcs_port}",
                f"--num-cpus={self.spec.head_cpus}",
                # Ray's defaults (10001, 8265) would clash with any other Ray instance on the machine.
                f"--ray-client-server-port={client_port}",
                f"--include-dashboard={self.spec.dashboard}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                "--system-config=" + json.dumps({"health_check_period_ms": self.spec.health_check_period_ms}),
            ]
            # The head's address before the head writes it: the GCS port is ours, and its host is the loopback
            # unless the nodes listen on every interface (then Ray resolves it to the outward address).
            head = self._spawn(HEAD, args, f"{LOOPBACK}:{gcs_port}")
            try:
                self._wait_for_head(head, timeout_s)
                break
            except RuntimeError as error:
                log = Path(head.log_path).read_text(errors="replace").lower()
                if attempt == attempts or not any(sign in log for sign in PORT_TAKEN):
                    raise
                print(f"head start lost a port race ({error.__class__.__name__}); retrying", file=sys.stderr)
                stop_processes(head.processes(), leaders={head.pid}, grace_s=0)
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}" if self.spec.dashboard else None
        self.save()

    def _wait_for_head(self, head: NodeProcess, timeout_s: float) -> None:
        # `ray start` writes the head's address there once the head is up (Ray's own address file, kept per
        # cluster because the temp dir is).
        address_file = Path(head.temp_dir) / "ray_current_cluster"
        deadline = time.monotonic() + timeout_s
        while not address_file.exists():
            check_running(head)
            if time.monotonic() > deadline:
                raise TimeoutError(f"head not up after {timeout_s:.0f} s; see {head.log_path}")
            time.sleep(0.1)
        self.address = address_file.read_text().strip()

    def _start_workers(self, count: int, timeout_s: float, attempts: int = 3) -> list[str]:
        """Start `count` worker nodes and wait until every node is alive. A node whose `ray start` gave up on its
        own raylet's registration (Ray allows it 30 s, `ray/_private/node.py`; a GCS slowed by a loaded machine has
        taken longer) is retired and replaced by a fresh one, up to `attempts` times."""
        names = [self._spawn_worker() for _ in range(count)]
        retries = attempts - 1
        while True:
            try:
                self.wait_for_nodes(timeout_s)
                return names
            except RuntimeError:
                timed_out = [name for name in names if self._startup_timed_out(self.nodes[name])]
                if not timed_out or retries == 0:
                    raise
                retries -= 1
                for name in timed_out:
                    print(f"node {name} timed out during startup; starting another in its place", file=sys.stderr)
                    self.kill_node(name)  # whatever of it still runs; marked killed, so no longer expected
                    names[names.index(name)] = self._spawn_worker()

    @staticmethod
    def _startup_timed_out(node: NodeProcess) -> bool:
        return node.leader() is None and RAY_STARTUP_TIMEOUT in Path(node.log_path).read_text(errors="replace")

    def _spawn_worker(self) -> str:
        index = 1 + sum(1 for name in self.nodes if name != HEAD)
        name = f"worker-{index}"
        assert self.address is not None
        self._spawn(name, [f"--address={self.address}", f"--num-cpus={self.spec.cpus_per_node}"], self.address)
        return name

    def _spawn(self, name: str, role_args: list[str], gcs_address: str) -> NodeProcess:
        assert self.temp_root is not None
        temp_dir = self.temp_root / name  # one per node: concurrent starts in one dir race for socket names
        env = node_env(self.spec, gcs_address, self.token_path)
        node = spawn_node(name, role_args, self.spec, temp_dir, self.state_dir / f"{name}.log", env,
                          detach=self.detach)
        self.nodes[name] = node
        self.save()
        return node


# -- command line -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a head and N worker nodes, then return")
    up.add_argument("--nodes", type=int, default=ClusterSpec.workers, help="worker nodes besides the head")
    up.add_argument("--cpus-per-node", type=int, default=ClusterSpec.cpus_per_node)
    up.add_argument("--object-store-mb", type=int, default=ClusterSpec.object_store_mb)
    up.add_argument("--no-dashboard", action="store_true")
    up.add_argument("--listen-all-interfaces", action="store_true",
                    help="let the nodes' ports listen on every interface, not 127.0.0.1 only (for remote nodes)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for all nodes")
    status = commands.add_parser("status", help="show the nodes' processes and Ray's view of them")
    down = commands.add_parser("down", help="stop every process of the cluster")
    for command in (up, status, down):
        command.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    if args.command == "up":
        spec = ClusterSpec(args.nodes, args.cpus_per_node, object_store_mb=args.object_store_mb,
                           dashboard=not args.no_dashboard,
                           listen_all_interfaces=args.listen_all_interfaces)
        return _up(LocalCluster(spec, args.state_dir, detach=True), args.timeout)
    if not (args.state_dir / "state.json").exists():
        print(f"no cluster recorded in {args.state_dir.resolve()}")
        return 1 if args.command == "status" else 0
    cluster = LocalCluster.load(args.state_dir)
    return _status(cluster) if args.command == "status" else _down(cluster)


def _up(cluster: LocalCluster, timeout_s: float) -> int:
    cluster.start(timeout_s)
    spec = cluster.spec
    token = f" {TOKEN_PATH_ENV}={cluster.token_path}" if cluster.token_path else ""
    print(f"Ray cluster up: head + {spec.workers} workers "
          f"({spec.cpus_per_node} CPU, {spec.object_store_mb} MiB object store each)")  # fmt: skip
    print(f"  address:   {cluster.address}")
    if cluster.dashboard_url:
        print(f"  dashboard: {cluster.dashboard_url}")
    print(f"  state:     {cluster.state_file}")
    print("Token auth is on: drivers need RAY_AUTH_MODE=token and the token (cluster.connect sets the mode).")
    print(f'  Python:   cluster.connect.connect("{cluster.address}")')
    # Without it, Ray swaps 127.0.0.1 for this machine's outward address, where a loopback node does not listen.
    loopback = "" if cluster.spec.listen_all_interfaces else f" {ENABLE_CLUSTER_ENV}=0"
    print(f"  Ray CLI:  export RAY_ADDRESS={cluster.address} {AUTH_MODE_ENV}=token{token}{loopback}")
    print(f"Stop it:    python -m cluster.local down --state-dir {cluster.state_dir}")
    return 0


def _status(cluster: LocalCluster) -> int:
    print(f"address {cluster.address}  state {cluster.state_file}")
    ray_view: dict[str, bool] = {}
    if cluster.nodes[HEAD].processes():
        try:
            require_token_auth(create_token=False)
            ray_view = cluster.node_states()
        except Exception as error:  # the processes are still worth showing
            print(f"(Ray's view unavailable: {error})")
    healthy = True
    for name, node in cluster.nodes.items():
        running = len(node.processes())
        ray_state = {True: "ALIVE", False: "DEAD"}.get(ray_view.get(name), "?")  # type: ignore[arg-type]
        note = " (killed)" if node.killed else ""
        print(f"  {name:<10} pid {node.pid:<8} processes {running:<3} ray {ray_state}{note}")
        healthy &= node.killed or (running > 0 and ray_state == "ALIVE")
    return 0 if healthy else 1


def _down(cluster: LocalCluster) -> int:
    count = len(cluster.pids())
    cluster.down()
    print(f"stopped {count} processes of the cluster at {cluster.address}")
    return 0


if __name__ == "__main__":
    run_command(main)
