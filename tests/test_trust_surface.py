"""Issue 20's holes on the job surface, each reproduced and shown to fail safe: credentials never echoed (4), Ray
ports on 127.0.0.1 only (10), every job and cluster command failing in one line, never a traceback (11)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from schemas.config import ConfigError, dump_config, load_config
from schemas.pretrain import PretrainConfig
from schemas.submit import SubmitConfig

REPO = Path(__file__).resolve().parent.parent
# Fake, but shaped like the real thing: an AWS access key id (which the masking recognises by its form) and a
# secret that only its key's name gives away.
KEY_ID, SECRET = "AKIAFAKE0123456789AB", "tessera-fake-secret-5f3a9c/do-not-echo"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def assert_one_line_failure(done: subprocess.CompletedProcess, *, alone: bool = True) -> str:
    """A non-zero exit whose stderr holds one `error:` line and no traceback; `alone`: nothing else on stderr (a
    job that failed after joining Ray may have Ray's own log lines before it). Returns the line."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not alone or done.stderr.strip() == errors[0], done.stderr[-3000:]
    return errors[0]


def files_under(*roots: Path) -> list[Path]:
    """Every file a run left, except the copies of this repository that jobs submitted earlier in the session
    unpacked on the cluster (they hold this test's own source, constants included)."""
    return [path for root in roots for path in root.rglob("*")
            if path.is_file() and not path.is_symlink() and "working_dir_files" not in path.parts]


# -- 4: credentials echoed -----------------------------------------------------------------------------------


@pytest.mark.parametrize("yaml_text, overrides, names", [
    # a section's own check fails: its input (the whole config, credentials included) used to be printed
    ("", [f"storage.access_key_id={KEY_ID}", f"storage.secret_access_key={SECRET}", "loader.holdout_fraction=0.5"],
     "holdout_fraction"),
    ("", [f"storage.secret_access_key=[{SECRET}]"], "storage.secret_access_key"),  # an ill-typed credential
    ("", [f"storage={KEY_ID}"], "storage"),  # a key id where a section belongs
    ("", [f"storage.secret_access_key=[{SECRET}"], "storage.secret_access_key"),  # an override that is not YAML
    (f"storage:\n  secret_access_key: '{SECRET}\n", [], "not valid YAML"),  # PyYAML quotes the bad line
    (f"storage: {{access_key_id: {KEY_ID}, anon: maybe}}\n", [], "storage.anon"),
    (f"workers: {KEY_ID}\n", [], "workers"),  # a key id where no credential is expected
])
def test_config_errors_never_show_a_credential(tmp_path, yaml_text, overrides, names):
    path = tmp_path / "job.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as error:
        load_config(PretrainConfig, path, overrides)
    message = str(error.value)
    assert SECRET not in message and KEY_ID not in message and names in message, message


def test_dumped_configs_mask_credentials():
    config = load_config(PretrainConfig, None, [f"storage.access_key_id={KEY_ID}", f"storage.secret_access_key={SECRET}"])
    submit = SubmitConfig(env_vars={"AWS_SECRET_ACCESS_KEY": SECRET, "HF_HOME": "/mnt/cache"})
    for text in (dump_config(config), dump_config(submit), repr(config), str(config.storage)):
        assert SECRET not in text and KEY_ID not in text, text
    assert "/mnt/cache" in dump_config(submit)  # what is not a credential is kept


def test_a_failing_job_does_not_echo_its_credentials(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({"storage": {"access_key_id": KEY_ID, "secret_access_key": SECRET},
                                      "zero": {"stage": 0, "offload_optimizer": True}}))
    done = run("jobs.pretrain", "--config", str(config), "--data", str(tmp_path))
    line = assert_one_line_failure(done)
    assert done.returncode == 2 and "offload_optimizer" in line
    assert SECRET not in done.stdout + done.stderr and KEY_ID not in done.stdout + done.stderr


@pytest.mark.cluster
def test_a_job_that_runs_leaves_its_credentials_nowhere(ray_cluster, tokens, tmp_path):
    """A real pretrain with credentials in its config file, on the session's cluster: neither its output, its run
    folder, the cluster's logs and session files, nor its job table entry holds them."""
    from ray.job_submission import JobSubmissionClient

    recipe = yaml.safe_load((REPO / "configs/pretrain/tiny.yaml").read_text())
    recipe.update(steps=2, log_every=1, checkpoint_every=2, workers=2, loader={"batch_size": 8},
                  masking={"input_tokens": 32, "target_tokens": 32},
                  storage={"access_key_id": KEY_ID, "secret_access_key": SECRET})
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump(recipe))
    done = run("jobs.pretrain", "--config", str(config), "--data", tokens, "--storage", str(tmp_path / "runs"),
               "--name", "leak-check", "--address", ray_cluster.address)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "leak-check" / "summary.json").is_file()
    leaks = [str(path) for path in files_under(tmp_path / "runs", ray_cluster.temp_root, ray_cluster.state_dir)
             if any(s in path.read_bytes() for s in (SECRET.encode(), KEY_ID.encode()))]
    assert not leaks and SECRET not in done.stdout + done.stderr and KEY_ID not in done.stdout + done.stderr, leaks
    jobs = JobSubmissionClient(ray_cluster.dashboard_url).list_jobs()
    assert not [job.entrypoint for job in jobs if SECRET in (job.entrypoint or "") + json.dumps(job.runtime_env)]


