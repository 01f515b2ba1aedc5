"""`python -m src.train fold=0 model=effnet_b0 data=...`: train one fold of one backbone.

Writes `runs/<exp>/fold<k>/`: best.pt (by the competition metric), last.pt (every epoch, for
`resume=true`), oof.parquet, metrics.json, log.csv, config.yaml (+ report/ PNGs).
`fold=all` (`seeds=[...]`): full-data fits, `runs/<exp>/foldall[_seed<s>]/` without validation (`train_all`).
Data-parallel with `torchrun --nproc_per_node=N -m src.train ...` (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import numpy as np
import polars as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from src import config as cfglib
from src.config import git_commit
from src.data.audio_cache import extra_classes, load_chunk_index
from src.data.competition import select_classes
from src.data.dataset import ChunkDataset
from src.data.pseudo_labels import pseudo_digest
from src.data.splits import is_full_fit, split_fold
from src.evaluation.metrics import per_class_auc, primary_one_hot, scores
from src.evaluation.metrics import select as select_metric
from src.evaluation.valsets import ValSet, evaluate_soundscapes, labelled_valset, load_fold
from src.infer.io import atomic_write, run_lock
from src.models.model import build_model
from src.training.batches import build_train_data
from src.training.distill import distill_stage, setup_distillation
from src.training.step import Dist, Evaluator, Run, build_model_and_optimizer, count_epoch_steps, loss_fn

log = logging.getLogger(__name__)


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


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup then cosine decay to `min_ratio`."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def amp_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype | None:
    if cfg.train.amp == "off" or (cfg.train.amp == "auto" and device.type != "cuda"):
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]


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


def epoch_seed(seed: int, epoch: int, stride: int) -> int:
    """The torch seed epoch `epoch` starts from: a function of (run seed, epoch) only, so a resumed run repeats
    the epoch exactly, and distinct for every epoch below `stride` (train.epoch_seed_stride) of every run seed."""
    return seed * stride + epoch


def train(cfg: DictConfig) -> dict:
    """Train `cfg.fold` and write the run folder; returns metrics.json's content (rank 0)."""
    run = start_run(cfg)
    if cfg.distill.get("stage"):
        distill_stage(run, build_model_and_optimizer)
    else:
        run.train_ds, run.sampler, run.loader = build_train_data(run)
        run.steps_per_epoch = count_epoch_steps(run)
        run.val_ds, run.y_val = build_val_data(run)
        build_model_and_optimizer(run)
        if float(cfg.distill.weight) or float(cfg.distill.embedding_weight):
            setup_distillation(run)
        run.evaluators = build_evaluators(run)
    with run_lock(run.run_dir, run.dist.main):  # every check that can fail has passed: the folder is written now
        resume(run)
        write_run_config(run)
        for epoch in range(run.start_epoch, int(cfg.train.epochs)):
            t0 = time.time()
            train_loss = train_one_epoch(run, epoch)
            if evaluate_and_checkpoint(run, epoch, train_loss, t0):
                break
        result = (run.finish or finish)(run) if run.dist.main else {}
    if run.dist.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def start_run(cfg: DictConfig) -> Run:
    """Distributed set-up, device, threads and seed; the run's name and folder; this fold's train/val chunks
    (and the noisy student's config, `pseudo.noisy_student`)."""
    cfg = noisy_student(cfg)
    d = setup_distributed("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    device = pick_device(cfg, d)
    if device.type == "cpu" and cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    torch.manual_seed(cfg.seed)
    started = time.time()
    chunks, classes = load_chunk_index(cfg)
    classes = select_classes(cfg.data.get("classes"), classes, cfg.data.root, cfg.data.layout)
    if cfg.data.get("extra_classes") == "keep":  # the extra folders' other classes as extra outputs (pretraining)
        classes += extra_classes(cfg.data.cache_dir)
    if cfg.data.get("classes_others", "negatives") == "drop":  # a specialist on its own classes' clips only
        chunks = chunks.filter(pl.col("primary_label").is_in(classes))
    train_df, val_df = split_fold(chunks, cfg)
    if train_df.height == 0 or (val_df.height == 0 and not is_full_fit(cfg.fold)):
        raise ValueError(f"fold {cfg.fold}: {train_df.height} train / {val_df.height} val chunks; "
                         "check folds.n and the chunk index")
    exp = cfglib.run_name(cfg)
    return Run(cfg, d, device, amp_dtype(cfg, device), exp, Path(cfg.runs_dir) / exp / f"fold{cfg.fold}", classes,
               train_df, val_df, started)


def noisy_student(cfg: DictConfig) -> DictConfig:
    """With `pseudo.noisy_student`, the config with `pseudo.noise` merged in (drop path, dropout, stronger augs)."""
    if not cfg.pseudo.noisy_student:
        return cfg
    merged = OmegaConf.merge(cfg, cfg.pseudo.noise)
    OmegaConf.set_struct(merged, True)
    return merged


def build_val_data(run: Run) -> tuple[ChunkDataset, np.ndarray]:
    """This fold's validation chunks (no augmentation) and their one-hot primary-label truth."""
    cfg = run.cfg
    dataset = ChunkDataset(run.val_df, Path(cfg.data.cache_dir), run.classes, int(cfg.audio.sample_rate),
                           float(cfg.audio.window_s), cfg.labels.secondary)
    return dataset, primary_one_hot(run.val_df["primary_label"].to_list(), run.classes)


def resume(run: Run) -> None:
    """With `resume=true` and a last.pt: weights, optimiser, scaler, EMA, counters and log history from it."""
    path = run.run_dir / "last.pt"
    if not (run.cfg.resume and path.exists()):
        return
    state = torch.load(path, map_location=run.device, weights_only=True)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and "ema" in state:
        run.ema.load_state_dict(state["ema"])
    run.start_epoch, run.best, run.best_epoch, run.stale = (state["epoch"] + 1, state["best"], state["best_epoch"],
                                                            state["stale"])
    run.history = _read_log(run.run_dir / "log.csv")[:run.start_epoch]
    run.started -= float(state.get("elapsed_s", 0.0))  # duration_s counts the interrupted pieces too
    if run.dist.main:
        print(f"resumed {run.run_dir} at epoch {run.start_epoch}")


def write_run_config(run: Run) -> None:
    """Rank 0: create the run folder, write config.yaml (+ exp and classes) and say what is about to run."""
    if not run.dist.main:
        return
    cfg = run.cfg
    run.run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfglib.to_plain(cfg) | {"exp": run.exp, "classes": run.classes}),
                   run.run_dir / "config.yaml")
    print(f"{run.exp} fold {cfg.fold}: {cfg.model.backbone} on {run.device} x{run.dist.world}, "
          f"{run.train_df.height} train / {run.val_df.height} val chunks, {run.steps_per_epoch} steps x "
          f"{cfg.train.epochs} epochs")


