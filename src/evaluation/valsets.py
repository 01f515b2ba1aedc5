"""Validation soundscapes per fold, a local CV shaped like the test (`python -m src.valsets` builds and scores them).

For each fold, `valsets.n_soundscapes` one-minute soundscapes are mixed from chunks of that fold's
validation recordings only (non-silent chunks of the prepare cache) laid over beds made of the quietest
windows of the competition's unlabelled soundscapes (or coloured noise where it has none), at SNRs in
`valsets.snr_db`. Each 5 s window is labelled like the competition: positive where the call is audible,
i.e. its (pre-emphasised) energy in the window is within `valsets.audible_rel_db` of its loudest window.

Cache (`<data.cache_dir>/valsets/<folds file>-<settings hash>/fold<k>/`, built under a temporary name
and renamed): `<stem>.ogg` soundscapes, `labels.parquet` (row_id, filename, window, start_s, end_s, one
0/1 column per class) and `calls.parquet` (what was mixed where). `evaluate_soundscapes` predicts a
fold's set with any predict function and writes `oof_soundscape.parquet` beside `oof.parquet`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from src import config as cfglib
from src.data.audio_cache import cache_path, cache_rate, cached_soundscapes, load_cached
from src.data.chunks import chunk_energy_db
from src.data.competition import LAYOUTS
from src.data.noise import noise_bed
from src.data.pseudo_labels import bed_soundscapes
from src.data.soundscape_labels import label_matrix
from src.data.splits import folds_path, held_out_labelled, load_folds
from src.evaluation.metrics import macro_auc, padded_cmap
from src.infer.audio import write_ogg
from src.infer.io import atomic_write
from src.infer.soundscape import n_windows, predict_soundscapes
from src.infer.submission import row_ids

log = logging.getLogger(__name__)


@dataclass
class ValSet:
    """One fold's scored soundscapes: the audio files (in row order) and their window labels. `kind` names the
    set (its oof file `oof_<kind>.parquet` and its scores `<kind>_auc`, `<kind>_cmap`): `soundscape` for the
    mixed validation soundscapes, `labelled` for the held-out expert-labelled train soundscapes (2026)."""

    fold: int
    files: list[Path]
    labels: pl.DataFrame  # row_id, filename, window, start_s, end_s, one 0/1 column per class
    calls: pl.DataFrame   # soundscape, filename, primary_label, offset_s, source_start_s, duration_s, snr_db
    kind: str = "soundscape"


def fold_dir(cfg: DictConfig, fold: int) -> Path:
    """Cache folder of one fold's set, keyed by the folds file's content and every setting that shapes it."""
    path = folds_path(cfg)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m src.folds data={cfg.data.name} "
                                f"data.root={cfg.data.root} folds.n={cfg.folds.n}` first")
    # mixed from the prepared cache at its own rate, whatever rate the scored run hears (BirdNET: 48 kHz), so
    # that every run of a data root is scored on the same soundscapes
    key = {"folds": hashlib.sha1(path.read_bytes()).hexdigest(), "valsets": OmegaConf.to_container(cfglib.valsets_settings(cfg)),
           "sample_rate": cache_rate(cfg.data.cache_dir), "window_s": float(cfg.audio.window_s),
           "preemphasis": float(cfg.prepare.preemphasis)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return Path(cfg.data.cache_dir) / "valsets" / f"{path.stem}-{digest}" / f"fold{fold}"


def quiet_windows(cache_dir: Path, window: int, quantile: float, preemphasis: float,
                  stems: list[str]) -> list[np.ndarray]:
    """The quietest `quantile` share of the windows (float32, by pre-emphasised energy) of the cached
    unlabelled soundscapes `stems`."""
    pieces, energies = [], []
    for path in (Path(cache_dir) / "soundscapes" / f"{s}.npy" for s in stems):
        y = load_cached(path)
        if len(y) < window:
            continue
        starts = np.arange(0, len(y) - window + 1, window)
        energies.append(chunk_energy_db(y, starts, window, preemphasis))
        pieces += [(path, int(s)) for s in starts]
    if not pieces:
        return []
    energy = np.concatenate(energies)
    keep = np.flatnonzero(energy <= np.quantile(energy, quantile))
    return [load_cached(pieces[i][0])[pieces[i][1]:pieces[i][1] + window].astype(np.float32) / 32767.0 for i in keep]


def make_bed(rng: np.random.Generator, pool: list[np.ndarray], n: int, window: int, fade: int,
             noise_cfg: DictConfig, fallback_dbfs: float, sample_rate: int) -> np.ndarray:
    """An `n`-sample bed: random quiet windows joined by equal-power crossfades of `fade` samples,
    or coloured noise (src.synth.noise_bed) at `fallback_dbfs` when the pool is empty."""
    if not pool:
        return (noise_bed(rng, n, sample_rate, noise_cfg) * 10 ** (fallback_dbfs / 20)).astype(np.float32)
    bed = np.zeros(n + window, np.float32)
    ramp = np.sin(np.linspace(0, np.pi / 2, fade, dtype=np.float32)) if fade else np.zeros(0, np.float32)
    hop = window - fade
    for start in range(0, n, hop):
        piece = pool[int(rng.integers(len(pool)))].copy()
        if fade and start:
            piece[:fade] *= ramp
        if fade:
            piece[-fade:] *= ramp[::-1]
        bed[start:start + window] += piece
    return bed[:n]


def usable_recordings(chunks: pl.DataFrame, window_s: float) -> tuple[pl.DataFrame, list[str]]:
    """Non-silent chunks of recordings at least one window long, and the recordings left out (with why)."""
    per = chunks.group_by("filename").agg(pl.col("end_s").max().alias("length_s"),
                                          (~pl.col("silent")).sum().alias("kept"))
    short = per.filter(pl.col("length_s") < window_s - 1e-6)["filename"].to_list()
    silent = per.filter((pl.col("kept") == 0) & (pl.col("length_s") >= window_s - 1e-6))["filename"].to_list()
    good = chunks.filter(~pl.col("silent") & ~pl.col("filename").is_in(short + silent))
    return good, [f"{f}: shorter than one {window_s:g} s window" for f in sorted(short)] + \
        [f"{f}: every chunk is silent" for f in sorted(silent)]


def plan_calls(rng: np.random.Generator, good: pl.DataFrame, vs: DictConfig) -> list[dict]:
    """The calls of one soundscape: a class (uniform over the fold's usable classes), one of its recordings,
    a non-silent chunk to start at, a length, an offset in the soundscape and an SNR."""
    classes = sorted(good["primary_label"].unique().to_list())
    calls = []
    for _ in range(int(rng.integers(vs.calls[0], vs.calls[1] + 1))):
        label = classes[int(rng.integers(len(classes)))]
        rows = good.filter(pl.col("primary_label") == label).sort("filename", "chunk")
        row = rows.row(int(rng.integers(rows.height)), named=True)
        duration = float(rng.uniform(*vs.segment_s))
        calls.append({"filename": row["filename"], "primary_label": label, "source_start_s": float(row["start_s"]),
                      "duration_s": duration, "offset_s": float(rng.uniform(0, vs.duration_s - min(
                          duration, vs.duration_s))), "snr_db": float(rng.uniform(*vs.snr_db))})
    return calls


def mix(bed: np.ndarray, calls: list[dict], cache_dir: Path, sample_rate: int, window: int, preemphasis: float,
        rel_db: float, class_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Mix `calls` into `bed`; returns the soundscape, its (windows, classes) 0/1 labels (audible rule)
    and the calls as placed (durations clipped to the recording)."""
    out, n = bed.copy(), len(bed)
    n_win = n_windows(n, window)
    labels = np.zeros((n_win, len(class_index)), np.uint8)
    starts = np.arange(n_win) * window
    placed = []
    for call in calls:
        src = load_cached(cache_path(cache_dir, call["filename"]))
        a = round(call["source_start_s"] * sample_rate)
        seg = src[a:a + round(call["duration_s"] * sample_rate)].astype(np.float32) / 32767.0
        o = round(call["offset_s"] * sample_rate)
        seg = seg[:n - o]
        bed_ms = float(np.mean(bed[o:o + len(seg)] ** 2)) + 1e-12
        gain = np.sqrt(bed_ms / (float(np.mean(seg ** 2)) + 1e-12) * 10 ** (call["snr_db"] / 10))
        track = np.zeros(n, np.float32)
        track[o:o + len(seg)] = gain * seg
        out += track
        energy = chunk_energy_db(track, starts, window, preemphasis)
        audible = (energy >= energy.max() + rel_db) & (energy > -100.0)  # -120 dB = no call sample at all
        labels[audible, class_index[call["primary_label"]]] = 1
        placed.append(call | {"duration_s": len(seg) / sample_rate})
    peak = float(np.abs(out).max())
    return (out / peak * 0.99 if peak > 0.99 else out), labels, placed


def fold_recordings(cfg: DictConfig, fold: int) -> tuple[pl.DataFrame, list[str]]:
    """The non-silent chunks of `fold`'s usable validation recordings and the problems found (messages)."""
    chunks = pl.read_parquet(Path(cfg.data.cache_dir) / "chunks.parquet")
    folds = load_folds(folds_path(cfg), chunks.select("filename").unique())
    val = chunks.join(folds, on="filename").filter(pl.col("fold") == fold)
    good, left_out = usable_recordings(val, float(cfg.audio.window_s))
    problems = [f"fold {fold}: {m}" for m in left_out]
    if good.height == 0:
        problems.append(f"fold {fold}: no validation recording is usable (all silent or shorter than a window): "
                        "no validation soundscapes for it")
    return good, problems


def build_fold(cfg: DictConfig, fold: int, classes: list[str]) -> tuple[Path | None, list[str]]:
    """Build (or find in the cache) fold `fold`'s soundscapes; returns (its folder or None, problems)."""
    out = fold_dir(cfg, fold)
    good, problems = fold_recordings(cfg, fold)
    absent = sorted(set(classes) - set(good["primary_label"].unique().to_list()))
    if absent:
        problems.append(f"fold {fold}: {len(absent)} class(es) have no usable validation recording and are not "
                        f"scored on its soundscapes: {absent[:10]}{'...' if len(absent) > 10 else ''}")
    if good.height == 0 or (out / "labels.parquet").exists():
        return (out if good.height else None), problems
    vs, sr, cache = cfglib.valsets_settings(cfg), cache_rate(cfg.data.cache_dir), Path(cfg.data.cache_dir)
    window = round(float(cfg.audio.window_s) * sr)
    beds = bed_soundscapes(cfg)
    pool = quiet_windows(cache, window, float(vs.bed_quantile), float(cfg.prepare.preemphasis),
                         cached_soundscapes(cache) if beds is None else beds)
    if not pool:
        problems.append(f"{cache / 'soundscapes'}: no unlabelled soundscape cached: the beds are generated "
                        "coloured noise (src.synth.noise_bed) instead of real ambience")
    noise_cfg = OmegaConf.load(Path(cfglib.CONFIG_DIR) / "synth.yaml").synth.noise
    rng = np.random.default_rng([int(vs.seed), fold])
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n, index = round(float(vs.duration_s) * sr), {c: i for i, c in enumerate(classes)}
    frames, placed = [], []
    for i in tqdm(range(int(vs.n_soundscapes)), desc=f"fold {fold} soundscapes", unit="file"):
        stem = f"val_f{fold}_{i:03d}"
        bed = make_bed(rng, pool, n, window, round(float(vs.crossfade_s) * sr), noise_cfg,
                       float(vs.fallback_bed_dbfs), sr)
        y, labels, calls = mix(bed, plan_calls(rng, good, vs), cache, sr, window, float(cfg.prepare.preemphasis),
                               float(vs.audible_rel_db), index)
        write_ogg(tmp / f"{stem}.ogg", y, sr, float(vs.block_s))
        frames.append(_label_frame(stem, labels, classes, float(cfg.audio.window_s)))
        placed += [c | {"soundscape": stem} for c in calls]
    pl.DataFrame(placed).write_parquet(tmp / "calls.parquet")
    pl.concat(frames).write_parquet(tmp / "labels.parquet")  # written last: marks the set complete
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out, problems


def _label_frame(stem: str, labels: np.ndarray, classes: list[str], window_s: float) -> pl.DataFrame:
    count = len(labels)
    return pl.DataFrame({"row_id": row_ids(stem, count, window_s), "filename": [f"{stem}.ogg"] * count,
                         "window": list(range(count)), "start_s": [i * window_s for i in range(count)],
                         "end_s": [(i + 1) * window_s for i in range(count)]}).with_columns(
        [pl.Series(c, labels[:, j], dtype=pl.UInt8) for j, c in enumerate(classes)])


def load_fold(cfg: DictConfig, fold: int, classes: list[str]) -> ValSet | None:
    """Fold `fold`'s validation soundscapes, built first if the cache lacks them; None (logged) if it has none."""
    out, problems = build_fold(cfg, fold, classes)
    for p in problems:
        log.warning(p)
    if out is None:
        return None
    labels = pl.read_parquet(out / "labels.parquet")
    files = [out / f for f in labels["filename"].unique(maintain_order=True)]
    return ValSet(fold, files, labels, pl.read_parquet(out / "calls.parquet"))


def soundscape_scores(y: np.ndarray, p: np.ndarray, kind: str = "soundscape") -> dict[str, float]:
    """`<kind>_auc` (the competition's macro ROC-AUC, classes without positives skipped; NaN when none
    is scorable) and `<kind>_cmap` (padded cmAP) of window predictions `p` against truth `y`."""
    try:
        auc = macro_auc(y, p)
    except ValueError:
        auc = float("nan")
    return {f"{kind}_auc": auc, f"{kind}_cmap": padded_cmap(y, p)}


def labelled_valset(cfg: DictConfig, fold: int, classes: list[str]) -> ValSet | None:
    """Fold `fold`'s held-out labelled train soundscapes (2026: `src.data.splits.held_out_labelled`) as a ValSet of
    kind `labelled`, read from the competition's soundscape folder; None when the fold has none."""
    held = held_out_labelled(OmegaConf.merge(cfg, {"fold": fold}))
    if held.height == 0:
        return None
    folder = Path(cfg.data.root) / str(LAYOUTS[str(cfg.data.layout)]["soundscapes"])
    stems = [Path(f).stem for f in held["filename"]]
    y = label_matrix(held["labels"].to_list(), classes)
    labels = held.select("filename", "window", "start_s", "end_s").with_columns(
        pl.Series("row_id", [f"{s}_{round(e)}" for s, e in zip(stems, held["end_s"])]),
        *[pl.Series(c, y[:, j].astype(np.uint8)) for j, c in enumerate(classes)])
    files = [folder / f for f in held["filename"].unique(maintain_order=True)]
    return ValSet(fold, files, labels, pl.DataFrame(), kind="labelled")


def evaluate_soundscapes(predict_fn: Callable[[np.ndarray], np.ndarray], cfg: DictConfig, classes: list[str],
                         out_dir: str | Path | None = None, batch_size: int = 64,
                         shifts_s: tuple[float, ...] = (0.0,), valset: ValSet | None = None) -> dict[str, float]:
    """Predict fold `cfg.fold`'s validation soundscapes (`valset`, else loaded or built) with `predict_fn`
    ((B, samples) -> (B, C) probabilities at `cfg.audio`'s rate) and score them (`score_predictions`).
    Returns soundscape_auc / soundscape_cmap ({} if the fold has no validation soundscapes)."""
    vs = valset or load_fold(cfg, int(cfg.fold), classes)
    if vs is None:
        return {}
    ids, probs, problems = predict_soundscapes(vs.files, predict_fn, len(classes), int(cfg.audio.sample_rate),
                                               float(cfg.audio.window_s), shifts_s=shifts_s, batch_size=batch_size)
    if problems:
        raise RuntimeError(f"{vs.kind} soundscapes unreadable ({problems[:3]}): check {vs.files[0].parent} (the "
                           "validation soundscapes: delete it and rerun `python -m src.valsets`)")
    return score_predictions(vs, ids, probs, classes, out_dir)


def score_predictions(vs: ValSet, ids: list[str], probs: np.ndarray, classes: list[str],
                      out_dir: str | Path | None = None) -> dict[str, float]:
    """Score window predictions (`ids`, (rows, C)) of a fold's scored soundscapes (`vs`); with `out_dir`, write
    `<out_dir>/oof_<kind>.parquet` (row_id, filename, labels, one probability column per class)."""
    order = {r: i for i, r in enumerate(ids)}
    probs = probs[[order[r] for r in vs.labels["row_id"]]]
    y = vs.labels.select(classes).to_numpy().astype(np.float32)
    if out_dir is not None:
        names = np.array(classes)
        oof = vs.labels.select("row_id", "filename").with_columns(
            pl.Series("labels", [names[row > 0].tolist() for row in y], dtype=pl.List(pl.Utf8)),
            *[pl.Series(c, probs[:, i], dtype=pl.Float32) for i, c in enumerate(classes)])
        with atomic_write(Path(out_dir) / f"oof_{vs.kind}.parquet") as tmp:
            oof.write_parquet(tmp)
    return soundscape_scores(y, probs, vs.kind)

