"""src.folds: groups never straddle folds, classes keep a training recording, reruns are identical."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from src.data.splits import FoldsError, load_folds
from src.folds import _repair, make_folds

XC45 = Path(__file__).resolve().parents[2] / "shared" / "xc45"


def synthetic_meta() -> pl.DataFrame:
    """12 classes with 1..15 recordings, 15 authors shared across classes, two recordings without author."""
    counts = [1, 1, 2, 2, 3, 4, 5, 6, 8, 10, 12, 15]
    rows = []
    for c, count in enumerate(counts):
        for j in range(count):
            # Consecutive recordings of a class have different authors; authors recur across classes.
            rows.append({"filename": f"sp{c:02d}/XC{1000 * c + j}.ogg", "primary_label": f"sp{c:02d}",
                         "author": f"author{(7 * c + 3 * j) % 15:02d}"})
    rows[-1]["author"] = None
    rows[-2]["author"] = " "
    return pl.DataFrame(rows)


def assert_folds_ok(meta: pl.DataFrame, folds: pl.DataFrame, n: int, group_col: str) -> None:
    """No group in two folds; a class with >= 2 recordings in >= 2 groups has train data in every fold."""
    assert folds["filename"].to_list() == sorted(meta["filename"].to_list())
    assert set(folds["fold"].unique().to_list()) == set(range(n))
    df = meta.join(folds, on="filename").with_columns(
        pl.coalesce(pl.col(group_col).str.strip_chars().replace("", None), pl.col("filename")).alias("g"))
    assert df.group_by("g").agg(pl.col("fold").n_unique())["fold"].max() == 1
    per_class = df.group_by("primary_label").agg(pl.len(), pl.col("fold").n_unique().alias("folds"),
                                                pl.col("g").n_unique().alias("groups"))
    spreadable = per_class.filter((pl.col("len") >= 2) & (pl.col("groups") >= 2))
    assert (spreadable["folds"] >= 2).all(), spreadable.filter(pl.col("folds") < 2)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [3, 5])
def test_synthetic_folds(seed, n):
    meta = synthetic_meta()
    folds = make_folds(meta, n, "author", seed)
    assert_folds_ok(meta, folds, n, "author")
    # Deterministic, and independent of the input row order.
    assert folds.equals(make_folds(meta.reverse(), n, "author", seed))


def test_group_by_filename():
    meta = synthetic_meta()
    folds = make_folds(meta, 5, "filename", 0)
    assert_folds_ok(meta, folds, 5, "filename")


def test_small_data_falls_back_to_group_kfold():
    # Every class has fewer recordings than folds: sklearn's StratifiedGroupKFold refuses this.
    meta = synthetic_meta().filter(pl.col("primary_label") <= "sp05")
    folds = make_folds(meta, 5, "author", 1)
    assert_folds_ok(meta, folds, 5, "author")


def test_repair_after_group_kfold(caplog):
    # 20 classes of 2-4 recordings, 9 authors: GroupKFold alone confines some classes to one fold.
    meta = pl.DataFrame([{"filename": f"sp{c:02d}/XC{100 * c + j}.ogg", "primary_label": f"sp{c:02d}",
                          "author": f"a{(5 * c + j) % 9}"} for c in range(20) for j in range(2 + c % 3)])
    with caplog.at_level(logging.INFO, logger="src.folds"):
        for seed in range(8):
            assert_folds_ok(meta, make_folds(meta, 5, "author", seed), 5, "author")
    assert re.search(r"moved [1-9]", caplog.text)  # the repair had work to do


def test_repair_moves_whole_groups():
    # Class a has all its recordings in fold 0; moving group g2 to another fold fixes it.
    labels = np.array(["a", "a", "b", "b", "c"])
    groups = np.array(["g1", "g2", "g2", "g3", "g4"])
    fold = np.array([0, 0, 0, 1, 2])
    repaired = _repair(labels, groups, fold, 3)
    assert repaired[0] != repaired[1]
    assert repaired[1] == repaired[2]  # g2 moved as one
    assert repaired[2] != repaired[3]  # without confining b to one fold


def test_single_group_class_is_reported_and_groups_kept(caplog):
    solo = pl.when(pl.col("primary_label") == "sp04").then(pl.lit("solo")).otherwise(pl.col("author"))
    meta = synthetic_meta().with_columns(solo.alias("author"))
    with caplog.at_level(logging.WARNING, logger="src.folds"):
        folds = make_folds(meta, 5, "author", 0)
    assert "sp04 (solo)" in caplog.text
    assert_folds_ok(meta, folds, 5, "author")
    assert meta.join(folds, on="filename").filter(pl.col("author") == "solo")["fold"].n_unique() == 1


def test_bad_arguments():
    meta = synthetic_meta()
    with pytest.raises(ValueError, match="at least 2"):
        make_folds(meta, 1, "author", 0)
    with pytest.raises(ValueError, match="not a column"):
        make_folds(meta, 5, "recordist", 0)
    with pytest.raises(ValueError, match="distinct author groups"):
        make_folds(meta.with_columns(pl.lit("x").alias("author")), 5, "author", 0)


def test_load_folds(tmp_path):
    meta = synthetic_meta()
    path = tmp_path / "synthetic_5fold.csv"
    make_folds(meta, 5, "author", 0).write_csv(path)
    loaded = load_folds(path, meta)
    assert loaded.drop("fold").equals(meta)
    assert loaded["fold"].dtype == pl.Int64 and loaded["fold"].null_count() == 0

    fix = r"rerun `python -m src\.folds data=synthetic folds\.n=5`"
    extra = meta.vstack(pl.DataFrame({"filename": ["new/XC9.ogg"], "primary_label": ["sp00"],
                                      "author": ["a"]}))
    with pytest.raises(FoldsError, match=r"_5fold\.csv .*1 missing \(e\.g\. \['new/XC9\.ogg'\]\).*" + fix):
        load_folds(path, extra)
    with pytest.raises(FoldsError, match=r"_5fold\.csv .*1 unknown \(e\.g\. \['sp00/XC0\.ogg'\]\).*" + fix):
        load_folds(path, meta.filter(pl.col("filename") != "sp00/XC0.ogg"))
    with pytest.raises(FileNotFoundError, match=r"synthetic_5fold\.csv not found.*" + fix):
        load_folds(tmp_path / "other" / "synthetic_5fold.csv", meta)


def test_xc45():
    if not XC45.is_dir():
        pytest.skip(f"{XC45} not present")
    from src.data.competition import load_competition
    meta = load_competition(XC45, "birdclef2025").meta
    for group_col in ("author", "filename"):
        folds = make_folds(meta, 5, group_col, 42)
        assert_folds_ok(meta, folds, 5, group_col)
        assert folds.equals(make_folds(meta, 5, group_col, 42))
    # Grouped by recording, every class with two recordings is spread over two folds.
    folds = make_folds(meta, 5, "filename", 42)
    multi = meta.group_by("primary_label").len().filter(pl.col("len") >= 2)["primary_label"]
    spread = meta.join(folds, on="filename").filter(pl.col("primary_label").is_in(multi.implode()))
    assert spread.group_by("primary_label").agg(pl.col("fold").n_unique())["fold"].min() >= 2


def test_metadata_without_author_warns_that_folds_group_by_filename(tmp_path, caplog):
    """A train.csv without `author` (issue 10, item 7): the folds are still written, with a loud warning that
    names the file, says they fall back to grouping by filename, and how to fix or accept it."""
    from conftest import compose_config, make_tiny_competition

    from src.folds import write_folds

    root = make_tiny_competition(tmp_path / "comp", n_classes=2, per_class=3, seconds=1.0)
    meta = pl.read_csv(root / "train.csv").drop("author")
    meta.write_csv(root / "train.csv")
    cfg = compose_config(f"data.root={root}", f"folds.dir={tmp_path / 'folds'}", "folds.n=2")
    with caplog.at_level(logging.WARNING, logger="src.folds"):
        write_folds(cfg, report=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(root / "train.csv") in w and "grouping by filename" in w and "folds.group=filename" in w
               for w in warnings), warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="src.folds"):
        write_folds(compose_config(f"data.root={root}", f"folds.dir={tmp_path / 'folds'}", "folds.n=2",
                                   "folds.group=filename"), report=False)
    assert not [r for r in caplog.records if "grouping by filename" in r.getMessage()]
