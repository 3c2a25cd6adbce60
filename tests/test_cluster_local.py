"""The local multi-node cluster and `cluster.connect`: nodes, scheduling across them, node failure, teardown, auth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.connect import connect, connected, require_token_auth
from cluster.local import HEAD, LocalCluster

REPO = Path(__file__).resolve().parents[1]


@ray.remote(num_cpus=1)
def node_of_task() -> str:
    # Long enough that one node cannot take all the tasks before the others get theirs, even when its worker
    # processes are warm from an earlier test and the other node's are not (0.05 s was not, after a labeling job).
    time.sleep(1.0)
    return ray.get_runtime_context().get_node_id()


def live_node_ids() -> dict[str, str]:
    """Ray node name -> node id, for the nodes Ray considers alive."""
    return {node["NodeName"]: node["NodeID"] for node in ray.nodes() if node["Alive"]}


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.2)


def snapshot(pids: set[int]) -> list[psutil.Process]:
    """Handles on the processes now running; `running()` on them stays False even if a pid is reused."""
    return [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]


def running(proc: psutil.Process) -> bool:
    """A zombie is not running: it waits for its parent to reap it, and a container's init may never do that."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_token_auth_cannot_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(RuntimeError, match="token authentication"):
        require_token_auth(create_token=True)


@pytest.mark.cluster
def test_head_and_workers_are_alive(ray_cluster: LocalCluster, ray_session: dict) -> None:
    nodes = {node["NodeName"]: node for node in ray.nodes() if node["Alive"]}
    assert set(nodes) == {HEAD, *ray_cluster.live_workers()}
    assert len(nodes) == 3
    assert ray_session["mode"] == "remote" and ray_session["nodes"] == 3
    # Tasks need a worker node: the head offers no CPU.
    assert nodes[HEAD]["Resources"].get("CPU", 0) == 0
    assert all(nodes[name]["Resources"]["CPU"] == 1 for name in ray_cluster.live_workers())
    assert ray.get_runtime_context().get_node_id() == nodes[HEAD]["NodeID"]  # so losing a worker spares the driver


@ray.remote(num_cpus=1)
def ray_address_of_worker() -> str | None:
    return os.environ.get("RAY_ADDRESS")


@pytest.mark.cluster
def test_workers_know_their_own_cluster(ray_cluster: LocalCluster, ray_session: dict) -> None:
    """Ray code running on a node that looks its cluster up without an address (Ray Train's placement-group cleaner,
    through the State API) must find this cluster by RAY_ADDRESS, not by scanning the machine for GCS servers, which
    fails as soon as a second Ray instance runs beside it."""
    assert ray.get(ray_address_of_worker.remote()) == ray_cluster.address


@pytest.mark.cluster
def test_tasks_land_on_every_worker(ray_cluster: LocalCluster, ray_session: dict) -> None:
    ids = live_node_ids()
    workers = {ids[name] for name in ray_cluster.live_workers()}
    # The session's earlier jobs release their actors asynchronously; SPREAD only spreads over free CPUs.
    wait_until(lambda: ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0), 120,
               "every CPU of the session cluster free again")

    spread = ray.get([node_of_task.options(scheduling_strategy="SPREAD").remote() for _ in range(4)])
    assert set(spread) == workers

    for node_id in workers:
        pinned = node_of_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        assert ray.get(pinned.remote()) == node_id


@pytest.mark.cluster
def test_dashboard_requires_the_token(ray_cluster: LocalCluster, ray_env: None) -> None:
    url = f"{ray_cluster.dashboard_url}/api/jobs/"
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    for header, status in [({}, 401), ({"Authorization": "Bearer wrong"}, 403)]:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, headers=header), timeout=10)
        assert refused.value.code == status
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})) as ok:
        assert ok.status == 200


