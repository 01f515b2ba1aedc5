"""`python -m src.prepare data=...`: decode every recording once into a 32 kHz int16 cache, cut
5 s chunks, score their energy and write the chunk index.

Cache layout (`data.cache_dir`):
    audio/<filename>.npy        int16 mono at audio.sample_rate, one per training recording
    soundscapes/<stem>.npy      every unlabelled soundscape (pseudo-labelling, background noise), same format
    soundscapes.parquet         filename, window, start_s, end_s, energy_db, silent: their 5 s windows
    recordings.parquet          filename, n_samples, ok, problem
    chunks.parquet              filename, chunk, start_s, end_s, energy_db, silent, labels, group, rating
    bad_files.csv               filename, problem (every recording that was skipped)
    manifest.json               what the cache was built from (root, counts) and made with (`settings`:
                                see `cache_settings`; a rerun or a run with other settings is an error)
Resumable: each .npy is written under a temporary name and renamed, so a rerun skips what is done
(and removes the temporaries a killed run left).
Before decoding, the cache's size is estimated from the files' headers and checked against the free disk.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import hydra
import numpy as np
import polars as pl
import soundfile as sf
from omegaconf import DictConfig
from tqdm import tqdm

from src import config as _config  # noqa: F401  (registers the root_tag resolver)
from src.data.audio_cache import (
    LABELLED_INDEX,
    SOUNDSCAPE_INDEX,
    CacheSettingsError,
    cache_path,
    cache_settings,
    load_cached,
    settings_differences,
)
from src.data.chunks import chunk_energy_db, chunk_starts, silent_mask
from src.data.competition import COMPETITION_SOURCE, load_competition, load_extra
from src.data.soundscape_labels import labelled_windows, parse_names
from src.infer.audio import AudioError, load_audio, to_int16
from src.infer.io import atomic_write, remove_stale_temporaries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheJob:
    source: str
    target: str
    sample_rate: int
    min_duration_s: float
    max_duration_s: float | None = None  # decode at most this much of the file (None = all)


_NPY_HEADER = 128  # bytes in front of the samples of a 1-d .npy file


class CacheDiskError(OSError):
    """The cache would not fit on its disk; the message names the folder, the sizes and the fixes."""


def _cache_one(job: CacheJob) -> tuple[str, int, str | None]:
    """Decode one file into its .npy unless done; returns (source, n_samples, problem or None)."""
    target = Path(job.target)
    if target.exists():
        try:
            return job.source, len(load_cached(target)), None
        except (ValueError, OSError):
            target.unlink()  # unreadable leftover: decode again
    try:
        y = load_audio(job.source, job.sample_rate, job.min_duration_s, job.max_duration_s)
    except AudioError as exc:
        return job.source, 0, str(exc)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp, open(tmp, "wb") as fh:
        np.save(fh, to_int16(y))
    return job.source, len(y), None


def cache_files(jobs: list[CacheJob], workers: int, desc: str) -> dict[str, tuple[int, str | None]]:
    """Run `_cache_one` over all jobs on `workers` processes (0 = all cores) with a progress bar."""
    workers = workers or os.cpu_count() or 1
    results: dict[str, tuple[int, str | None]] = {}
    if workers == 1 or len(jobs) <= 1:
        for job in tqdm(jobs, desc=desc, unit="file"):
            src, n, problem = _cache_one(job)
            results[src] = (n, problem)
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for src, n, problem in tqdm(pool.map(_cache_one, jobs, chunksize=4), total=len(jobs), desc=desc,
                                    unit="file"):
            results[src] = (n, problem)
    return results


def source_durations(paths: list[str]) -> np.ndarray:
    """Duration (s) of each audio file from its header (`soundfile.info`, no decoding); 0 if unreadable
    (prepare reports such files as bad when it decodes them)."""
    out = np.zeros(len(paths))
    for i, path in enumerate(tqdm(paths, desc="durations", unit="file")):
        try:
            out[i] = sf.info(path).duration
        except Exception as exc:  # noqa: BLE001 -- libsndfile raises several types for unreadable files
            log.debug("%s: no duration in its header (%s), counted as 0 s", path, exc)
    return out


def cache_bytes(durations_s: np.ndarray, sample_rate: int, max_duration_s: np.ndarray | float | None = None) -> int:
    """Bytes of the int16 .npy cache of files lasting `durations_s`, each cut at `max_duration_s` (None = all)."""
    d = np.asarray(durations_s, np.float64)
    if max_duration_s is not None:
        d = np.minimum(d, max_duration_s)
    return int((np.ceil(d * sample_rate) * 2 + _NPY_HEADER).sum())


def _cap_that_fits(durations_s: np.ndarray, sample_rate: int, budget: int) -> int | None:
    """The largest whole-second cap at which the recordings' cache fits in `budget` bytes (None if 1 s does not)."""
    lo, hi = 0, int(np.ceil(durations_s.max(initial=0)))
    while lo < hi:  # bisection: the cache size grows with the cap
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cache_bytes(durations_s, sample_rate, mid) <= budget else (lo, mid - 1)
    return lo or None


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


