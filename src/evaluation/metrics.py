"""The BirdCLEF leaderboard metrics, computed exactly as Kaggle's scorers do.

- BirdCLEF 2024/2025 (`auc`): macro ROC-AUC over the classes with at least one positive.
- BirdCLEF 2023 (`cmap`): padded cmAP, macro average precision after appending 5 rows of ones.

Arrays are (n_rows, n_classes): truth in {0, 1}, predictions any real scores.
"""
from __future__ import annotations

import numpy as np
import polars as pl
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score


def _as_2d(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if y.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"y_true and y_pred must be 2-d arrays of one shape (rows, classes); "
                         f"got {y.shape} and {p.shape}")
    return y, p


def macro_auc(y_true, y_pred) -> float:
    """BirdCLEF 2024/2025 score: macro ROC-AUC over the classes that have a positive in `y_true`."""
    y, p = _as_2d(y_true, y_pred)
    keep = y.sum(axis=0) > 0  # Kaggle skips classes absent from the solution
    if not keep.any():
        raise ValueError("macro_auc: no class has a positive row in y_true, so ROC-AUC is undefined "
                         "(Kaggle's scorer rejects such a solution as well)")
    all_positive = np.flatnonzero(keep & (y > 0).all(axis=0))
    if len(all_positive):
        # sklearn (and so Kaggle) fails here too; say which columns instead of its generic message.
        raise ValueError(f"macro_auc: class column(s) {all_positive[:10].tolist()} have no negative row, "
                         "ROC-AUC is undefined for them")
    return float(np.mean(class_aucs(y[:, keep], p[:, keep])))


def class_aucs(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """ROC-AUC of every class, NaN for a class without both a positive and a negative row. Mann-Whitney over all
    classes at once (ties count half): the value sklearn's roc_auc_score gives, without its per-class Python loop,
    which dominated blend fitting over 206 classes."""
    pos = np.asarray(y) > 0
    n_pos, n = pos.sum(axis=0), len(pos)
    rank_sum = np.where(pos, rankdata(p, axis=0), 0.0).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n_pos > 0) & (n_pos < n), (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos)),
                        np.nan)


def per_class_auc(y_true, y_pred, classes: list[str]) -> dict[str, float]:
    """ROC-AUC of each class that has both a positive and a negative row (so no NaN), by class name."""
    y, p = _as_2d(y_true, y_pred)
    if len(classes) != y.shape[1]:
        raise ValueError(f"per_class_auc: {len(classes)} class names for {y.shape[1]} columns")
    positives = (y > 0).sum(axis=0)
    return {c: float(roc_auc_score(y[:, i], p[:, i]))
            for i, c in enumerate(classes) if 0 < positives[i] < len(y)}


def padded_cmap(y_true, y_pred, padding_factor: int = 5) -> float:
    """BirdCLEF 2023 score: macro average precision after appending `padding_factor` rows of ones
    to both truth and prediction (so every class has a positive and rare classes are smoothed)."""
    y, p = _as_2d(y_true, y_pred)
    pad = np.ones((padding_factor, y.shape[1]))
    return float(average_precision_score(np.vstack([y, pad]), np.vstack([p, pad]), average="macro"))


METRICS = {"auc": macro_auc, "cmap": padded_cmap}
LABELS = {"auc": "macro ROC-AUC", "cmap": "padded cmAP"}


def _check(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {sorted(METRICS)} (data.metric)")
    return metric


def score(y_true, y_pred, metric: str) -> float:
    """The competition score by name: `auc` (BirdCLEF 2024/2025) or `cmap` (BirdCLEF 2023)."""
    return METRICS[_check(metric)](y_true, y_pred)


def select(metric: str, values: dict[str, float]) -> float:
    """The competition metric's value among already computed named scores (e.g. {'auc': .., 'cmap': ..}):
    the one place that maps `data.metric` to a score."""
    return values[_check(metric)]


def by_name(metric: str, value: float) -> dict[str, float | None]:
    """{name: value for `metric`, None for every other metric}, in METRICS order (a row of per-metric columns)."""
    return {name: value if name == metric else None for name in METRICS}


def submission_score(solution: pl.DataFrame, submission: pl.DataFrame, metric: str = "auc") -> float:
    """Score a submission frame against a solution frame, both `row_id` + one column per class.

    Rows are matched by `row_id` (any order); the classes are the solution's columns. A missing or
    unknown row_id or class column raises ValueError naming them.
    """
    _classes, y, p = aligned_submission(solution, submission)
    return score(y, p, metric)


def submission_per_class(solution: pl.DataFrame, submission: pl.DataFrame) -> dict[str, float]:
    """ROC-AUC of each class of the solution that has a positive (as the macro average skips the others)."""
    classes, y, p = aligned_submission(solution, submission)
    return per_class_auc(y, p, classes)


def aligned_submission(solution: pl.DataFrame, submission: pl.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(classes, truth, predictions) of a submission matched to a solution by row_id (see `submission_score`)."""
    for name, frame in (("solution", solution), ("submission", submission)):
        if "row_id" not in frame.columns:
            raise ValueError(f"{name} has no 'row_id' column (columns: {frame.columns[:5]}...)")
        dup = frame.filter(pl.col("row_id").is_duplicated())["row_id"].unique().sort().to_list()
        if dup:
            raise ValueError(f"{name} has duplicate row_id(s): {dup[:5]}")
    classes = [c for c in solution.columns if c != "row_id"]
    missing_cols = [c for c in classes if c not in submission.columns]
    extra_cols = [c for c in submission.columns if c != "row_id" and c not in solution.columns]
    if missing_cols or extra_cols:
        raise ValueError(f"submission columns differ from the solution's: missing {missing_cols[:10]}, "
                         f"unknown {extra_cols[:10]}")
    sol_ids, sub_ids = set(solution["row_id"].cast(pl.Utf8)), set(submission["row_id"].cast(pl.Utf8))
    if sol_ids != sub_ids:
        raise ValueError(f"submission row_ids differ from the solution's: "
                         f"missing {sorted(sol_ids - sub_ids)[:5]}, unknown {sorted(sub_ids - sol_ids)[:5]}")
    order = solution.select(pl.col("row_id").cast(pl.Utf8))
    aligned = order.join(submission.with_columns(pl.col("row_id").cast(pl.Utf8)), on="row_id", how="left",
                         maintain_order="left")
    return classes, solution.select(classes).to_numpy(), aligned.select(classes).to_numpy()


def primary_one_hot(primary_labels: list[str], classes: list[str]) -> np.ndarray:
    """The out-of-fold truth of training, ensembling and reports: one-hot of each chunk's primary label
    (rows, classes) float32; a label outside `classes` gives an all-zero row."""
    index = {c: i for i, c in enumerate(classes)}
    cols = np.array([index.get(str(label), -1) for label in primary_labels], dtype=np.int64)
    y = np.zeros((len(cols), len(classes)), np.float32)
    known = np.flatnonzero(cols >= 0)
    y[known, cols[known]] = 1.0
    return y


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """{'auc': macro ROC-AUC, 'cmap': padded cmAP}; AUC is NaN when no class has both positives and negatives."""
    try:
        auc = macro_auc(y, p)
    except ValueError:
        auc = float("nan")
    return {"auc": auc, "cmap": padded_cmap(y, p)}
