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

from src.config import load_run_config
from src.data.augment import BatchAugment
from src.data.dataset import ChunkDataset
from src.models.model import BirdModel, build_model


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
    """BCE-with-logits, focal BCE, or soft ROC-AUC (+ a BCE share, `train.soft_auc.bce_weight`), with label
    smoothing, masked classes and per-sample weights."""
    if cfg.train.loss not in ("bce", "focal", "soft_auc"):
        raise ValueError(f"train.loss={cfg.train.loss!r}: use bce, focal or soft_auc")
    if cfg.labels.smoothing:
        target = target * (1 - cfg.labels.smoothing) + 0.5 * cfg.labels.smoothing
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    if cfg.train.loss == "focal":
        p = torch.sigmoid(logits.float())
        p_t = p * target + (1 - p) * (1 - target)
        loss = loss * (1 - p_t) ** cfg.train.focal_gamma
    loss = (loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    bce = (loss * weight).sum() / weight.sum().clamp(min=1e-6)
    if cfg.train.loss != "soft_auc":
        return bce
    auc = soft_auc_loss(logits, target, mask, float(cfg.train.soft_auc.temperature))
    return auc + float(cfg.train.soft_auc.bce_weight) * bce


def soft_auc_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
                  ) -> torch.Tensor:
    """1 - a smooth ROC-AUC of the batch, averaged over the classes with both a positive and a negative row:
    each (positive, negative) pair of a class counts sigmoid((s_pos - s_neg) / temperature) (the 2026 2nd place's
    soft-AUC). Soft targets count as positive above 0.5; masked entries are left out. 0 when no class has a pair."""
    s = logits.float()
    pos = (target > 0.5) & (mask > 0)
    neg = (target <= 0.5) & (mask > 0)
    diff = (s[:, None, :] - s[None, :, :]) / temperature  # [i, j, c]: row i as the positive, row j the negative
    pairs = pos[:, None, :] & neg[None, :, :]
    count = pairs.sum(dim=(0, 1))
    used = count > 0
    if not used.any():
        return s.sum() * 0.0
    soft = (torch.sigmoid(diff) * pairs).sum(dim=(0, 1))[used] / count[used]
    return 1.0 - soft.mean()


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
    valsets: list = field(default_factory=list)  # the fold's scored soundscape sets (src.train.scored_sets)
    start_epoch: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    stale: int = 0
    history: list[dict] = field(default_factory=list)
    loss: Callable | None = None  # (logits, target, mask, weight) -> loss; None = loss_fn (src.training.distill sets one)
    select_key: str | None = None  # the evaluators' value that picks best.pt; None = train.select's
    finish: Callable[[Run], dict] | None = None  # writes metrics.json at the end; None = src.train's finish

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


def count_epoch_steps(run: Run) -> int:
    """Batches per epoch: the loader's, capped by train.steps_per_epoch; an error when not even one."""
    cfg, n = run.cfg, len(run.loader)
    steps = n if cfg.train.steps_per_epoch is None else min(n, int(cfg.train.steps_per_epoch))
    if steps == 0:
        raise ValueError(f"{len(run.sampler)} training chunks per rank is less than one batch of "
                         f"{cfg.train.batch_size}: lower train.batch_size or raise sampler.per_class")
    return steps


def build_model_and_optimizer(run: Run) -> None:
    """Model, batch augs, AdamW (backbone and head groups), the (DDP-wrapped) train step, EMA and grad scaler."""
    cfg, device = run.cfg, run.device
    model: BirdModel = build_model(cfg.model, cfg.audio, len(run.classes))
    if cfg.get("init_from"):
        init_from(model, cfg, run.classes)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run.model = model
    run.batch_aug = BatchAugment(cfg.aug, seed=int(cfg.seed)).to(device)
    run.optimizer = torch.optim.AdamW(
        [{"params": list(model.backbone.parameters())}, {"params": list(model.head.parameters())}],
        lr=float(cfg.train.lr), weight_decay=float(cfg.train.weight_decay))
    run.step_fn = TrainForward(model, run.batch_aug, bool(cfg.train.channels_last))
    if run.dist.world > 1:
        run.step_fn = torch.nn.parallel.DistributedDataParallel(
            run.step_fn, device_ids=[device.index] if device.type == "cuda" else None,
            # some timm backbones keep head layers that forward_features skips (mobilenetv3's conv_head),
            # and a frozen backbone produces no gradients: let DDP look for unused parameters
            find_unused_parameters=True)
    run.ema = None
    if cfg.train.ema:
        from timm.utils import ModelEmaV3
        run.ema = ModelEmaV3(model, decay=float(cfg.train.ema))
    run.scaler = torch.amp.GradScaler(enabled=run.dtype == torch.float16)


def init_run_dir(cfg: DictConfig) -> Path:
    """The run folder `init_from` names: `runs/<exp>/fold<k>` as given, or an exp name whose fold `cfg.fold` (a
    distillation stage's checkpoint for this very fold: it never saw this fold's validation audio)."""
    given = Path(str(cfg.init_from))
    folder = given if (given / "best.pt").exists() else Path(cfg.runs_dir) / str(cfg.init_from) / f"fold{cfg.fold}"
    if not (folder / "best.pt").exists():
        raise FileNotFoundError(f"init_from={cfg.init_from}: neither {given / 'best.pt'} nor {folder / 'best.pt'} "
                                "exists: train it first (e.g. `python -m src.train distill.stage=true exp=<name> "
                                "fold=<k>`) or pass runs/<exp>/fold<k>")
    return folder


def init_from(model: BirdModel, cfg: DictConfig, classes: list[str]) -> None:
    """Start `model` from another run's best.pt (`init_from`): its front end and backbone, and its head when it
    was trained on the same classes (a distillation stage, or a pretraining run with other or extra outputs,
    gives the backbone only). ValueError naming the checkpoint when it is another backbone."""
    folder = init_run_dir(cfg)
    saved = load_run_config(folder)
    if str(saved.model.backbone) != str(cfg.model.backbone):
        raise ValueError(f"init_from={folder}: a {saved.model.backbone} checkpoint, not {cfg.model.backbone}: pass "
                         f"model.backbone={saved.model.backbone} (or its model=...), or another init_from")
    state = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)["model"]
    same_classes = list(saved.get("classes") or []) == list(classes)
    kept = {k: v for k, v in state.items() if same_classes or not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if unexpected or [k for k in missing if not k.startswith("head.")]:
        raise ValueError(f"init_from={folder}/best.pt does not fit this model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}): the model config differs (model.*, audio.*): match {folder}/config.yaml")
    print(f"initialised from {folder}/best.pt: front end + backbone" + (" + head" if same_classes else
          f" (head not loaded: trained on {len(saved.get('classes') or [])} other classes)"))