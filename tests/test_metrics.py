"""src.evaluation.metrics against independent, sklearn-free reimplementations of Kaggle's BirdCLEF scorers."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import rankdata

from src.evaluation.metrics import by_name, macro_auc, padded_cmap, per_class_auc, score, select, submission_score


def ref_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC of one class by the Mann-Whitney U statistic (ties get average ranks, i.e. count 1/2)."""
    pos = y > 0
    n_pos, n_neg = pos.sum(), (~pos).sum()
    ranks = rankdata(p)
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def ref_macro_auc(y: np.ndarray, p: np.ndarray) -> float:
    """BirdCLEF 2024/2025: mean per-class AUC over classes with at least one positive."""
    return float(np.mean([ref_auc(y[:, j], p[:, j]) for j in range(y.shape[1]) if y[:, j].sum() > 0]))


def ref_ap(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision as sum over distinct thresholds (descending) of (R_k - R_k-1) * P_k."""
    total_pos, ap, prev_recall = (y > 0).sum(), 0.0, 0.0
    for t in np.unique(p)[::-1]:
        chosen = p >= t
        tp = (y[chosen] > 0).sum()
        recall = tp / total_pos
        ap += (recall - prev_recall) * tp / chosen.sum()
        prev_recall = recall
    return ap


def ref_padded_cmap(y: np.ndarray, p: np.ndarray, padding_factor: int = 5) -> float:
    """The 2023 Kaggle notebook's padded_cmap without pandas: pad with rows of ones, macro AP."""
    pad = np.ones((padding_factor, y.shape[1]))
    y, p = np.vstack([y, pad]), np.vstack([p, pad])
    return float(np.mean([ref_ap(y[:, j], p[:, j]) for j in range(y.shape[1])]))


def random_case(seed: int, rows: int = 200, classes: int = 12, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    y = (rng.random((rows, classes)) < rng.uniform(0.02, 0.3, classes)).astype(float)
    y[:, 3] = 0  # classes without a positive: skipped by the AUC, padded by the cmAP
    y[:, -1] = 0
    y[:, 1] = 0
    y[0, 1] = 1  # a class with a single positive
    p = rng.random((rows, classes)) + 0.5 * y  # informative but imperfect
    if decimals is not None:
        p = np.round(p, decimals)  # many ties
    return y, p


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 1])
def test_macro_auc_matches_mann_whitney(seed, decimals):
    y, p = random_case(seed, decimals=decimals)
    assert abs(macro_auc(y, p) - ref_macro_auc(y, p)) < 1e-9


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 1])
def test_padded_cmap_matches_notebook_formula(seed, decimals):
    y, p = random_case(seed, decimals=decimals)
    assert abs(padded_cmap(y, p) - ref_padded_cmap(y, p)) < 1e-9
    assert abs(padded_cmap(y, p, padding_factor=1) - ref_padded_cmap(y, p, 1)) < 1e-9


def test_auc_hand_computed():
    # Class 0: positives 0.35, 0.8 vs negatives 0.1, 0.4 -> 3 of 4 pairs ordered right = 0.75.
    # Class 1 has no positive and is skipped, as Kaggle does.
    y = np.array([[0, 0], [0, 0], [1, 0], [1, 0]])
    p = np.array([[0.1, 0.9], [0.4, 0.1], [0.35, 0.5], [0.8, 0.2]])
    assert macro_auc(y, p) == pytest.approx(0.75, abs=1e-12)
    # A tie between a positive and a negative counts one half: pairs (0.5>0.1, 0.5=0.5, 0.9>0.1, 0.9>0.5).
    y2 = np.array([[0], [0], [1], [1]])
    p2 = np.array([[0.1], [0.5], [0.5], [0.9]])
    assert macro_auc(y2, p2) == pytest.approx(3.5 / 4, abs=1e-12)


