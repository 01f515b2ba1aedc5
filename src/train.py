"""`python -m src.train fold=0 model=effnet_b0 data=...`: train one fold of one backbone.

Writes `runs/<exp>/fold<k>/`: best.pt (by the competition metric), last.pt (every epoch, for
`resume=true`), oof.parquet, metrics.json, log.csv, config.yaml (+ report/ PNGs).
Data-parallel with `torchrun --nproc_per_node=N -m src.train ...` (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import polars as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from src import config as cfglib
from src.augment import BatchAugment, NoiseBank, build_wave_augment
from src.dataset import ChunkDataset
from src.folds import folds_path, load_folds
from src.io import atomic_write
from src.metrics import macro_auc, padded_cmap, per_class_auc, primary_one_hot
from src.models import BirdModel, build_model
from src.samplers import build_sampler

log = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str) -> Dist:
    """Join the torchrun process group if launched by torchrun, else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(cfg: DictConfig, d: Dist) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", d.local_rank)


def load_chunk_index(cfg: DictConfig) -> tuple[pl.DataFrame, list[str]]:
    """The prepared chunk index and the class list, with a clear error if prepare has not run."""
    cache = Path(cfg.data.cache_dir)
    index, manifest = cache / "chunks.parquet", cache / "manifest.json"
    if not index.exists() or not manifest.exists():
        raise FileNotFoundError(f"{index} not found: run `python -m src.prepare data={cfg.data.name} "
                                f"data.root={cfg.data.root}` first")
    return pl.read_parquet(index), json.loads(manifest.read_text())["classes"]


