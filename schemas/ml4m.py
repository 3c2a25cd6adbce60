"""ml-4m's folder naming, as Tessera reads it, and the typed config of `jobs.import_ml4m`.

apple/ml-4m keeps one WebDataset folder per modality, named as its `MODALITY_INFO` keys: label folders by modality
(`rgb`, `caption`, `det`), pre-computed tokens as `tok_<modality>@<resolution>` (`tok_rgb@224`; global embeddings
have no resolution: `tok_dinov2_global`), plus `crop_settings`. Shards are `shard-<n>.tar` with any zero padding
(its configs use five digits, Tessera writes six). A data config may also map other folder names onto those keys
(its `modality_name_map`; `save_vq_tokens.py` names token folders `<task>_<suffix>`, e.g. `rgb_dvae_BUa_224`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pydantic
from pydantic import Field

from schemas.common import StorageConfig
from schemas.config import ConfigModel
from schemas.modalities import UnknownModalityError, get_modality
from schemas.shards import CROP_SETTINGS_FOLDER

# ml-4m modality names that Tessera's registry spells differently; every other name is the same in both.
ML4M_NAMES: dict[str, str] = {
    "clip": "clip_feature",  # tok_clip@224: CLIP-B/16 feature-map tokens
    "dinov2": "dinov2_feature",
    "imagebind": "imagebind_feature",
    "semseg_coco": "semseg",
}

_FOLDER = re.compile(r"^(?P<tok>tok_)?(?P<name>[a-z][a-z0-9_]*?)(?:@(?P<res>\d+))?$")
# `shard-000042.tar`, `shard-42.tar` or `00042.tar`: ml-4m only needs names that brace expansion can list.
SHARD_FILE = re.compile(r"^(?:shard-)?(?P<number>\d+)\.tar$")


@dataclass(frozen=True)
class Ml4mFolder:
    """One ml-4m folder as Tessera will list it: a label, token or crop-settings folder of a Tessera modality."""

    source: str  # the folder's name in the ml-4m root
    name: str  # its ml-4m modality name (after the folder map), e.g. tok_rgb@224
    modality: str | None  # Tessera's modality; None for crop_settings
    tokens: bool  # pre-computed tokens (`tok_*`)
    resolution: int | None  # the `@<res>` of the name, if any


def parse_folder(source: str, name: str | None = None) -> Ml4mFolder | None:
    """What an ml-4m folder holds, from its name (or the name a folder map gives it); None for a folder whose
    modality Tessera's registry does not know (e.g. `mask_valid`)."""
    name = name or source
    if name == CROP_SETTINGS_FOLDER:
        return Ml4mFolder(source, name, None, False, None)
    match = _FOLDER.match(name)
    if not match:
        return None
    stem = match.group("name")
    try:
        modality = get_modality(ML4M_NAMES.get(stem, stem)).name
    except UnknownModalityError:
        return None
    res = match.group("res")
    return Ml4mFolder(source, name, modality, match.group("tok") is not None, int(res) if res else None)


class ImportMl4mConfig(ConfigModel):
    """`python -m jobs.import_ml4m SRC --output DST`: list an ml-4m-style folder in a Tessera manifest."""

    source: str = Field(min_length=1)  # the ml-4m root (local or s3://)
    # Where the manifest goes; None writes it into `source` (the manifest is the only file added). Elsewhere, the
    # manifest names the source's tars by absolute URI, so nothing is copied and the source may stay read-only.
    output: str | None = None
    # The `@<res>` of the token folders to take when several resolutions of one modality are present.
    resolution: int | None = Field(default=None, ge=1)
    # ml-4m's `modality_name_map`: folder name -> the modality name it holds (e.g. rgb_dvae_BUa_224: tok_rgb@224).
    folder_names: dict[str, str] = Field(default_factory=dict)
    # Folders (their ml-4m names) to import; empty: every folder that is a Tessera modality or crop_settings.
    folders: tuple[str, ...] = ()
    overwrite: bool = False  # replace a manifest the output already has
    threads: int = Field(default=4, ge=1)  # shards read at once (each is held in memory while it is checked)
    storage: StorageConfig = StorageConfig()

    @pydantic.field_validator("folder_names")
    @classmethod
    def _names_parse(cls, names: dict[str, str]) -> dict[str, str]:
        unknown = [f"{folder}: {name}" for folder, name in names.items() if parse_folder(folder, name) is None]
        if unknown:
            raise ValueError(f"names that are no Tessera modality: {unknown}")
        return names
