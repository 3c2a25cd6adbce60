"""The samples generation starts from: token rows read from a preprocess output, or image files encoded by the
given modality's tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.manifest import read_manifest
from pipeline.data.storage import Storage
from pipeline.data.token_shards import list_token_shards, read_token_shard
from pipeline.tokenizers.base import Tokenizer
from pipeline.tokenizers.codecs import read_member
from schemas.common import StorageConfig
from schemas.keys import in_holdout, sanitize_key
from schemas.modalities import get_modality
from schemas.shards import MANIFEST_FILE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class InputSample:
    key: str
    rows: dict[str, np.ndarray]  # modality -> 1-D token ids (sequences end with EOS)


def is_token_output(uri: str, storage: StorageConfig) -> bool:
    """Whether `uri` is a preprocess output (it has a manifest) rather than image files."""
    try:
        return Storage(uri, storage).exists(MANIFEST_FILE)
    except (OSError, ValueError):
        return False


def read_token_samples(uri: str, modalities: Sequence[str], count: int, holdout_fraction: float,
                       storage: StorageConfig) -> list[InputSample]:
    """The first `count` samples (in manifest order; only keys in the hash holdout when `holdout_fraction` > 0)
    with a token row of every modality; the first crop of each."""
    store = Storage(uri, storage)
    samples: list[InputSample] = []
    for shard in list_token_shards(store, list(modalities), read_manifest(store)):
        for key, rows in read_token_shard(store, shard):
            if holdout_fraction and not in_holdout(key, holdout_fraction):
                continue
            samples.append(InputSample(key, {m: np.asarray(rows[m][0], np.int64) for m in modalities}))
            if len(samples) == count:
                return samples
    if not samples:
        raise ValueError(f"{uri}: no sample of {list(modalities)} in the holdout fraction {holdout_fraction}")
    return samples


def image_paths(spec: str) -> list[Path]:
    """'a.png,b.jpg' or a folder of images (sorted) -> the files; a missing one is an error."""
    paths: list[Path] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        path = Path(part)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"input {part}: no such file or folder (and not a preprocess output: it has no "
                                    f"{MANIFEST_FILE})")
    if not paths:
        raise ValueError(f"input {spec}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def _square(array: np.ndarray, side: int | None, categorical: bool) -> np.ndarray:
    """Centre-cropped to a square and resized to the tokenizer's resolution, as preprocess does for its shards."""
    if side is None:
        return array
    image = Image.fromarray(array)
    edge = min(image.size)
    left, top = (image.width - edge) // 2, (image.height - edge) // 2
    image = image.crop((left, top, left + edge, top + edge))
    return np.asarray(image.resize((side, side), Image.NEAREST if categorical else Image.BICUBIC))


def read_image_files(spec: str, modality: str, tokenizer: Tokenizer, count: int) -> list[InputSample]:
    """Up to `count` image files, each read as a label member of `modality` and encoded by its tokenizer."""
    side = getattr(getattr(tokenizer, "settings", None), "resolution", None)
    categorical = get_modality(modality).categorical
    samples = []
    for path in image_paths(spec)[:count]:
        array = _square(read_member(modality, path.read_bytes()), side, categorical)
        (ids,) = tokenizer.encode([array])
        samples.append(InputSample(sanitize_key(path.stem), {modality: np.asarray(ids, np.int64)}))
    return samples
