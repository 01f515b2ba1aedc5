"""Decoding audio to float32 mono at the model's sample rate.

Kernel-safe: imports only numpy, soundfile and soxr (all on Kaggle's CPU image), never `src`,
because `src.kernel` inlines this file into the self-contained inference script.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

AUDIO_SUFFIXES = (".ogg", ".mp3", ".wav", ".flac")  # also the preference among files of one stem


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""


def list_audio(folder: str | Path | None) -> list[Path]:
    """Audio files (AUDIO_SUFFIXES, any case) directly in `folder`, sorted; [] when it is None or missing."""
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)


def load_audio(path: str | Path, sample_rate: int, min_duration_s: float = 0.0,
               max_duration_s: float | None = None) -> np.ndarray:
    """Decode any ogg/mp3/wav/flac file to float32 mono at `sample_rate`; with `max_duration_s`, only
    its first that many seconds are decoded (None = all).

    Raises AudioError (naming the file) if it is missing or a directory, unreadable, a truncated Ogg, empty,
    shorter than `min_duration_s`, contains NaN/inf, or is all zeros.
    """
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: a directory, not an audio file: move or rename it")
    if not path.is_file():
        raise AudioError(f"{path}: file not found: check data.root and the metadata's filename column")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes): re-download it or drop it from the metadata")
    try:
        with sf.SoundFile(str(path)) as fh:
            sr = fh.samplerate
            frames = -1 if max_duration_s is None else int(np.ceil(max_duration_s * sr))
            data = fh.read(frames, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for corrupt/truncated/unknown files
        raise AudioError(f"{path}: cannot decode ({type(exc).__name__}: {exc}); the file is corrupt, "
                         "truncated or not audio: re-download it or drop it from the metadata") from exc
    if _ogg_truncated(path):  # libsndfile silently decodes a cut-off Ogg file as a shorter recording
        raise AudioError(f"{path}: truncated Ogg file (the last page is cut short or lacks the end-of-stream "
                         "flag): re-download it or drop it from the metadata")
    if data.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    y = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(y).all():
        raise AudioError(f"{path}: decoded samples contain NaN/inf")
    if sr != sample_rate:
        y = soxr.resample(y, sr, sample_rate, quality="HQ").astype(np.float32, copy=False)
    if max_duration_s is not None:
        y = y[:round(max_duration_s * sample_rate)]
    if len(y) < min_duration_s * sample_rate:
        raise AudioError(f"{path}: too short ({len(y) / sample_rate:.2f} s < {min_duration_s} s)")
    if not np.any(y):
        raise AudioError(f"{path}: all samples are zero (silent file)")
    return np.ascontiguousarray(y, dtype=np.float32)


_OGG_MAX_PAGE = 27 + 255 + 255 * 255  # header + segment table + 255 segments of 255 bytes


def _ogg_truncated(path: Path) -> bool:
    """True if `path` is an Ogg file whose last page does not end exactly at the end of the file with the
    end-of-stream flag set (i.e. the download was cut off); False for a complete Ogg file or any other format."""
    with open(path, "rb") as fh:
        if fh.read(4) != b"OggS":
            return False
        size = fh.seek(0, 2)
        fh.seek(max(0, size - _OGG_MAX_PAGE))
        tail = fh.read()
    start = tail.rfind(b"OggS")
    while start >= 0:  # the last real page header; "OggS" can also occur by chance inside packet data
        page = tail[start:]
        n_seg = page[26] if len(page) > 26 else 0
        if len(page) >= 27 + n_seg and 27 + n_seg + sum(page[27:27 + n_seg]) == len(page):
            return not page[5] & 0x04
        start = tail.rfind(b"OggS", 0, start)
    return True


def to_int16(y: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> int16 (the cache format: half the disk of float32, exact enough for 16-bit sources)."""
    return np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)


def from_int16(y: np.ndarray) -> np.ndarray:
    """int16 cache -> float32 in [-1, 1]."""
    return y.astype(np.float32) / 32767.0


def write_ogg(path: Path, y: np.ndarray, sr: int, block_s: float) -> None:
    """32-bit float mono -> OGG/Vorbis, written in blocks (one huge Vorbis write can crash libsndfile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = max(1, int(block_s * sr))
    y = y.astype(np.float32)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="OGG", subtype="VORBIS") as f:
        for i in range(0, y.size, block):
            f.write(y[i:i + block])
