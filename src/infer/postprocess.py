"""Post-processing of a soundscape's window probabilities: smoothing over neighbouring windows, file-level prior.

A post-processing config (`ensemble.postprocess`, saved in ensemble.yaml / ensemble.json) maps step names to
their settings, e.g. `{"smoothing": [0.1, 0.8, 0.1], "file_prior": {"mode": "max", "power": 0.5, "weight": 0.5}}`;
`STEPS` says which function each name runs and in which order. A step that is absent or null is off; a new step
is one function added to `STEPS`.

Kernel-safe: numpy + `src.infer.submission` (row ids); `src.kernel` inlines this file into the Kaggle script.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from src.infer.submission import row_stem


def smooth(probs: np.ndarray, kernel: list[float] | None) -> np.ndarray:
    """Weighted average over neighbouring windows of one file (kernel centred, edges renormalised)."""
    if not kernel or len(kernel) == 1:
        return probs
    k = np.asarray(kernel, np.float64)
    half = len(k) // 2
    n = len(probs)
    out = np.zeros_like(probs, dtype=np.float64)
    norm = np.zeros((n, 1))
    for j, w in enumerate(k):
        off = j - half
        lo, hi = max(0, -off), min(n, n - off)
        if lo < hi:
            out[lo:hi] += w * probs[lo + off:hi + off]
            norm[lo:hi] += w
    return (out / norm).astype(probs.dtype)


def file_prior(probs: np.ndarray, mode: str | None, power: float, weight: float = 1.0) -> np.ndarray:
    """Rescale each window by the file-level evidence of each class: p * agg(p over file)^power.

    A species heard clearly somewhere in the soundscape is more likely in its faint windows too.
    `weight` blends the rescaled and raw probabilities.
    """
    if not mode:
        return probs
    agg = probs.max(axis=0, keepdims=True) if mode == "max" else probs.mean(axis=0, keepdims=True)
    return (1 - weight) * probs + weight * probs * agg ** power


def _file_prior_step(probs: np.ndarray, prior: dict) -> np.ndarray:
    """`file_prior` from its config: {mode: max | mean | null, power (default 1), weight (default 1)}."""
    return file_prior(probs, prior.get("mode"), float(prior.get("power", 1.0)), float(prior.get("weight", 1.0)))


# step name -> function(one file's probabilities, the step's settings), applied in this order
STEPS: dict[str, Callable[[np.ndarray, object], np.ndarray]] = {"smoothing": smooth, "file_prior": _file_prior_step}


def postprocess(probs: np.ndarray, cfg: dict) -> np.ndarray:
    """Apply the post-processing config (see `STEPS`) to one file's window probabilities."""
    unknown = sorted(set(cfg) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown post-processing step(s) {unknown}: use {list(STEPS)}")
    out = probs
    for name, step in STEPS.items():
        if cfg.get(name):
            out = step(out, cfg[name])
    return out


def postprocess_rows(row_ids: list[str], probs: np.ndarray, post: dict) -> np.ndarray:
    """Apply `postprocess` to each soundscape's consecutive rows (row_id `<stem>_<end second>`)."""
    out = probs.copy()
    stems = [row_stem(r) for r in row_ids]
    start = 0
    for i in range(1, len(stems) + 1):
        if i == len(stems) or stems[i] != stems[start]:
            out[start:i] = postprocess(probs[start:i], post)
            start = i
    return out
