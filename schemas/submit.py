"""Typed config of job submission (`configs/submit/default.yaml`)."""

from __future__ import annotations

from pydantic import Field

from schemas.config import ConfigModel


class SubmitConfig(ConfigModel):
    """How `python -m cluster.submit` packages and launches a job through Ray's Jobs API."""

    # Uploaded as the job's working_dir, minus these (gitignore-style patterns, as Ray's runtime_env takes them).
    excludes: tuple[str, ...] = (".git", ".venv", ".tessera", "demo_out", "out", "data", "outputs", "**/__pycache__",
                                 "*.egg-info", ".pytest_cache")
    env_vars: dict[str, str] = Field(default_factory=dict)
    pip: tuple[str, ...] = ()  # extra requirements installed for the job; empty: the cluster's own environment
    entrypoint_num_cpus: float = Field(default=0.0, ge=0)
    entrypoint_num_gpus: float = Field(default=0.0, ge=0)
