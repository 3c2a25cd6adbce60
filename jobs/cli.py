"""What every job's command line shares: --config, --set overrides, --address, connecting to Ray, and failing in
one clear line (cluster/command.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from cluster.command import run_command
from cluster.connect import ClusterSummary, connect
from schemas.common import RayConfig
from schemas.config import ConfigError, ConfigModel, is_secret_name, load_config, redact_text

C = TypeVar("C", bound=ConfigModel)
REPO_ROOT = Path(__file__).resolve().parent.parent


def job_parser(description: str, default_config: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=default_config and str(REPO_ROOT / default_config),
                        help=f"YAML config (default: {default_config})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set image.resolution=64 (repeatable)")
    parser.add_argument("--address", default=None,
                        help="Ray address of an existing cluster; without it a local Ray instance is started")
    return parser


def load_job_config(model: type[C], args: argparse.Namespace, extra: dict[str, object]) -> C:
    """The config file plus --set overrides plus flags that are shortcuts for config keys (e.g. --input)."""
    overrides = list(args.overrides)
    overrides += [f"{key}={value}" for key, value in extra.items() if value is not None]
    config = load_config(model, args.config, overrides)
    ray = getattr(config, "ray", None)
    if ray is not None and ray.address not in (None, "local"):
        # Ray records a driver's whole command line as its job's entrypoint, in the cluster's job table, which
        # the dashboard and `ray list jobs` show to everyone with the cluster's token.
        for text in overrides:
            key = text.partition("=")[0]
            if is_secret_name(key.split(".")[-1]) or redact_text(text) != text:
                raise ConfigError(f"--set {key}=...: a job that joins a cluster leaves its command line in the "
                                  "cluster's job table; give credentials in the config file or the AWS environment")
    return config


def connect_ray(config: RayConfig) -> ClusterSummary:
    """Connect the job's driver as its `ray:` section says."""
    return connect(config.address, num_cpus=config.num_cpus, listen_all_interfaces=config.listen_all_interfaces)


def run_job(main: Callable[[], int | None]) -> NoReturn:
    """Run a job's main: its exit code, or one line on stderr and a non-zero code if it fails (exit 2 for a bad
    config, 130 when interrupted); TESSERA_DEBUG=1 shows the traceback."""
    run_command(main)
