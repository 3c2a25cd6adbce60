"""The samples generation starts from: token rows read from a preprocess output, image files encoded by the
given modality's tokenizer, or text prompts encoded by the caption's WordPiece tokenizer (one reader each)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.storage import Storage
from pipeline.data.token_shards import list_token_shards, read_token_shard
from pipeline.tokenizers.base import Tokenizer
from pipeline.tokenizers.codecs import read_member
from pipeline.tokenizers.text import TextTokenizer
from schemas.common import StorageConfig
from schemas.keys import in_holdout, sanitize_key
from schemas.modalities import get_modality
from schemas.shards import MANIFEST_FILE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class InputSample:
    key: str
    rows: dict[str, np.ndarray]  # modality -> 1-D token ids (sequences end with EOS)
    prompt: str | None = None  # the text as given, for a sample that is a prompt


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
    for shard in list_token_shards(store, list(modalities)):
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


def read_prompt_file(path: str) -> list[str]:
    """A local text file's prompts: one a line, surrounding spaces and blank lines dropped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"prompt file {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"prompt file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path}: no prompt in it (one a line)")
    return prompts


def prompt_key(index: int, prompt: str) -> str:
    """Stable and path-safe: the prompt's position (a prompt may be repeated for another draw) and its start."""
    return sanitize_key(f"prompt-{index:03d}-{prompt[:48]}")


def read_prompts(prompts: Sequence[str], modality: str, tokenizer: Tokenizer) -> list[InputSample]:
    """Each prompt as one sample of `modality`, encoded exactly as the preprocess tokenize stage encodes that
    modality's text members. A prompt over the modality's token bound is an error: the stage would cut it at a
    word, and the model would be conditioned on less than the prompt the outputs are labelled with."""
    if not isinstance(tokenizer, TextTokenizer):
        raise ValueError(f"prompts are text; the {modality} tokenizer is a {tokenizer.family.value} tokenizer "
                         f"({tokenizer.tokenizer_id}), not WordPiece")
    bound = get_modality(modality).token_budget - 1  # EOS closes every row
    for index, count in enumerate(tokenizer.token_counts(prompts)):
        if count == 0:  # e.g. only characters the normaliser drops
            raise ValueError(f"prompt {index + 1} holds no token of {tokenizer.tokenizer_id}: {prompts[index]!r}")
        if count > bound:
            raise ValueError(f"prompt {index + 1} is {count} tokens; a {modality} holds {bound}: shorten it "
                             f"({prompts[index][:40]!r}...)")
    rows = tokenizer.member_rows(modality, [prompt.encode("utf-8") for prompt in prompts])
    return [InputSample(prompt_key(i, prompt), {modality: np.asarray(row, np.int64)}, prompt)
            for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True))]
