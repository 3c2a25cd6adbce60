"""Token grids by resolution, and the `MODALITY_INFO` entry apple/ml-4m needs to load Tessera's token folders.

ml-4m keys pre-computed tokens by modality and input size (`tok_rgb@224`) and derives a grid modality's token count
from `input_size` and `patch_size`: (input_size / patch_size)^2. At 224 px every image-like modality is 14x14 = 196
tokens of 16 px patches, at 448 px 28x28 = 784 (its super-resolution models). Tessera's image tokenizers follow that
from 224 px up and use 8 px patches below, where 16 px would leave a 64 px image 4x4 tokens (`image_patch_size`).

Feature maps come from their frozen network at its own input size, whatever the stored resolution (CLIP-B/16 at 224:
14x14; DINOv2-B/14 at 224: 16x16); global embeddings are a fixed 16 tokens. ml-4m ships entries for 224 and 448
only: `ml4m_modality_info` writes the entry for any other resolution, to add to its `MODALITY_INFO` (the embedding
classes are named, not built: they are ml-4m's).
"""

from __future__ import annotations

import math

from schemas.ml4m import ML4M_NAMES
from schemas.modalities import Family, get_modality

STANDARD_PATCH = 16  # 4M-21's image tokenizers: 16 px per token side
STANDARD_FROM = 224  # the smallest resolution 4M trains at; below it Tessera halves the patch
SMALL_PATCH = 8
FEATURE_INPUT = 224  # the input size the feature-map and global-embedding networks run at
GLOBAL_PATCH = 56  # ml-4m's value for global-embedding tokens (a placeholder: they have no grid)

# Token folders only: ml-4m's segmentation labels are `semseg_coco`, its tokens `tok_semseg`, Tessera's name.
_TESSERA_TO_ML4M = {tessera: ml4m for ml4m, tessera in ML4M_NAMES.items() if ml4m != "semseg_coco"}


def image_patch_size(resolution: int) -> int:
    """Pixels per token side of an image-like modality stored at `resolution` px."""
    patch = STANDARD_PATCH if resolution >= STANDARD_FROM else SMALL_PATCH
    if resolution % patch:
        raise ValueError(f"resolution {resolution} is not a multiple of its {patch} px token patch")
    return patch


def token_grid(modality: str, resolution: int) -> tuple[int, int] | None:
    """(rows, columns) of a grid modality's tokens for images stored at `resolution`; None for other families."""
    spec = get_modality(modality)
    if spec.family is Family.IMAGE_LIKE:
        side = resolution // image_patch_size(resolution)
        return side, side
    if spec.family is Family.FEATURE_MAP and spec.num_tokens is not None:
        side = math.isqrt(spec.num_tokens)
        return side, side
    return None


def ml4m_token_name(modality: str, resolution: int) -> str:
    """ml-4m's name of a modality's token folder, e.g. `tok_rgb@64`, `tok_clip@224`, `tok_dinov2_global`."""
    spec = get_modality(modality)
    name = f"tok_{_TESSERA_TO_ML4M.get(spec.name, spec.name)}"
    if spec.family is Family.GLOBAL_EMBEDDING:
        return name
    return f"{name}@{FEATURE_INPUT if spec.family is Family.FEATURE_MAP else resolution}"


def ml4m_modality_info(modality: str, resolution: int, vocab_size: int) -> tuple[str, dict[str, object]]:
    """The (key, entry) ml-4m's `MODALITY_INFO` needs for Tessera's `tok_<modality>` folder at `resolution`;
    `vocab_size` is the tokenizer's (the manifest row's). Map the folder onto the key with ml-4m's
    `modality_name_map` ({"tok_<modality>": key}) in its data config."""
    spec, key = get_modality(modality), ml4m_token_name(modality, resolution)
    # ml-4m's entries build their embeddings with functools.partial of its classes and hash the key for an id:
    # written here as the expressions to paste.
    extra = ", sincos_pos_emb=False" if spec.family is Family.GLOBAL_EMBEDDING else ""
    entry: dict[str, object] = {
        "vocab_size": vocab_size, "min_tokens": 0, "type": "img", "pretokenized": True,
        "encoder_embedding": f"partial(ImageTokenEncoderEmbedding, vocab_size={vocab_size}{extra})",
        "decoder_embedding": f"partial(ImageTokenDecoderEmbedding, vocab_size={vocab_size}{extra})",
        "id": f"generate_uint15_hash({key!r})",
    }
    if spec.family is Family.GLOBAL_EMBEDDING:
        entry.update(patch_size=GLOBAL_PATCH, max_tokens=spec.num_tokens)
    elif spec.family is Family.IMAGE_LIKE:
        entry.update(input_size=resolution, patch_size=image_patch_size(resolution), max_tokens=None)
    elif spec.family is Family.FEATURE_MAP:
        grid = token_grid(modality, resolution)
        assert grid is not None
        entry.update(input_size=FEATURE_INPUT, patch_size=FEATURE_INPUT // grid[0], max_tokens=None)
    else:
        raise ValueError(f"{modality} ({spec.family.value}) has no pre-computed tokens in ml-4m; it tokenizes "
                         f"text-like modalities on the fly from their label folders")
    return key, entry
