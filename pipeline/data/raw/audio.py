"""Audio plug-in: WAV, FLAC and OGG files (libsndfile through `soundfile`) -> one log-mel sample per file.

Channels are averaged to mono, the signal resampled to `sample_rate` (polyphase), clipped or zero-padded to
`duration` seconds, and turned into `n_mels` log-mel frames every `hop` samples: power spectra of Hann-windowed
frames of `n_fft` samples, through a triangular mel filterbank (HTK mel scale, computed here with numpy), in dB
(10 log10, floored at `floor_db`). So every sample is (frames, n_mels) with frames = duration * rate / hop, and
values are dB: a tokenizer's error on them is a log-spectral distance in dB.

The header is read first (`soundfile.info`): a file that does not parse, or longer than `max_seconds` (before
clipping), is quarantined without its samples being decoded.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from pipeline.data.raw.base import RawItem, RawReader, bad_raw, register_raw_reader
from pipeline.data.raw.frames import SignalSettings, frames_member, read_frames, resample


class AudioSettings(SignalSettings):
    sample_rate: int = Field(default=16_000, ge=1000, le=192_000)
    duration: float = Field(default=1.28, gt=0, le=60)  # seconds per sample: longer clipped, shorter padded
    n_mels: int = Field(default=64, ge=8, le=256)
    n_fft: int = Field(default=400, ge=16)  # 25 ms at 16 kHz
    hop: int = Field(default=160, ge=1)  # 10 ms at 16 kHz
    floor_db: float = -100.0  # silence (and padding) is this many dB
    max_seconds: float = Field(default=600.0, gt=0)  # longer files are refused before decoding


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters equally spaced on the HTK mel scale from 0 Hz to Nyquist."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def to_hz(mel):
        return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)

    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = to_hz(np.linspace(0.0, to_mel(sample_rate / 2), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - bins[None]) / np.maximum(upper - centre, 1e-9)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(signal: np.ndarray, settings: AudioSettings) -> np.ndarray:
    """Mono float signal at `sample_rate` -> (frames, n_mels) log-mel dB, frames = len(signal) // hop."""
    frames = len(signal) // settings.hop
    padded = np.pad(signal, (settings.n_fft // 2, settings.n_fft))  # centred frames, as librosa and torchaudio
    starts = np.arange(frames) * settings.hop
    windowed = padded[starts[:, None] + np.arange(settings.n_fft)[None]] * np.hanning(settings.n_fft)[None]
    power = np.abs(np.fft.rfft(windowed, axis=1)) ** 2
    mel = power @ mel_filterbank(settings.sample_rate, settings.n_fft, settings.n_mels).T
    return np.maximum(10.0 * np.log10(np.maximum(mel, 1e-30)), settings.floor_db).astype(np.float32)


def _refuse_cut_riff(data: bytes) -> None:
    """libsndfile reads a WAV cut short as a shorter sound, without a word: its RIFF header says how long it is."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) >= 12:
        declared = int.from_bytes(data[4:8], "little") + 8
        if declared > len(data):
            raise bad_raw(f"truncated WAV: {len(data)} of the {declared} bytes its RIFF header declares")


@register_raw_reader
class AudioReader(RawReader):
    modality = "audio"
    exts = ("wav", "flac", "ogg")
    settings_model = AudioSettings

    def read(self, name: str, data: bytes) -> Iterator[RawItem]:
        import soundfile

        settings: AudioSettings = self.settings
        _refuse_cut_riff(data)
        try:
            info = soundfile.info(io.BytesIO(data))
            if info.frames / info.samplerate > settings.max_seconds:
                raise bad_raw(f"{info.frames / info.samplerate:.1f} s > max_seconds {settings.max_seconds:g}")
            signal, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise bad_raw(f"not a readable WAV/FLAC/OGG file: {exc}") from None
        if len(signal) < info.frames:  # libsndfile returns what it could read from a cut file
            raise bad_raw(f"truncated: {len(signal)} of {info.frames} samples in the file")
        if len(signal) == 0:
            raise bad_raw("no samples")
        mono = resample(signal.mean(axis=1, keepdims=True), rate, settings.sample_rate)[:, 0]
        length = round(settings.duration * settings.sample_rate)
        mono = np.pad(mono[:length], (0, max(0, length - len(mono))))
        return iter([RawItem("", frames_member(log_mel(mono, settings), settings))])

    def decode_member(self, member: bytes) -> np.ndarray:
        return read_frames(member)
