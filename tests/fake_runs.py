"""Fake run and ensemble folders that follow the training/ensembling file contract exactly, so the
leaderboard and report can be tested without training anything.

    make_fake_run(runs_dir, "effnet", fold=0, backbone="efficientnet_b0", lr=1e-3)
    make_fake_ensemble(ensembles_dir, "blend", members=["effnet", "regnet"], oof_score=0.93)

Tests import it as `from fake_runs import ...` (like conftest: pytest puts tests/ on sys.path, with plain
`pytest` and `python -m pytest` alike); `from tests.fake_runs import ...` works from the repo root too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from omegaconf import OmegaConf

from src.evaluation.metrics import macro_auc, padded_cmap, per_class_auc


def fake_classes(n: int) -> list[str]:
    """`n` eBird-like class codes: sp_a, sp_b, ..., sp_aa, ..."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = []
    for i in range(n):
        code = letters[i % 26] if i < 26 else letters[i // 26 - 1] + letters[i % 26]
        names.append(f"sp_{code}")
    return names


def fake_config(exp: str, fold: int, classes: list[str], backbone: str, lr: float, metric: str,
                runs_dir: Path, overrides: dict | None = None) -> dict:
    """A full resolved run config as training saves it (plain nested dict), with dotted-key overrides."""
    cfg = {
        "data": {"name": "demo", "layout": "birdclef2025", "root": "data/demo", "competition": "birdclef-2025",
                 "metric": metric, "cache_dir": "cache/demo/demo-1a2b3c"},
        "audio": {"sample_rate": 32000, "window_s": 5.0, "n_fft": 2048, "hop_length": 512, "n_mels": 128,
                  "fmin": 40, "fmax": 15000},
        "model": {"name": backbone, "backbone": backbone,
                  "pretrained": False, "weights": None, "in_chans": 1, "head": "pooled", "drop_rate": 0.2,
                  "drop_path_rate": 0.1},
        "aug": {"mixup": {"p": 0.5, "alpha": 0.5, "mode": "wave"},
                "spec_augment": {"p": 0.5, "freq_masks": 2, "time_masks": 2},
                "spec": {"xy_masking": {"p": 0.0, "num_masks_x": [1, 3]}}},
        "train": {"epochs": 10, "batch_size": 32, "num_workers": 2, "lr": lr, "weight_decay": 0.01,
                  "loss": "bce", "threads": 0, "report": True},
        "sampler": {"kind": "balanced", "per_class": 128},
        "labels": {"secondary": 0.5, "smoothing": 0.0},
        "folds": {"n": 5, "group": "author", "seed": 42, "dir": "folds"},
        "exp": exp, "fold": fold, "seed": 42, "runs_dir": str(runs_dir), "device": "cpu", "resume": False,
    }
    for key, value in (overrides or {}).items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    cfg["classes"] = list(classes)
    return cfg


def make_fake_run(runs_dir: str | Path, exp: str, fold: int = 0, *, n_classes: int = 8,
                  classes: list[str] | None = None, backbone: str = "efficientnet_b0", lr: float = 1e-3,
                  score: float | None = None, signal: float = 2.0, n_chunks: int = 240, metric: str = "auc",
                  duration_s: float = 600.0, git_commit: str = "0123456789abcdef", seed: int = 0,
                  overrides: dict | None = None) -> Path:
    """Write `runs_dir/<exp>/fold<fold>/` (config.yaml, metrics.json, oof.parquet, log.csv); return the folder.

    Probabilities are seeded noise shifted up for the true class by `signal` times a per-class factor
    (so per-class AUCs spread out); metrics.json holds the scores computed from them, except that
    `score` (if given) overrides the main metric, as if the run had scored that.
    """
    runs_dir = Path(runs_dir)
    classes = list(classes) if classes is not None else fake_classes(n_classes)
    rng = np.random.default_rng(seed * 1000 + fold)
    run_dir = runs_dir / exp / f"fold{fold}"
    run_dir.mkdir(parents=True, exist_ok=True)

    n = max(n_chunks, 3 * len(classes))
    labels = np.arange(n) % len(classes)
    rng.shuffle(labels)
    truth = np.eye(len(classes), dtype=np.float32)[labels]
    strength = signal * rng.uniform(0.2, 1.5, len(classes))
    logits = rng.normal(0.0, 1.0, truth.shape) + truth * strength - 2.5
    probs = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    recording = np.arange(n) // 3
    chunk = np.arange(n) % 3
    secondary = [[classes[(lab + 1) % len(classes)]] if rng.random() < 0.15 else [] for lab in labels]
    oof = pl.DataFrame({
        "filename": [f"{classes[lab]}/XC{1000 + r}.ogg" for lab, r in zip(labels, recording)],
        "chunk": chunk.astype(np.int64),
        "start_s": (chunk * 4.0).astype(np.float64),
        "end_s": (chunk * 4.0 + 5.0).astype(np.float64),
        "primary_label": [classes[lab] for lab in labels],
        "secondary_labels": pl.Series(secondary, dtype=pl.List(pl.Utf8)),
        **{c: pl.Series(probs[:, i], dtype=pl.Float32) for i, c in enumerate(classes)},
    })
    oof.write_parquet(run_dir / "oof.parquet")

    cfg = fake_config(exp, fold, classes, backbone, lr, metric, runs_dir, overrides)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / "config.yaml")

    auc, cmap = macro_auc(truth, probs), padded_cmap(truth, probs)
    main = score if score is not None else (auc if metric == "auc" else cmap)
    epochs = int(cfg["train"]["epochs"])
    metrics = {
        "exp": exp, "fold": fold, "model": cfg["model"]["name"], "backbone": backbone, "metric": metric,
        "score": float(main), "auc": float(main if metric == "auc" else auc),
        "cmap": float(main if metric == "cmap" else cmap), "best_epoch": epochs - 2, "epochs_run": epochs,
        "per_class_auc": per_class_auc(truth, probs, classes), "duration_s": float(duration_s),
        "git_commit": git_commit, "config_hash": f"{abs(hash((backbone, lr))) % 16**8:08x}",
        "n_train_chunks": 4 * n, "n_val_chunks": n,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))

    log = pl.DataFrame({
        "epoch": list(range(1, epochs + 1)),
        "train_loss": np.linspace(0.5, 0.1, epochs), "val_loss": np.linspace(0.4, 0.2, epochs),
        "auc": np.linspace(0.6, main, epochs), "cmap": np.linspace(0.3, cmap, epochs),
        "lr": np.full(epochs, lr), "seconds": np.full(epochs, duration_s / epochs),
    })
    log.write_csv(run_dir / "log.csv")
    return run_dir


def make_fake_ensemble(ensembles_dir: str | Path, name: str, members: list[str], oof_score: float, *,
                       folds: list[int] | None = None, weights: list[float] | None = None, blend: str = "mean",
                       metric: str = "auc", test_auc: float | None = None) -> Path:
    """Write `ensembles_dir/<name>/` (ensemble.yaml, score.json if `test_auc`, submission.csv); return it."""
    out = Path(ensembles_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    weights = weights or [1.0 / len(members)] * len(members)
    spec = {"name": name, "members": [{"run": m, "folds": list(folds or [0]), "weight": float(w)}
                                      for m, w in zip(members, weights)],
            "blend": blend, "postprocess": {}, "oof_score": float(oof_score), "metric": metric}
    OmegaConf.save(OmegaConf.create(spec), out / "ensemble.yaml")
    if test_auc is not None:
        (out / "score.json").write_text(json.dumps({"auc": float(test_auc)}))
    (out / "submission.csv").write_text("row_id,sp_a\nsoundscape_1_5,0.5\n")
    return out
