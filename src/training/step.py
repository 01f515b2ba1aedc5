"""The pieces of a `python -m src.train` run that plug-ins share: the run state (`Run`), the training forward
(batch augs -> mel -> spectrogram augs -> logits) and the label loss. `src.train` builds and loops over a Run;
a plug-in such as distillation (`src.training.distill`) swaps in its own dataset, forward or loss through the
Run's fields, without importing the training command.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler

from src.data.augment import BatchAugment
from src.data.dataset import ChunkDataset
from src.models.model import BirdModel


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def loss_fn(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
            cfg: DictConfig) -> torch.Tensor:
    """BCE-with-logits or focal BCE with label smoothing, masked classes and per-sample weights."""
    if cfg.labels.smoothing:
        target = target * (1 - cfg.labels.smoothing) + 0.5 * cfg.labels.smoothing
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    if cfg.train.loss == "focal":
        p = torch.sigmoid(logits.float())
        p_t = p * target + (1 - p) * (1 - target)
        loss = loss * (1 - p_t) ** cfg.train.focal_gamma
    elif cfg.train.loss != "bce":
        raise ValueError(f"train.loss={cfg.train.loss!r}: use bce or focal")
    loss = (loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return (loss * weight).sum() / weight.sum().clamp(min=1e-6)


Evaluator = Callable[["Run", torch.nn.Module], dict[str, float]]


@dataclass
class Run:
    """One training run's pieces, filled in order by the steps of `train` and handed from step to step.

    `train_ds`/`sampler`/`loader` come from `build_train_data` (one place to mix in more training sources);
    `evaluators` each return named scores per epoch (logged as log.csv columns); `selection_score` picks the
    one that decides best.pt and early stopping.
    """

    cfg: DictConfig
    dist: Dist
    device: torch.device
    dtype: torch.dtype | None
    exp: str
    run_dir: Path
    classes: list[str]
    train_df: pl.DataFrame
    val_df: pl.DataFrame
    started: float
    train_ds: Dataset = field(init=False)
    sampler: Sampler = field(init=False)
    loader: DataLoader = field(init=False)
    steps_per_epoch: int = field(init=False)
    val_ds: ChunkDataset = field(init=False)
    y_val: np.ndarray = field(init=False)
    model: BirdModel = field(init=False)
    batch_aug: BatchAugment = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    step_fn: torch.nn.Module = field(init=False)
    ema: torch.nn.Module | None = field(init=False)
    scaler: torch.amp.GradScaler = field(init=False)
    evaluators: list[Evaluator] = field(default_factory=list)
    start_epoch: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    stale: int = 0
    history: list[dict] = field(default_factory=list)
    loss: Callable | None = None  # (logits, target, mask, weight) -> loss; None = loss_fn (src.training.distill sets one)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights evaluated and kept as best.pt: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model


class TrainForward(torch.nn.Module):
    """One training forward: batch augs -> mel -> spectrogram augs -> logits.

    A module of its own so DDP wraps the whole step and its gradient hooks see every parameter.
    """

    def __init__(self, model: BirdModel, aug: BatchAugment, channels_last: bool):
        super().__init__()
        self.model, self.aug, self.channels_last = model, aug, channels_last

    def augmented_mel(self, wave: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
        """(mel, target, mask) after the waveform and spectrogram batch augs."""
        wave, target, mask = self.aug.wave(wave, target, mask)
        mel = self.model.frontend(wave)
        mel, target, mask = self.aug.spec(mel, target, mask)
        if self.channels_last:
            mel = mel.contiguous(memory_format=torch.channels_last)
        return mel, target, mask

    def forward(self, wave: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
        mel, target, mask = self.augmented_mel(wave, target, mask)
        return self.model.forward_mel(mel), target, mask