def split_fold(chunks: pl.DataFrame, cfg: DictConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Train chunks (other folds) and validation chunks (this fold), both without silent chunks by default."""
    path = folds_path(cfg)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m src.folds data={cfg.data.name} "
                                f"data.root={cfg.data.root} folds.n={cfg.folds.n}` first")
    recordings = chunks.select("filename").unique()
    folds = load_folds(path, recordings)
    if not 0 <= cfg.fold < cfg.folds.n:
        raise ValueError(f"fold={cfg.fold} is outside 0..{cfg.folds.n - 1} (folds.n={cfg.folds.n})")
    chunks = chunks.join(folds, on="filename", how="inner")
    keep = pl.lit(True) if cfg.sampler.include_silent else ~pl.col("silent")
    train = chunks.filter((pl.col("fold") != cfg.fold) & keep)
    val = chunks.filter((pl.col("fold") == cfg.fold) & ~pl.col("silent"))
    return train, val


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup then cosine decay to `min_ratio`."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


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


def amp_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype | None:
    if cfg.train.amp == "off" or (cfg.train.amp == "auto" and device.type != "cuda"):
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_atomic(obj: dict, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: ChunkDataset, rows: list[int], batch_size: int, device: torch.device,
            dtype: torch.dtype | None, desc: str = "val") -> np.ndarray:
    """Probabilities (len(rows), C) for the given chunk rows, in order."""
    model.eval()
    out = []
    for i in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False, disable=len(rows) < 4 * batch_size):
        wave = torch.stack([dataset[r][0] for r in rows[i:i + batch_size]]).to(device)
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            out.append(torch.sigmoid(model(wave).float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, dataset.targets.shape[1]), np.float32)


def evaluate(model, dataset: ChunkDataset, cfg: DictConfig, device, dtype, d: Dist) -> tuple[np.ndarray, float]:
    """Validation probabilities for every val chunk (gathered across ranks) and the mean val loss."""
    rows = list(range(d.rank, len(dataset), d.world))
    probs = predict(model, dataset, rows, int(cfg.train.val_batch_size), device, dtype)
    if d.world > 1:
        parts: list = [None] * d.world
        dist.all_gather_object(parts, (rows, probs))
        full = np.zeros((len(dataset), dataset.targets.shape[1]), np.float32)
        for r, p in parts:
            full[r] = p
        probs = full
    p = torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6)
    val_loss = F.binary_cross_entropy(p, (dataset.targets == 1).float()).item()
    return probs, val_loss


def scores(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(macro ROC-AUC, padded cmAP); AUC is NaN when no class has both positives and negatives."""
    try:
        auc = macro_auc(y, p)
    except ValueError:
        auc = float("nan")
    return auc, padded_cmap(y, p)


def train(cfg: DictConfig) -> dict:
    """Train `cfg.fold` and write the run folder; returns metrics.json's content (rank 0)."""
    d = setup_distributed("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    device = pick_device(cfg, d)
    if device.type == "cpu" and cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    torch.manual_seed(cfg.seed)
    started = time.time()
    chunks, classes = load_chunk_index(cfg)
    train_df, val_df = split_fold(chunks, cfg)
    if train_df.height == 0 or val_df.height == 0:
        raise ValueError(f"fold {cfg.fold}: {train_df.height} train / {val_df.height} val chunks; "
                         "check folds.n and the chunk index")
    exp = cfglib.run_name(cfg)
    run_dir = Path(cfg.runs_dir) / exp / f"fold{cfg.fold}"
    sr, window = int(cfg.audio.sample_rate), float(cfg.audio.window_s)

    cache = Path(cfg.data.cache_dir)
    noise = NoiseBank(sorted((cache / "soundscapes").glob("*.npy"))) if (cache / "soundscapes").is_dir() else None
    wave_aug = build_wave_augment(cfg.aug.wave, sr, noise if noise and len(noise) else None)
    jitter = (cfg.prepare.chunk_s - cfg.prepare.overlap_s) / 2 if cfg.sampler.random_offset else 0.0
    train_ds = ChunkDataset(train_df, cache, classes, sr, window, cfg.labels.secondary, jitter, wave_aug,
                            cfg.labels.rating_weight)
    val_ds = ChunkDataset(val_df, cache, classes, sr, window, cfg.labels.secondary)
    sampler = build_sampler(cfg.sampler, train_df["primary_label"].to_numpy(), cfg.seed, d.rank, d.world)
    loader = DataLoader(train_ds, batch_size=int(cfg.train.batch_size), sampler=sampler, drop_last=True,
                        num_workers=int(cfg.train.num_workers), pin_memory=device.type == "cuda",
                        persistent_workers=int(cfg.train.num_workers) > 0)

    model: BirdModel = build_model(cfg.model, cfg.audio, len(classes)).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch_aug = BatchAugment(cfg.aug, seed=int(cfg.seed)).to(device)
    head_params = list(model.head.parameters())
    backbone_params = list(model.backbone.parameters())
    optimizer = torch.optim.AdamW([{"params": backbone_params}, {"params": head_params}], lr=float(cfg.train.lr),
                                  weight_decay=float(cfg.train.weight_decay))
    step_fn: torch.nn.Module = TrainForward(model, batch_aug, bool(cfg.train.channels_last))
    if d.world > 1:
        step_fn = torch.nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[device.index] if device.type == "cuda" else None,
            # some timm backbones keep head layers that forward_features skips (mobilenetv3's conv_head),
            # and a frozen backbone produces no gradients: let DDP look for unused parameters
            find_unused_parameters=True)
    ema = None
    if cfg.train.ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=float(cfg.train.ema))
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    steps_per_epoch = len(loader) if cfg.train.steps_per_epoch is None else min(len(loader),
                                                                                int(cfg.train.steps_per_epoch))
    if steps_per_epoch == 0:
        raise ValueError(f"{len(sampler)} training chunks per rank is less than one batch of "
                         f"{cfg.train.batch_size}: lower train.batch_size or raise sampler.per_class")
    total_steps = steps_per_epoch * int(cfg.train.epochs)
    warmup = int(steps_per_epoch * float(cfg.train.warmup_epochs))

    start_epoch, best, best_epoch, stale, history = 0, -math.inf, -1, 0, []
    if cfg.resume and (run_dir / "last.pt").exists():
        state = torch.load(run_dir / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        start_epoch, best, best_epoch, stale = state["epoch"] + 1, state["best"], state["best_epoch"], state["stale"]
        history = _read_log(run_dir / "log.csv")[:start_epoch]
        if d.main:
            print(f"resumed {run_dir} at epoch {start_epoch}")
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(cfglib.to_plain(cfg) | {"exp": exp, "classes": classes}),
                       run_dir / "config.yaml")
        print(f"{exp} fold {cfg.fold}: {cfg.model.backbone} on {device} x{d.world}, {train_df.height} train / "
              f"{val_df.height} val chunks, {steps_per_epoch} steps x {cfg.train.epochs} epochs")

    y_val = primary_one_hot(val_df["primary_label"].to_list(), classes)
    freeze = int(cfg.train.freeze_epochs)
    for epoch in range(start_epoch, int(cfg.train.epochs)):
        t0 = time.time()
        # every epoch starts from seeds that depend only on (seed, epoch): resume repeats it exactly
        torch.manual_seed(int(cfg.seed) * 1000 + epoch)
        batch_aug.set_epoch(epoch)
        sampler.set_epoch(epoch)
        frozen = epoch < freeze
        for p in backbone_params:
            p.requires_grad_(not frozen)
        phase_scale = float(cfg.train.finetune_lr_ratio) if freeze and not frozen else 1.0
        step_fn.train()
        losses = []
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch}", leave=False, disable=not d.main)
        for step, (wave, target, mask, weight) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = float(cfg.train.lr) * phase_scale * lr_factor(global_step, total_steps, warmup,
                                                                              float(cfg.train.min_lr_ratio))
            wave, target, mask, weight = (t.to(device, non_blocking=True) for t in (wave, target, mask, weight))
            with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
                logits, target, mask = step_fn(wave, target, mask)
                loss = loss_fn(logits, target, mask, weight, cfg)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.train.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.train.grad_clip))
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model, step=global_step)
            losses.append(loss.detach())
            if step % 10 == 0:  # .item() waits for the GPU: read the loss only now and then
                bar.set_postfix(loss=f"{loss.item():.4f}")
        eval_model = ema.module if ema is not None else model
        probs, val_loss = evaluate(eval_model, val_ds, cfg, device, dtype, d)
        auc, cmap = scores(y_val, probs)
        score = auc if cfg.data.metric == "auc" else cmap
        improved = score > best
        if improved:
            best, best_epoch, stale = score, epoch, 0
        else:
            stale += 1
        history.append({"epoch": epoch, "train_loss": torch.stack(losses).mean().item() if losses else float("nan"),
                        "val_loss": val_loss, "auc": auc, "cmap": cmap, "lr": optimizer.param_groups[0]["lr"],
                        "seconds": time.time() - t0})
        if d.main:
            if improved:
                save_atomic({"model": eval_model.state_dict(), "epoch": epoch, "score": float(score)},
                            run_dir / "best.pt")
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "epoch": epoch, "best": best, "best_epoch": best_epoch,
                     "stale": stale}
            if ema is not None:
                state["ema"] = ema.state_dict()
            save_atomic(state, run_dir / "last.pt")
            with atomic_write(run_dir / "log.csv") as tmp:
                pl.DataFrame(history).write_csv(tmp)
            print(f"epoch {epoch:3d}  loss {history[-1]['train_loss']:.4f}  val_loss {val_loss:.4f}  auc {auc:.4f}  "
                  f"cmap {cmap:.4f}  {'*' if improved else ' '} {time.time() - t0:.0f}s")
        if cfg.train.patience and stale >= int(cfg.train.patience):
            if d.main:
                print(f"early stop: no improvement for {stale} epochs")
            break

    result = {}
    if d.main:
        result = finish(cfg, run_dir, exp, classes, val_df, val_ds, y_val, device, dtype, best_epoch,
                        len(history), train_df.height, time.time() - started)
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


