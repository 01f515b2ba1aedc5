"""`python -m src.valsets data=... folds.n=K [+runs=[exp,...]]`: build every fold's validation soundscapes
(`src.evaluation.valsets`: how they are mixed and labelled) and print what each holds; with `+runs`, score those
runs' finished folds on them (oof_soundscape.parquet and metrics.json's soundscape_auc / soundscape_cmap).
"""
from __future__ import annotations

import json
from pathlib import Path

import hydra
import polars as pl
from omegaconf import DictConfig

from src import config as cfglib
from src.data.teacher_cache import cached_run_predictions, valset_name
from src.evaluation.valsets import build_fold, evaluate_soundscapes, labelled_valset, load_fold, score_predictions
from src.infer.io import atomic_write


def build_all(cfg: DictConfig) -> dict[int, Path | None]:
    """Build every fold's set (folds.n of them) and print what each holds; returns each fold's folder."""
    classes = json.loads((Path(cfg.data.cache_dir) / "manifest.json").read_text())["classes"]
    built = {}
    for fold in range(int(cfg.folds.n)):
        out, problems = build_fold(cfg, fold, classes)
        for p in problems:
            print(p)
        built[fold] = out
        if out is None:
            continue
        labels = pl.read_parquet(out / "labels.parquet")
        calls = pl.read_parquet(out / "calls.parquet")
        positive = labels.select(classes).sum().row(0)
        print(f"fold {fold}: {labels['filename'].n_unique()} soundscapes, {calls.height} calls from "
              f"{calls['filename'].n_unique()} recordings, {sum(v > 0 for v in positive)} classes with positive "
              f"windows, {sum(positive)} positive (window, class) pairs -> {out}")
    return built


def score_run(fold_dir: str | Path, threads: int = 0, batch_size: int = 16) -> dict[str, float]:
    """Score a finished run fold (any kind `src.models.export.eager_runtime` loads) on its fold's validation
    soundscapes and (2026) its held-out labelled soundscapes: writes its oof_soundscape.parquet /
    oof_labelled.parquet and adds the metrics to its metrics.json. A teacher run whose teacher cache holds the
    windows (sources `valsets`, `train_soundscapes`) is scored from the cache."""
    fold_dir = Path(fold_dir)
    cfg = cfglib.load_run_config(fold_dir)
    classes = list(cfg.classes)
    sets = [load_fold(cfg, int(cfg.fold), classes) if cfg.train.get("soundscape_cv", True) else None,
            labelled_valset(cfg, int(cfg.fold), classes) if cfg.get("labelled", {}).get("cv", True) else None]
    metrics: dict[str, float] = {}
    for vs in (s for s in sets if s is not None):
        source, names = ("valsets", [valset_name(f, cfg.data.cache_dir) for f in vs.files]) \
            if vs.kind == "soundscape" else ("train_soundscapes", [f.name for f in vs.files])
        cached = cached_run_predictions(fold_dir, source, names)
        if cached is not None:
            metrics |= score_predictions(vs, *cached, classes, fold_dir)
        else:
            from src.models.export import eager_runtime  # torch and the models: only when a run is predicted

            metrics |= evaluate_soundscapes(eager_runtime(fold_dir, threads), cfg, classes, fold_dir, batch_size,
                                            valset=vs)
    if not metrics:
        return {}
    path = fold_dir / "metrics.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(saved | metrics, indent=1))
    return metrics


@hydra.main(config_path="../configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    """Build every fold's set; with `+runs=[exp,...]`, also score those runs' finished folds on them."""
    if not (Path(cfg.data.cache_dir) / "manifest.json").exists():
        raise FileNotFoundError(f"{cfg.data.cache_dir}/manifest.json not found: run `python -m src.prepare "
                                f"data={cfg.data.name} data.root={cfg.data.root}` first")
    build_all(cfg)
    for exp in cfg.get("runs") or []:
        for fold_dir in cfglib.fold_dirs(Path(cfg.runs_dir), str(exp)):
            metrics = score_run(fold_dir, int(cfg.train.threads))
            print(f"{fold_dir}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
