"""`python -m src.probe data=... teacher=birdnet fold=0`: teacher runs, written like `src.train`'s.

`probe.head=probe` (default): a logistic regression (or one-hidden-layer MLP, `probe.hidden`) on the cached
teacher embeddings of the fold's training chunks (+ their ambience mixes and background windows), with the
teacher's zero-shot scores blended in on the classes it knows (`probe.zero_shot_weight`, 0 = off).
`probe.head=zero_shot`: the teacher's mapped scores as they are (`runs/<teacher.name>/fold<k>`).

Writes `runs/<exp>/fold<k>/`: config.yaml (with a `teacher:` section), teacher.json (how to run the teacher and
the head; `src.infer.runtimes.load_teacher_run`), probe.npz (plain arrays), oof.parquet, metrics.json.
"""
from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import math
import time
from pathlib import Path

import hydra
import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig, OmegaConf

from src import config as cfglib
from src.config import git_commit
from src.data.audio_cache import load_chunk_index
from src.data.competition import multi_hot
from src.data.pseudo_labels import load_pseudo_windows, pseudo_digest
from src.data.soundscape_labels import label_matrix
from src.data.splits import split_fold, training_labelled
from src.data.teacher_cache import ANY_TEACHER, cache_dir, cached_rows, load_cache, teacher_command
from src.evaluation.metrics import per_class_auc, primary_one_hot, scores
from src.infer.io import atomic_write, run_lock
from src.infer.runtimes import make_head
from src.teacher import model_files
from src.valsets import score_run

log = logging.getLogger(__name__)


def fit_probe(x: np.ndarray, y: np.ndarray, pcfg: DictConfig, extra: tuple[np.ndarray, np.ndarray] | None = None,
              sample_weight: np.ndarray | None = None, extra_weight: float = 1.0) -> dict[str, np.ndarray]:
    """Train the probe on embeddings `x` (N, D) with (soft) targets `y` (N, C) in [0, 1], plus `extra`
    (embeddings, soft targets) rows of loss weight `extra_weight`, e.g. pseudo-labelled soundscape windows;
    returns its weights as plain arrays (`src.infer.runtimes.probe_forward`). Full-batch AdamW on BCE,
    deterministic (`probe.seed`)."""
    if extra is not None:
        weights = np.ones(len(x), np.float32) if sample_weight is None else sample_weight
        sample_weight = np.concatenate([weights, np.full(len(extra[0]), extra_weight, np.float32)])
        x, y = np.concatenate([x, extra[0]]), np.concatenate([y, extra[1]])
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    torch.manual_seed(int(pcfg.seed))
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(np.asarray(y, np.float32))
    wt = torch.ones(len(x)) if sample_weight is None else torch.from_numpy(np.asarray(sample_weight, np.float32))
    sizes = [x.shape[1], *([int(pcfg.hidden)] if int(pcfg.hidden) else []), y.shape[1]]
    layers = [torch.nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
    net = torch.nn.Sequential(*[m for layer in layers for m in (layer, torch.nn.ReLU())][:-1])
    opt = torch.optim.AdamW(net.parameters(), lr=float(pcfg.lr), weight_decay=float(pcfg.weight_decay))
    for _ in range(int(pcfg.epochs)):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt), yt, reduction="none").mean(dim=1)
        ((loss * wt).sum() / wt.sum()).backward()
        opt.step()
    out = {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}
    for i, layer in enumerate(layers):
        out[f"w{i}"] = layer.weight.detach().numpy().T.astype(np.float32).copy()
        out[f"b{i}"] = layer.bias.detach().numpy().astype(np.float32).copy()
    return out


