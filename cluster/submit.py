"""Submit Tessera jobs to a Ray cluster through Ray's Jobs API, and follow them.

    python -m cluster.submit preprocess --input s3://b/raw --output s3://b/shards --address http://HEAD:8265
    python -m cluster.submit status JOB_ID --address http://HEAD:8265
    python -m cluster.submit logs JOB_ID [--follow] --address http://HEAD:8265
    python -m cluster.submit stop JOB_ID --address http://HEAD:8265
    python -m cluster.submit list --address http://HEAD:8265

A job runs as `python -m jobs.<JOB> <its args> --address auto` on the cluster, with this repository as its
working_dir (minus the excludes of configs/submit/default.yaml). `--address` defaults to $RAY_ADDRESS; token auth
is turned on as `cluster.connect` does (the cluster's token must be in RAY_AUTH_TOKEN or its file).

A job's arguments and env_vars are kept by Ray (its job table, the dashboard, `list`, the head's logs), so a
credential among them is refused: the cluster's nodes reach storage with their own AWS credentials.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from pathlib import Path

from cluster.command import run_command
from cluster.connect import require_token_auth
from schemas.config import is_secret_name, load_config, redact_text
from schemas.submit import SubmitConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("status", "logs", "stop", "list")
# Options of this tool; everything else after the job name goes to the job untouched.
OWN_OPTIONS = {"--address": True, "--submit-config": True, "--follow": False}
# Ray's submission ids (raysubmit_...) and the hex ids of drivers that joined with ray.init.
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def available_jobs() -> list[str]:
    return sorted(p.stem for p in (REPO_ROOT / "jobs").glob("*.py") if not p.stem.startswith("_") and p.stem != "cli")


def split_args(argv: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    own: dict[str, str | bool] = {}
    rest: list[str] = []
    items = iter(argv)
    for item in items:
        name, _, inline = item.partition("=")
        if name in OWN_OPTIONS:
            if OWN_OPTIONS[name]:
                value = inline or next(items, None)
                if value is None:
                    raise SystemExit(f"error: {name} needs a value")
                own[name] = value
            else:
                own[name] = True
        else:
            rest.append(item)
    return own, rest


# Jobs that never start Ray (file copies and tables): they run on the head as they are, with no --address.
RAYLESS_JOBS = frozenset({"export", "sample_corpus", "sizes"})


def entrypoint(job: str, args: list[str]) -> str:
    if job not in available_jobs():
        raise SystemExit(f"error: no job {job!r}; jobs: {', '.join(available_jobs())}")
    refuse_credentials(args)
    # The job's driver joins the cluster it runs on; without this it would start a private local instance.
    address = [] if job in RAYLESS_JOBS else ["--address", "auto"]
    return shlex.join([*"python -m".split(), f"jobs.{job}", *args, *address])


def refuse_credentials(args: list[str], env_vars: dict[str, str] | None = None) -> None:
    """Stop before a credential reaches Ray's job table: `--set storage.secret_access_key=...`, an AWS key id or a
    URL password anywhere in the arguments, a secret-looking env var."""
    names = [name for name in (env_vars or {}) if is_secret_name(name)]
    keys = [arg.removeprefix("--set=").partition("=")[0] for arg in args if "=" in arg]
    names += [key for key in keys if is_secret_name(key.split(".")[-1])]
    names += ["an argument" for arg in args if redact_text(arg) != arg]
    if names:
        raise SystemExit(f"error: {names[0]} would be stored in Ray's job table and logs in the clear; give the "
                         "cluster's nodes their own credentials (AWS profile or instance role) instead")


def runtime_env(config: SubmitConfig) -> dict:
    refuse_credentials([], config.env_vars)
    env: dict = {"working_dir": str(REPO_ROOT), "excludes": list(config.excludes)}
    if config.env_vars:
        env["env_vars"] = dict(config.env_vars)
    if config.pip:
        env["pip"] = list(config.pip)
    return env


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient  # imported here: `--help` should not pay for Ray

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SystemExit("error: give the cluster's dashboard address with --address http://HEAD:8265 or RAY_ADDRESS")
    require_token_auth(create_token=False)  # Ray's client sends the token only with RAY_AUTH_MODE=token
    return JobSubmissionClient(address)


def submit(job: str, args: list[str], config: SubmitConfig, address: str | None, follow: bool) -> int:
    command, env = entrypoint(job, args), runtime_env(config)  # both checked before the cluster is called
    jobs = client(address)
    job_id = jobs.submit_job(
        entrypoint=command,
        runtime_env=env,
        entrypoint_num_cpus=config.entrypoint_num_cpus,
        entrypoint_num_gpus=config.entrypoint_num_gpus,
        metadata={"tessera_job": job},
    )
    print(f"submitted {job} as {job_id}")
    print(f"  follow: python -m cluster.submit logs {job_id} --follow --address {address or '$RAY_ADDRESS'}")
    return follow_logs(jobs, job_id) if follow else 0


def follow_logs(jobs, job_id: str) -> int:
    """Stream the job's logs until it ends; exit code 0 only if it succeeded."""
    from ray.job_submission import JobStatus

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    status = jobs.get_job_status(job_id)
    print(f"{job_id}: {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print(f"jobs: {', '.join(available_jobs())}")
        return 0 if argv else 2
    own, rest = split_args(argv)
    address = own.get("--address")
    if not rest:
        raise SystemExit(f"error: name a job ({', '.join(available_jobs())}) or one of {', '.join(COMMANDS)}")
    command = rest.pop(0)
    if command not in COMMANDS:
        config = load_config(SubmitConfig, own.get("--submit-config") or REPO_ROOT / "configs/submit/default.yaml")
        return submit(command, rest, config, address, bool(own.get("--follow")))
    if command != "list" and not (rest and JOB_ID.match(rest[0])):
        got = repr(rest[0]) if rest else "none"
        raise SystemExit(f"error: {command} needs a job id (raysubmit_..., as `list` shows them), got {got}")
    jobs = client(address)
    if command == "list":
        print(f"{'job id':<28} {'status':<10} {'job':<14} entrypoint")
        for info in sorted(jobs.list_jobs(), key=lambda i: i.start_time or 0):
            name = (info.metadata or {}).get("tessera_job", "-")
            # Drivers that joined with ray.init (not submitted) are listed too, with a job id but no submission id.
            job_id = info.submission_id or info.job_id or "-"
            print(f"{job_id:<28} {info.status.value:<10} {name:<14} {redact_text(info.entrypoint or '')[:70]}")
        return 0
    job_id = rest[0]
    if command == "status":
        print(f"{job_id}: {jobs.get_job_status(job_id).value}")
    elif command == "logs":
        if own.get("--follow"):
            return follow_logs(jobs, job_id)
        print(jobs.get_job_logs(job_id), end="")
    elif command == "stop":
        print(f"{job_id}: {'stop requested' if jobs.stop_job(job_id) else 'already finished'}")
    return 0


if __name__ == "__main__":
    run_command(main)