def begin_epoch(run: Run, epoch: int) -> float:
    """Seeds, sampler and augs for `epoch`, the backbone frozen or not; returns the epoch's lr scale."""
    cfg = run.cfg
    torch.manual_seed(epoch_seed(int(cfg.seed), epoch, int(cfg.train.epoch_seed_stride)))
    run.batch_aug.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    freeze = int(cfg.train.freeze_epochs)
    frozen = epoch < freeze
    for p in run.model.backbone.parameters():
        p.requires_grad_(not frozen)
    run.step_fn.train()
    return float(cfg.train.finetune_lr_ratio) if freeze and not frozen else 1.0


def train_one_epoch(run: Run, epoch: int) -> float:
    """One pass over the loader (at most steps_per_epoch batches); returns the mean training loss."""
    cfg = run.cfg
    phase_scale = begin_epoch(run, epoch)
    total = run.steps_per_epoch * int(cfg.train.epochs)
    warmup = int(run.steps_per_epoch * float(cfg.train.warmup_epochs))
    losses = []
    bar = tqdm(run.loader, total=run.steps_per_epoch, desc=f"epoch {epoch}", leave=False, disable=not run.dist.main)
    for step, batch in enumerate(bar):
        if step >= run.steps_per_epoch:
            break
        global_step = epoch * run.steps_per_epoch + step
        lr = float(cfg.train.lr) * phase_scale * lr_factor(global_step, total, warmup, float(cfg.train.min_lr_ratio))
        loss = train_step(run, batch, lr, global_step)
        losses.append(loss.detach())
        if step % 10 == 0:  # .item() waits for the GPU: read the loss only now and then
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return torch.stack(losses).mean().item() if losses else float("nan")


def train_step(run: Run, batch: tuple[torch.Tensor, ...], lr: float, global_step: int) -> torch.Tensor:
    """One optimiser step on one (wave, target, mask, weight) batch at learning rate `lr`; returns the loss."""
    cfg, device = run.cfg, run.device
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    wave, target, mask, weight = (t.to(device, non_blocking=True) for t in batch)
    with torch.autocast(device.type, dtype=run.dtype) if run.dtype else nullcontext():
        logits, target, mask = run.step_fn(wave, target, mask)
        loss = run.loss(logits, target, mask, weight) if run.loss else loss_fn(logits, target, mask, weight, cfg)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if cfg.train.grad_clip:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), float(cfg.train.grad_clip))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.ema is not None:
        run.ema.update(run.model, step=global_step)
    return loss


