"""Benchmark of `src.prepare`'s per-file work against the usual notebook way, on the same files.

    python bench/prepare.py [--root DIR] [--files N] [--repeats 3] [--workers 0]

Work per file: decode, resample to 32 kHz, 5 s chunks (1 s overlap) and each chunk's energy.
- ours: `src.infer.audio.load_audio` (soundfile + soxr HQ) -> int16 -> `chunk_starts` -> numba
  `chunk_energy_db`, exactly what `src.prepare` does per file (minus writing the .npy), in one
  process and on a warm ProcessPool of all cores (one numba thread per worker);
- baseline: `librosa.load(path, sr=32000, res_type="soxr_hq")` (librosa's default resampler) and a
  Python loop over the same chunks computing each chunk's energy with numpy.
Three passes: the files as they are (xc45 is 32 kHz already: no resampling), and 44.1 kHz OGG and
FLAC copies written to a temp folder first (not timed), so resampling is exercised for both.
Warm-up (not timed): numba's compile of our kernel, librosa's lazy imports and one-time numba
compiles (one librosa.load + resample of one file), and the pool's workers.
Then energy alone on the decoded int16 recordings: numba `chunk_energy_db` against numpy
(vectorised per recording with a cumulative sum). Every timing is the best of `--repeats`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numba
import numpy as np
import soundfile as sf
import soxr

from bench.timing import best_of
from src.data.chunks import chunk_energy_db, chunk_starts
from src.infer.audio import load_audio, to_int16

SR = 32000
CHUNK = 5 * SR
HOP = 4 * SR  # prepare's default: 5 s chunks, 1 s overlap
PREEMPHASIS = 0.97
AUDIO_SUFFIXES = (".ogg", ".mp3", ".wav", ".flac")  # as src.data.competition (not imported: polars)


def default_root() -> Path:
    xc45 = REPO.parent / "shared" / "xc45" / "train_audio"
    return xc45 if xc45.is_dir() else REPO / "data" / "demo" / "train_audio"


def find_files(root: Path, limit: int | None) -> list[Path]:
    """Audio files under `root` (or `root/train_audio` when it is a competition folder), sorted."""
    root = root / "train_audio" if (root / "train_audio").is_dir() else root
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        sys.exit(f"no audio files under {root}: pass --root (a competition or audio folder)")
    return files[:limit] if limit else files


def ours(path: Path) -> float:
    """src.prepare's work on one file; returns its duration in seconds."""
    y = to_int16(load_audio(path, SR))
    chunk_energy_db(y, chunk_starts(len(y), CHUNK, HOP), CHUNK, PREEMPHASIS)
    return len(y) / SR


def baseline(path: Path) -> float:
    """librosa.load + a Python loop over the same 5 s chunks, numpy energy per chunk."""
    import librosa

    y, _ = librosa.load(path, sr=SR, res_type="soxr_hq")
    energy = []
    starts = list(range(0, max(len(y) - CHUNK, 0) + 1, HOP))
    if starts[-1] + CHUNK < len(y):
        starts.append(len(y) - CHUNK)
    for s in starts:
        seg = y[s:s + CHUNK]
        d = seg[1:] - PREEMPHASIS * seg[:-1]
        energy.append(10 * np.log10(np.mean(d * d) + 1e-12))
    return len(y) / SR


def numpy_energy_db(y: np.ndarray, starts: np.ndarray, chunk: int, preemphasis: float) -> np.ndarray:
    """chunk_energy_db the natural numpy way: float64, pre-emphasis by slicing, squared, cumulative sum,
    each chunk's mean from two lookups."""
    x = y.astype(np.float64) * (1.0 / 32767.0)
    d = x[1:] - preemphasis * x[:-1]
    csum = np.concatenate(([0.0], np.cumsum(d * d)))
    ends = np.minimum(starts + chunk, len(y))
    mean = (csum[ends - 1] - csum[starts]) / np.maximum(ends - starts - 1, 1)
    return (10.0 * np.log10(mean + 1e-12)).astype(np.float32)


