"""Shared fixtures. The multi-node Ray cluster is started once per pytest session, and only if a test asks for it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import ray

from cluster.connect import ClusterSummary, connect
from cluster.local import ClusterSpec, LocalCluster

# Head + 2 workers, 1 CPU each: enough to see tasks spread over nodes and to lose one node. Ray's object-store
# minimum is 75 MiB; 200 MiB per node leaves room for small datasets without spilling.
TEST_CLUSTER = ClusterSpec(workers=2, cpus_per_node=1, object_store_mb=200)


@pytest.fixture(scope="session")
def ray_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An environment where Ray can only find what the tests start: no RAY_ADDRESS, and a token of the session's
    own (the user's ~/.ray/auth_token is neither read nor created)."""
    token = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("RAY_ADDRESS", raising=False)
        env.delenv("RAY_AUTH_TOKEN", raising=False)
        env.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        env.setenv("RAY_AUTH_MODE", "token")
        # Ray Train's controller polls its workers every 2 s by default, and only a poll moves a run on (workers
        # started, a run ended, a worker died, a checkpoint registered): idle waits in every one of the session's
        # ~50 training runs. At 0.5 s a trivial 2-worker TorchTrainer's fit() took ~14 s instead of ~17 s on the
        # 2-core box (3 alternating pairs). The driver passes it on to each run's controller; jobs inherit it.
        env.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        yield


@pytest.fixture(scope="session")
def ray_cluster(ray_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local head + 2 worker cluster for the whole session; stopped, all its processes, at the end."""
    cluster = LocalCluster(TEST_CLUSTER, tmp_path_factory.mktemp("ray-cluster")).start(timeout_s=120)
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def ray_session(ray_cluster: LocalCluster) -> Iterator[ClusterSummary]:
    """This process connected as a driver to `ray_cluster` (attached to the head node, as Ray prefers it)."""
    summary = connect(ray_cluster.address)
    try:
        yield summary
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tokens(ray_session: ClusterSummary, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Token shards for pretraining (tests/token_shards.py), made once per session; tests only read them."""
    from token_shards import write_token_shards

    return write_token_shards(tmp_path_factory.mktemp("token-shards"))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint over HTTP (moto's server) on a free localhost port, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


S3_TEST_KEY, S3_TEST_SECRET = "tessera-test-key", "tessera-test-secret-do-not-print"


def new_bucket(endpoint: str) -> tuple[str, list[str]]:
    """A fresh bucket on `endpoint` and the --set overrides that point a job's storage at it (credentials through
    the config, since Ray worker nodes were started before the S3 server and do not see its environment)."""
    import boto3

    name = f"tessera-{secrets.token_hex(4)}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=S3_TEST_KEY, aws_secret_access_key=S3_TEST_SECRET)
    client.create_bucket(Bucket=name)
    overrides = [f"storage.endpoint_url={endpoint}", "storage.region=us-east-1",
                 f"storage.access_key_id={S3_TEST_KEY}", f"storage.secret_access_key={S3_TEST_SECRET}"]
    return name, overrides


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Iterator[tuple[str, list[str]]]:
    """A fresh bucket per test (see `new_bucket`)."""
    yield new_bucket(s3_endpoint)


@pytest.fixture(scope="session")
def reference_runs(ray_session: ClusterSummary, tokens: str, tmp_path_factory: pytest.TempPathFactory):
    """The session's reference pretrain runs, one per ZeRO stage, made on first use (tests/reference_runs.py)."""
    from reference_runs import ReferenceRuns

    return ReferenceRuns(tokens, tmp_path_factory)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny matmuls gain nothing from a second thread, and on a busy 2-core box thread hand-offs cost ~7x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_tiny(ray_session: ClusterSummary, tmp_path_factory: pytest.TempPathFactory):
    """The session's one trained tiny model (tests/trained_model.py): evaluation and generation tests share it."""
    from trained_model import train_tiny_model

    return train_tiny_model(tmp_path_factory.mktemp("trained-tiny"))
