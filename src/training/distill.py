"""Distillation from a teacher cache (`python -m src.teacher`) into a `src.train` run: off by default.

`distill.weight` adds BCE towards the teacher's mapped scores (on the classes it knows); `distill.embedding_weight`
adds a cosine loss between a small projection of the student's pooled backbone features and the teacher's
embedding. The teacher targets ride along the labels (concatenated to target and mask), so mixup and cutmix mix
them as they mix the labels. The projection head is trained beside the model but is not part of best.pt: the
run exports and predicts like any other.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import Dataset

from src.data.teacher_cache import cached_rows, load_cache, teacher_command
from src.models.model import BirdModel
from src.training.step import Run, TrainForward, loss_fn


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


def teacher_targets(cfg: DictConfig, train_df) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The teacher's (scores, embeddings) of each training chunk (copy 0), in train_df's order, and which
    classes it knows."""
    cache = Path(cfg.data.cache_dir) / "teacher" / str(cfg.distill.teacher)
    command = teacher_command(cfg, str(cfg.distill.teacher))
    windows, emb, scores, settings = load_cache(cache, command)
    rows = cached_rows(windows, train_df, copies=False, command=command)["row"].to_numpy()
    known = np.array([bool(m) for m in settings["mapping"]])
    return np.asarray(scores[rows]), np.asarray(emb[rows]), known


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
    from torch.utils.data import DataLoader

    cfg = run.cfg
    scores, emb, known = teacher_targets(cfg, run.train_df)
    run.train_ds = DistillDataset(run.train_ds, scores, emb, known)
    old = run.loader
    run.loader = DataLoader(run.train_ds, batch_size=old.batch_size, sampler=run.sampler, drop_last=True,
                            num_workers=old.num_workers, pin_memory=old.pin_memory,
                            persistent_workers=old.num_workers > 0)
    step_fn = DistillForward(run.model, run.batch_aug, bool(cfg.train.channels_last), emb.shape[1]).to(run.device)
    run.optimizer.add_param_group({"params": list(step_fn.projection.parameters())})
    if run.dist.world > 1:
        step_fn = torch.nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[run.device.index] if run.device.type == "cuda" else None, find_unused_parameters=True)
    run.step_fn = step_fn
    run.loss = distill_loss(lambda *a: loss_fn(*a, cfg), len(run.classes), cfg)
    if run.dist.main:
        print(f"distilling from {cfg.distill.teacher}: scores x{cfg.distill.weight} ({int(known.sum())} classes), "
              f"embedding x{cfg.distill.embedding_weight} ({emb.shape[1]}-d)")
