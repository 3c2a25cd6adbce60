"""Training pieces of the neural tokenizers, single-device and plain; pipeline/train runs them on Ray Train.

- `new_tokenizer`: an untrained tokenizer for a modality, its channels and input normalisation fitted on samples;
- `Objective`: the module data parallelism wraps: arrays in, (loss, reconstruction loss, bottleneck loss, ids) out;
- `evaluate`: reconstruction scores of the codec plus codebook usage and perplexity on held-out samples;
- `reconstruction_grid`: a PNG of inputs above their reconstructions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.tokenizers.base import FAMILIES
from pipeline.tokenizers.codecs import Codec, codec_class
from pipeline.tokenizers.neural import NeuralTokenizer
from pipeline.tokenizers.quantizers import codebook_stats
from schemas.modalities import Values, require_implemented


def tokenizer_class(modality: str) -> type[NeuralTokenizer]:
    family = require_implemented(modality).tokenizer
    cls = FAMILIES.get(family.value) if family.value in FAMILIES else None
    if cls is None or not issubclass(cls, NeuralTokenizer):
        raise ValueError(f"{modality} is tokenized by the {family.value} family, which has no trainable network")
    return cls


def new_tokenizer(modality: str, tokenizer_id: str, samples: Sequence[np.ndarray],
                  model: Mapping[str, Any] | None = None) -> NeuralTokenizer:
    """An untrained tokenizer whose shapes and normalisation come from `samples` (label arrays of the modality).

    `model` holds the family's architecture keys (e.g. widths, quantizer for image-like maps; tokens, hidden for
    global embeddings); a key the family does not have is an error naming it.
    """
    if not samples:
        raise ValueError(f"no {modality} samples to fit a tokenizer on")
    cls, codec_cls = tokenizer_class(modality), codec_class(modality)
    model = dict(model or {})
    if codec_cls.values is Values.CLASSES and model.get("num_classes") is None:
        model["num_classes"] = max(2, int(max(int(np.max(s)) for s in samples)) + 1)
    stats = codec_cls.fit_stats(samples)
    in_channels, out_channels = codec_cls(stats, model.get("num_classes")).channels(samples[0])
    fitted: dict[str, Any] = {"modality": modality, "stats": stats, "in_channels": in_channels,
                              "out_channels": out_channels}
    for size in ("resolution", "frames"):  # image side, or signal frames per sample
        if size in cls.settings_model.model_fields:
            fitted[size] = int(np.shape(samples[0])[0])
    settings = cls.settings_model.model_validate({**cls.default_model, **fitted, **model})
    return cls.create(tokenizer_id, settings)


class Objective(nn.Module):
    """Network + codec loss as one module, so DDP sees only tensors in and out."""

    def __init__(self, network: nn.Module, codec: Codec):
        super().__init__()
        self.network, self.codec = network, codec

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output, quantized = self.network(x)
        reconstruction = self.codec.loss(output, target)
        return reconstruction + quantized.loss, reconstruction.detach(), quantized.loss.detach(), quantized.ids


@torch.no_grad()
def evaluate(tokenizer: NeuralTokenizer, samples: Sequence[np.ndarray], batch_size: int = 64) -> dict[str, float]:
    """Codec scores of decode(encode(x)) against x, with the usage and perplexity of the ids used."""
    was_training = tokenizer.network.training
    tokenizer.network.eval()
    ids, reconstructions = [], []
    for start in range(0, len(samples), batch_size):
        batch_ids = tokenizer.encode(samples[start:start + batch_size])
        ids.append(batch_ids)
        reconstructions += tokenizer.decode(batch_ids)
    tokenizer.network.train(was_training)
    all_ids = torch.from_numpy(np.concatenate(ids))
    return {**tokenizer.codec.scores(reconstructions, samples), **codebook_stats(all_ids, tokenizer.vocab_size),
            "samples": float(len(samples))}


def reconstruction_grid(tokenizer: NeuralTokenizer, samples: Sequence[np.ndarray], path: str,
                        title: str = "") -> str:
    """Write a PNG: up to 8 inputs (top row) above their reconstructions (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(samples[:8])
    decoded = tokenizer.decode(tokenizer.encode(shown))
    categorical = tokenizer.codec.values is Values.CLASSES
    fig, axes = plt.subplots(2, len(shown), figsize=(1.6 * len(shown), 3.6), squeeze=False)
    for column, (original, reconstruction) in enumerate(zip(shown, decoded)):
        for row, array in enumerate((original, reconstruction)):
            ax = axes[row][column]
            image = tokenizer.codec.preview(array)
            ax.imshow(image, cmap="tab20" if categorical else "viridis", interpolation="nearest",
                      vmin=0 if categorical else None, vmax=19 if categorical else None)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][column].set_title(f"#{column}", fontsize=8)
    axes[0][0].set_ylabel("input")
    axes[1][0].set_ylabel("tokens -> decoded")
    fig.suptitle(title or f"{tokenizer.tokenizer_id}: {tokenizer.tokens_per_sample} tokens, "
                          f"vocab {tokenizer.vocab_size}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
