"""`python -m src.folds data=birdclef2025 folds.n=5`: grouped, stratified K-fold over recordings.

Writes `<folds.dir>/<data.name>_<n>fold.csv` (`filename,fold`, sorted by filename). Training reads
it back with `load_folds`, which checks that it still matches the competition's recordings.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import hydra
import numpy as np
import polars as pl
from omegaconf import DictConfig
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from src import config as _config  # noqa: F401  (registers the root_tag resolver)
from src.data.competition import LAYOUTS, Competition, load_competition
from src.data.soundscape_labels import labelled_windows
from src.data.splits import SOUNDSCAPE_FOLD_PREFIX, FoldsError, folds_path, load_folds
from src.infer.io import atomic_write

log = logging.getLogger(__name__)


def _group_expr(group_col: str) -> pl.Expr:
    """The grouping key: `group_col`, or the filename where it is missing or blank (its own group)."""
    key = pl.col(group_col).cast(pl.Utf8).str.strip_chars().replace("", None)
    return pl.coalesce(key, pl.col("filename")).alias("_group")


def make_folds(meta: pl.DataFrame, n: int, group_col: str, seed: int) -> pl.DataFrame:
    """Assign every recording of `meta` to one of `n` folds; returns `filename, fold` sorted by filename.

    1. `StratifiedGroupKFold(n, shuffle=True, random_state=seed)` on `primary_label`, grouped by
       `group_col` (`author` or `filename`; a missing value makes the recording its own group), so
       a group is never split between train and validation. sklearn refuses it when every class has
       fewer than `n` recordings (small data sets): `GroupKFold(n, shuffle=True)` is used instead.
    2. Repair: a class with >= 2 recordings must not have all of them in one fold, or that fold
       trains without it. Whole groups are moved (smallest group, then smallest target fold first)
       while that reduces the number of such classes. Groups are never split, so two cases are
       logged as warnings and left as they are: a class whose recordings all share one group
       (impossible without splitting it), and the rare class that no single group move can fix
       without breaking another one. A class with one recording necessarily has no training
       recording in its own validation fold.

    Deterministic for a given `seed` and set of rows (the input order does not matter).
    """
    if n < 2:
        raise ValueError(f"folds.n must be at least 2, got {n}")
    if group_col not in meta.columns:
        raise ValueError(f"folds.group={group_col!r} is not a column of the metadata ({meta.columns})")
    meta = meta.sort("filename")
    groups = meta.select(_group_expr(group_col))["_group"].to_numpy()
    labels = meta["primary_label"].to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < n:
        raise ValueError(f"only {n_groups} distinct {group_col} groups for folds.n={n}: lower folds.n "
                         "or use folds.group=filename")
    fold = np.empty(len(meta), dtype=np.int64)
    if np.unique(labels, return_counts=True)[1].max() >= n:
        splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    else:
        # StratifiedGroupKFold refuses when every class has fewer recordings than folds; the best
        # stratification then is spreading each class over folds, which the repair below does.
        log.info("every class has fewer than %d recordings: GroupKFold, then spreading classes over folds", n)
        splitter = GroupKFold(n_splits=n, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class has only k members": expected for rare species; the repair handles it.
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, val) in enumerate(splitter.split(np.zeros(len(meta)), labels, groups)):
            fold[val] = k
    fold = _repair(labels, groups, fold, n)
    return pl.DataFrame({"filename": meta["filename"], "fold": fold})


def _one_fold_classes(label: np.ndarray, fold: np.ndarray, n_classes: int) -> set[int]:
    """Class codes with >= 2 recordings that all sit in one fold (so that fold trains without them)."""
    lo, hi = np.full(n_classes, np.iinfo(np.int64).max), np.full(n_classes, -1)
    np.minimum.at(lo, label, fold)
    np.maximum.at(hi, label, fold)
    count = np.bincount(label, minlength=n_classes)
    return set(np.flatnonzero((count >= 2) & (lo == hi)).tolist())


def _repair(labels: np.ndarray, groups: np.ndarray, fold: np.ndarray, n: int) -> np.ndarray:
    """Greedy, deterministic group moves until no class with >= 2 recordings sits in a single fold."""
    classes, label = np.unique(labels, return_inverse=True)
    group_names, group = np.unique(groups, return_inverse=True)  # codes follow sorted names
    group_size = np.bincount(group)
    members = [np.flatnonzero(label == c) for c in range(len(classes))]
    single_group = {c for c, rows in enumerate(members)
                    if len(rows) >= 2 and len(np.unique(group[rows])) == 1}
    if single_group:
        log.warning("%d class(es) have all their recordings in one group, so one fold trains without them "
                    "(groups are never split; folds.group=filename would allow it): %s", len(single_group),
                    ", ".join(f"{classes[c]} ({group_names[group[members[c][0]]]})"
                              for c in sorted(single_group)))
    fold = fold.copy()
    bad = _one_fold_classes(label, fold, len(classes))
    moves = 0
    while bad - single_group:
        best: tuple | None = None
        for c in sorted(bad - single_group):
            source = fold[members[c][0]]
            for g in np.unique(group[members[c]]):
                for target in range(n):
                    if target == source:
                        continue
                    trial = fold.copy()
                    trial[group == g] = target
                    # Fewest broken classes first, then the smallest change and the most even folds.
                    key = (len(_one_fold_classes(label, trial, len(classes))), int(group_size[g]),
                           int((fold == target).sum()), int(g), target)
                    if best is None or key < best[0]:
                        best = (key, trial)
        if best is None or best[0][0] >= len(bad):
            break  # no single move helps: stop rather than cycle
        fold, moves = best[1], moves + 1
        bad = _one_fold_classes(label, fold, len(classes))
    log.info("repair: moved %d group(s) so classes are not confined to one fold", moves)
    if bad - single_group:
        log.warning("could not spread these classes over two folds without splitting a group: %s",
                    ", ".join(str(classes[c]) for c in sorted(bad - single_group)))
    return fold


def fold_summary(meta: pl.DataFrame, folds: pl.DataFrame, group_col: str) -> pl.DataFrame:
    """Per fold: validation recordings and groups, classes in validation, classes with a train recording."""
    df = meta.join(folds, on="filename").with_columns(_group_expr(group_col))
    rows = []
    for k in sorted(df["fold"].unique().to_list()):
        val, train = df.filter(pl.col("fold") == k), df.filter(pl.col("fold") != k)
        rows.append({"fold": k, "recordings": len(val), "groups": val["_group"].n_unique(),
                     "val_classes": val["primary_label"].n_unique(),
                     "train_classes": train["primary_label"].n_unique()})
    return pl.DataFrame(rows)


def _report(meta: pl.DataFrame, folds: pl.DataFrame, group_col: str, path: Path) -> None:
    summary = fold_summary(meta, folds, group_col)
    n_classes = meta["primary_label"].n_unique()
    print(f"wrote {path}: {len(folds)} recordings, {n_classes} classes")
    for r in summary.iter_rows(named=True):
        print(f"  fold {r['fold']}: {r['recordings']:5d} recordings  {r['groups']:4d} groups  "
              f"{r['val_classes']:4d} classes in val  {r['train_classes']:4d}/{n_classes} classes in train")
    counts = meta.group_by("primary_label").len()
    multi = set(counts.filter(pl.col("len") >= 2)["primary_label"])
    df = meta.join(folds, on="filename")
    covered = {c for c in multi
               if df.filter(pl.col("primary_label") == c)["fold"].n_unique() >= 2}
    print(f"classes with >= 2 recordings and a train recording in every fold: {len(covered)}/{len(multi)}"
          + (f" (not: {sorted(multi - covered)})" if multi - covered else ""))
    singles = n_classes - len(multi)
    if singles:
        print(f"{singles} classes have a single recording: their validation fold trains without them")


@hydra.main(config_path="../configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    write_folds(cfg)


def _warn_if_no_groups(comp: Competition, group_col: str) -> None:
    """Warn when the grouping column (e.g. `author`) is missing or blank everywhere: every recording is
    then its own group, so one recordist's files can sit in both train and validation."""
    if group_col == "filename" or group_col not in comp.meta.columns:
        return
    if comp.meta.select(_group_expr(group_col).eq(pl.col("filename")).all()).item():
        metadata = comp.root / str(LAYOUTS[comp.layout]["metadata"])
        log.warning("%s has no %r values (column missing or empty): folds fall back to grouping by filename, so "
                    "one recordist's recordings can land in train and validation and the CV reads too high. Add "
                    "the %s column, or pass folds.group=filename to choose this knowingly", metadata, group_col,
                    group_col)


