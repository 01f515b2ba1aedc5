"""What a training batch of `python -m src.train` is drawn from: the labelled chunks of the fold's training
recordings (wave augs, background noise), joined by pseudo-labelled soundscape windows (`pseudo.*`) and by the
expert-labelled soundscape windows of the other folds (`labelled.*`, BirdCLEF+ 2026), each appended to the batch
or mixed onto the clips. The one place that decides it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler

from src.data.augment import NoiseBank, build_wave_augment
from src.data.dataset import (
    ChunkDataset,
    Extra,
    JoinedBatches,
    WindowDataset,
    rating_weights,
)
from src.data.pseudo_labels import load_pseudo_windows
from src.data.samplers import GroupSampler, MassSampler, build_sampler
from src.data.soundscape_labels import label_matrix
from src.data.splits import held_out_labelled, training_labelled
from src.training.step import Run


def build_train_data(run: Run) -> tuple[Dataset, Sampler, DataLoader]:
    """The training dataset (labelled chunks, wave augs, background noise), its sampler, and the loader of the
    training batches (the clips joined by the extra sources: `extra_sources`)."""
    cfg, d = run.cfg, run.dist
    sr, window = int(cfg.audio.sample_rate), float(cfg.audio.window_s)
    cache = Path(cfg.data.cache_dir)
    held_out = set(held_out_labelled(cfg)["filename"])  # this fold's labelled CV: not even as background noise
    held_stems = {Path(f).stem for f in held_out}
    beds = [p for p in sorted((cache / "soundscapes").glob("*.npy")) if p.stem not in held_stems]
    noise = NoiseBank(beds) if beds else None
    wave_aug = build_wave_augment(cfg.aug.wave, sr, noise if noise and len(noise) else None)
    jitter = (cfg.prepare.chunk_s - cfg.prepare.overlap_s) / 2 if cfg.sampler.random_offset else 0.0
    dataset = ChunkDataset(run.train_df, cache, run.classes, sr, window, cfg.labels.secondary, jitter, wave_aug,
                           rating_weights(cfg.labels))
    sampler = build_sampler(cfg.sampler, run.train_df["primary_label"].to_numpy(), cfg.seed, d.rank, d.world)
    loader = DataLoader(dataset, batch_size=int(cfg.train.batch_size) - sum(extra_batch_sizes(cfg).values()),
                        sampler=sampler, drop_last=True, num_workers=int(cfg.train.num_workers),
                        pin_memory=run.device.type == "cuda", persistent_workers=int(cfg.train.num_workers) > 0)
    extras = extra_sources(run, len(loader), wave_aug)
    return dataset, sampler, JoinedBatches(loader, extras) if extras else loader


def extra_batch_sizes(cfg: DictConfig) -> dict[str, int]:
    """Windows per batch of each source in batch mode (`pseudo.ratio`, `labelled.ratio` of train.batch_size); a
    ValueError when they leave no clip or round to no window."""
    sizes = {}
    for name, on in (("pseudo", bool(cfg.pseudo.path)), ("labelled", str(cfg.labelled.mode) != "none")):
        if on and cfg[name].mode == "batch":
            sizes[name] = round(float(cfg[name].ratio) * int(cfg.train.batch_size))
            if sizes[name] <= 0:
                raise ValueError(f"{name}.ratio={cfg[name].ratio} rounds to no window in a batch of "
                                 f"{cfg.train.batch_size}: raise it, or use {name}.mode=mixup")
    if sum(sizes.values()) >= int(cfg.train.batch_size):
        raise ValueError(f"{' + '.join(f'{k}.ratio' for k in sizes)} leave no clip in a batch of "
                         f"{cfg.train.batch_size}: their sum must be below 1")
    return sizes


def extra_sources(run: Run, steps: int, wave_aug) -> list[Extra]:
    """The sources joined to the clips: pseudo-labelled windows (`pseudo.path`) and the training folds' labelled
    soundscape windows (`labelled.mode`), each with its loader, sampler and mixing settings; never validated on."""
    cfg = run.cfg
    sizes, extras = extra_batch_sizes(cfg), []
    if cfg.pseudo.path:
        table = load_pseudo_windows(cfg, run.classes)
        ds = WindowDataset(table, table.select(run.classes).to_numpy(), Path(cfg.data.cache_dir),
                           int(cfg.audio.sample_rate), float(cfg.audio.window_s), float(cfg.pseudo.weight),
                           wave_augment=wave_aug)
        k = sizes.get("pseudo") or int(cfg.train.batch_size)
        mass = table.select(run.classes).to_numpy().sum(axis=1)
        sampler = MassSampler(mass, float(cfg.pseudo.sampler.power), float(cfg.pseudo.sampler.floor),
                              steps * k * run.dist.world, int(cfg.seed) + int(cfg.pseudo.sampler.seed_offset),
                              run.dist.rank, run.dist.world)
        extras.append(_extra(run, ds, sampler, k, "pseudo"))
    if str(cfg.labelled.mode) != "none":
        table = training_labelled(cfg)
        ds = WindowDataset(table, label_matrix(table["labels"].to_list(), run.classes), Path(cfg.data.cache_dir),
                           int(cfg.audio.sample_rate), float(cfg.audio.window_s), float(cfg.labelled.weight),
                           wave_augment=wave_aug)
        k = sizes.get("labelled") or int(cfg.train.batch_size)
        sampler = GroupSampler(class_groups(table, run.classes, bool(cfg.labelled.negatives)),
                               steps * k * run.dist.world, int(cfg.seed) + int(cfg.labelled.seed_offset),
                               run.dist.rank, run.dist.world)
        extras.append(_extra(run, ds, sampler, k, "labelled"))
    return extras


def _extra(run: Run, dataset: Dataset, sampler: Sampler, k: int, name: str) -> Extra:
    cfg = run.cfg
    loader = DataLoader(dataset, batch_size=k, sampler=sampler, drop_last=True,
                        num_workers=int(cfg.train.num_workers), pin_memory=run.device.type == "cuda")
    mix = cfg[name].mixup
    return Extra(loader, str(cfg[name].mode), float(mix.p), float(mix.alpha), str(mix.label),
                 None if mix.get("cap") is None else float(mix.cap), name)


def class_groups(table: pl.DataFrame, classes: list[str], negatives: bool) -> list[np.ndarray]:
    """Row groups of a labelled-window table for class-balanced sampling: the rows holding each class (a class
    without any clip included), and, with `negatives`, the rows holding none."""
    labels = table["labels"].to_list()
    groups = [np.array([i for i, names in enumerate(labels) if c in names]) for c in classes]
    if negatives:
        groups.append(np.array([i for i, names in enumerate(labels) if not names]))
    groups = [g for g in groups if len(g)]
    if not groups:
        raise ValueError("labelled.mode: no labelled soundscape window to train on in this fold (the labels file "
                         "lists none, or every one validates this fold): labelled.mode=none")
    return groups


