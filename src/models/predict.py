"""Finished runs predicting soundscape files in `src` (the ensemble's test prediction, `src.pseudo`'s labels):
each member's folds averaged, read from the teacher cache when it holds every window (teacher runs), else decoded
and predicted with the eager models, files decoded once for every fold that cuts the audio alike.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from src.config import load_run_config
from src.data.teacher_cache import cached_run_predictions
from src.infer.blend import mean_by_owner, widen_columns
from src.infer.soundscape import predict_model_groups
from src.models.export import eager_runtime


def predict_members(members: list[dict], files: list[Path], cfg: DictConfig, classes: list[str],
                    runtime_for) -> tuple[list[str], list[np.ndarray], list[str]]:
    """Each member's test probabilities on `classes` (its folds averaged; NaN rows for undecodable files, NaN
    columns for the classes a specialist does not predict); `runtime_for(fold_dir)` gives a predict fn. Folds that
    cut the audio alike decode each file once."""
    owners, dirs = zip(*[(i, Path(d)) for i, m in enumerate(members) for d in m["fold_dirs"]], strict=True)
    saved = [load_run_config(d) for d in dirs]
    audio = [c.audio for c in saved]

    def load_group(ks: list[int]):
        predicts = [runtime_for(dirs[k]) for k in ks]
        return lambda batch: np.concatenate([p(batch) for p in predicts], axis=1)

    ens = cfg.ensemble
    ids, model_preds, problems = predict_model_groups(
        files, [(int(a.sample_rate), float(a.window_s)) for a in audio], load_group,
        [len(c.classes) for c in saved], float(ens.context_s), tuple(ens.shifts_s), int(ens.batch_size),
        float(ens.fallback_duration_s), progress=lambda f: tqdm(f, desc=f"{len(dirs)} model(s)", unit="file"),
        decode_ahead=int(ens.get("decode_ahead") or 0))
    preds = mean_by_owner(model_preds, list(owners), len(members))
    return ids, [widen_columns(p, m.get("classes"), classes) for p, m in zip(preds, members, strict=True)], problems


def cached_members(members: list[dict], source: str, files: list[Path], inference: DictConfig
                   ) -> tuple[list[str], list[np.ndarray]] | None:
    """`predict_members` from the teacher cache (source `train_soundscapes` / `test_soundscapes`): each member's
    probabilities, its folds averaged, when every member is a teacher run whose cache holds every file and the
    inference adds nothing the cache lacks (no context, no shifts); else None (predict from the audio)."""
    if float(inference.context_s) or [float(s) for s in inference.shifts_s] != [0.0]:
        return None
    names = [f.name for f in files]
    per_member = [[cached_run_predictions(d, source, names) for d in m["fold_dirs"]] for m in members]
    flat = [r for folds in per_member for r in folds]
    if any(r is None for r in flat):
        return None
    return flat[0][0], [np.mean([r[1] for r in folds], axis=0) for folds in per_member]


def member_predictions(members: list[dict], source: str, files: list[Path], cfg: DictConfig, classes: list[str],
                       threads: int) -> tuple[list[str], list[np.ndarray], list[str]]:
    """Each member's probabilities on `classes` on every window of `files`: from the teacher cache when it holds
    them all (`cached_members`), else decoded and predicted (`predict_members`). Returns (row_ids, preds,
    problems)."""
    cached = cached_members(members, source, files, cfg.ensemble)
    if cached is not None:
        print(f"every member's {source.split('_')[0]} windows read from its teacher cache")
        return *cached, []
    if threads:
        torch.set_num_threads(threads)
    return predict_members(members, files, cfg, classes, lambda d: eager_runtime(d, threads))