def test_credentials_on_the_command_line_never_reach_a_cluster(tmp_path):
    """Ray keeps a driver's command line and a submitted job's arguments and env_vars in its job table: both are
    refused before any cluster is called (the addresses below answer nothing)."""
    joined = run("jobs.pretrain", "--data", str(tmp_path), "--set", f"storage.secret_access_key={SECRET}",
                 "--address", "127.0.0.1:9")
    assert joined.returncode == 2 and "job table" in assert_one_line_failure(joined)
    env_config = tmp_path / "submit.yaml"
    env_config.write_text(f"env_vars: {{AWS_SECRET_ACCESS_KEY: '{SECRET}'}}\n")
    for args in (["--set", f"storage.secret_access_key={SECRET}"], ["--input", f"s3://{KEY_ID}@b/raw"],
                 ["--submit-config", str(env_config)]):
        submitted = run("cluster.submit", "preprocess", *args, "--address", "http://127.0.0.1:9")
        assert "job table" in assert_one_line_failure(submitted)
        assert SECRET not in submitted.stdout + submitted.stderr and KEY_ID not in submitted.stderr


# -- 10: Ray listens on 127.0.0.1 only ------------------------------------------------------------------------


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def listening(pids: set[int]) -> list[tuple[str, str, int]]:
    """(process name, ip, port) of every listening TCP socket of these processes."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found += [(proc.name(), c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="tcp")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    return found


PRIVATE_INSTANCE = """
import json, sys, time, psutil, ray
from cluster.connect import connect

@ray.remote
def pid():
    return 0

