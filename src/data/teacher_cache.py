"""Reading the teacher cache that `python -m src.teacher` writes (`<data.cache_dir>/teacher/<teacher.name>/`: its
layout is in that module's docstring): the windows table with the embeddings and mapped scores, the cache rows of
given chunks, and a teacher run's predictions read from the cache instead of running the teacher again.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import polars as pl
from omegaconf import DictConfig

from src.config import load_run_config
from src.infer.runtimes import is_teacher_dir, teacher_head
from src.infer.submission import row_ids

KEYS = ["filename", "chunk"]  # a chunk of the prepare index

WINDOW_COLUMNS = {"source": pl.Utf8, "filename": pl.Utf8, "chunk": pl.Int32, "copy": pl.Int16, "snr_db": pl.Float32,
                  "start_s": pl.Float64, "end_s": pl.Float64, "bed": pl.Utf8, "bed_start_s": pl.Float32}


def valset_name(path: str | Path, cache: str | Path) -> str:
    """The cache's `filename` of a validation soundscape: its path under `<cache>/valsets/` (set/fold/file),
    so that the sets of other folds files or settings never mix."""
    return Path(path).relative_to(Path(cache) / "valsets").as_posix()


def teacher_option(name: str) -> str:
    """The command-line option that builds the cache named `name`: `teacher=<name>` when configs/teacher/ has such
    a file, else `teacher.name=<name>` beside the teacher it was made with."""
    from src.config import CONFIG_DIR

    if (Path(CONFIG_DIR) / "teacher" / f"{name}.yaml").exists():
        return f"teacher={name}"
    return f"teacher=<birdnet | perch> teacher.name={name}"


def cache_dir(cfg: DictConfig) -> Path:
    return Path(cfg.data.cache_dir) / "teacher" / str(cfg.teacher.name)


def load_cache(cfg_or_dir: DictConfig | Path) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, dict]:
    """(windows, embeddings, mapped scores, settings) of a built teacher cache, read-only: read once per cache
    version in a process (the folds and members of an ensemble share it)."""
    out_dir = cache_dir(cfg_or_dir) if isinstance(cfg_or_dir, DictConfig) else Path(cfg_or_dir)
    if not (out_dir / "windows.parquet").exists():
        raise FileNotFoundError(f"{out_dir / 'windows.parquet'} not found: build it first with `python -m src.teacher "
                                f"data=... {teacher_option(out_dir.name)}`")
    return _read_cache(str(out_dir), (out_dir / "windows.parquet").stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_cache(out_dir: str, stamp: int) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, dict]:
    out = Path(out_dir)
    return (pl.read_parquet(out / "windows.parquet"), np.load(out / "embeddings.npy", mmap_mode="r"),
            np.load(out / "scores.npy", mmap_mode="r"), json.loads((out / "settings.json").read_text()))


def cached_run_predictions(run_dir: str | Path, source: str, filenames: list[str]
                           ) -> tuple[list[str], np.ndarray] | None:
    """A teacher run's probabilities on every 5 s window of `filenames` (cache `filename`s of `source`), its head
    applied to the cached embeddings and scores instead of running the teacher again: (row_ids in the files'
    order, (rows, classes)). None when `run_dir` is not a teacher run, its cache is missing or was built with
    other teacher settings, or a file is not (wholly) cached: then predict from the audio."""
    run_dir = Path(run_dir)
    if not is_teacher_dir(run_dir):
        return None
    cfg = load_run_config(run_dir)
    out_dir = cache_dir(cfg)
    if not (out_dir / "windows.parquet").exists():
        return None
    windows, emb, zero, settings = load_cache(out_dir)
    spec = json.loads((run_dir / "teacher.json").read_text())
    same = ("name", "model_file", "sample_rate", "window_s", "offsets_s", "outputs", "activation", "signature",
            "mapping")
    if any(settings.get(k) != spec.get(k) for k in same) or settings["classes"] != list(cfg.classes):
        return None
    found = cached_windows(windows, source, tuple(filenames))
    if found is None:
        return None
    ids, index = found
    return ids, teacher_head(run_dir)(emb[index], zero[index])


def cached_windows(windows: pl.DataFrame, source: str, filenames: tuple[str, ...]
                   ) -> tuple[list[str], np.ndarray] | None:
    """(row_ids, cache rows) of every window of `filenames` in a cache's `windows` table, or None when a file is
    not (wholly) cached."""
    rows = windows.with_row_index("row").filter(pl.col("source") == source, pl.col("filename").is_in(filenames))
    by_file = {f: g.sort("chunk") for (f,), g in rows.group_by(["filename"])}
    ids, index = [], []
    for f in filenames:
        part = by_file.get(f)
        if part is None or part["chunk"].to_list() != list(range(part.height)):
            return None
        ids += row_ids(Path(f).stem, part.height, float(part["end_s"][0] - part["start_s"][0]))
        index.append(part["row"].to_numpy())
    return ids, np.concatenate(index) if index else np.zeros(0, np.int64)


def cached_rows(windows: pl.DataFrame, chunks: pl.DataFrame, copies: bool) -> pl.DataFrame:
    """The cache rows (`row`) of these chunks, in the chunks' order, with their labels; copy 0 only
    unless `copies` (then every mixed copy of each chunk too)."""
    rows = windows.with_row_index("row").filter(pl.col("source") == "chunks")
    if not copies:
        rows = rows.filter(pl.col("copy") == 0)
    out = chunks.select(*KEYS, "start_s", "end_s", "primary_label", "secondary_labels").join(
        rows.select(*KEYS, "copy", "row", "bed", "bed_start_s", pl.col("start_s").alias("cached_start_s")), on=KEYS,
        how="inner", maintain_order="left")
    missing = chunks.join(rows.select(KEYS), on=KEYS, how="anti")
    moved = out.filter((pl.col("start_s") - pl.col("cached_start_s")).abs() > 1e-3)
    if missing.height or moved.height:
        example = (missing if missing.height else moved.select(KEYS)).row(0)
        raise ValueError(f"{missing.height} chunk(s) are not in the teacher cache and {moved.height} start elsewhere "
                         f"than when it was built (e.g. {example}): the chunk index changed (src.prepare); rerun "
                         "`python -m src.teacher data=... teacher=...`, which embeds again the recordings whose "
                         "chunks changed")
    return out.drop("cached_start_s")
