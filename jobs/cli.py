"""What every job's command line shares: --config, --set overrides, --address, and clean failure messages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from schemas.config import ConfigError, ConfigModel, load_config

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
    return load_config(model, args.config, overrides)


def run_job(main: Callable[[], int]) -> None:
    """Run a job's main; expected failures print one clear message and exit non-zero, without a traceback."""
    try:
        sys.exit(main())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