def build_evaluators(run: Run) -> list[Evaluator]:
    """What is scored after every epoch; each evaluator adds its named scores (log.csv columns): the
    validation chunks, and the fold's validation soundscapes (src.valsets) unless train.soundscape_cv=false."""
    evaluators: list[Evaluator] = [evaluate_chunks]
    run.valsets = scored_sets(run)  # built once, every rank together (load_valset's barrier); finish reuses them
    for valset in run.valsets:
        def evaluate_valset(r: Run, model: torch.nn.Module, vs: ValSet = valset) -> dict[str, float]:
            return evaluate_soundscapes(probability_fn(model, r.device, r.dtype), r.cfg, r.classes,
                                        batch_size=int(r.cfg.train.val_batch_size), valset=vs)
        evaluators.append(evaluate_valset)
    return evaluators


def scored_sets(run: Run) -> list[ValSet]:
    """The fold's soundscape sets scored every epoch and at the end: its validation soundscapes
    (`train.soundscape_cv`) and its held-out labelled soundscapes (2026, `labelled.cv`), those it has."""
    sets = [load_valset(run) if run.cfg.train.soundscape_cv else None]
    if run.cfg.labelled.cv and not is_full_fit(run.cfg.fold):
        sets.append(labelled_valset(run.cfg, int(run.cfg.fold), run.classes))
    return [s for s in sets if s is not None]


def load_valset(run: Run) -> ValSet | None:
    """This fold's validation soundscapes, built by rank 0 while the other ranks wait; None if it has none."""
    valset = load_fold(run.cfg, int(run.cfg.fold), run.classes) if run.dist.main else None
    if run.dist.world > 1:
        dist.barrier()
        if not run.dist.main:
            valset = load_fold(run.cfg, int(run.cfg.fold), run.classes)
    return valset


def probability_fn(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None):
    """(B, samples) float32 numpy -> (B, C) probabilities with `model` in eval mode on `device`."""
    model.eval()

    @torch.no_grad()
    def predict_batch(batch: np.ndarray) -> np.ndarray:
        wave = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(device)
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            return torch.sigmoid(model(wave).float()).cpu().numpy()

    return predict_batch


def evaluate_chunks(run: Run, model: torch.nn.Module) -> dict[str, float]:
    """This fold's validation chunks: {'val_loss', 'auc', 'cmap'}."""
    probs, val_loss = evaluate(model, run.val_ds, run.cfg, run.device, run.dtype, run.dist)
    return {"val_loss": val_loss, **scores(run.y_val, probs)}


def selection_score(run: Run, values: dict[str, float]) -> float:
    """The score that picks best.pt and drives early stopping (`train.select`): the competition metric on the
    validation chunks (clip), on the validation soundscapes (soundscape) or on the held-out labelled soundscapes
    (labelled, 2026); clip where the fold has no such set."""
    if run.select_key:
        return values[run.select_key]
    metric, select = str(run.cfg.data.metric), str(run.cfg.train.select)
    if select not in ("clip", "soundscape", "labelled"):
        raise ValueError(f"train.select={select!r}: use clip, soundscape or labelled")
    sound = values.get(f"{select}_{metric}")
    if select != "clip" and sound is not None and not math.isnan(sound):
        return sound
    return select_metric(metric, values)


def evaluate_and_checkpoint(run: Run, epoch: int, train_loss: float, t0: float) -> bool:
    """Score the epoch, update best/stale and the log, write best.pt/last.pt/log.csv; True to stop early."""
    cfg = run.cfg
    values: dict[str, float] = {}
    for evaluator in run.evaluators:
        values |= evaluator(run, run.eval_model)
    score = selection_score(run, values)
    improved = score > run.best
    if improved:
        run.best, run.best_epoch, run.stale = score, epoch, 0
    else:
        run.stale += 1
    run.history.append({"epoch": epoch, "train_loss": train_loss, **values,
                        "lr": run.optimizer.param_groups[0]["lr"], "seconds": time.time() - t0})
    if run.dist.main:
        save_checkpoints(run, epoch, score, improved)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items())
        print(f"epoch {epoch:3d}  loss {train_loss:.4f}  {shown}  {'*' if improved else ' '} {time.time() - t0:.0f}s")
    stop = bool(cfg.train.patience) and run.stale >= int(cfg.train.patience)
    if stop and run.dist.main:
        print(f"early stop: no improvement for {run.stale} epochs")
    return stop


