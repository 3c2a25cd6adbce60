"""Config sections every job shares: where `s3://` paths live (`StorageConfig`) and which Ray to use (`RayConfig`).

Each job's config has them under the same keys, `storage:` and `ray:`, so `--set ray.address=...` and the storage
credentials work alike everywhere.
"""

from __future__ import annotations

import pydantic
from pydantic import Field

from schemas.config import ConfigModel


# A run or study name becomes one folder under the job's storage and a Ray Train run name: one path component that
# can neither climb ("..") nor hide ("."), so it starts with a letter, digit, '_' or '-', and holds no separator.
RUN_NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"


class StorageConfig(ConfigModel):
    """Where s3:// paths live. Credentials come from the standard AWS environment/profile chain by default; they are
    never printed or written into outputs (they are excluded from dumps and reprs)."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    access_key_id: pydantic.SecretStr | None = Field(default=None, repr=False)
    secret_access_key: pydantic.SecretStr | None = Field(default=None, repr=False)


class RayConfig(ConfigModel):
    address: str | None = None  # None starts a local instance
    num_cpus: int | None = None  # of the local instance
    # A local instance's ports listen on 127.0.0.1 only; true opens them on every interface (token auth stays on).
    listen_all_interfaces: bool = False
