"""BirdCLEF+ 2026's expert labels of train soundscapes (`train_soundscapes_labels.csv`) and the recorder site,
date and hour that its soundscape names carry.

`read_soundscape_labels` turns the CSV (`filename,start,end,primary_label`; times `hh:mm:ss` or seconds; several
species `;`-joined; every row twice in the real file) into one row per 5 s window of every listed soundscape:
`filename, window, start_s, end_s, labels` (a list of classes). A listed file is fully annotated, so its unlisted
windows are negatives (`labels` empty) unless `negatives=False` (then only the listed windows are kept). Each bad
row (a time that does not parse, end <= start, off the window grid, an unknown class, a missing file, a file that is
also a test file) is reported with the file and line and skipped; a window whose only row was bad is dropped, never
turned into a negative.

`parse_names` reads `<prefix>_<site>_<yyyymmdd>_<hhmmss>` (2026: `BC2026_Test_0001_S05_20250227_010002`) with a
configurable pattern into `site`, `date`, `hour` columns (nulls and one warning for names that do not match).
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import soundfile as sf

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("filename", "start", "end", "primary_label")
WINDOW_SCHEMA = {"filename": pl.Utf8, "window": pl.Int32, "start_s": pl.Float64, "end_s": pl.Float64,
                 "labels": pl.List(pl.Utf8)}
NAME_SCHEMA = {"filename": pl.Utf8, "site": pl.Utf8, "date": pl.Date, "hour": pl.Int8}


class SoundscapeLabelsError(ValueError):
    """A labels file that cannot be read at all; the message names it and the fix."""


def parse_time(text: str) -> float:
    """Seconds from `hh:mm:ss`, `mm:ss` or a plain number (`5`, `5.0`); ValueError if it is none of those."""
    parts = str(text).strip().split(":")
    if not 1 <= len(parts) <= 3 or any(not p.strip() for p in parts):
        raise ValueError(f"time {text!r}")
    try:
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + float(part)
    except ValueError:
        raise ValueError(f"time {text!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"time {text!r}")
    return seconds


def _windows_of(path: Path, window_s: float) -> int:
    """How many `window_s` windows the submission scores for a soundscape (the last partial one included)."""
    return max(1, math.ceil(sf.info(str(path)).duration / window_s - 1e-6))


def _row_windows(row: dict, line: int, where: str, window_s: float, classes: set[str]
                 ) -> tuple[list[int], list[str], list[str]]:
    """(window indices, known labels, problems) of one CSV row; no windows when the row is bad."""
    try:
        start, end = parse_time(row["start"]), parse_time(row["end"])
    except ValueError as exc:
        return [], [], [f"{where}:{line}: {row['filename']}: {exc} is not hh:mm:ss or seconds: row skipped"]
    if end <= start:
        return [], [], [f"{where}:{line}: {row['filename']}: end {row['end']} <= start {row['start']}: row skipped"]
    first, last = start / window_s, end / window_s
    if abs(first - round(first)) > 1e-6 or abs(last - round(last)) > 1e-6:
        return [], [], [(f"{where}:{line}: {row['filename']}: {row['start']}-{row['end']} is off the {window_s:g} s "
                        "window grid: row skipped")]
    names = [n.strip() for n in str(row["primary_label"] or "").split(";") if n.strip()]
    unknown = [n for n in names if n not in classes]
    problems = [(f"{where}:{line}: {row['filename']}: unknown class(es) {unknown} (not columns of "
                "sample_submission.csv): left out of the row")] if unknown else []
    known = [n for n in names if n in classes]
    if not known:
        return [], [], problems + [f"{where}:{line}: {row['filename']}: no known class: row skipped"]
    return list(range(round(first), round(last))), known, problems


def read_soundscape_labels(path: str | Path, soundscape_dir: str | Path, classes: list[str], window_s: float,
                           test_names: set[str] = frozenset(), negatives: bool = True
                           ) -> tuple[pl.DataFrame, list[str]]:
    """The labelled windows of `path` (see the module docstring) and the problems found (messages naming the file
    and line). `soundscape_dir` holds the listed audio (its durations give each file's windows); `test_names` are
    the test soundscapes' file names (a labelled file among them is refused: it would train on the test)."""
    path, soundscape_dir = Path(path), Path(soundscape_dir)
    table = _read_csv(path)
    n_rows = table.height
    table = table.with_row_index("line", offset=2)  # the header is line 1
    table = table.unique(list(LABEL_COLUMNS), keep="first", maintain_order=True)
    problems = [f"{path}: {n_rows - table.height} duplicate row(s) dropped ({table.height} kept)"] \
        if table.height < n_rows else []
    known, skipped_files = set(classes), set()
    positives: dict[str, dict[int, set[str]]] = {}
    bad: dict[str, set[int]] = {}
    for row in table.iter_rows(named=True):
        name = str(row["filename"]).strip()
        if name in test_names or not (soundscape_dir / name).is_file():
            if name not in skipped_files:
                why = "is also a test soundscape (labels on the test would leak it)" if name in test_names else \
                    f"not found in {soundscape_dir}"
                problems.append(f"{path}:{row['line']}: {name}: {why}: its rows skipped")
            skipped_files.add(name)
            continue
        windows, labels, row_problems = _row_windows(row, row["line"], str(path), window_s, known)
        problems += row_problems
        file_windows = positives.setdefault(name, {})
        if not windows and not labels:
            bad.setdefault(name, set()).update(_bad_windows(row, window_s))
        for w in windows:
            file_windows.setdefault(w, set()).update(labels)
    frames = [_file_frame(name, soundscape_dir / name, found, bad.get(name, set()), window_s, negatives)
              for name, found in positives.items()]
    windows = pl.concat(frames) if frames else pl.DataFrame(schema=WINDOW_SCHEMA)
    return windows.sort("filename", "window"), problems


def _bad_windows(row: dict, window_s: float) -> set[int]:
    """Windows a bad row may have meant (those its times overlap, when they parse): kept out of the negatives."""
    try:
        start, end = parse_time(row["start"]), parse_time(row["end"])
    except ValueError:
        return set()
    return set(range(math.floor(start / window_s), math.ceil(max(end, start) / window_s)))


def _file_frame(name: str, audio: Path, found: dict[int, set[str]], bad: set[int], window_s: float,
                negatives: bool) -> pl.DataFrame:
    """One file's labelled windows: every window (negatives) or only the listed ones; windows of bad rows out."""
    count = _windows_of(audio, window_s)
    listed = sorted(w for w in found if w < count)
    keep = [w for w in (range(count) if negatives else listed) if w in found or w not in bad]
    return pl.DataFrame({"filename": [name] * len(keep), "window": keep,
                         "start_s": [w * window_s for w in keep], "end_s": [(w + 1) * window_s for w in keep],
                         "labels": [sorted(found.get(w, ())) for w in keep]}, schema=WINDOW_SCHEMA)


def _read_csv(path: Path) -> pl.DataFrame:
    if not path.exists():
        raise SoundscapeLabelsError(f"{path} not found: the 2026 layout ships it beside train_soundscapes/ "
                                    "(data.soundscape_labels=null reads a competition without it)")
    table = pl.read_csv(path, infer_schema_length=0)
    missing = [c for c in LABEL_COLUMNS if c not in table.columns]
    if missing:
        raise SoundscapeLabelsError(f"{path}: missing column(s) {missing} (columns: {table.columns}): "
                                    f"expected {','.join(LABEL_COLUMNS)}")
    return table.select(LABEL_COLUMNS)


def parse_names(filenames: list[str], pattern: str | None) -> pl.DataFrame:
    """`filename, site, date, hour` of soundscape file names by `pattern` (a regex over the stem with named groups
    `site`, `date` (yyyymmdd) and `time` (hhmmss), each optional); nulls where a name does not match, with one
    warning for all of them. `pattern` None: every column null."""
    regex = re.compile(pattern) if pattern else None
    rows, unmatched = [], []
    for name in filenames:
        match = regex.fullmatch(Path(name).stem) if regex else None
        groups = match.groupdict() if match else {}
        if regex and not match:
            unmatched.append(name)
        rows.append({"filename": name, "site": groups.get("site"), "date": groups.get("date"),
                     "hour": int(groups["time"][:2]) if groups.get("time") else None})
    if unmatched:
        log.warning("%d soundscape name(s) do not match data.soundscape_names=%r (e.g. %s): their site, date and "
                    "hour are null", len(unmatched), pattern, unmatched[0])
    frame = pl.DataFrame(rows, schema={"filename": pl.Utf8, "site": pl.Utf8, "date": pl.Utf8, "hour": pl.Int8})
    return frame.with_columns(pl.col("date").str.to_date("%Y%m%d", strict=False))


def labelled_windows(comp, pattern: str | None, window_s: float, negatives: bool = True
                     ) -> tuple[pl.DataFrame, list[str]]:
    """Every labelled window of a competition with a labels file (`Competition.labels_file`; an empty table
    otherwise), with the site, date and hour of its soundscape: `filename, window, start_s, end_s, labels, site, date,
    hour`; and the problems found."""
    if comp.labels_file is None:
        return pl.DataFrame(schema=WINDOW_SCHEMA | NAME_SCHEMA), []
    windows, problems = read_soundscape_labels(comp.labels_file, comp.soundscape_dir, comp.classes, window_s,
                                               {p.name for p in comp.test_files()}, negatives)
    names = parse_names(windows["filename"].unique(maintain_order=True).to_list(), pattern)
    return windows.join(names, on="filename", how="left"), problems


def label_matrix(labels: list[list[str]], classes: list[str]) -> np.ndarray:
    """(rows, classes) 0/1 float32 truth from per-row class lists (an oof's or a labels table's `labels` column;
    names not in `classes` ignored)."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(labels), len(classes)), np.float32)
    for r, names in enumerate(labels):
        y[r, [index[n] for n in names or () if n in index]] = 1.0
    return y