def check_replace(path: Path, comp: Competition, cfg: DictConfig) -> None:
    """Before `path` is written: refuse (FoldsError) when it holds the folds of other recordings, i.e. of another
    competition or data root under the same `data.name`, unless `folds.force`; say so when it is replaced."""
    if not path.exists():
        return
    try:
        load_folds(path, comp.meta.select("filename"))
    except (FoldsError, pl.exceptions.PolarsError) as err:
        if not cfg.folds.get("force"):
            raise FoldsError(f"{path} holds the folds of other recordings than {comp.root}'s ({err}); it was made "
                             f"for another competition or data root: pass data.name=<a name of its own> for "
                             f"{comp.root}, or folds.force=true to replace it") from None
    print(f"replacing {path}")


def write_folds(cfg: DictConfig, report: bool = True) -> Path:
    """Make the folds of `cfg.data` and write them to `folds_path(cfg)`; returns the path."""
    comp = load_competition(cfg.data.root, cfg.data.layout)
    _warn_if_no_groups(comp, str(cfg.folds.group))
    folds = make_folds(comp.meta, int(cfg.folds.n), str(cfg.folds.group), int(cfg.folds.seed))
    labelled, _ = labelled_windows(comp, cfg.data.get("soundscape_names"), float(cfg.audio.window_s))
    soundscapes = soundscape_folds(labelled, int(cfg.folds.n), str(cfg.folds.labelled_group), comp.labels_file)
    path = folds_path(cfg)
    check_replace(path, comp, cfg)
    with atomic_write(path) as tmp:
        pl.concat([folds, soundscapes.select("filename", "fold")]).write_csv(tmp)
    if report:
        _report(comp.meta, folds, str(cfg.folds.group), path)
        _report_soundscapes(soundscapes)
    return path