connect(None, num_cpus=1, object_store_memory=80 * 2**20, listen_all_interfaces=sys.argv[1] == "all")
ray.get(pid.remote())  # a worker process, with its own server, besides the node's
node = ray._private.worker._global_node
expected = {node.metrics_export_port, node.metrics_agent_port, node.gcs_address.rsplit(":", 1)[1]}
me = psutil.Process()
for _ in range(100):  # the agents open their ports a moment after the node is up
    procs = [me, *me.children(recursive=True)]
    ports = {c.laddr.port for p in procs for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    if {int(p) for p in expected} <= ports:
        break
    time.sleep(0.2)
print("PIDS", json.dumps([p.pid for p in procs]), flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize("listen", ["loopback", "all"])
def test_a_private_instance_listens_on_loopback_unless_asked(ray_env, listen):
    """Every port of a job's own Ray instance (GCS, raylet, object manager, workers, dashboard and its agents,
    metrics) is on 127.0.0.1; `ray.listen_all_interfaces` opens them on every interface."""
    script = subprocess.Popen([sys.executable, "-c", PRIVATE_INSTANCE, listen, "20"], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = script.stdout.readline()
        while line and not line.startswith("PIDS"):
            line = script.stdout.readline()
        sockets = listening(set(json.loads(line.split(" ", 1)[1]))) if line else []
    finally:
        script.kill()
        _, errors = script.communicate(timeout=60)
    assert line, errors[-3000:]
    assert len(sockets) >= 8, sockets  # GCS, raylet x2, workers, dashboard, its agent's gRPC, HTTP and metrics
    exposed = [s for s in sockets if not loopback(s[1])]
    assert (not exposed) if listen == "loopback" else exposed, sockets


@pytest.mark.cluster
def test_the_local_cluster_listens_on_loopback_only(ray_cluster, ray_session):
    """Every port of every node of `cluster.local` is on 127.0.0.1 by default (the Jobs API still runs jobs on it:
    tests/test_submit.py submits through it to this same cluster)."""
    sockets = listening(ray_cluster.pids())
    assert len(sockets) >= 10 and not [s for s in sockets if not loopback(s[1])], sockets


# -- 11: one line, never a traceback -----------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["jobs.pretrain", "--data", "/nonexistent"], "data"),
    (["jobs.export", "--checkpoint", "/nonexistent", "--out", "x.safetensors"], "not a Tessera pretrain checkpoint"),
    (["jobs.evaluate", "--checkpoint", "/nonexistent", "--tasks", "no_such_task"], "no_such_task"),
    (["jobs.train_tokenizer", "--modality", "smell", "--input", "/x", "--output", "/y"], "smell"),
    (["jobs.sample_corpus", "--out", "/nonexistent/x", "--samples", "-1"], "samples"),
    (["jobs.sizes", "--modalities", "smell"], "unknown modality 'smell'"),
    (["cluster.submit", "no_such_job", "--address", "http://127.0.0.1:9"], "no job 'no_such_job'"),
    (["cluster.submit", "status", "not an id!", "--address", "http://127.0.0.1:9"], "needs a job id"),
    (["cluster.submit", "status", "raysubmit_abc", "--address", "http://127.0.0.1:9"], "127.0.0.1:9"),
    (["cluster.local", "status", "--state-dir", "/nonexistent/broken"], None),
])
def test_jobs_and_cluster_commands_fail_in_one_line(args, message, tmp_path):
    if args[0] == "cluster.local":  # a state file that is not JSON
        (tmp_path / "state.json").write_text("{")
        args = [*args[:-1], str(tmp_path)]
    line = assert_one_line_failure(run(*args, timeout=120))
    assert message is None or message in line, line


@pytest.mark.cluster
def test_a_job_failing_inside_ray_fails_in_one_line(ray_cluster, tmp_path):
    done = run("jobs.preprocess", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out"),
               "--address", ray_cluster.address)
    assert done.returncode == 1 and "does not exist" in assert_one_line_failure(done, alone=False)


def test_the_debug_switch_shows_the_traceback():
    done = run("jobs.sizes", "--modalities", "smell", env={**os.environ, "TESSERA_DEBUG": "1"}, timeout=120)
    assert done.returncode != 0 and "Traceback" in done.stderr


@pytest.mark.cluster
def test_submit_turns_token_auth_on_like_connect(ray_cluster, ray_env):
    """Right after `cluster.local up`, a shell without RAY_AUTH_MODE=token still reaches the Jobs API."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    listed = run("cluster.submit", "list", "--address", ray_cluster.dashboard_url, env=env, timeout=120)
    assert listed.returncode == 0 and listed.stdout.startswith("job id"), listed.stderr[-3000:]
    missing = run("cluster.submit", "status", "raysubmit_doesnotexist", "--address", ray_cluster.dashboard_url,
                  env=env, timeout=120)
    assert "raysubmit_doesnotexist" in assert_one_line_failure(missing)