def check_disk(jobs: list[CacheJob], cache_dir: Path, headroom_gb: float) -> int:
    """Estimate the bytes the jobs not cached yet will write; raise CacheDiskError when the free space of
    `cache_dir`'s disk, less `headroom_gb`, cannot hold them. Returns the estimate."""
    todo = [j for j in jobs if not Path(j.target).exists()]
    if not todo:
        return 0
    durations = source_durations([j.source for j in todo])
    cap = np.array([np.inf if j.max_duration_s is None else j.max_duration_s for j in todo])
    sr = todo[0].sample_rate
    need = cache_bytes(durations, sr, cap)
    budget = shutil.disk_usage(cache_dir).free - int(headroom_gb * 1e9)
    if need > budget:
        capped = cap == np.inf
        fit = _cap_that_fits(durations[capped], sr, budget - cache_bytes(durations[~capped], sr, cap[~capped]))
        hint = f"cap each recording with prepare.max_duration_s={fit}, " if fit and capped.any() else ""
        raise CacheDiskError(
            f"{cache_dir}: the cache needs ~{_size(need)} more for {len(todo)} files "
            f"({durations.sum() / 3600:.1f} h of audio at {sr} Hz int16) but the disk has "
            f"{_size(max(budget, 0))} free beyond prepare.disk_headroom_gb={headroom_gb}: {hint}point "
            f"data.cache_dir at a larger disk, or cache fewer soundscapes (prepare.soundscapes)")
    return need


def build_chunk_index(meta: pl.DataFrame, n_samples: dict[str, int], cache_dir: Path, cfg: DictConfig) -> pl.DataFrame:
    """One row per 5 s chunk of every good recording, with its energy and silent flag."""
    sr = int(cfg.audio.sample_rate)
    chunk = round(cfg.prepare.chunk_s * sr)
    hop = round((cfg.prepare.chunk_s - cfg.prepare.overlap_s) * sr)
    if hop <= 0:
        raise ValueError(f"prepare.overlap_s={cfg.prepare.overlap_s} must be smaller than chunk_s={cfg.prepare.chunk_s}")
    cols: dict[str, list] = {k: [] for k in ("filename", "chunk", "start_s", "end_s", "energy_db", "silent")}
    for filename in tqdm(meta["filename"].to_list(), desc="energy", unit="file"):
        n = n_samples[filename]
        starts = chunk_starts(n, chunk, hop)
        energy = chunk_energy_db(load_cached(cache_path(cache_dir, filename)), starts, chunk, cfg.prepare.preemphasis)
        silent = silent_mask(energy, cfg.prepare.silence.abs_db, cfg.prepare.silence.rel_db)
        cols["filename"] += [filename] * len(starts)
        cols["chunk"] += list(range(len(starts)))
        cols["start_s"] += (starts / sr).tolist()
        cols["end_s"] += (np.minimum(starts + chunk, n) / sr).tolist()
        cols["energy_db"] += energy.tolist()
        cols["silent"] += silent.tolist()
    chunks = pl.DataFrame(cols, schema={"filename": pl.Utf8, "chunk": pl.Int32, "start_s": pl.Float64,
                                        "end_s": pl.Float64, "energy_db": pl.Float32, "silent": pl.Boolean})
    return chunks.join(meta.select("filename", "primary_label", "secondary_labels", "group", "rating", "source"),
                       on="filename", how="left")