def soundscape_folds(labelled: pl.DataFrame, n: int, group: str, labels_file: Path | None) -> pl.DataFrame:
    """A fold for every labelled soundscape (2026), whole groups (`folds.labelled_group`: site, or filename) to
    one fold, so no recorder site is in two folds: groups by their positive windows, most first, each to the
    fold with the fewest so far (a greedy split). Returns `filename` (`train_soundscapes/<file>`), `fold`,
    `group`, `positives`. FoldsError when there are fewer groups than folds."""
    if labelled.height == 0:
        return pl.DataFrame(schema={"filename": pl.Utf8, "fold": pl.Int64, "group": pl.Utf8, "positives": pl.Int64})
    if group not in ("site", "filename"):
        raise FoldsError(f"folds.labelled_group={group!r}: use site or filename")
    files = labelled.group_by("filename").agg(pl.col("site").first(), (pl.col("labels").list.len() > 0).sum()
                                              .alias("positives"))
    files = files.with_columns(pl.coalesce(pl.col(group), pl.col("filename")).alias("group"))
    groups = files.group_by("group").agg(pl.col("positives").sum(), pl.len().alias("files")).sort(
        ["positives", "files", "group"], descending=[True, True, False])
    if groups.height < n:
        raise FoldsError(f"{labels_file}: its labelled soundscapes come from {groups.height} {group}(s), fewer than "
                         f"folds.n={n}: lower folds.n, or pass folds.labelled_group=filename (a site may then "
                         "validate in two folds)")
    load, count, assigned = np.zeros(n), np.zeros(n), {}
    for g, positives, size in groups.iter_rows():
        k = int(np.lexsort((np.arange(n), count, load))[0])  # fewest positives, then fewest files, then lowest
        assigned[g] = k
        load[k], count[k] = load[k] + positives, count[k] + size
    return files.with_columns(pl.col("group").replace_strict(assigned, return_dtype=pl.Int64).alias("fold"),
                              (SOUNDSCAPE_FOLD_PREFIX + pl.col("filename")).alias("filename")).sort("filename")


def _report_soundscapes(soundscapes: pl.DataFrame) -> None:
    if soundscapes.height == 0:
        return
    for (k,), rows in soundscapes.sort("fold").group_by(["fold"], maintain_order=True):
        print(f"  fold {k}: {rows.height} labelled soundscapes ({', '.join(sorted(set(rows['group'])))}), "
              f"{rows['positives'].sum()} positive windows")


if __name__ == "__main__":
    main()