def _init_worker() -> None:
    numba.set_num_threads(1)  # parallelism is across files: no oversubscription
    chunk_energy_db(np.ones(CHUNK + 1, np.int16), np.zeros(1, np.int64), CHUNK, PREEMPHASIS)  # load the JIT


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def write_copies(files: list[Path], folder: Path, fmt: str, rate: int = 44100) -> list[Path]:
    """`rate` copies of `files` in `fmt` (OGG or FLAC) under `folder` (setup, not timed)."""
    out = []
    for i, path in enumerate(files):
        y, sr = sf.read(path, dtype="float32")
        target = folder / f"{i:04d}_{path.stem}.{fmt.lower()}"
        resampled = soxr.resample(y, sr, rate, quality="VHQ")
        channels = 1 if resampled.ndim == 1 else resampled.shape[1]
        with sf.SoundFile(target, "w", rate, channels, format=fmt) as fh:
            for start in range(0, len(resampled), 1 << 16):  # libsndfile 1.2's OGG writer segfaults
                fh.write(resampled[start:start + (1 << 16)])  # on a long file written in one call
        out.append(target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=default_root(), help="competition or audio folder")
    parser.add_argument("--files", type=int, default=None, help="use the first N files")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many runs")
    parser.add_argument("--workers", type=int, default=0, help="pool size (0 = all cores)")
    args = parser.parse_args()
    workers = args.workers or os.cpu_count() or 1
    files = find_files(args.root, args.files)
    rates = sorted({sf.info(p).samplerate for p in files})
    print(f"{len(files)} files from {args.root} (sample rates {rates}), {os.cpu_count()} cores, "
          f"numba {numba.__version__} threading layer {numba.config.THREADING_LAYER} "
          f"({numba.get_num_threads()} threads), best of {args.repeats}")

    import librosa  # noqa: F401  (import time not counted)

    ours(files[0])  # warm: numba compile (or cache load) of chunk_energy_db
    baseline(files[0])  # warm: librosa's lazy imports and one-time numba compiles
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("as is", files)]
        for fmt in ("OGG", "FLAC"):
            folder = Path(tmp) / fmt
            folder.mkdir()
            cases.append((f"44.1 kHz {fmt}", write_copies(files, folder, fmt)))
        ours(cases[1][1][0])  # warm the resampling path too (soxr, librosa.resample)
        baseline(cases[1][1][0])

        print("warm-up, not timed: numba compile of chunk_energy_db, librosa's first load + resample "
              "(lazy imports, one-time numba compiles), the pool's workers; 44.1 kHz copies written")
        rows = []
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
            list(pool.map(_sleep, [0.3] * 2 * workers))  # start and warm every worker before timing
            for name, paths in cases:
                t_ours, hours = best_of(args.repeats, lambda paths=paths: sum(ours(p) for p in paths) / 3600)
                t_pool, _ = best_of(args.repeats, lambda paths=paths: sum(pool.map(ours, paths)))
                t_base, _ = best_of(args.repeats, lambda paths=paths: sum(baseline(p) for p in paths))
                rows.append((name, hours, t_ours, t_pool, t_base))

    def per_min(hours: float, seconds: float) -> float:
        return hours / (seconds / 60)

    print(f"\ndecode + resample + chunk + energy, audio hours per minute (higher is better); "
          f"{rows[0][1]:.2f} h of audio per pass")
    head = (f"{'files':<15}{'ours 1 proc':>13}{f'ours {workers} procs':>15}{'librosa base':>14}"
            f"{'1 proc/base':>13}{f'{workers} procs/base':>15}")
    print(head + "\n" + "-" * len(head))
    for name, hours, t_ours, t_pool, t_base in rows:
        print(f"{name:<15}{per_min(hours, t_ours):>13.2f}{per_min(hours, t_pool):>15.2f}"
              f"{per_min(hours, t_base):>14.2f}{t_base / t_ours:>12.2f}x{t_base / t_pool:>14.2f}x")
    single, pooled = min(r[4] / r[2] for r in rows), min(r[4] / r[3] for r in rows)
    print(f"target ours/base >= 5x: 1 proc {'met' if single >= 5 else 'NOT met'} (worst {single:.2f}x), "
          f"{workers} procs {'met' if pooled >= 5 else 'NOT met'} (worst {pooled:.2f}x)")

    # energy alone, on the decoded int16 recordings
    audio = [to_int16(load_audio(p, SR)) for p in files]
    starts = [chunk_starts(len(y), CHUNK, HOP) for y in audio]
    t_numba, e_numba = best_of(max(args.repeats, 5), lambda: [chunk_energy_db(y, s, CHUNK, PREEMPHASIS)
                                                              for y, s in zip(audio, starts)])
    t_numpy, e_numpy = best_of(max(args.repeats, 5), lambda: [numpy_energy_db(y, s, CHUNK, PREEMPHASIS)
                                                              for y, s in zip(audio, starts)])
    diff = max(float(np.abs(a - b).max()) for a, b in zip(e_numba, e_numpy))
    n_chunks = sum(len(s) for s in starts)
    print(f"\nchunk energy only: {len(audio)} recordings, {n_chunks} chunks, "
          f"{sum(len(y) for y in audio) / SR / 3600:.2f} h")
    head = f"{'numba (ms)':>12}{'numpy cumsum (ms)':>19}{'numpy/numba':>13}{'max |diff| dB':>15}"
    print(head + "\n" + "-" * len(head))
    print(f"{t_numba * 1e3:>12.1f}{t_numpy * 1e3:>19.1f}{t_numpy / t_numba:>12.2f}x{diff:>15.2e}")
    print(f"target numpy/numba >= 3x: {'met' if t_numpy / t_numba >= 3 else 'NOT met'}")
    if diff > 1e-3:
        sys.exit(f"numba and numpy energies differ by {diff:.2e} dB (> 1e-3)")


if __name__ == "__main__":
    main()
