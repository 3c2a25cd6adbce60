"""Audio clips for the audio modality, offline: spoken digits and words synthesised with espeak-ng, and procedural
sound classes, each with its text or class name as the caption.

Speech comes from the espeak-ng library and voice data that the `espeakng-loader` wheel ships (called through
ctypes: nothing is downloaded, no system package is needed), each word said at several speaking rates and pitches.
Sound classes are generated: pure tones, rising chirps, noise bursts, click trains and square-wave buzzes, with
random frequencies, lengths and levels. Files are written at 8, 16, 22.05 or 44.1 kHz as WAV, FLAC or OGG, so the
reader's resampling and every format are exercised.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "yes", "no")
SOUNDS = ("tone", "chirp", "noise burst", "clicks", "buzz")
RATES = (8_000, 16_000, 22_050, 44_100)
FORMATS = ("wav", "flac", "ogg")
_SYNCHRONOUS, _RATE, _PITCH = 2, 1, 3  # espeak-ng's AUDIO_OUTPUT_SYNCHRONOUS, espeakRATE, espeakPITCH


class Speaker:
    """espeak-ng through ctypes: text -> int16 samples at its own rate (22050 Hz). One per process: the library
    keeps global state."""

    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = os.path.dirname(espeakng_loader.get_data_path())  # the folder that holds espeak-ng-data
        self.rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, data.encode(), 0)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise from the espeakng-loader data")
        self._chunks: list[np.ndarray] = []
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback(self._collect)  # kept referenced: the library calls it later
        self.lib.espeak_SetSynthCallback(self._callback)
        if self.lib.espeak_SetVoiceByName(b"en") != 0:
            raise RuntimeError("espeak-ng has no English voice in the espeakng-loader data")

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    def say(self, text: str, words_per_minute: int, pitch: int) -> np.ndarray:
        self.lib.espeak_SetParameter(_RATE, words_per_minute, 0)
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)
        self._chunks = []
        encoded = text.encode("utf-8")
        if self.lib.espeak_Synth(encoded, len(encoded) + 1, 0, 1, 0, 0, None, None) != 0:
            raise RuntimeError(f"espeak-ng could not say {text!r}")
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


def sound(kind: str, rate: int, rng: np.random.Generator) -> np.ndarray:
    """One procedural clip of a sound class, float in [-1, 1]."""
    seconds = rng.uniform(0.4, 1.1)
    t = np.arange(int(seconds * rate)) / rate
    if kind == "tone":
        clip = np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
    elif kind == "chirp":
        low, high = rng.uniform(200, 600), rng.uniform(1500, min(3500, rate / 2.5))
        clip = np.sin(2 * np.pi * (low * t + (high - low) * t**2 / (2 * seconds)))
    elif kind == "noise burst":
        clip = rng.normal(0, 0.5, len(t)) * np.exp(-t / rng.uniform(0.05, 0.3))
    elif kind == "clicks":
        clip = np.zeros(len(t))
        clip[(np.arange(0, seconds, 1 / rng.uniform(5, 20)) * rate).astype(int)] = 1.0
        clip = np.convolve(clip, np.exp(-np.arange(int(0.003 * rate)) / (0.0005 * rate)), mode="same")
    else:  # buzz: a square wave
        clip = np.sign(np.sin(2 * np.pi * rng.uniform(80, 300) * t)) * 0.5
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # no click at the edges
    return (clip * fade * rng.uniform(0.2, 0.8) / max(np.abs(clip).max(), 1e-6)).astype(np.float32)


def _write(path_stem: Path, clip: np.ndarray, rate: int, fmt: str, caption: str) -> Path:
    import soundfile

    path = path_stem.with_suffix(f".{fmt}")
    subtype = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS"}[fmt]
    soundfile.write(path, np.clip(clip, -1, 1), rate, subtype=subtype)
    path_stem.with_suffix(".txt").write_text(caption + "\n")
    return path


def write_audio_corpus(out: Path, variants: int = 8, seed: int = 0) -> list[Path]:
    """Write `variants` clips of every word and sound class into `out` (created); returns their paths."""
    from scipy.signal import resample_poly

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    speaker = Speaker()
    paths = []
    for index in range(variants):
        for word in WORDS:
            rate = int(rng.choice(RATES))
            speech = speaker.say(word, int(rng.integers(130, 220)), int(rng.integers(25, 75)))
            clip = resample_poly(speech, rate, speaker.rate).astype(np.float32)
            paths.append(_write(out / f"word_{word}_{index:03d}", clip, rate, FORMATS[index % 3], word))
        for kind in SOUNDS:
            rate = int(rng.choice(RATES))
            name = kind.replace(" ", "_")
            paths.append(_write(out / f"sound_{name}_{index:03d}", sound(kind, rate, rng), rate,
                                FORMATS[(index + 1) % 3], kind))
    return paths