def class_report(meta: pl.DataFrame, chunks: pl.DataFrame, classes: list[str],
                 labelled: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per class: recordings (clips), chunks, non-silent chunks and positive labelled soundscape windows (2026),
    classes with no recording included."""
    per = chunks.group_by("primary_label").agg(pl.len().alias("chunks"), (~pl.col("silent")).sum().alias("kept"))
    rec = meta.group_by("primary_label").agg(pl.len().alias("recordings"))
    table = pl.DataFrame({"primary_label": classes}).join(rec, on="primary_label", how="left").join(
        per, on="primary_label", how="left")
    if labelled is not None and labelled.height:
        counts = labelled.explode("labels").drop_nulls("labels").group_by("labels").len()
        table = table.join(counts.rename({"labels": "primary_label", "len": "labelled_windows"}),
                           on="primary_label", how="left")
    return table.fill_null(0).sort("kept")


def soundscape_selection(comp, limit: int | None, labelled: set[str]) -> list[Path]:
    """The train soundscapes to cache: the first `prepare.soundscapes` (null: all), and every labelled one."""
    files = comp.soundscape_files()
    chosen = files if limit is None else files[: int(limit)]
    return chosen + [p for p in files if p.name in labelled and p not in chosen]


def write_labelled(labelled: pl.DataFrame, cached: list[str], cache_dir: Path, problems: list[str]) -> pl.DataFrame:
    """`<cache_dir>/labelled.parquet`: the labelled windows of the soundscapes that were cached (a labelled file
    that failed to decode is dropped, reported in bad_files.csv); the label file's problems are logged."""
    for problem in problems:
        log.warning(problem)
    kept = labelled.filter(pl.col("filename").is_in(cached))
    _write_parquet(kept, cache_dir / LABELLED_INDEX)
    return kept


_WINDOW_SCHEMA = {"filename": pl.Utf8, "window": pl.Int32, "start_s": pl.Float64, "end_s": pl.Float64,
                  "energy_db": pl.Float32, "silent": pl.Boolean}


def soundscape_windows(filename: str, y: np.ndarray, cfg: DictConfig) -> pl.DataFrame:
    """Consecutive `audio.window_s` windows of one cached soundscape (the last partial one padded, as the
    submission scores it), with the chunks' energy score and silent flag."""
    sr = int(cfg.audio.sample_rate)
    window = round(float(cfg.audio.window_s) * sr)
    starts = np.arange(-(-len(y) // window), dtype=np.int64) * window
    energy = chunk_energy_db(y, starts, window, cfg.prepare.preemphasis)
    return pl.DataFrame({"filename": [filename] * len(starts), "window": np.arange(len(starts)),
                         "start_s": starts / sr, "end_s": np.minimum(starts + window, len(y)) / sr,
                         "energy_db": energy,
                         "silent": silent_mask(energy, cfg.prepare.silence.abs_db, cfg.prepare.silence.rel_db)},
                        schema=_WINDOW_SCHEMA)


def prepare_soundscapes(files: list[Path], cache_dir: Path, cfg: DictConfig, labelled: set[str] = frozenset()
                        ) -> tuple[pl.DataFrame, list[tuple]]:
    """Cache every train soundscape and write `<cache_dir>/soundscapes.parquet`, their window index; in a 2026
    layout (`data.soundscape_names` set, or labelled soundscapes) also the site, date and hour of each and whether
    it is a labelled one (`labelled`: pseudo-labels never replace its labels).

    A soundscape that is corrupt, empty, shorter than `prepare.soundscape_min_s` or silent (every window below
    `prepare.silence.abs_db`) is skipped and returned in the bad list as (filename, problem).
    Returns (window index, bad list).
    """
    sr = int(cfg.audio.sample_rate)
    jobs = [CacheJob(str(p), str(cache_path(cache_dir, p.name, "soundscapes")), sr,
                     float(cfg.prepare.soundscape_min_s)) for p in files]
    results = cache_files(jobs, int(cfg.prepare.workers), "soundscapes") if jobs else {}
    frames, bad = [], []
    for job in jobs:
        name = Path(job.source).name
        problem = results[job.source][1]
        if problem is None:
            table = soundscape_windows(name, load_cached(Path(job.target)), cfg)
            if (table["energy_db"] < float(cfg.prepare.silence.abs_db)).all():
                problem = (f"{job.source}: silent soundscape (every window below prepare.silence.abs_db="
                           f"{cfg.prepare.silence.abs_db} dBFS): nothing to pseudo-label, skipped")
            else:
                frames.append(table)
        if problem is not None:
            log.warning("skipped %s", problem)
            bad.append((name, problem))
    windows = pl.concat(frames) if frames else pl.DataFrame(schema=_WINDOW_SCHEMA)
    if cfg.data.get("soundscape_names") or labelled:  # 2026: site/date/hour and labelled columns; else as in 2025
        names = parse_names(windows["filename"].unique(maintain_order=True).to_list(), cfg.data.get("soundscape_names"))
        windows = windows.join(names, on="filename", how="left", maintain_order="left").with_columns(
            pl.col("filename").is_in(list(labelled)).alias("labelled"))
    _write_parquet(windows, cache_dir / SOUNDSCAPE_INDEX)
    return windows, bad


def prepare(cfg: DictConfig) -> dict:
    """Build (or finish) the cache and chunk index for `cfg.data`; returns a summary dict."""
    comp = load_competition(cfg.data.root, cfg.data.layout)
    cache_dir = open_cache(cfg)
    sr = int(cfg.audio.sample_rate)
    extra, extra_classes, extra_problems = load_extra(cfg.data.get("extra"), comp.classes,
                                                      cfg.data.get("extra_classes", "drop") == "keep")
    for problem in extra_problems:
        log.warning(problem)
    meta = comp.meta.with_columns(pl.lit(COMPETITION_SOURCE).alias("source"))
    meta = meta if extra is None else pl.concat([meta, extra])
    jobs, unsafe = _recording_jobs(meta, cache_dir, cfg)
    labelled, label_problems = labelled_windows(comp, cfg.data.get("soundscape_names"), float(cfg.audio.window_s),
                                                bool(cfg.data.get("labelled_negatives", True)))
    soundscapes = soundscape_selection(comp, cfg.prepare.soundscapes, set(labelled["filename"]))
    sjobs = [CacheJob(str(p), str(cache_path(cache_dir, p.name, "soundscapes")), sr, 0.0) for p in soundscapes]
    estimate = check_disk(jobs + sjobs, cache_dir, float(cfg.prepare.disk_headroom_gb))
    log.info("cache: ~%s to write into %s", _size(estimate), cache_dir)
    results = cache_files(jobs, int(cfg.prepare.workers), "decode") | {p: (0, why) for p, why in unsafe.items()}
    by_path = dict(zip(meta["path"], meta["filename"]))
    n_samples = {by_path[src]: n for src, (n, problem) in results.items() if problem is None}
    bad = [(by_path[src], problem) for src, (n, problem) in results.items() if problem is not None]
    for filename, problem in bad:
        log.warning("skipped %s", problem)
    good = meta.filter(pl.col("filename").is_in(list(n_samples)))
    chunks = build_chunk_index(good, n_samples, cache_dir, cfg)

    windows, sbad = prepare_soundscapes(soundscapes, cache_dir, cfg, set(labelled["filename"]))
    sres = windows["filename"].unique().to_list()
    bad += sbad
    labelled = write_labelled(labelled, sres, cache_dir, label_problems)

    _write_index(cache_dir, meta, results, chunks, bad)
    manifest = {"root": str(Path(cfg.data.root).resolve()), "layout": cfg.data.layout, "sample_rate": sr,
                "chunk_s": cfg.prepare.chunk_s, "overlap_s": cfg.prepare.overlap_s, "settings": cache_settings(cfg),
                "classes": comp.classes,
                "recordings": len(meta), "bad": len(bad), "chunks": chunks.height,
                "silent": int(chunks["silent"].sum()), "metadata_problems": comp.problems,
                "soundscapes": len(sres), "soundscape_windows": windows.height,
                "labelled_soundscapes": labelled["filename"].n_unique(), "labelled_windows": labelled.height,
                "label_problems": label_problems, "extra_classes": extra_classes,
                "sources": dict(meta.group_by("source").len().iter_rows())}
    with atomic_write(cache_dir / "manifest.json") as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=1))

    silent_frac = manifest["silent"] / max(chunks.height, 1)
    _print_class_report(class_report(good, chunks, comp.classes + extra_classes, labelled))
    _print_sources(good, chunks)
    print(f"cached {len(n_samples)}/{len(meta)} recordings ({sum(n_samples.values()) / sr / 3600:.2f} h), "
          f"{len(sres)} soundscapes, {chunks.height} chunks, silent fraction {silent_frac:.1%}, "
          f"{len(bad)} bad file(s){' -> ' + str(cache_dir / 'bad_files.csv') if bad else ''}")
    return manifest | {"silent_fraction": silent_frac, "bad_files": bad}


def _recording_jobs(meta: pl.DataFrame, cache_dir: Path, cfg: DictConfig) -> tuple[list[CacheJob], dict[str, str]]:
    """The cache job of every training recording, and {path: problem} of those whose filename leaves
    train_audio/ (never decoded)."""
    sr = int(cfg.audio.sample_rate)
    max_s = None if cfg.prepare.get("max_duration_s") is None else float(cfg.prepare.max_duration_s)
    unsafe = {p: f"{p}: filename {f!r} leaves train_audio/ (an absolute path or '..'): fix that row of the "
                 "metadata (filenames are relative to train_audio/)" for f, p in zip(meta["filename"], meta["path"])
              if _escapes(f)}
    jobs = [CacheJob(p, str(cache_path(cache_dir, f)), sr, float(cfg.prepare.min_duration_s), max_s)
            for f, p in zip(meta["filename"], meta["path"]) if p not in unsafe]
    return jobs, unsafe


def _write_index(cache_dir: Path, meta: pl.DataFrame, results: dict, chunks: pl.DataFrame,
                 bad: list[tuple[str, str]]) -> None:
    """recordings.parquet (each recording's samples, or its problem), chunks.parquet and bad_files.csv."""
    recordings = pl.DataFrame({
        "filename": meta["filename"],
        "n_samples": [results[p][0] for p in meta["path"]],
        "ok": [results[p][1] is None for p in meta["path"]],
        "problem": [results[p][1] or "" for p in meta["path"]],
    })
    _write_parquet(recordings, cache_dir / "recordings.parquet")
    _write_parquet(chunks, cache_dir / "chunks.parquet")
    with atomic_write(cache_dir / "bad_files.csv") as tmp:
        pl.DataFrame({"filename": [b[0] for b in bad], "problem": [b[1] for b in bad]},
                     schema={"filename": pl.Utf8, "problem": pl.Utf8}).write_csv(tmp)


def _print_sources(good: pl.DataFrame, chunks: pl.DataFrame) -> None:
    """Recordings, chunks and classes of each source (the competition, each `data.extra` folder)."""
    if good["source"].n_unique() < 2:
        return
    per = chunks.group_by("source").agg(pl.len().alias("chunks"))
    table = good.group_by("source").agg(pl.len().alias("recordings"), pl.col("primary_label").n_unique()
                                         .alias("classes")).join(per, on="source", how="left").sort("source")
    print(f"recordings per source:\n{table}")


def _print_class_report(report: pl.DataFrame) -> None:
    """The non-silent chunks per class, fewest first, and the classes without a training recording (with their
    labelled soundscape windows when the competition has them: their only supervision)."""
    with pl.Config(tbl_rows=12, tbl_hide_dataframe_shape=True):
        print(f"non-silent chunks per class (fewest first):\n{report.filter(pl.col('recordings') > 0)}")
    empty = report.filter(pl.col("recordings") == 0)
    if empty.height:
        windows = empty["labelled_windows"] if "labelled_windows" in empty.columns else pl.repeat(0, empty.height)
        shown = [f"{c} ({n} labelled windows)" for c, n in zip(empty["primary_label"], windows)]
        print(f"{empty.height} classes have no training recording: {shown[:10]}{'...' if len(shown) > 10 else ''}")


def open_cache(cfg: DictConfig) -> Path:
    """`data.cache_dir`, created, with the temporaries of killed runs removed; CacheSettingsError if its
    arrays were made with other decode settings. A new cache records its settings before any array."""
    cache_dir = Path(cfg.data.cache_dir)
    differences = settings_differences(cfg, ("decode",))
    if differences:
        raise CacheSettingsError(f"{cache_dir / 'manifest.json'}: this cache was made with {', '.join(differences)}, "
                                 "so its arrays cannot be reused: pass a new data.cache_dir=PATH, or delete "
                                 f"{cache_dir} to prepare it again with these settings")
    cache_dir.mkdir(parents=True, exist_ok=True)
    for tmp in remove_stale_temporaries(cache_dir):
        log.info("removed %s, left by a killed run", tmp)
    if not (cache_dir / "manifest.json").exists():
        with atomic_write(cache_dir / "manifest.json") as tmp:
            Path(tmp).write_text(json.dumps({"settings": cache_settings(cfg)}, indent=1))
    return cache_dir


def _escapes(filename: str) -> bool:
    """True for a metadata filename that would read or write outside train_audio/ and the cache."""
    path = PurePosixPath(filename.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or PureWindowsPath(filename).is_absolute()


def _write_parquet(df: pl.DataFrame, path: Path) -> None:
    with atomic_write(path) as tmp:
        df.write_parquet(tmp)


@hydra.main(config_path="../configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
