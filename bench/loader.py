"""Benchmark of the training input pipeline against the model it feeds: is the loader the bottleneck?

    python bench/loader.py [--data demo] [--root DIR] [--cache-dir DIR] [--batches 12] [--steps 2]
                           [--fed-steps 2] [--repeats 2] [--gpu-rate 2400]

Pipeline: exactly what `src.train.train()` builds, from `configs/train.yaml` (+ `data=`, `root=`):
ChunkDataset over the prepared cache (its non-silent chunks), the default sampler (`sampler:`),
the default wave augment (`aug: default`, background noise from a NoiseBank of the cached
soundscapes) and a DataLoader of batch `train.batch_size`. The demo cache is written first if it is
missing (`src.synth`, `src.folds`, `src.prepare`); xc45: `--data birdclef2025 --root ../shared/xc45`
after `python -m src.prepare data=birdclef2025 data.root=../shared/xc45`.
Measured, each the best of `--repeats`:
- loader alone: chunks/s over `--batches` batches after a warm-up (workers started, queues filled),
  with and without wave augmentation, num_workers 0, 1 and 2;
- the model: efficientnet_b0 (random init), channels_last, the mel front end in the graph
  (1 x 128 x 313), `src.train.TrainForward` + BCE + grad clip + AdamW step, batch 32, on this CPU;
- the on-device batch augs (`BatchAugment`: wave mixup + SpecAugment) per batch;
- the model fed by the loader (train.num_workers, wave augs on; `--fed-steps`): both share this
  machine's cores.
Then the GPU requirement: at `--gpu-rate` samples/s (default: efficientnet_b0 on an H100, batch 128 bf16,
measured with bench/gpu_train.py), how many loader workers the measured per-worker rate needs.
Measured on the H100 machine (16 cores): with the default augs 12 workers feed `src.train` at
~2500-2750 samples/s (GPU busy 50-94%), once the noise augs moved to the GPU (aug.batch_noise).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

from src import config as cfglib
from src.data.augment import BatchAugment, NoiseBank, build_wave_augment
from src.data.dataset import ChunkDataset, rating_weights
from src.data.samplers import build_sampler
from src.models.model import build_model
from src.training.step import TrainForward, loss_fn


def load_config(data: str, root: str | None):
    """configs/train.yaml with `data=`, `data.root=` and random init (model.pretrained=false)."""
    overrides = [f"data={data}", "model.pretrained=false"] + ([f"data.root={root}"] if root else [])
    with initialize_config_dir(config_dir=cfglib.CONFIG_DIR, version_base=None):
        return compose(config_name="train", overrides=overrides)


def ensure_demo_cache(cache: Path) -> None:
    """Write the demo competition, its folds and its cache, as `make demo` does, if the cache is missing."""
    if (cache / "chunks.parquet").exists():
        return
    print(f"{cache / 'chunks.parquet'} missing: writing the demo data and cache first (not timed)")
    for cmd in (["src.synth"], ["src.folds", "data=demo", "experiment=demo"], ["src.prepare", "data=demo"]):
        subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, check=True)


def build_dataset(cfg, cache: Path, augment: bool) -> tuple[ChunkDataset, pl.DataFrame, list[str]]:
    """train()'s training ChunkDataset (all non-silent chunks; the fold split does not change the speed)."""
    chunks = pl.read_parquet(cache / "chunks.parquet").filter(~pl.col("silent"))
    classes = json.loads((cache / "manifest.json").read_text())["classes"]
    sr = int(cfg.audio.sample_rate)
    wave_aug = None
    if augment:
        noise = NoiseBank(sorted((cache / "soundscapes").glob("*.npy"))) if (cache / "soundscapes").is_dir() else None
        wave_aug = build_wave_augment(cfg.aug.wave, sr, noise if noise and len(noise) else None)
    jitter = (cfg.prepare.chunk_s - cfg.prepare.overlap_s) / 2 if cfg.sampler.random_offset else 0.0
    ds = ChunkDataset(chunks, cache, classes, sr, float(cfg.audio.window_s), cfg.labels.secondary, jitter, wave_aug,
                      rating_weights(cfg.labels))
    return ds, chunks, classes