def save_checkpoints(run: Run, epoch: int, score: float, improved: bool) -> None:
    """best.pt when the epoch improved, last.pt (everything `resume` needs) and log.csv."""
    if improved:
        save_atomic({"model": run.eval_model.state_dict(), "epoch": epoch, "score": float(score)},
                    run.run_dir / "best.pt")
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scaler": run.scaler.state_dict(), "epoch": epoch, "best": run.best, "best_epoch": run.best_epoch,
             "stale": run.stale, "elapsed_s": time.time() - run.started}
    if run.ema is not None:
        state["ema"] = run.ema.state_dict()
    save_atomic(state, run.run_dir / "last.pt")
    with atomic_write(run.run_dir / "log.csv") as tmp:
        pl.DataFrame(run.history).write_csv(tmp)


def finish_soundscapes(run: Run, model: torch.nn.Module) -> dict[str, float]:
    """best.pt on the fold's scored soundscape sets (`run.valsets`, built with the evaluators): writes
    oof_soundscape.parquet and oof_labelled.parquet, returns the metrics.json keys (soundscape_auc, labelled_auc,
    ...). Rank 0 only: nothing here may wait on the other ranks."""
    values: dict[str, float] = {}
    for vs in run.valsets:
        values |= evaluate_soundscapes(probability_fn(model, run.device, run.dtype), run.cfg, run.classes,
                                       run.run_dir, int(run.cfg.train.val_batch_size), valset=vs)
    return values


def finish(run: Run) -> dict:
    """Reload best.pt, write oof.parquet (+ oof_soundscape.parquet), metrics.json and the report."""
    cfg, classes, val_df = run.cfg, run.classes, run.val_df
    duration = time.time() - run.started
    model = build_model(cfg.model, cfg.audio, len(classes), init_weights=False).to(run.device)
    model.load_state_dict(torch.load(run.run_dir / "best.pt", map_location=run.device, weights_only=True)["model"])
    probs = predict(model, run.val_ds, list(range(len(run.val_ds))), int(cfg.train.val_batch_size), run.device,
                    run.dtype, "oof")
    oof = val_df.select("filename", "chunk", "start_s", "end_s", "primary_label", "secondary_labels").with_columns(
        [pl.Series(c, probs[:, i], dtype=pl.Float32) for i, c in enumerate(classes)])
    with atomic_write(run.run_dir / "oof.parquet") as tmp:
        oof.write_parquet(tmp)
    values = scores(run.y_val, probs)
    auc, cmap = values["auc"], values["cmap"]
    metrics = {"exp": run.exp, "fold": int(cfg.fold), "model": str(cfg.model.name),
               "backbone": str(cfg.model.backbone), "metric": str(cfg.data.metric),
               "score": select_metric(str(cfg.data.metric), values), "auc": auc, "cmap": cmap,
               "best_epoch": run.best_epoch, "epochs_run": len(run.history),
               "per_class_auc": per_class_auc(run.y_val, probs, classes), "duration_s": round(duration, 1),
               "git_commit": git_commit(), "config_hash": cfglib.config_hash(cfg),
               "n_train_chunks": run.train_df.height, "n_val_chunks": val_df.height,
               "select": str(cfg.train.select), **pseudo_digest(cfg), **finish_soundscapes(run, model)}
    with atomic_write(run.run_dir / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=1))
    if cfg.train.report:
        try:
            from src.report import write_report
            write_report(run.run_dir)
        except Exception as exc:  # noqa: BLE001 -- a plotting problem must not lose a finished run
            log.warning("report for %s failed: %s", run.run_dir, exc)
    print(f"{run.exp} fold {cfg.fold}: best epoch {run.best_epoch}, macro ROC-AUC {auc:.4f}, padded cmAP {cmap:.4f} "
          f"({duration / 60:.1f} min) -> {run.run_dir}")
    return metrics


def _read_log(path: Path) -> list[dict]:
    return pl.read_csv(path).to_dicts() if path.exists() else []


# --- fold=all: full-data fits -------------------------------------------------------------------------------