def test_padded_cmap_hand_computed():
    # One class, truth [0, 1], prediction [0.9, 0.1]; padding adds five (1, 1) rows: 6 positives.
    # Thresholds 1.0: P=1, R=5/6; 0.9: R unchanged; 0.1: P=6/7, R=1 -> AP = 5/6 + 1/6 * 6/7 = 41/42.
    assert padded_cmap(np.array([[0], [1]]), np.array([[0.9], [0.1]])) == pytest.approx(41 / 42, abs=1e-12)


def test_no_positive_is_an_error():
    y = np.zeros((4, 3))
    with pytest.raises(ValueError, match="no class has a positive"):
        macro_auc(y, np.random.default_rng(0).random((4, 3)))


def test_class_without_negative_is_an_error():
    y = np.array([[1, 1], [1, 0], [1, 0]])
    with pytest.raises(ValueError, match=r"\[0\].*no negative"):
        macro_auc(y, np.random.default_rng(0).random((3, 2)))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one shape"):
        macro_auc(np.zeros((4, 3)), np.zeros((4, 2)))


def test_per_class_auc_is_nan_free():
    y, p = random_case(0)
    y[:, 9] = 1  # all positive: undefined, left out
    names = [f"c{j}" for j in range(y.shape[1])]
    result = per_class_auc(y, p, names)
    assert set(result) == {n for j, n in enumerate(names) if j not in (3, 11, 9)}
    for j, n in enumerate(names):
        if n in result:
            assert abs(result[n] - ref_auc(y[:, j], p[:, j])) < 1e-9
    assert not any(np.isnan(v) for v in result.values())


def test_score_dispatch():
    y, p = random_case(1)
    assert score(y, p, "auc") == macro_auc(y, p)
    assert score(y, p, "cmap") == padded_cmap(y, p)
    with pytest.raises(ValueError, match="unknown metric"):
        score(y, p, "f1")


def test_select_picks_the_named_metric():
    values = {"val_loss": 0.3, "auc": 0.7, "cmap": 0.6}
    assert select("auc", values) == 0.7
    assert select("cmap", values) == 0.6
    with pytest.raises(ValueError, match="unknown metric"):
        select("val_loss", values)
    assert by_name("cmap", 0.5) == {"auc": None, "cmap": 0.5}


def frames(seed: int = 0):
    y, p = random_case(seed, rows=30, classes=5)
    ids = [f"soundscape_{i // 12}_{5 * (i % 12 + 1)}" for i in range(len(y))]
    classes = [f"sp{j}" for j in range(y.shape[1])]
    solution = pl.DataFrame({"row_id": ids, **{c: y[:, j].astype(int) for j, c in enumerate(classes)}})
    submission = pl.DataFrame({"row_id": ids, **{c: p[:, j] for j, c in enumerate(classes)}})
    return y, p, solution, submission


def test_submission_score_aligns_rows_and_columns():
    y, p, solution, submission = frames()
    reversed_columns = ["row_id", *submission.columns[:0:-1]]
    shuffled = submission.sample(fraction=1.0, shuffle=True, seed=3).select(reversed_columns)
    assert abs(submission_score(solution, shuffled) - ref_macro_auc(y, p)) < 1e-9
    assert abs(submission_score(solution, shuffled, "cmap") - ref_padded_cmap(y, p)) < 1e-9


def test_submission_score_names_mismatches():
    _, _, solution, submission = frames()
    with pytest.raises(ValueError, match="missing.*soundscape_0_5"):
        submission_score(solution, submission.filter(pl.col("row_id") != "soundscape_0_5"))
    with pytest.raises(ValueError, match="missing.*sp2"):
        submission_score(solution, submission.drop("sp2"))
    with pytest.raises(ValueError, match="unknown.*extra"):
        submission_score(solution, submission.with_columns(pl.lit(0.0).alias("extra")))
    with pytest.raises(ValueError, match="duplicate row_id"):
        submission_score(solution, pl.concat([submission, submission.head(1)]))
