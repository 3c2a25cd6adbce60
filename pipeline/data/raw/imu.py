"""IMU plug-in: six-channel inertial recordings (accelerometer xyz in m/s^2, gyroscope xyz in rad/s) -> windows.

CSV: a header naming `acc_x, acc_y, acc_z, gyro_x, gyro_y, gyro_z` (any order; other columns are refused) and
optionally a time column in seconds, from which the file's rate is taken (its median step: phones log with
jitter). NPY: a float (T, 6) array in that channel order, at `source_rate`. Every recording is resampled to
`rate` Hz, so one window is the same duration whichever device recorded it, then cut into windows. A file with
another channel count, an irregular or non-increasing clock, text in a value column, NaNs or more than
`max_frames` frames is quarantined with the reason.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from pipeline.data.raw.base import RawItem, RawReader, bad_raw, register_raw_reader
from pipeline.data.raw.frames import WindowSettings, check_frames, read_frames, resample, windows

CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")


class IMUSettings(WindowSettings):
    rate: int = Field(default=50, ge=1, le=10_000)  # Hz of every stored window
    source_rate: float = Field(default=50.0, gt=0)  # Hz of files that carry no clock (NPY, CSV without time)
    time_column: str = "t"  # seconds
    window: int = Field(default=128, ge=2)  # 2.56 s at 50 Hz: a couple of gait cycles
    stride: int = Field(default=64, ge=1)


@register_raw_reader
class IMUReader(RawReader):
    modality = "imu"
    exts = ("csv", "npy")
    settings_model = IMUSettings

    def read(self, name: str, data: bytes) -> Iterator[RawItem]:
        settings: IMUSettings = self.settings
        if posixpath.splitext(name)[1].lower() == ".npy":
            frames, rate = _npy(data), settings.source_rate
        else:
            frames, rate = _csv(data, settings)
        check_frames(frames, settings, len(CHANNELS))
        if len(frames) * settings.rate / rate > settings.max_frames:
            raise bad_raw(f"{len(frames)} frames at {rate:g} Hz > max_frames {settings.max_frames} at "
                          f"{settings.rate} Hz")
        return iter(windows(resample(frames, rate, settings.rate), settings))

    def decode_member(self, member: bytes) -> np.ndarray:
        return read_frames(member)


def _npy(data: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise bad_raw(f"not a readable .npy array: {exc}") from None
    if array.dtype.kind not in "iuf":
        raise bad_raw(f"array of {array.dtype}, expected numbers")
    return np.asarray(array, dtype=np.float32)


def _csv(data: bytes, settings: IMUSettings) -> tuple[np.ndarray, float]:
    try:
        header, *lines = data.decode("utf-8").strip().splitlines()
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_raw(f"not a UTF-8 CSV with a header: {exc}") from None
    names = [n.strip().lower() for n in header.split(",")]
    clock = settings.time_column.lower()
    unknown = sorted(set(names) - set(CHANNELS) - {clock})
    if unknown or not set(CHANNELS) <= set(names):
        raise bad_raw(f"columns {names}; expected {list(CHANNELS)} and optionally {clock!r}")
    rows = np.empty((len(lines), len(names)), dtype=np.float64)
    for row, line in enumerate(lines):
        cells = line.split(",")
        if len(cells) != len(names):
            raise bad_raw(f"row {row} has {len(cells)} cells, the header {len(names)}")
        try:
            rows[row] = [float(c) for c in cells]
        except ValueError:
            raise bad_raw(f"row {row} holds a value that is not a number: {line[:60]!r}") from None
    frames = rows[:, [names.index(c) for c in CHANNELS]].astype(np.float32)
    if clock not in names:
        return frames, settings.source_rate
    steps = np.diff(rows[:, names.index(clock)])
    if len(steps) == 0 or np.any(steps <= 0):
        raise bad_raw(f"time column {clock!r} does not increase")
    step = float(np.median(steps))
    if np.max(np.abs(steps - step)) > 0.5 * step:
        raise bad_raw(f"irregular clock: steps from {steps.min():.4g} to {steps.max():.4g} s around {step:.4g} s")
    return frames, 1.0 / step
