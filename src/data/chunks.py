"""5 s chunk layout of a recording and each chunk's energy (numba), used by prepare and the sampler."""
from __future__ import annotations

import numba
import numpy as np


def chunk_starts(n_samples: int, chunk: int, hop: int) -> np.ndarray:
    """Start sample of every chunk: every `hop` samples, plus one aligned to the end so the tail is covered.

    A recording shorter than one chunk gets a single chunk at 0 (padded when read).
    """
    if n_samples <= chunk:
        return np.zeros(1, np.int64)
    starts = np.arange(0, n_samples - chunk + 1, hop, dtype=np.int64)
    if starts[-1] + chunk < n_samples:
        starts = np.append(starts, n_samples - chunk)
    return starts


@numba.njit(parallel=True, cache=True, fastmath=True)
def _chunk_mean_square(y: np.ndarray, starts: np.ndarray, chunk: int, preemphasis: float,
                       scale: float) -> np.ndarray:
    out = np.empty(len(starts), np.float64)
    n = len(y)
    for c in numba.prange(len(starts)):
        s = starts[c]
        e = min(s + chunk, n)
        acc = 0.0
        prev = float(y[s]) * scale
        for i in range(s + 1, e):
            cur = float(y[i]) * scale
            d = cur - preemphasis * prev
            acc += d * d
            prev = cur
        out[c] = acc / max(e - s - 1, 1)
    return out


def chunk_energy_db(y: np.ndarray, starts: np.ndarray, chunk: int, preemphasis: float) -> np.ndarray:
    """Mean power (dBFS) of each chunk of `y` (int16 or float32), after pre-emphasis y[n] - a*y[n-1].

    Pre-emphasis tilts the score towards the high frequencies where birds call, so wind and
    rumble alone do not make a chunk look busy.
    """
    scale = 1.0 / 32767.0 if y.dtype == np.int16 else 1.0
    ms = _chunk_mean_square(y, starts.astype(np.int64), int(chunk), float(preemphasis), scale)
    return (10.0 * np.log10(ms + 1e-12)).astype(np.float32)


def silent_mask(energy_db: np.ndarray, abs_db: float, rel_db: float) -> np.ndarray:
    """True for chunks below `abs_db` or more than `rel_db` below the loudest; the loudest is always kept."""
    silent = (energy_db < abs_db) | (energy_db < energy_db.max() + rel_db)
    silent[int(np.argmax(energy_db))] = False
    return silent
