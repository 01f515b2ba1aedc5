"""Distillation from a teacher cache (`python -m src.teacher`) into a `src.train` run: off by default.

`distill.weight` adds BCE towards the teacher's mapped scores (on the classes it knows); `distill.embedding_weight`
adds a cosine loss between a small projection of the student's pooled backbone features and the teacher's
embedding. The teacher targets ride along the labels (concatenated to target and mask), so mixup and cutmix mix
them as they mix the labels. The projection head is trained beside the model but is not part of best.pt: the
run exports and predicts like any other.

`distill.stage=true` makes a run a distillation stage (the 2026 winners' first step): no labels, every training
chunk and train soundscape window of the training folds towards the teacher's embedding (and mapped scores); its
best.pt, picked by the validation windows' cosine, starts the supervised runs (`init_from`).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from src.config import git_commit
from src.data.audio_cache import cache_path, load_cached
from src.data.augment import build_wave_augment
from src.data.dataset import ChunkDataset
from src.data.pseudo_labels import bed_soundscapes
from src.data.samplers import ShuffleSampler
from src.data.splits import held_out_labelled
from src.data.teacher_cache import cached_rows, load_cache, teacher_command
from src.infer.io import atomic_write
from src.models.model import BirdModel
from src.training.step import Run, TrainForward, count_epoch_steps, loss_fn


class DistillDataset(Dataset):
    """A training dataset whose (wave, target, mask, weight) items carry the chunk's teacher scores and
    embedding after the labels: target = [labels | scores | embedding], mask = [mask | known classes | 1]."""

    def __init__(self, base: Dataset, scores: np.ndarray, embeddings: np.ndarray, known: np.ndarray):
        self.base = base
        self.extra = torch.from_numpy(np.concatenate([scores, embeddings], axis=1).astype(np.float32))
        self.extra_mask = torch.from_numpy(np.concatenate([known.astype(np.float32),
                                                           np.ones(embeddings.shape[1], np.float32)]))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item):
        wave, target, mask, weight = self.base[item]
        row = item[0] if isinstance(item, tuple) else item
        return wave, torch.cat([target, self.extra[row]]), torch.cat([mask, self.extra_mask]), weight


class DistillForward(TrainForward):
    """TrainForward that also projects the pooled backbone features: returns [logits | projection] (B, C + D)."""

    def __init__(self, model: BirdModel, aug: torch.nn.Module, channels_last: bool, dim: int):
        super().__init__(model, aug, channels_last)
        self.projection = torch.nn.Linear(model.backbone.num_features, dim)

    def forward(self, wave: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
        mel, target, mask = self.augmented_mel(wave, target, mask)
        feats = self.model.backbone.forward_features(mel)
        pooled = feats.mean(dim=tuple(range(2, feats.ndim))) if feats.ndim > 2 else feats
        return torch.cat([self.model.head(feats), self.projection(pooled.float())], dim=1), target, mask


def teacher_targets(cfg: DictConfig, train_df, classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The teacher's (scores, embeddings) of each training chunk (copy 0), in train_df's order, and which
    classes it knows."""
    command = teacher_command(cfg, str(cfg.distill.teacher))
    windows, emb, scores, settings = load_cache(Path(cfg.data.cache_dir) / "teacher" / str(cfg.distill.teacher), command)
    rows = cached_rows(windows, train_df, copies=False, command=command)["row"].to_numpy()
    cols, known = class_columns(settings, classes)
    return np.asarray(scores[rows])[:, cols], np.asarray(emb[rows]), known


