"""Blending member predictions: mean, weighted mean, power mean, rank mean; a member's models averaged; the
blend post-processed per file (`combine_members`, what the ensemble and the kernel submit).

Kernel-safe (numpy + `src.infer.postprocess`): `src.kernel` inlines this file into the Kaggle script.
"""
from __future__ import annotations

import numpy as np

from src.infer.postprocess import postprocess_rows

BLENDS = ("mean", "weighted", "power", "rank")


def class_ranks(p: np.ndarray) -> np.ndarray:
    """Per-class rank of each row scaled to [0, 1] (ties get the mean rank)."""
    order = np.argsort(p, axis=0, kind="mergesort")
    ranks = np.empty_like(p, dtype=np.float64)
    n = len(p)
    ranks[order, np.arange(p.shape[1])[None, :]] = np.arange(n)[:, None]
    for c in range(p.shape[1]):  # average ties so equal scores stay equal
        col = p[:, c]
        _, inverse, counts = np.unique(col, return_inverse=True, return_counts=True)
        if len(counts) < n:
            sums = np.bincount(inverse, weights=ranks[:, c])
            ranks[:, c] = (sums / counts)[inverse]
    return ranks / max(n - 1, 1)


def blend(preds: list[np.ndarray], weights: list[float] | None = None, method: str = "mean",
          power: float = 2.0) -> np.ndarray:
    """Combine member probabilities (each (rows, classes)) into one array of the same shape.

    mean: plain average; weighted: weighted average; power: (sum w p^power)^(1/power);
    rank: weighted average of per-class ranks in [0, 1] (only the order matters for ROC-AUC;
    ranks depend on the whole set of rows, so use it on a full test set, not per file).
    """
    if method not in BLENDS:
        raise ValueError(f"blend method {method!r}: use one of {BLENDS}")
    w = np.ones(len(preds)) if weights is None or method == "mean" else np.asarray(weights, np.float64)
    w = w / w.sum()
    stack = np.stack([np.asarray(p, np.float64) for p in preds])
    if method == "power":
        out = np.tensordot(w, np.clip(stack, 0, 1) ** power, axes=1) ** (1.0 / power)
    elif method == "rank":
        out = np.tensordot(w, np.stack([class_ranks(p) for p in stack]), axes=1)
    else:
        out = np.tensordot(w, stack, axes=1)
    return out.astype(np.float32)


def mean_by_owner(preds: list[np.ndarray], owners: list[int], n_owners: int) -> list[np.ndarray]:
    """Average the models of each owner (an ensemble member's folds): owner o gets the mean of the
    `preds[k]` with `owners[k] == o`."""
    return [np.mean([p for p, o in zip(preds, owners, strict=True) if o == owner], axis=0) for owner in range(n_owners)]


def combine_members(preds: list[np.ndarray], weights: list[float], method: str, power: float, row_ids: list[str],
                    post: dict, fallback: np.ndarray) -> np.ndarray:
    """Blend member predictions, post-process each file, and give undecodable files' rows the fallback.

    Members mark undecodable files with NaN rows (`predict_soundscapes(..., fallback=NaN)`), so the
    fallback reaches the submission as it is instead of being blended and smoothed.
    """
    bad = np.isnan(preds[0]).any(axis=1)
    clean = [np.nan_to_num(p, nan=0.0) for p in preds]
    out = postprocess_rows(row_ids, blend(clean, weights, method, power), post)
    out[bad] = fallback
    return np.clip(out, 0.0, 1.0)
