"""Signal tokenizer (`signal_patch`): 1-D signals of (T, C) float frames -> a fixed number of tokens, and back.

Data2Seq for audio (log-mel frames), IMU and time series: the frames are cut into patches of `patch` frames x all C
channels; a strided 1-D convolution embeds each patch, a kernel-3 convolution lets neighbouring patches inform
each other, and each patch becomes `codes_per_patch` FSQ (or VQ) codes; a mirrored decoder rebuilds the frames.
Every sample is padded (zeros in input units, i.e. the fitted mean) or cropped to `frames`, so tokens per sample are
fixed: frames / patch * codes_per_patch, plus 3 C scale tokens in per-sample mode.

Normalisation (`normalize`):
- `dataset`: each channel standardised with the mean and std fitted on training samples. Right where the level
  carries meaning and is shared across samples: log-mel dB (loudness), IMU (gravity, m/s^2 and rad/s).
- `sample`: each sample's channels are further standardised by their own mean and std (as RevIN / PatchTST do for
  time series, where a CO2 record and a sunspot count share nothing but shape). The shape goes through the
  network; the statistics become extra tokens on uniform grids over the ranges seen in training, so decode returns
  the original units: the mean (in dataset-standardised units) as two base-`vocab_size` digits, since a window of
  CO2 (spread ~2 ppm at ~350 ppm) must be placed on a range that also holds GDP in the thousands; the log std as
  one token.

Held-out scores (`SignalCodec.scores`) are in the original units: MSE and MAE; the median relative MSE (a sample's
MSE over its own variance: comparable across series of any scale); and where the frames are dB (`values_in_db`,
audio's log-mel) the log-spectral distance in dB: the RMS over mel bins of one frame's error, averaged over
frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from pipeline.tokenizers.base import register_family
from pipeline.tokenizers.codecs import EPS, Codec, register_codec
from pipeline.tokenizers.neural import NeuralSettings, NeuralTokenizer
from pipeline.tokenizers.quantizers import Quantized
from schemas.modalities import TokenizerFamily, Values


class SignalSettings(NeuralSettings):
    frames: int = Field(default=64, ge=1)  # T of every sample (default: the training samples' own)
    patch: int = Field(default=8, ge=1)  # frames per patch
    codes_per_patch: int = Field(default=2, ge=1)
    hidden: int = Field(default=128, ge=1)
    normalize: Literal["dataset", "sample"] = "dataset"
    values_in_db: bool = False  # the frames are dB (log-mel): scores add the log-spectral distance

    @property
    def patches(self) -> int:
        if self.frames % self.patch:
            raise ValueError(f"frames {self.frames} is not a multiple of patch {self.patch}")
        return self.frames // self.patch


@register_codec
class SignalCodec(Codec):
    """(T, C) frames <-> (N, T, C) channel-standardised tensors; `per_sample` adds each sample's own standardisation
    (its statistics travel beside the network as scale tokens, see `SignalTokenizer`)."""

    values = Values.SIGNAL
    spatial = False
    per_sample = False  # set from the tokenizer's settings
    values_in_db = False

    @classmethod
    def fit_stats(cls, arrays):
        flat = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays]).astype(np.float64)
        mean, std = flat.mean(0), flat.std(0) + EPS
        standard = [(a.astype(np.float64) - mean) / std for a in arrays]
        locs = np.stack([s.mean(0) for s in standard])
        log_scales = np.log(np.stack([s.std(0) for s in standard]) + EPS)

        def span(values: np.ndarray) -> list[float]:
            low, high = float(values.min()), float(values.max())
            margin = 0.1 * (high - low) + 0.5  # room for held-out samples a little outside what training saw
            return [low - margin, high + margin]

        return {"mean": mean.tolist(), "std": std.tolist(), "loc_range": span(locs),
                "log_scale_range": span(log_scales)}

    def channels(self, sample):
        return sample.shape[-1], sample.shape[-1]

    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(self.stats["mean"]).view(1, 1, -1), torch.tensor(self.stats["std"]).view(1, 1, -1)

    def standardise(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        mean, std = self._affine()
        return (self._stack(arrays) - mean) / std

    def sample_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample, per-channel mean and log std of channel-standardised frames (N, T, C) -> (N, C) each."""
        return x.mean(1), torch.log(x.std(1, unbiased=False) + EPS)

    def to_input(self, arrays):
        x = self.standardise(arrays)
        if not self.per_sample:
            return x
        loc, log_scale = self.sample_stats(x)
        return (x - loc[:, None]) / log_scale.exp()[:, None]

    def loss(self, output, target):
        return F.mse_loss(output, target) + F.l1_loss(output, target)

    def to_arrays(self, output):
        mean, std = self._affine()
        return list((output.detach().float().cpu() * std + mean).numpy().astype(np.float32))

    def scores(self, pred, true):
        true = np.stack(true).astype(np.float64)
        diff = np.stack(pred).astype(np.float64) - true
        # Relative: each sample's MSE over its own variance (1 = no better than its mean), so series of any scale
        # weigh alike (mse and mae in original units are dominated by the largest-valued series); the median, as
        # a nearly flat window (a rate held for a year) has a variance near zero and any error is huge against it.
        relative = np.mean(diff**2, axis=(1, 2)) / np.maximum(true.var(axis=1).mean(axis=1), EPS)
        scores = {"mse": float(np.mean(diff**2)), "mae": float(np.mean(np.abs(diff))),
                  "median_relative_mse": float(np.median(relative))}
        if self.values_in_db:
            scores["log_spectral_distance_db"] = float(np.mean(np.sqrt(np.mean(diff**2, axis=-1))))
        return scores

    def preview(self, array):
        return array.T  # time left to right, channels (mel bins) bottom to top


