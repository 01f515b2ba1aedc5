"""Row ids, and writing and validating `submission.csv` (row_id + one column per class, values in [0, 1]).

Kernel-safe (csv + numpy + `src.infer.io`): `src.kernel` inlines this file.
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from src.infer.io import atomic_write


class SubmissionError(ValueError):
    """A submission that Kaggle would reject; the message says what is wrong."""


def row_ids(stem: str, count: int, window_s: float) -> list[str]:
    """`<stem>_<end second>` for consecutive windows (`soundscape_1_5`, `soundscape_1_10`, ...)."""
    return [f"{stem}_{round((i + 1) * window_s)}" for i in range(count)]


def row_stem(row_id: str) -> str:
    """The soundscape a row id names (its file stem): `soundscape_1_10` -> `soundscape_1`."""
    return row_id.rsplit("_", 1)[0]


def read_sample_submission(path: str | Path) -> tuple[list[str], list[str]]:
    """(row_ids, classes) of a `sample_submission.csv`."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [r[0] for r in reader if r]
    if not header or header[0] != "row_id":
        raise SubmissionError(f"{path}: first column must be row_id")
    return rows, header[1:]


def expected_rows(predicted_ids: list[str], sample_rows: list[str]) -> list[str]:
    """The rows a submission must have: the sample submission's when it describes these test files
    (every soundscape it names was predicted: local data, demo, xc45), else the predicted windows
    (Kaggle's hidden test set, whose sample submission only shows an example). With no predicted
    window at all, the sample's rows."""
    if not predicted_ids:  # no test file at all (a Kaggle notebook when it is saved): the sample's rows
        return sample_rows
    stems = {row_stem(r) for r in sample_rows}
    predicted_stems = {row_stem(r) for r in predicted_ids}
    return sample_rows if sample_rows and stems <= predicted_stems else predicted_ids


def align(row_ids: list[str], probs: np.ndarray, target_rows: list[str], fallback: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Reorder predictions to `target_rows`; rows never predicted get `fallback`. Returns (probs, problems)."""
    index = {r: i for i, r in enumerate(row_ids)}
    out = np.tile(np.asarray(fallback, np.float32), (len(target_rows), 1))
    missing = [r for r in target_rows if r not in index]
    hits = [(j, index[r]) for j, r in enumerate(target_rows) if r in index]
    if hits:
        dst, src = map(list, zip(*hits))
        out[dst] = probs[src]
    problems = [f"{len(missing)} expected row(s) were not predicted (e.g. {missing[:3]}): filled with the fallback"] \
        if missing else []
    extra = len(row_ids) - len(hits)
    if extra:
        problems.append(f"{extra} predicted row(s) are not in the sample submission: dropped")
    return out, problems


def write_submission(path: str | Path, row_ids: list[str], classes: list[str], probs: np.ndarray) -> None:
    """Write the CSV atomically (temporary name, then rename) after validating it."""
    probs = np.asarray(probs, np.float32)
    check(row_ids, classes, probs, row_ids, classes)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row_id", *classes])
        for rid, row in zip(row_ids, probs):
            writer.writerow([rid, *(f"{v:.6g}" for v in row)])


def check(row_ids: list[str], classes: list[str], probs: np.ndarray, want_rows: list[str], want_classes: list[str]) -> None:
    """Raise SubmissionError unless rows, columns and values are exactly what Kaggle expects."""
    if list(classes) != list(want_classes):
        missing = [c for c in want_classes if c not in classes][:5]
        extra = [c for c in classes if c not in want_classes][:5]
        raise SubmissionError(f"columns differ from sample_submission.csv (missing {missing}, unexpected {extra}, "
                              "or a different order)")
    duplicates = sorted(r for r, n in Counter(row_ids).items() if n > 1)
    if duplicates:
        raise SubmissionError(f"{len(row_ids) - len(set(row_ids))} duplicate(s) among the row ids (e.g. "
                              f"{duplicates[:3]}): two test files with one stem (x.ogg and x.flac)? keep one file "
                              "per soundscape")
    if list(row_ids) != list(want_rows):
        missing = sorted(set(want_rows) - set(row_ids))[:5]
        extra = sorted(set(row_ids) - set(want_rows))[:5]
        raise SubmissionError(f"rows differ from the expected rows: missing {missing}, unexpected {extra}, "
                              "or a different order")
    if probs.shape != (len(want_rows), len(want_classes)):
        raise SubmissionError(f"values have shape {probs.shape}, expected {(len(want_rows), len(want_classes))}")
    if not np.isfinite(probs).all():
        raise SubmissionError(f"{int((~np.isfinite(probs)).sum())} NaN/inf value(s)")
    if probs.size and (probs.min() < 0 or probs.max() > 1):
        raise SubmissionError(f"values outside [0, 1]: min {probs.min()}, max {probs.max()}")


def validate_file(path: str | Path, sample_submission: str | Path, test_rows: list[str] | None = None) -> None:
    """Validate a written submission.csv against the sample submission (rows as `expected_rows` decides)."""
    sample_rows, classes = read_sample_submission(sample_submission)
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or header[0] != "row_id":
            raise SubmissionError(f"{path}: first column must be row_id")
        ids, values = [], []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise SubmissionError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
            ids.append(row[0])
            try:
                values.append([float(v) for v in row[1:]])
            except ValueError as exc:
                raise SubmissionError(f"{path}:{line}: {exc}") from exc
    probs = np.asarray(values, np.float64).reshape(len(ids), len(header) - 1)
    want_rows = expected_rows(test_rows if test_rows is not None else ids, sample_rows)
    try:
        check(ids, header[1:], probs, want_rows, classes)
    except SubmissionError as exc:
        raise SubmissionError(f"{path}: {exc}") from exc
