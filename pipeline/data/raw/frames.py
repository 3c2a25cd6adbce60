"""What the signal plug-ins (time series, IMU, audio) share: their member format, windowing and limits.

A signal sample is float frames (T, C) stored as one `.npy` member: float32 by default, float16 on request (half
the bytes; ~3 significant digits, enough for log-mel dB or IMU, not for series with a large offset). Every sample
of a corpus has the same T (windows of `window` frames, or audio padded/clipped to its duration), so a tokenizer's
tokens per sample are fixed.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.data.encoding import encode_npy
from pipeline.data.raw.base import RawItem, RawSettings, bad_raw



class SignalSettings(RawSettings):
    dtype: Literal["float32", "float16"] = "float32"  # of the stored frames
    # A file longer than this (in frames at the target rate) is refused before it is resampled or cut.
    max_frames: int = Field(default=2_000_000, ge=1)


class WindowSettings(SignalSettings):
    window: int = Field(default=64, ge=2)  # frames per sample
    stride: int = Field(default=32, ge=1)  # frames between the starts of two windows


def frames_member(frames: np.ndarray, settings: SignalSettings) -> bytes:
    return encode_npy(np.asarray(frames, dtype=settings.dtype))


def read_frames(member: bytes) -> np.ndarray:
    """A signal member -> float32 (T, C)."""
    array = np.load(io.BytesIO(member), allow_pickle=False)
    return np.asarray(array, dtype=np.float32)


def check_frames(frames: np.ndarray, settings: SignalSettings, channels: int | None = None) -> np.ndarray:
    """Refuse what no sample may be: not 2-D, the wrong channel count, too long, not finite."""
    if frames.ndim != 2 or frames.shape[0] == 0 or frames.shape[1] == 0:
        raise bad_raw(f"expected frames of shape (T, C), got {frames.shape}")
    if channels is not None and frames.shape[1] != channels:
        raise bad_raw(f"{frames.shape[1]} channels, expected {channels}")
    if frames.shape[0] > settings.max_frames:
        raise bad_raw(f"{frames.shape[0]} frames > max_frames {settings.max_frames}")
    if not np.all(np.isfinite(frames)):
        raise bad_raw("holds NaN or infinite values")
    return frames


def windows(frames: np.ndarray, settings: WindowSettings) -> list[RawItem]:
    """Windows of `window` frames every `stride` frames, suffixed with the window's start frame (`_w000012`); a
    signal shorter than one window is refused (padding it would make a sample of mostly nothing)."""
    count = len(frames)
    if count < settings.window:
        raise bad_raw(f"{count} frames, shorter than one window of {settings.window}")
    return [RawItem(f"_w{start:06d}", frames_member(frames[start : start + settings.window], settings))
            for start in range(0, count - settings.window + 1, settings.stride)]


def resample(frames: np.ndarray, rate: float, target: int) -> np.ndarray:
    """Frames at `rate` Hz -> `target` Hz along time (polyphase, anti-aliased), by a ratio of small integers."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    if rate <= 0:
        raise bad_raw(f"sample rate {rate} is not positive")
    ratio = Fraction(target / rate).limit_denominator(1000)
    if ratio == 1:
        return frames
    return resample_poly(frames, ratio.numerator, ratio.denominator, axis=0).astype(np.float32)
