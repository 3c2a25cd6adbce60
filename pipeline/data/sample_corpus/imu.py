"""Procedural IMU recordings for the imu modality: a phone in a pocket while its wearer is still, walks, runs, climbs
stairs or falls, with the activity as the caption.

What makes them look like real recordings: gravity (9.81 m/s^2) seen through a random device orientation, gait as
a fundamental at the step rate with harmonics and per-step jitter (walking ~1.9 Hz and ~2-3 m/s^2 of vertical
acceleration, running ~2.8 Hz with ~10 m/s^2 heel strikes, stairs slower with a pitch change per step), a fall as
~0.3 s of free fall, an impact spike and the body lying at a new orientation; white noise and a constant bias per
sensor of the size a phone MEMS unit has (0.05 m/s^2, 0.01 rad/s), and device rates of 50, 100 or 200 Hz with
clock jitter. Most recordings are CSV with a time column; some 50 Hz ones are NPY (no clock: the reader's
`source_rate`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ACTIVITIES = ("still", "walk", "run", "stairs", "fall")
GRAVITY = 9.81
# step rate (Hz), vertical acceleration amplitude (m/s^2), sway rotation amplitude (rad/s)
GAIT = {"walk": (1.9, 2.5, 0.6), "run": (2.8, 9.0, 2.0), "stairs": (1.6, 3.5, 0.9)}
HEADER = "t,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z"


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _gait(t: np.ndarray, activity: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame linear acceleration and angular rate (T, 3) each of a gait."""
    rate, amplitude, sway = GAIT[activity]
    rate *= rng.uniform(0.9, 1.1)
    phase = 2 * np.pi * np.cumsum(np.full(len(t), rate) * (1 + 0.03 * rng.normal(size=len(t)))) * np.gradient(t)
    vertical = amplitude * (np.sin(phase) + 0.4 * np.sin(2 * phase + 0.5) + 0.15 * np.sin(3 * phase))
    if activity == "run":  # heel strikes: short sharp peaks once per step
        vertical += amplitude * 0.8 * np.maximum(0, np.sin(phase)) ** 12
    forward = 0.4 * amplitude * np.sin(phase + np.pi / 3)
    lateral = 0.2 * amplitude * np.sin(phase / 2)
    acc = np.stack([forward, lateral, vertical], axis=1)
    gyro = sway * np.stack([np.sin(phase / 2), 0.5 * np.sin(phase + 1.0), 0.3 * np.sin(phase / 2 + 2.0)], axis=1)
    if activity == "stairs":  # a pitch nod with every step and a slow climb
        gyro[:, 1] += 0.4 * np.sign(np.sin(phase))
        acc[:, 2] += 0.6
    return acc, gyro


def record(activity: str, rate: float, seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(times in s, frames (T, 6): acc xyz in m/s^2 then gyro xyz in rad/s in the device frame)."""
    count = int(seconds * rate)
    t = np.arange(count) / rate + rng.normal(0, 0.02 / rate, count).cumsum() * 0.05  # small clock jitter
    t = np.maximum.accumulate(t) + np.arange(count) * 1e-9
    acc, gyro = np.zeros((count, 3)), np.zeros((count, 3))
    up = np.tile([0.0, 0.0, GRAVITY], (count, 1))
    if activity in GAIT:
        acc, gyro = _gait(t, activity, rng)
    elif activity == "still":
        acc = 0.02 * np.sin(2 * np.pi * 0.25 * t)[:, None] * np.array([0, 0, 1.0])  # breathing
    else:  # fall: standing, ~0.3 s of free fall, an impact, then lying on the side
        start = rng.uniform(1.5, 2.0)
        falling = (t >= start) & (t < start + 0.3)
        after = t >= start + 0.3
        acc[falling] = -up[falling]  # free fall: the accelerometer reads ~0
        impact = np.exp(-((t - start - 0.3) / 0.03) ** 2)
        acc += impact[:, None] * rng.uniform(20, 35) * _rotation(rng)[0]
        gyro[falling] = rng.normal(0, 3, 3)
        up[after] = np.array([GRAVITY, 0.0, 0.0])
    device = _rotation(rng)  # how the phone sits in the pocket
    acc_device = (acc + up) @ device.T + rng.normal(0, 0.05, (count, 3)) + rng.normal(0, 0.05, 3)
    gyro_device = gyro @ device.T + rng.normal(0, 0.01, (count, 3)) + rng.normal(0, 0.005, 3)
    return t, np.concatenate([acc_device, gyro_device], axis=1).astype(np.float32)


def write_imu_corpus(out: Path, recordings_per_activity: int = 12, seed: int = 0) -> list[Path]:
    """Write the recordings into `out` (created), each with its activity in `<stem>.txt`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(recordings_per_activity):
        for activity in ACTIVITIES:
            rate = float(rng.choice([50, 100, 200]))
            seconds = 4.0 if activity == "fall" else rng.uniform(8, 12)
            t, frames = record(activity, rate, seconds, rng)
            stem = out / f"{activity}_{index:03d}"
            if rate == 50 and index % 2:
                path = stem.with_suffix(".npy")
                np.save(path, frames, allow_pickle=False)
            else:
                path = stem.with_suffix(".csv")
                rows = np.concatenate([t[:, None], frames], axis=1)
                np.savetxt(path, rows, delimiter=",", header=HEADER, comments="", fmt="%.5f")
            stem.with_suffix(".txt").write_text(activity + "\n")
            paths.append(path)
    return paths