class TrainForward(torch.nn.Module):
    """One training forward: batch augs -> mel -> spectrogram augs -> logits.

    A module of its own so DDP wraps the whole step and its gradient hooks see every parameter.
    """

    def __init__(self, model: BirdModel, aug: BatchAugment, channels_last: bool):
        super().__init__()
        self.model, self.aug, self.channels_last = model, aug, channels_last

    def forward(self, wave: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
        wave, target, mask = self.aug.wave(wave, target, mask)
        mel = self.model.frontend(wave)
        mel, target, mask = self.aug.spec(mel, target, mask)
        if self.channels_last:
            mel = mel.contiguous(memory_format=torch.channels_last)
        return self.model.forward_mel(mel), target, mask


def finish(cfg, run_dir: Path, exp: str, classes: list[str], val_df: pl.DataFrame, val_ds: ChunkDataset,
           y_val: np.ndarray, device, dtype, best_epoch: int, epochs_run: int, n_train: int,
           duration: float) -> dict:
    """Reload best.pt, write oof.parquet, metrics.json and the report."""
    model = build_model(cfg.model, cfg.audio, len(classes)).to(device)
    model.load_state_dict(torch.load(run_dir / "best.pt", map_location=device, weights_only=True)["model"])
    probs = predict(model, val_ds, list(range(len(val_ds))), int(cfg.train.val_batch_size), device, dtype, "oof")
    oof = val_df.select("filename", "chunk", "start_s", "end_s", "primary_label", "secondary_labels").with_columns(
        [pl.Series(c, probs[:, i], dtype=pl.Float32) for i, c in enumerate(classes)])
    with atomic_write(run_dir / "oof.parquet") as tmp:
        oof.write_parquet(tmp)
    auc, cmap = scores(y_val, probs)
    metrics = {"exp": exp, "fold": int(cfg.fold), "model": str(cfg.model.name), "backbone": str(cfg.model.backbone),
               "metric": str(cfg.data.metric), "score": auc if cfg.data.metric == "auc" else cmap, "auc": auc,
               "cmap": cmap, "best_epoch": best_epoch, "epochs_run": epochs_run,
               "per_class_auc": per_class_auc(y_val, probs, classes), "duration_s": round(duration, 1),
               "git_commit": git_commit(), "config_hash": cfglib.config_hash(cfg), "n_train_chunks": n_train,
               "n_val_chunks": val_df.height}
    with atomic_write(run_dir / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=1))
    if cfg.train.report:
        try:
            from src.report import write_report
            write_report(run_dir)
        except Exception as exc:  # noqa: BLE001 -- a plotting problem must not lose a finished run
            log.warning("report for %s failed: %s", run_dir, exc)
    print(f"{exp} fold {cfg.fold}: best epoch {best_epoch}, macro ROC-AUC {auc:.4f}, padded cmAP {cmap:.4f} "
          f"({duration / 60:.1f} min) -> {run_dir}")
    return metrics


def _read_log(path: Path) -> list[dict]:
    return pl.read_csv(path).to_dicts() if path.exists() else []


@hydra.main(config_path="../configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