@pytest.mark.cluster
def test_killed_worker_is_dead_and_the_other_keeps_working(ray_cluster: LocalCluster, ray_session: dict) -> None:
    victim, survivor = ray_cluster.live_workers()[:2]
    survivor_id = live_node_ids()[survivor]
    victim_procs = snapshot({proc.pid for proc in ray_cluster.nodes[victim].processes()})
    assert victim_procs
    try:
        assert all(running(proc) for proc in victim_procs) and victim in live_node_ids(), "alive until the kill"
        ray_cluster.kill_node(victim)
        assert not [proc.pid for proc in victim_procs if running(proc)]
        wait_until(lambda: victim not in live_node_ids(), timeout_s=30, what=f"Ray marks {victim} dead")
        assert set(live_node_ids()) == {HEAD, survivor}

        spread = ray.get([node_of_task.options(scheduling_strategy="SPREAD").remote() for _ in range(3)])
        assert set(spread) == {survivor_id}
    finally:
        ray_cluster.add_worker()  # later tests get two workers again
    assert len(live_node_ids()) == 3


@pytest.fixture
def cli_state_dir(tmp_path: Path) -> Iterator[Path]:
    """State dir for a cluster driven through the CLI; whatever a failed test left running is stopped."""
    state_dir = tmp_path / "cli-cluster"
    yield state_dir
    if (state_dir / "state.json").exists():
        LocalCluster.load(state_dir).down(grace_s=0)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cluster.local", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.cluster
def test_down_stops_only_its_own_processes(ray_cluster: LocalCluster, ray_env: None, cli_state_dir: Path) -> None:
    """A second cluster, driven through the CLI from other processes, goes away without touching the first."""
    where = ("--state-dir", str(cli_state_dir))
    started = run_cli("up", "--nodes", "1", "--object-store-mb", "100", "--no-dashboard", *where)
    assert started.returncode == 0, started.stderr[-3000:]
    second = LocalCluster.load(cli_state_dir)
    assert second.address in started.stdout and second.address != ray_cluster.address
    status = run_cli("status", *where)
    assert status.returncode == 0 and status.stdout.count("ray ALIVE") == 2, status.stdout + status.stderr

    second_procs = snapshot(second.pids())
    first_procs = snapshot(ray_cluster.pids())
    first_leaders = snapshot({ray_cluster.nodes[name].pid for name in (HEAD, *ray_cluster.live_workers())})
    assert second_procs and not {proc.pid for proc in second_procs} & {proc.pid for proc in first_procs}

    stopped = run_cli("down", *where)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert not [proc.pid for proc in second_procs if running(proc)]
    assert not (cli_state_dir / "state.json").exists() and not second.temp_root.exists()
    assert all(running(proc) for proc in first_leaders)
    assert all(ray_cluster.node_states()[name] for name in (HEAD, *ray_cluster.live_workers()))


@pytest.mark.cluster
def test_connect_without_address_never_joins_a_running_cluster(ray_cluster: LocalCluster, ray_env: None) -> None:
    # RAY_ADDRESS pointing at the running cluster is the trap plain ray.init() falls into.
    script = (
        "import json; from cluster.connect import connected\n"
        "with connected(None, num_cpus=1, object_store_memory=80 * 2**20) as summary:\n"
        "    print('SUMMARY', json.dumps(summary))\n"
    )
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.split("SUMMARY", 1)[1])
    assert summary["mode"] == "local" and summary["nodes"] == 1
    assert summary["address"] != ray_cluster.address and summary["resources"]["CPU"] == 1
    assert sum(ray_cluster.node_states().values()) == 3  # nobody joined the test cluster


@pytest.mark.cluster
def test_connect_reuses_the_session_connection(ray_cluster: LocalCluster, ray_session: dict) -> None:
    with connected(ray_cluster.address) as summary:
        assert summary["mode"] == "existing" and summary["address"] == ray_cluster.address
    assert ray.is_initialized()  # `connected` left alone the connection it did not open
    with pytest.raises(RuntimeError, match="already connected"):
        connect("127.0.0.2:1")