def class_columns(settings: dict, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The cache's score columns of `classes` (a run's classes: all of the cache's, or a specialist's subset) and
    which of them the teacher knows. ValueError when the cache was built for other classes."""
    index = {c: i for i, c in enumerate(settings["classes"])}
    missing = [c for c in classes if c not in index]
    if missing:
        raise ValueError(f"the teacher cache was built for other classes (e.g. {missing[:3]} are not in it): rerun "
                         "`python -m src.teacher` for this competition")
    cols = np.array([index[c] for c in classes])
    return cols, np.array([bool(settings["mapping"][i]) for i in cols])


def distill_loss(base_loss, n_classes: int, cfg: DictConfig):
    """loss(out, target, mask, weight): the run's label loss on the first C columns plus the distillation terms."""
    w_scores, w_emb = float(cfg.distill.weight), float(cfg.distill.embedding_weight)

    def loss(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        c = n_classes
        total = base_loss(out[:, :c], target[:, :c], mask[:, :c], weight)
        if w_scores:
            bce = F.binary_cross_entropy_with_logits(out[:, :c].float(), target[:, c:2 * c], reduction="none")
            known = mask[:, c:2 * c]
            total = total + w_scores * ((bce * known).sum(dim=1) / known.sum(dim=1).clamp(min=1)).mean()
        if w_emb:
            total = total + w_emb * (1 - F.cosine_similarity(out[:, c:].float(), target[:, 2 * c:], dim=1)).mean()
        return total

    return loss


def setup_distillation(run: Run) -> None:
    """Swap in the distillation dataset, forward (with its projection head, trained at the run's lr) and loss."""
    cfg = run.cfg
    scores, emb, known = teacher_targets(cfg, run.train_df, run.classes)
    run.train_ds = DistillDataset(run.train_ds, scores, emb, known)
    old = run.loader
    run.loader = DataLoader(run.train_ds, batch_size=old.batch_size, sampler=run.sampler, drop_last=True,
                            num_workers=old.num_workers, pin_memory=old.pin_memory,
                            persistent_workers=old.num_workers > 0)
    attach(run, emb.shape[1], distill_loss(lambda *a: loss_fn(*a, cfg), len(run.classes), cfg))
    if run.dist.main:
        print(f"distilling from {cfg.distill.teacher}: scores x{cfg.distill.weight} ({int(known.sum())} classes), "
              f"embedding x{cfg.distill.embedding_weight} ({emb.shape[1]}-d)")



# ---- the distillation stage (distill.stage=true): a run that only learns the teacher's embedding --------------

class TeacherWindowDataset(ChunkDataset):
    """Cached windows of two kinds, training chunks (`audio/`) and train soundscape windows (`soundscapes/`), with
    the teacher's targets after all-masked labels: target = [0 (C) | scores (C) | embedding (D)], mask = [0 (C) |
    known classes | 1]: `distill_loss` then learns the teacher alone."""

    def __init__(self, table: pl.DataFrame, cache_dir: Path, n_classes: int, scores: np.ndarray, emb: np.ndarray,
                 known: np.ndarray, sample_rate: int, window_s: float, jitter_s: float = 0.0, wave_augment=None):
        self._windows(table, cache_dir, sample_rate, window_s, jitter_s, wave_augment)
        self.kinds = dict(zip(table["filename"], table["kind"]))
        self.targets = torch.from_numpy(np.concatenate([np.zeros((len(table), n_classes), np.float32), scores, emb],
                                                       axis=1).astype(np.float32))
        self.masks = torch.from_numpy(np.concatenate([np.zeros(n_classes, np.float32), known.astype(np.float32),
                                                      np.ones(emb.shape[1], np.float32)]))[None].expand(
            len(table), -1)
        self.weights = torch.ones(len(table))

    def _recording(self, filename: str) -> np.ndarray:
        if filename not in self._audio:
            self._audio[filename] = load_cached(cache_path(self.cache_dir, filename, self.kinds[filename]))
        return self._audio[filename]


def stage_windows(cfg: DictConfig, chunks: pl.DataFrame, soundscapes: bool) -> tuple[pl.DataFrame, np.ndarray]:
    """The teacher cache's windows of `chunks` (copy 0) and, with `soundscapes`, of the train soundscapes this
    fold may hear (every one but its held-out labelled soundscapes and the validation soundscapes' reserved
    beds), as (filename, start_s, kind) rows and their cache rows."""
    windows, _, _, _ = load_cache(Path(cfg.data.cache_dir) / "teacher" / str(cfg.distill.teacher))
    rows = cached_rows(windows, chunks, copies=False)
    table = rows.select("filename", "start_s", pl.lit("audio").alias("kind"))
    index = rows["row"].to_numpy()
    if soundscapes:
        held = set(held_out_labelled(cfg)["filename"]) | {f"{s}" for s in bed_soundscapes(cfg) or []}
        sound = windows.with_row_index("row").filter(pl.col("source") == "train_soundscapes", pl.col("copy") == 0)
        sound = sound.filter(~pl.col("filename").is_in(list(held))
                             & ~pl.col("filename").str.replace(r"\.[^.]+$", "").is_in(list(held)))
        table = pl.concat([table, sound.select("filename", "start_s", pl.lit("soundscapes").alias("kind"))])
        index = np.concatenate([index, sound["row"].to_numpy()])
    return table, index


def distill_stage(run: Run, build_model: Callable[[Run], None]) -> None:
    """Set a run up as a distillation stage: the teacher-target windows of the training folds (chunks and train
    soundscape windows) and of the validation fold (its chunks and held-out labelled windows), the model (built
    by `build_model`, the run's own builder) with a projection head, the cosine (+ scores) loss, the validation
    windows' mean cosine as the score that picks best.pt, and a metrics.json of its own (`finish_stage`)."""
    cfg = run.cfg
    _, emb, scores, settings = load_cache(Path(cfg.data.cache_dir) / "teacher" / str(cfg.distill.teacher))
    cols, known = class_columns(settings, run.classes)
    train, train_rows = stage_windows(cfg, run.train_df, bool(cfg.distill.soundscapes))
    val, val_rows = stage_windows(cfg, run.val_df, False)
    sr, window = int(cfg.audio.sample_rate), float(cfg.audio.window_s)
    jitter = (cfg.prepare.chunk_s - cfg.prepare.overlap_s) / 2 if cfg.sampler.random_offset else 0.0

    def dataset(table, rows, aug, shift):
        return TeacherWindowDataset(table, Path(cfg.data.cache_dir), len(run.classes), np.asarray(scores[rows])[:, cols],
                                    np.asarray(emb[rows]), known, sr, window, shift, aug)

    run.train_ds = dataset(train, train_rows, build_wave_augment(cfg.aug.wave, sr, None), jitter)
    run.val_ds = dataset(val, val_rows, None, 0.0)
    run.sampler = ShuffleSampler(np.zeros(len(train)), int(cfg.seed), run.dist.rank, run.dist.world)
    run.loader = DataLoader(run.train_ds, batch_size=int(cfg.train.batch_size), sampler=run.sampler, drop_last=True,
                            num_workers=int(cfg.train.num_workers), pin_memory=run.device.type == "cuda")
    run.steps_per_epoch = count_epoch_steps(run)
    # mixup and cutmix would mix the embeddings as labels (max): the stage learns from the windows as they are
    run.cfg = OmegaConf.merge(cfg, {"aug": {"mixup": {"p": 0.0}, "cutmix": {"p": 0.0}}})
    build_model(run)
    stage_cfg = OmegaConf.merge(cfg, {"distill": {"embedding_weight": float(cfg.distill.stage_embedding_weight)}})
    attach(run, emb.shape[1], distill_loss(lambda *a: loss_fn(*a, cfg), len(run.classes), stage_cfg))
    run.evaluators, run.select_key, run.finish = [evaluate_stage], "distill_cos", finish_stage
    if run.dist.main:
        print(f"distillation stage from {cfg.distill.teacher}: {len(train)} windows ({(train['kind'] == 'soundscapes').sum()} "
              f"of soundscapes), {len(val)} validation windows, embedding {emb.shape[1]}-d")


def attach(run: Run, dim: int, loss: Callable) -> None:
    """The run's forward becomes a DistillForward (its projection head trained at the run's lr) and its loss `loss`."""
    step_fn = DistillForward(run.model, run.batch_aug, bool(run.cfg.train.channels_last), dim).to(run.device)
    run.optimizer.add_param_group({"params": list(step_fn.projection.parameters())})
    if run.dist.world > 1:
        step_fn = torch.nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[run.device.index] if run.device.type == "cuda" else None, find_unused_parameters=True)
    run.step_fn, run.loss = step_fn, loss


