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
from omegaconf import DictConfig, OmegaConf

from src.config import CONFIG_DIR, load_run_config
from src.infer.runtimes import is_teacher_dir, teacher_head
from src.infer.submission import row_ids

KEYS = ["filename", "chunk"]  # a chunk of the prepare index
ANY_TEACHER = "python -m src.teacher data=<data> teacher=<teacher>"  # `teacher_command` where no config is at hand

WINDOW_COLUMNS = {"source": pl.Utf8, "filename": pl.Utf8, "chunk": pl.Int32, "copy": pl.Int16, "snr_db": pl.Float32,
                  "start_s": pl.Float64, "end_s": pl.Float64, "bed": pl.Utf8, "bed_start_s": pl.Float32}


def valset_name(path: str | Path, cache: str | Path) -> str:
    """The cache's `filename` of a validation soundscape: its path under `<cache>/valsets/` (set/fold/file),
    so that the sets of other folds files or settings never mix."""
    return Path(path).relative_to(Path(cache) / "valsets").as_posix()


def teacher_option(name: str) -> str:
    """The command-line option that builds the cache named `name`: `teacher=<name>` when configs/teacher/ has such
    a file, else `teacher.name=<name>` beside the teacher it was made with."""
    if (Path(CONFIG_DIR) / "teacher" / f"{name}.yaml").exists():
        return f"teacher={name}"
    return f"teacher=<birdnet | perch> teacher.name={name}"


def data_options(data: DictConfig) -> str:
    """The options that select the data set of a composed `data` config on the command line: `data=<its file in
    configs/data/>` and `data.root=`; a name without a file (`data.name=xc45`) takes its layout's file plus
    `data.name=`, and a cache folder other than that file's default adds `data.cache_dir=`."""
    name = str(data.name)
    config = name if (Path(CONFIG_DIR) / "data" / f"{name}.yaml").exists() else str(data.layout)
    options = [f"data={config}", f"data.root={data.root}"] + ([f"data.name={name}"] if config != name else [])
    path = Path(CONFIG_DIR) / "data" / f"{config}.yaml"
    default = OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else {}
    if OmegaConf.to_container(data, resolve=False).get("cache_dir") != default.get("cache_dir"):
        options.append(f"data.cache_dir={data.cache_dir}")
    return " ".join(options)


def teacher_command(cfg: DictConfig, name: str | None = None) -> str:
    """`python -m src.teacher ...` with the options that build (or bring up to date) the teacher cache `name`
    (default: cfg's teacher) of cfg's data set, for the messages that send the user there. The teacher's model
    and labels files are named too when `name` is cfg's teacher (teacher=perch needs teacher.path)."""
    teacher = cfg.get("teacher")
    name = str(name or teacher.name)
    words = ["python -m src.teacher", data_options(cfg.data), teacher_option(name)]
    if teacher is not None and str(teacher.get("name")) == name:
        words += [f"teacher.{key}={teacher[key]}" for key in ("path", "labels")
                  if not OmegaConf.is_missing(teacher, key) and teacher.get(key)]
    return " ".join(words)


def cache_dir(cfg: DictConfig) -> Path:
    return Path(cfg.data.cache_dir) / "teacher" / str(cfg.teacher.name)


def load_cache(cfg_or_dir: DictConfig | Path, command: str | None = None
               ) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, dict]:
    """(windows, embeddings, mapped scores, settings) of a built teacher cache, read-only: read once per cache
    version in a process (the folds and members of an ensemble share it). `command` (default: `teacher_command`
    of a config) is the `python -m src.teacher ...` a missing cache's message tells the user to run."""
    out_dir = cache_dir(cfg_or_dir) if isinstance(cfg_or_dir, DictConfig) else Path(cfg_or_dir)
    if not (out_dir / "windows.parquet").exists():
        command = command or (teacher_command(cfg_or_dir) if isinstance(cfg_or_dir, DictConfig)
                              else f"python -m src.teacher data=<data> {teacher_option(out_dir.name)}")
        raise FileNotFoundError(f"{out_dir / 'windows.parquet'} not found: build it first with `{command}`")
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


def cached_rows(windows: pl.DataFrame, chunks: pl.DataFrame, copies: bool,
                command: str = ANY_TEACHER) -> pl.DataFrame:
    """The cache rows (`row`) of these chunks, in the chunks' order, with their labels; copy 0 only
    unless `copies` (then every mixed copy of each chunk too). `command` (`teacher_command`) is what the
    message of chunks missing from the cache tells the user to run."""
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
                         f"`{command}`, which embeds again the recordings whose chunks changed")
    return out.drop("cached_start_s")