def train_all(cfg: DictConfig) -> list[dict]:
    """`fold=all`: one full-data fit per seed of `seeds` (default: the run's `seed`), all under the run name of
    the CV experiment; returns each fit's metrics.json content (rank 0)."""
    cfg = cfg.copy()
    cfg.exp = cfglib.run_name(cfg)  # seeds and full_fit are not part of the name: the fits sit beside the folds
    epochs, source = full_fit_epochs(cfg)
    results = []
    for seed in [int(s) for s in (cfg.seeds or [cfg.seed])]:
        seed_cfg = cfg.copy()
        seed_cfg.seed = seed
        results.append(train_full(seed_cfg, "foldall" if seed == int(cfg.seed) else f"foldall_seed{seed}",
                                  epochs, source))
    return results


def full_fit_epochs(cfg: DictConfig) -> tuple[int, str]:
    """Epochs of a full-data fit and where that number comes from: `full_fit.epochs`, else the median of
    (best epoch + 1) over the experiment's CV runs (runs/<exp>/fold<k>/metrics.json), rounded up."""
    if cfg.full_fit.epochs:
        return int(cfg.full_fit.epochs), "full_fit.epochs"
    exp_dir = Path(cfg.runs_dir) / str(cfg.exp)
    paths = sorted(p for p in exp_dir.glob("fold*/metrics.json") if p.parent.name[4:].isdigit())
    if not paths:
        raise FileNotFoundError(f"{exp_dir}: no CV run (fold<k>/metrics.json) to take the epoch count from: train "
                                f"the folds first (python -m src.train exp={cfg.exp} fold=0 ...) or pass "
                                "full_fit.epochs=N")
    best = [int(json.loads(p.read_text())["best_epoch"]) + 1 for p in paths]
    folds = ", ".join(p.parent.name for p in paths)
    return max(1, math.ceil(float(np.median(best)))), f"median best epoch + 1 of {folds}: {best}"


def train_full(cfg: DictConfig, folder: str, epochs: int, source: str) -> dict:
    """One full-data fit: every non-silent chunk, no validation, `epochs` epochs on the CV runs' learning-rate
    schedule (train.epochs long); best.pt is the last epoch's (EMA) weights. Writes runs/<exp>/<folder>/."""
    run = start_run(cfg)
    run.run_dir = run.run_dir.with_name(folder)
    run.train_ds, run.sampler, run.loader = build_train_data(run)
    run.steps_per_epoch = count_epoch_steps(run)
    build_model_and_optimizer(run)
    with run_lock(run.run_dir, run.dist.main):
        resume(run)
        write_run_config(run)
        if run.dist.main:
            print(f"full-data fit {run.run_dir}: {epochs} epochs ({source}) on the {cfg.train.epochs}-epoch schedule")
        for epoch in range(run.start_epoch, epochs):
            t0 = time.time()
            train_loss = train_one_epoch(run, epoch)
            run.best_epoch = epoch
            run.history.append({"epoch": epoch, "train_loss": train_loss, "lr": run.optimizer.param_groups[0]["lr"],
                                "seconds": time.time() - t0})
            if run.dist.main:
                save_checkpoints(run, epoch, float("nan"), improved=True)
                print(f"epoch {epoch:3d}  loss {train_loss:.4f}  {time.time() - t0:.0f}s (full-data fit, no "
                      "validation)")
        result = finish_full(run, epochs, source) if run.dist.main else {}
    if run.dist.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def finish_full(run: Run, epochs: int, source: str) -> dict:
    """metrics.json of a full-data fit: no score (nothing held out), the epochs and where they came from."""
    cfg = run.cfg
    duration = time.time() - run.started
    metrics = {"exp": run.exp, "fold": "all", "full_data": True, "seed": int(cfg.seed), "model": str(cfg.model.name),
               "backbone": str(cfg.model.backbone), "metric": str(cfg.data.metric), "epochs_run": len(run.history),
               "epochs": epochs, "epochs_from": source, "duration_s": round(duration, 1), "git_commit": git_commit(),
               "config_hash": cfglib.config_hash(cfg), "n_train_chunks": run.train_df.height}
    with atomic_write(run.run_dir / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=1))
    print(f"{run.exp} full-data fit (seed {cfg.seed}): {len(run.history)} epochs ({source}), "
          f"{run.train_df.height} chunks ({duration / 60:.1f} min) -> {run.run_dir}")
    return metrics


@hydra.main(config_path="../configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    if is_full_fit(cfg.fold):
        train_all(cfg)
    elif cfg.seeds:
        raise ValueError(f"seeds={list(cfg.seeds)} is for full-data fits (fold=all); a CV fold trains one seed (seed=...)")
    else:
        train(cfg)


if __name__ == "__main__":
    main()
