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


def blend(preds: list[np.ndarray], weights=None, method: str = "mean", power: float = 2.0) -> np.ndarray:
    """Combine member probabilities (each (rows, classes)) into one array of the same shape.

    mean: plain average; weighted: weighted average; power: (sum w p^power)^(1/power);
    rank: weighted average of per-class ranks in [0, 1] (only the order matters for ROC-AUC;
    ranks depend on the whole set of rows, so use it on a full test set, not per file).
    `weights`: one per member, or a (members, classes) table (per-class weights). A member whose column of a
    class is all NaN does not predict that class (a specialist): the class is blended over the members that do,
    their weights renormalised; a class no member predicts is 0.
    """
    if method not in BLENDS:
        raise ValueError(f"blend method {method!r}: use one of {BLENDS}")
    stack = np.stack([np.asarray(p, np.float64) for p in preds])
    table = class_weight_table(weights, stack, method == "mean")
    stack = np.nan_to_num(stack, nan=0.0)
    if method == "power":
        out = np.einsum("mc,mrc->rc", table, np.clip(stack, 0, 1) ** power) ** (1.0 / power)
    elif method == "rank":
        out = np.einsum("mc,mrc->rc", table, np.stack([class_ranks(p) for p in stack]))
    else:
        out = np.einsum("mc,mrc->rc", table, stack)
    return out.astype(np.float32)


def class_weight_table(weights, stack: np.ndarray, equal: bool = False) -> np.ndarray:
    """(members, classes) weights summing to 1 over the members that predict each class (see `blend`)."""
    m, _, c = stack.shape
    w = np.ones((m, c)) if weights is None or equal else np.asarray(weights, np.float64)
    w = np.broadcast_to(w[:, None] if w.ndim == 1 else w, (m, c)) * ~np.isnan(stack).all(axis=1)
    total = w.sum(axis=0, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def mean_by_owner(preds: list[np.ndarray], owners: list[int], n_owners: int) -> list[np.ndarray]:
    """Average the models of each owner (an ensemble member's folds): owner o gets the mean of the
    `preds[k]` with `owners[k] == o`."""
    return [np.mean([p for p, o in zip(preds, owners, strict=True) if o == owner], axis=0) for owner in range(n_owners)]


def combine_members(preds: list[np.ndarray], weights: list[float], method: str, power: float, row_ids: list[str],
                    post: dict, fallback: np.ndarray) -> np.ndarray:
    """Blend member predictions (`weights`: per member, or per member and class), post-process each file, and give
    undecodable files' rows the fallback.

    Members mark undecodable files with NaN rows (`predict_soundscapes(..., fallback=NaN)`), so the
    fallback reaches the submission as it is instead of being blended and smoothed; a member's all-NaN column is
    a class it does not predict (`blend`).
    """
    first = np.asarray(preds[0])
    covered = ~np.isnan(first).all(axis=0)  # a specialist's other classes are NaN columns, not bad rows
    bad = np.isnan(first[:, covered]).any(axis=1)
    clean = [np.where(np.isnan(p).all(axis=0), np.nan, np.nan_to_num(p, nan=0.0)) for p in preds]
    out = postprocess_rows(row_ids, blend(clean, weights, method, power), post)
    out[bad] = fallback
    return np.clip(out, 0.0, 1.0)


def widen_columns(probs: np.ndarray, member_classes: list[str] | None, classes: list[str]) -> np.ndarray:
    """A member's (rows, its classes) probabilities on the ensemble's `classes`: NaN columns for the classes it does
    not predict (a specialist, see `blend`); unchanged when it predicts them all (`member_classes` None)."""
    if member_classes is None or list(member_classes) == list(classes):
        return probs
    index = {c: j for j, c in enumerate(member_classes)}
    out = np.full((len(probs), len(classes)), np.nan, np.float32)
    for j, c in enumerate(classes):
        if c in index:
            out[:, j] = probs[:, index[c]]
    return out


def member_weights(members: list[dict], class_weights) -> np.ndarray:
    """The blend weights of `members` (ensemble.yaml / ensemble.json entries): the per-class table
    (`class_weights`, members x classes) when the ensemble has one, else each member's `weight`."""
    if class_weights is not None:
        return np.asarray(class_weights, np.float64)
    return np.asarray([m["weight"] for m in members], np.float64)