def make_loader(cfg, ds: ChunkDataset, chunks: pl.DataFrame, workers: int, seed: int = 42) -> DataLoader:
    """train()'s DataLoader (CPU: no pinned memory)."""
    sampler = build_sampler(cfg.sampler, chunks["primary_label"].to_numpy(), seed)
    return DataLoader(ds, batch_size=int(cfg.train.batch_size), sampler=sampler, drop_last=True, num_workers=workers,
                      persistent_workers=False)


def loader_rate(loader: DataLoader, batches: int, warmup: int) -> float:
    """Chunks/s over `batches` batches, timed after `warmup` batches (worker start-up, pipeline filled)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    n = sum(len(next(it)[0]) for _ in range(batches))
    seconds = time.perf_counter() - t0
    del it  # shuts the workers down
    return n / seconds


class Trainer:
    """One training step of src.train on the CPU: TrainForward, loss_fn, grad clip, AdamW."""

    def __init__(self, cfg, n_classes: int):
        torch.manual_seed(0)
        self.cfg = cfg
        self.model = build_model(cfg.model, cfg.audio, n_classes).to(memory_format=torch.channels_last)
        self.aug = BatchAugment(cfg.aug, seed=int(cfg.seed))
        self.step_fn = TrainForward(self.model, self.aug, channels_last=True).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=float(cfg.train.lr),
                                           weight_decay=float(cfg.train.weight_decay))

    def step(self, wave, target, mask, weight) -> float:
        logits, target, mask = self.step_fn(wave, target, mask)
        loss = loss_fn(logits, target, mask, weight, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.cfg.train.grad_clip))
        self.optimizer.step()
        return float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="demo", help="configs/data name (demo, birdclef2025, ...)")
    parser.add_argument("--root", default=None, help="data.root override (e.g. ../shared/xc45)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="prepared cache (default: data.cache_dir)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per loader measurement")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps on a fixed batch")
    parser.add_argument("--fed-steps", type=int, default=2, help="timed training steps fed by the loader (0 = skip)")
    parser.add_argument("--repeats", type=int, default=2, help="loader timings are the best of this many runs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the model (0 = all cores)")
    parser.add_argument("--gpu-rate", type=float, default=2400.0,
                        help="samples/s an H100 trains efficientnet_b0 at (bf16, batch 128; measured with "
                             "bench/gpu_train.py)")
    args = parser.parse_args()
    cfg = load_config(args.data, args.root)
    cache = args.cache_dir or Path(cfg.data.cache_dir)
    if args.cache_dir is None and args.data == "demo":
        ensure_demo_cache(cache)
    if not (cache / "chunks.parquet").exists():
        sys.exit(f"{cache / 'chunks.parquet'} not found: run `python -m src.prepare data={args.data}"
                 f"{' data.root=' + args.root if args.root else ''}` first, or pass --cache-dir")
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    bs = int(cfg.train.batch_size)

    ds_aug, chunks, classes = build_dataset(cfg, cache, augment=True)
    ds_plain, _, _ = build_dataset(cfg, cache, augment=False)
    loader = make_loader(cfg, ds_aug, chunks, 0)
    need = args.batches + 4
    if len(loader) < need:  # one epoch must cover the measurement: no worker restart inside it
        cfg.sampler.per_class = math.ceil(cfg.sampler.per_class * need / max(len(loader), 1))
    n_soundscapes = len(list((cache / "soundscapes").glob("*.npy"))) if (cache / "soundscapes").is_dir() else 0
    print(f"cache {cache}: {chunks.height} non-silent chunks, {len(classes)} classes, {n_soundscapes} noise "
          f"soundscapes; sampler {cfg.sampler.kind} ({len(make_loader(cfg, ds_aug, chunks, 0))} batches/epoch), "
          f"batch {bs}; {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads "
          f"(DataLoader workers: 1 thread each); loader best of {args.repeats}")
    print(f"wave augment: {ds_aug.wave_augment!r}")

    rates = {}
    workers = int(cfg.train.num_workers)  # the default: train() uses this many
    counts = sorted({0, 1, 2, workers})
    for augment, ds in ((False, ds_plain), (True, ds_aug)):
        for n in counts:
            rates[augment, n] = max(loader_rate(make_loader(cfg, ds, chunks, n), args.batches, 2 * max(n, 1))
                                    for _ in range(args.repeats))

    print(f"\nloader alone, chunks/s ({args.batches} batches of {bs} after a warm-up)")
    head = f"{'wave augs':<12}" + "".join(f"{f'workers {n}':>11}" for n in counts) + f"{'ms/chunk (1 worker)':>22}"
    print(head + "\n" + "-" * len(head))
    for augment in (False, True):
        print(f"{'on' if augment else 'off':<12}" + "".join(f"{rates[augment, n]:>11.0f}" for n in counts)
              + f"{1000 / rates[augment, 1]:>22.2f}")

    # the model, fed a fixed batch
    trainer = Trainer(cfg, len(classes))
    batch = next(iter(make_loader(cfg, ds_aug, chunks, 0)))
    trainer.step(*batch)  # warm-up: allocations, oneDNN primitive creation
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        trainer.step(*batch)
        times.append(time.perf_counter() - t0)
    model_rate = bs / min(times)

    # the on-device batch augs alone: wave mixup, (front end, not counted), SpecAugment
    wave, target, mask, _ = batch
    with torch.no_grad():
        mel = trainer.model.frontend(wave)
    trainer.aug.train()
    aug_times = []
    for _ in range(5):
        t0 = time.perf_counter()
        with torch.no_grad():
            trainer.aug.wave(wave, target, mask)
            trainer.aug.spec(mel, target, mask)
        aug_times.append(time.perf_counter() - t0)
    aug_ms = min(aug_times) * 1000

    # the model fed by the real loader (wave augs on): loader and model share the cores
    fed_rate = math.nan
    if args.fed_steps:
        it = iter(make_loader(cfg, ds_aug, chunks, workers))
        first = next(it)  # worker start-up, not timed; the model is warm already
        t0 = time.perf_counter()
        trainer.step(*first)
        for _ in range(args.fed_steps - 1):
            trainer.step(*next(it))
        fed_rate = bs * args.fed_steps / (time.perf_counter() - t0)
        del it

    print(f"\nmodel: {cfg.model.backbone} (random init, channels_last, mel 1 x {cfg.audio.n_mels} x "
          f"{int(cfg.audio.sample_rate * cfg.audio.window_s) // int(cfg.audio.hop_length) + 1} in the graph), "
          f"batch {bs}, forward + backward + AdamW on this CPU with {torch.get_num_threads()} threads")
    head = f"{'':<46}{'samples/s':>10}{'s/batch':>10}"
    print(head + "\n" + "-" * len(head))
    print(f"{'train step, fixed batch':<46}{model_rate:>10.1f}{bs / model_rate:>10.2f}")
    if args.fed_steps:
        print(f"{f'train step fed by the loader ({workers} workers, augs)':<46}{fed_rate:>10.1f}"
              f"{bs / fed_rate:>10.2f}")
    print(f"{'batch augs alone (wave mixup + SpecAugment)':<46}{bs / (aug_ms / 1000):>10.0f}{aug_ms / 1000:>10.3f}"
          f"   ({aug_ms / (1000 * bs / model_rate) * 100:.1f}% of a step)")

    loader_default = rates[True, workers]
    ratio = loader_default / model_rate
    print(f"\nloader/model on this machine: {loader_default:.0f} chunks/s (augs on, num_workers="
          f"{workers}) / {model_rate:.1f} samples/s = {ratio:.1f}x "
          f"({'> 1: the loader is not the bottleneck' if ratio > 1 else 'NOT > 1: the loader is the bottleneck'})"
          + (f"; fed by the loader the step runs at {fed_rate / model_rate:.2f}x its fixed-batch rate (they share "
             "the cores here)" if args.fed_steps else ""))
    per_worker = rates[True, 1]
    workers_needed = math.ceil(args.gpu_rate / per_worker)
    print(f"GPU: an H100 trains efficientnet_b0 at ~{args.gpu_rate:.0f} samples/s (bf16, batch 128, measured with "
          f"bench/gpu_train.py; --gpu-rate) => the loader must deliver {args.gpu_rate:.0f} chunks/s; "
          f"measured {per_worker:.0f} chunks/s per worker (augs on, this CPU) => need ceil({args.gpu_rate:.0f}/"
          f"{per_worker:.0f}) = {workers_needed} workers (train.num_workers; plus cores for the main process)")


if __name__ == "__main__":
    main()
