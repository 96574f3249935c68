"""Audio files <-> 16 kHz mono float32 waveforms (soundfile reads, soxr resamples).

Both are the ``speech`` extra's packages, imported when a function needs them so that the rest
of the package works without them.
"""

from __future__ import annotations

import os

import numpy as np

from megatron_mio.atomic import atomic_file

SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""


class MissingExtraError(ImportError):
    """One of the ``speech`` extra's packages is not installed (one line: how to install it)."""


def optional_import(name: str):
    """Import one of the ``speech`` extra's packages, or one line saying how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise MissingExtraError(f"the speech codec needs the Python package {name!r}: "
                                f"bash ci/install_audio.sh PYTHON (docs/data_format.md, "
                                f"\"Speech and image codecs\")") from None


def audio_seconds(path: str | os.PathLike) -> float:
    """The file's duration from its header, without decoding it."""
    soundfile = optional_import("soundfile")
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioError(f"{path}: unreadable audio ({_reason(error)})") from None
    return info.frames / info.samplerate


def read_audio(path: str | os.PathLike) -> np.ndarray:
    """A wav / flac / ogg / any libsndfile format, any rate and channel count -> float32 [T] at
    16 kHz, channels averaged (SpeechTokenizer was trained on mono 16 kHz speech)."""
    soundfile = optional_import("soundfile")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioError(f"{path}: unreadable audio ({_reason(error)})") from None
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE and mono.size:
        soxr = optional_import("soxr")
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def write_wav(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """A mono 16-bit PCM wav, written under a temporary name and renamed."""
    soundfile = optional_import("soundfile")
    with atomic_file(path, suffix=".wav") as tmp:
        soundfile.write(str(tmp), np.clip(waveform, -1.0, 1.0), sample_rate, subtype="PCM_16")


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
