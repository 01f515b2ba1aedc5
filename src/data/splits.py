"""Folds files (`folds/<data.name>_<n>fold.csv`, written by `python -m src.folds`): where they are, reading one back
against the competition's recordings, and a fold's train / validation chunks and (2026) labelled soundscape windows.
"""
from __future__ import annotations

import re
from pathlib import Path

import polars as pl
from omegaconf import DictConfig

from src.data.audio_cache import load_labelled
from src.data.competition import EXTRA_PREFIX

SOUNDSCAPE_FOLD_PREFIX = "train_soundscapes/"  # a labelled soundscape's row in a folds csv (2026)


class FoldsError(ValueError):
    """A folds file that does not match the competition; the message names the file and the fix."""


def _fix_hint(path: Path) -> str:
    m = re.fullmatch(r"(.+)_(\d+)fold", path.stem)
    cmd = f"python -m src.folds data={m[1]} folds.n={m[2]}" if m else "python -m src.folds data=..."
    return f"rerun `{cmd}` (with the same data.root) to rebuild it"


def _read_folds(path: Path) -> pl.DataFrame:
    """The folds csv, its format checked."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {_fix_hint(path)}")
    folds = pl.read_csv(path, schema_overrides={"filename": pl.Utf8, "fold": pl.Int64})
    if folds.columns != ["filename", "fold"]:
        raise FoldsError(f"{path}: columns must be filename,fold, got {folds.columns}: {_fix_hint(path)}")
    if folds["fold"].null_count() or (folds["fold"] < 0).any() or folds["filename"].is_duplicated().any():
        raise FoldsError(f"{path}: empty or negative fold, or a filename listed twice: {_fix_hint(path)}")
    return folds


def load_folds(path: str | Path, meta: pl.DataFrame) -> pl.DataFrame:
    """Read a folds csv and return `meta` (same row order) with an integer `fold` column. The rows of labelled
    soundscapes (`train_soundscapes/<file>`, see `load_soundscape_folds`) are not recordings and are skipped.

    Raises FoldsError naming the file and the fix if it lacks recordings of `meta` or lists unknown ones.
    """
    path = Path(path)
    folds = _read_folds(path).filter(~pl.col("filename").str.starts_with(SOUNDSCAPE_FOLD_PREFIX))
    known, listed = set(meta["filename"]), set(folds["filename"])
    missing, unknown = sorted(known - listed), sorted(listed - known)
    if missing or unknown:
        raise FoldsError(f"{path} does not match the competition's recordings: "
                         f"{len(missing)} missing (e.g. {missing[:3]}), {len(unknown)} unknown "
                         f"(e.g. {unknown[:3]}): {_fix_hint(path)}")
    return meta.join(folds, on="filename", how="left", maintain_order="left")


def load_soundscape_folds(path: str | Path, names: list[str]) -> dict[str, int]:
    """The fold of each labelled soundscape `names` (2026; file names) in the folds csv, whose rows name them
    `train_soundscapes/<file>`. FoldsError naming the file when one is not there (a folds file made before the
    labels: rerun `python -m src.folds`)."""
    path = Path(path)
    rows = _read_folds(path).filter(pl.col("filename").str.starts_with(SOUNDSCAPE_FOLD_PREFIX))
    folds = dict(zip([f.removeprefix(SOUNDSCAPE_FOLD_PREFIX) for f in rows["filename"]], rows["fold"]))
    missing = sorted(set(names) - set(folds))
    if missing:
        raise FoldsError(f"{path} assigns no fold to {len(missing)} labelled soundscape(s) (e.g. {missing[:3]}): "
                         f"{_fix_hint(path)}")
    return {n: int(folds[n]) for n in names}


def folds_path(cfg: DictConfig) -> Path:
    """`<folds.dir>/<data.name>_<folds.n>fold.csv`."""
    return Path(cfg.folds.dir) / f"{cfg.data.name}_{cfg.folds.n}fold.csv"


def split_fold(chunks: pl.DataFrame, cfg: DictConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Train chunks (other folds, and every `data.extra` recording: never validated on) and validation chunks (this
    fold), both without silent chunks by default."""
    keep = pl.lit(True) if cfg.sampler.include_silent else ~pl.col("silent")
    if is_full_fit(cfg.fold):  # a full-data fit: every recording, nothing held out
        return chunks.filter(keep), chunks.clear()
    if isinstance(cfg.fold, bool) or not isinstance(cfg.fold, int) or not 0 <= cfg.fold < cfg.folds.n:
        raise ValueError(f"fold={cfg.fold!r}: pass a fold number 0..{cfg.folds.n - 1} (folds.n={cfg.folds.n})")
    path = folds_path(cfg)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m src.folds data={cfg.data.name} "
                                f"data.root={cfg.data.root} folds.n={cfg.folds.n}` first")
    extra = pl.col("filename").str.starts_with(f"{EXTRA_PREFIX}/")
    recordings = chunks.filter(~extra).select("filename").unique()
    folds = load_folds(path, recordings)
    chunks = chunks.join(folds, on="filename", how="left")
    train = chunks.filter(((pl.col("fold") != cfg.fold) | extra) & keep)
    val = chunks.filter((pl.col("fold") == cfg.fold) & ~pl.col("silent"))
    return train, val


def is_full_fit(fold) -> bool:
    """`fold=all`: a full-data fit (any other value must be a fold number: `split_fold` checks it)."""
    return str(fold) == "all"


def labelled_folds(cfg: DictConfig) -> pl.DataFrame:
    """The labelled windows (`load_labelled`) with the fold of their soundscape (the folds file's
    `train_soundscapes/<file>` rows); empty when the competition has none."""
    table = load_labelled(cfg.data.cache_dir)
    if table.height == 0:
        return table.with_columns(pl.lit(None, pl.Int64).alias("fold"))
    folds = load_soundscape_folds(folds_path(cfg), table["filename"].unique().to_list())
    return table.with_columns(pl.col("filename").replace_strict(folds, return_dtype=pl.Int64).alias("fold"))


def held_out_labelled(cfg: DictConfig) -> pl.DataFrame:
    """This fold's labelled windows (its labelled CV); none for a full-data fit."""
    table = labelled_folds(cfg)
    return table.clear() if is_full_fit(cfg.fold) else table.filter(pl.col("fold") == int(cfg.fold))


def training_labelled(cfg: DictConfig) -> pl.DataFrame:
    """The labelled windows this fold trains on: those of the other folds' soundscapes (every one for fold=all)."""
    table = labelled_folds(cfg)
    return table if is_full_fit(cfg.fold) else table.filter(pl.col("fold") != int(cfg.fold))