class PatchAutoencoder(nn.Module):
    def __init__(self, settings: SignalSettings):
        super().__init__()
        self.codes, self.patches = settings.codes_per_patch, settings.patches
        dim, hidden, channels = settings.quantizer.dim, settings.hidden, settings.in_channels
        self.quantizer = settings.quantizer.build()
        self.encoder = nn.Sequential(
            nn.Conv1d(channels, hidden, settings.patch, stride=settings.patch), nn.GELU(),
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU(),
            nn.Conv1d(hidden, self.codes * dim, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv1d(self.codes * dim, hidden, 1), nn.GELU(),
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU(),
            nn.ConvTranspose1d(hidden, settings.out_channels, settings.patch, stride=settings.patch),
        )

    @property
    def tokens_per_sample(self) -> int:
        return self.patches * self.codes

    def _quantize(self, x: torch.Tensor) -> Quantized:
        z = self.encoder(x.transpose(1, 2))  # (N, codes * dim, patches)
        return self.quantizer(z.transpose(1, 2).reshape(len(x) * self.tokens_per_sample, -1))

    def _decode(self, codes: torch.Tensor, n: int) -> torch.Tensor:
        latents = codes.reshape(n, self.patches, -1).transpose(1, 2)
        return self.decoder(latents).transpose(1, 2)  # (N, T, C)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        quantized = self._quantize(x)
        return self._decode(quantized.codes, len(x)), quantized

    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        return self._quantize(x).ids.reshape(len(x), self.tokens_per_sample)

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self._decode(self.quantizer.lookup(ids), len(ids))


@register_family
class SignalTokenizer(NeuralTokenizer):
    """Audio, IMU, time series: any modality whose values are `signal` frames."""

    family = TokenizerFamily.SIGNAL_PATCH
    settings_model = SignalSettings
    # Per-sample mode's scale tokens: (statistic, the stats key of its fitted range, base-vocab digits per channel)
    SCALE_STATISTICS = (("loc", "loc_range", 2), ("log_scale", "log_scale_range", 1))

    def __init__(self, config, network=None):
        super().__init__(config, network)
        self.codec.per_sample = self.settings.normalize == "sample"
        self.codec.values_in_db = self.settings.values_in_db

    @classmethod
    def build_network(cls, settings: SignalSettings) -> PatchAutoencoder:
        return PatchAutoencoder(settings)

    @property
    def scale_tokens(self) -> int:
        digits = sum(d for _, _, d in self.SCALE_STATISTICS)
        return digits * self.settings.in_channels if self.codec.per_sample else 0

    @property
    def tokens_per_sample(self) -> int:
        return self.network.tokens_per_sample + self.scale_tokens

    def read(self, payload: bytes) -> np.ndarray:
        return self.fit_frames(super().read(payload))

    def fit_frames(self, frames: np.ndarray) -> np.ndarray:
        """Crop to `frames`, or pad with the fitted channel means (zeros once standardised)."""
        frames = np.asarray(frames, dtype=np.float32)
        wanted = self.settings.frames
        if len(frames) >= wanted:
            return frames[:wanted]
        fill = np.broadcast_to(np.asarray(self.settings.stats["mean"], dtype=np.float32), (wanted - len(frames),
                                                                                            frames.shape[1]))
        return np.concatenate([frames, fill])

    def check_shape(self, sample: np.ndarray) -> None:
        if sample.ndim != 2 or sample.shape[1] != self.settings.in_channels:
            raise ValueError(f"{self.tokenizer_id}: expected frames (T, {self.settings.in_channels}), "
                             f"got {sample.shape}")

    def _to_digits(self, values: torch.Tensor, key: str, digits: int) -> torch.Tensor:
        """(N, C) values -> (N, digits * C) ids: the grid index over the fitted range, most significant digit
        first."""
        (low, high), base = self.settings.stats[key], self.vocab_size
        levels = base**digits
        index = ((values.double() - low) / (high - low) * (levels - 1)).round().clamp(0, levels - 1).long()
        return torch.cat([(index // base**d) % base for d in reversed(range(digits))], dim=1)

    def _from_digits(self, ids: torch.Tensor, key: str, digits: int) -> torch.Tensor:
        (low, high), base, channels = self.settings.stats[key], self.vocab_size, self.settings.in_channels
        index = sum(ids[:, i * channels : (i + 1) * channels] * base ** (digits - 1 - i) for i in range(digits))
        return (low + index.double() / (base**digits - 1) * (high - low)).float()

    @torch.no_grad()
    def encode(self, batch, max_len=None):
        if not len(batch):
            return np.zeros((0, self.tokens_per_sample), dtype=np.int32)
        self.check_shape(np.asarray(batch[0]))
        arrays = [self.fit_frames(a) for a in batch]
        ids = self.network.encode_ids(self.codec.to_input(arrays).to(self.device)).cpu()
        if self.codec.per_sample:
            statistics = dict(zip(("loc", "log_scale"), self.codec.sample_stats(self.codec.standardise(arrays))))
            ids = torch.cat([ids, *(self._to_digits(statistics[name], key, digits)
                                    for name, key, digits in self.SCALE_STATISTICS)], dim=1)
        return ids.numpy().astype(np.int32)

    @torch.no_grad()
    def decode(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] != self.tokens_per_sample or (ids.size and not (
                0 <= ids.min() and ids.max() < self.vocab_size)):
            raise ValueError(f"{self.tokenizer_id}: expected ids in [0, {self.vocab_size}) of shape "
                             f"(N, {self.tokens_per_sample}), got {ids.shape}")
        ids = torch.as_tensor(ids, device=self.device)
        shape_ids, scale_ids = ids[:, : self.network.tokens_per_sample], ids[:, self.network.tokens_per_sample :]
        output = self.network.decode_ids(shape_ids).cpu()
        if self.codec.per_sample:
            statistics, start = {}, 0
            for name, key, digits in self.SCALE_STATISTICS:
                width = digits * self.settings.in_channels
                statistics[name] = self._from_digits(scale_ids[:, start : start + width].cpu(), key, digits)
                start += width
            output = output * statistics["log_scale"].exp()[:, None] + statistics["loc"][:, None]
        return self.codec.to_arrays(output)
