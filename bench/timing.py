"""Timing helper shared by the bench scripts."""
from __future__ import annotations

import time
from collections.abc import Callable


def best_of(repeats: int, fn: Callable) -> tuple[float, object]:
    """Best wall time of `repeats` calls of fn() and its last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out