def bed_targets(rows: pl.DataFrame, pseudo: pl.DataFrame, classes: list[str], window_s: float,
                command: str = ANY_TEACHER) -> np.ndarray:
    """(rows, classes) pseudo-labels of the bed under each mixed copy in `rows` (`cached_rows`: copy, bed,
    bed_start_s): those of the bed soundscape's window that holds the middle of the mixed-in piece; 0 for clean
    chunks and for beds without pseudo-labels (ambience, validation beds, silent windows). `command`
    (`teacher_command`) is what the message of an old cache tells the user to run."""
    if rows.filter(pl.col("copy") > 0)["bed"].null_count():
        raise ValueError("the teacher cache does not record the beds of its mixed copies (built by an older "
                         f"version): delete its folder and run `{command}`, or set probe.bed_labels=false")
    keyed = rows.select(pl.col("bed"), window=((pl.col("bed_start_s").fill_nan(None) + window_s / 2)
                                               // window_s).cast(pl.Int64))
    labels = pseudo.with_columns(bed=pl.col("filename").map_elements(lambda f: Path(f).stem, return_dtype=pl.Utf8),
                                 window=pl.col("window").cast(pl.Int64))
    joined = keyed.join(labels.select("bed", "window", *classes), on=["bed", "window"], how="left",
                        maintain_order="left")
    return joined.select(classes).fill_null(0.0).to_numpy().astype(np.float32)


def training_set(cfg: DictConfig, train_df: pl.DataFrame, windows: pl.DataFrame, emb: np.ndarray,
                 classes: list[str], pseudo: pl.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and targets of the fold's training chunks (+ mixed copies) and background windows. With
    `pseudo` (the pseudo-label table) and `probe.bed_labels`, a mixed copy's targets are the max of its chunk's
    labels and its bed's pseudo-labels: the calls in the bed are no longer taught as absent."""
    rebuild = teacher_command(cfg)
    rows = cached_rows(windows, train_df, bool(cfg.probe.mixed), rebuild)
    secondary = None if cfg.labels.secondary is None else float(cfg.labels.secondary)
    y, _ = multi_hot(rows["primary_label"].to_list(), rows["secondary_labels"].to_list(), classes, secondary)
    if pseudo is not None and cfg.probe.bed_labels and bool(cfg.probe.mixed):
        y = np.maximum(y, bed_targets(rows, pseudo, classes, float(cfg.audio.window_s), rebuild))
    x = np.asarray(emb[rows["row"].to_numpy()])
    if cfg.probe.background:
        bg = windows.with_row_index("row").filter(
            (pl.col("source") == "train_soundscapes")
            & pl.col("filename").map_elements(lambda f: fnmatch.fnmatch(f, str(cfg.probe.background)),
                                              return_dtype=pl.Boolean))
        if bg.height == 0:
            log.warning("probe.background=%s matches no cached train soundscape window", cfg.probe.background)
        x = np.concatenate([x, np.asarray(emb[bg["row"].to_numpy()])])
        y = np.concatenate([y, np.zeros((bg.height, len(classes)), np.float32)])
    return x, y


def labelled_set(cfg: DictConfig, windows: pl.DataFrame, emb: np.ndarray, classes: list[str],
                 command: str = ANY_TEACHER) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and 0/1 targets of the labelled train soundscape windows this fold trains on (2026: the other
    folds' soundscapes, `src.data.splits.training_labelled`; for a class unknown to the teacher and without clips
    the only supervision); none with `probe.labelled_weight=0` or a competition without labels."""
    table = training_labelled(cfg) if float(cfg.probe.labelled_weight) > 0 else pl.DataFrame()
    if table.height == 0:
        return np.zeros((0, emb.shape[1]), np.float32), np.zeros((0, len(classes)), np.float32)
    rows = windows.with_row_index("row").filter(pl.col("source") == "train_soundscapes", pl.col("copy") == 0)
    joined = table.join(rows.select("filename", pl.col("chunk").alias("window"), "row"), on=["filename", "window"],
                        how="inner", maintain_order="left")
    if joined.height < table.height:
        raise ValueError(f"{table.height - joined.height} labelled soundscape window(s) are not in the teacher cache: "
                         f"run `{command}` with train_soundscapes in teacher_cache.sources")
    return np.asarray(emb[joined["row"].to_numpy()]), label_matrix(joined["labels"].to_list(), classes)


def pseudo_set(windows: pl.DataFrame, emb: np.ndarray, classes: list[str], table: pl.DataFrame, path: str,
               command: str = ANY_TEACHER) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and soft targets of the pseudo-labelled soundscape windows of `table` (`load_pseudo_windows`
    of `path`: the same file, checks and silent-window rule as `src.train`'s); training only, never validated.
    `command` (`teacher_command`) is what the message of windows missing from the cache tells the user to run."""
    rows = windows.with_row_index("row").filter(pl.col("source") == "train_soundscapes", pl.col("copy") == 0)
    joined = table.join(rows.select("filename", pl.col("chunk").alias("window"), "row"),
                        on=["filename", "window"], how="inner", maintain_order="left")
    if joined.height < table.height:
        raise ValueError(f"{path}: {table.height - joined.height} of its windows are not in the "
                         f"teacher cache: rerun `{command}` (with train_soundscapes in teacher_cache.sources)")
    return np.asarray(emb[joined["row"].to_numpy()]), joined.select(classes).to_numpy().astype(np.float32)


def run_name(cfg: DictConfig) -> str:
    if cfg.probe.exp:
        return str(cfg.probe.exp)
    return str(cfg.teacher.name) + ("" if cfg.probe.head == "zero_shot" else "_probe")


def run_spec(cfg: DictConfig, settings: dict) -> dict:
    """teacher.json: the cache's teacher settings (model file, windows, mapping) and this run's head."""
    spec = {k: settings[k] for k in ("name", "model_file", "sample_rate", "window_s", "offsets_s", "outputs",
                                     "activation", "signature", "mapping")}
    return spec | {"batch_size": int(cfg.teacher.batch_size), "head": str(cfg.probe.head),
                   "zero_shot_weight": float(cfg.probe.zero_shot_weight) if cfg.probe.head == "probe" else 0.0}


def train_probe(cfg: DictConfig) -> dict:
    """Fit (or, zero-shot, just score) `cfg.fold` and write the run folder; returns metrics.json's content."""
    started = time.time()
    check_settings(cfg.probe)
    chunks, classes = load_chunk_index(cfg)
    train_df, val_df = split_fold(chunks, cfg)
    windows, emb, zero, settings = load_cache(cfg)
    rebuild = teacher_command(cfg)
    if settings["classes"] != classes:
        raise ValueError(f"{cache_dir(cfg)}: cached for other classes than {cfg.data.cache_dir}: delete that folder "
                         f"and run `{rebuild}`")
    model_files(cfg.teacher)  # the model file must still be there: the run predicts with it
    spec = run_spec(cfg, settings)
    weights, n_train, n_pseudo = None, 0, 0
    if cfg.probe.head == "probe":
        pseudo = load_pseudo_windows(cfg, classes) if cfg.pseudo.path else None
        x, y = training_set(cfg, train_df, windows, emb, classes, pseudo)
        lx, ly = labelled_set(cfg, windows, emb, classes, rebuild)
        sample_weight = np.concatenate([np.ones(len(x), np.float32),
                                        np.full(len(lx), float(cfg.probe.labelled_weight), np.float32)])
        x, y = np.concatenate([x, lx]), np.concatenate([y, ly])
        extra = None if pseudo is None else pseudo_set(windows, emb, classes, pseudo, str(cfg.pseudo.path), rebuild)
        weights = fit_probe(x, y, cfg.probe, extra=extra, sample_weight=sample_weight,
                            extra_weight=float(cfg.pseudo.weight))
        n_train, n_pseudo = len(x), 0 if extra is None else len(extra[0])
    head = make_head(spec, weights)

    def predict(rows: pl.DataFrame) -> np.ndarray:
        index = rows["row"].to_numpy()
        return head(emb[index], zero[index])

    val_rows = cached_rows(windows, val_df, copies=False, command=rebuild)
    # the validation chunks mixed into ambience (their cached copies): a check closer to the soundscapes
    mixed = cached_rows(windows, val_df, copies=True, command=rebuild).filter(pl.col("copy") > 0)
    mixed_auc = scores(primary_one_hot(mixed["primary_label"].to_list(), classes), predict(mixed))["auc"] \
        if mixed.height else None
    exp = run_name(cfg)
    run_dir = Path(cfg.runs_dir) / exp / f"fold{cfg.fold}"
    with run_lock(run_dir):
        write_run(cfg, run_dir, exp, classes, spec, weights, val_rows, predict(val_rows), n_train,
                  time.time() - started, {"mixed_auc": mixed_auc, "n_pseudo_windows": n_pseudo, **pseudo_digest(cfg)})
        # the fold's validation soundscapes and held-out labelled soundscapes, as src.train scores its runs
        scored = score_run(run_dir, int(cfg.train.threads), int(cfg.teacher.batch_size))
        if scored:
            print(f"{exp} fold {cfg.fold}: " + ", ".join(f"{k} {v:.4f}" for k, v in scored.items() if "auc" in k))
    return json.loads((run_dir / "metrics.json").read_text())


def check_settings(pcfg: DictConfig) -> None:
    """The `probe` settings, checked before anything is read or written; a ValueError names the key."""
    if pcfg.head not in ("probe", "zero_shot"):
        raise ValueError(f"probe.head={pcfg.head!r}: use probe or zero_shot")
    for key, kind, ok, rule in (("hidden", int, lambda v: v >= 0, "an integer >= 0 (0 = logistic regression)"),
                                ("epochs", int, lambda v: v >= 1, "an integer >= 1"),
                                ("lr", float, lambda v: v > 0, "a number > 0"),
                                ("weight_decay", float, lambda v: v >= 0, "a number >= 0")):
        value = pcfg[key]
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and (
            kind is float or float(value).is_integer())
        if not number or not ok(kind(value)):
            raise ValueError(f"probe.{key}={value!r}: must be {rule} (configs/teacher.yaml: probe)")


def write_run(cfg: DictConfig, run_dir: Path, exp: str, classes: list[str], spec: dict,
              weights: dict | None, val_rows: pl.DataFrame, probs: np.ndarray, n_train: int, duration: float,
              extra_metrics: dict) -> None:
    """config.yaml, teacher.json, probe.npz, oof.parquet and metrics.json, each written atomically."""
    plain = cfglib.to_plain(cfg)
    plain["audio"] = {"sample_rate": spec["sample_rate"], "window_s": 5.0}  # what the run's predict function takes
    with atomic_write(run_dir / "config.yaml") as tmp:
        OmegaConf.save(OmegaConf.create(plain | {"exp": exp, "classes": classes}), tmp)
    with atomic_write(run_dir / "teacher.json") as tmp:
        Path(tmp).write_text(json.dumps(spec, indent=1))
    if weights is not None:
        with atomic_write(run_dir / "probe.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **weights)
    oof = val_rows.select("filename", "chunk", "start_s", "end_s", "primary_label", "secondary_labels").with_columns(
        [pl.Series(c, probs[:, i], dtype=pl.Float32) for i, c in enumerate(classes)])
    with atomic_write(run_dir / "oof.parquet") as tmp:
        oof.write_parquet(tmp)
    y = primary_one_hot(val_rows["primary_label"].to_list(), classes)
    auc, cmap = (scores(y, probs)[k] for k in ("auc", "cmap"))
    head = "zero-shot" if spec["head"] == "zero_shot" else f"probe(hidden={cfg.probe.hidden})"
    metrics = {"exp": exp, "fold": int(cfg.fold), "model": f"{spec['name']}-{spec['head']}",
               "backbone": f"{spec['name']} {head}", "metric": str(cfg.data.metric),
               "score": auc if cfg.data.metric == "auc" else cmap, "auc": auc, "cmap": cmap, "best_epoch": -1,
               "epochs_run": int(cfg.probe.epochs) if weights is not None else 0,
               "per_class_auc": per_class_auc(y, probs, classes), "duration_s": round(duration, 1),
               "git_commit": git_commit(), "config_hash": cfglib.config_hash(cfg), "n_train_chunks": n_train,
               "n_val_chunks": val_rows.height} | extra_metrics
    with atomic_write(run_dir / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=1))
    mixed = extra_metrics.get("mixed_auc")
    print(f"{exp} fold {cfg.fold}: {head} on {n_train} rows, macro ROC-AUC {auc:.4f}, padded cmAP {cmap:.4f}"
          + (f", mixed into ambience {mixed:.4f}" if mixed is not None else "") + f" -> {run_dir}")


@hydra.main(config_path="../configs", config_name="teacher", version_base=None)
def main(cfg: DictConfig) -> None:
    train_probe(cfg)


if __name__ == "__main__":
    main()