@torch.no_grad()
def evaluate_stage(run: Run, model: torch.nn.Module) -> dict[str, float]:
    """The validation windows' mean cosine between the projected features and the teacher's embedding."""
    forward = run.step_fn.module if isinstance(run.step_fn, torch.nn.parallel.DistributedDataParallel) else run.step_fn
    model.eval()
    c, cosines = len(run.classes), []
    for i in range(0, len(run.val_ds), int(run.cfg.train.val_batch_size)):
        items = [run.val_ds[k] for k in range(i, min(i + int(run.cfg.train.val_batch_size), len(run.val_ds)))]
        wave = torch.stack([t[0] for t in items]).to(run.device)
        feats = model.backbone.forward_features(model.frontend(wave))
        pooled = feats.mean(dim=tuple(range(2, feats.ndim))) if feats.ndim > 2 else feats
        target = torch.stack([t[1][2 * c:] for t in items]).to(run.device)
        cosines.append(F.cosine_similarity(forward.projection(pooled.float()), target, dim=1).cpu())
    return {"distill_cos": float(torch.cat(cosines).mean()) if cosines else float("nan")}


def finish_stage(run: Run) -> dict:
    """metrics.json of a distillation stage: its validation cosine, best epoch, windows and time (no oof: it is a
    starting point for supervised runs, `init_from`, not an ensemble member)."""
    metrics = {"exp": run.exp, "fold": run.cfg.fold, "stage": "distill", "teacher": str(run.cfg.distill.teacher),
               "model": str(run.cfg.model.name), "backbone": str(run.cfg.model.backbone), "metric": "distill_cos",
               "score": run.best, "distill_cos": run.best, "best_epoch": run.best_epoch,
               "epochs_run": len(run.history), "n_train_windows": len(run.train_ds),
               "n_val_windows": len(run.val_ds), "duration_s": round(time.time() - run.started, 1),
               "git_commit": git_commit()}
    with atomic_write(run.run_dir / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=1))
    print(f"{run.exp} fold {run.cfg.fold}: distillation stage, validation cosine {run.best:.4f} (epoch "
          f"{run.best_epoch}) -> {run.run_dir}/best.pt (init_from={run.exp})")
    return metrics