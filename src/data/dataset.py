"""Training and validation datasets over the prepared cache: no audio decoding in the loop."""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset

from src.data.audio_cache import cache_path, load_cached
from src.data.competition import multi_hot
from src.infer.audio import from_int16


def rating_weights(labels: Mapping) -> tuple[float, float] | None:
    """ChunkDataset's `rating_weight` from the `labels` config: (stars of an unrated recording, the scale a
    rating is divided by) when `labels.rating_weight`, else None (every sample weighs 1)."""
    if not labels.get("rating_weight"):
        return None
    return float(labels.rating_unrated), float(labels.rating_scale)


class ChunkDataset(Dataset):
    """5 s windows of cached recordings with multi-hot targets.

    Indexed by `(row, seed)` pairs from the samplers (train: random crop around the chunk and
    augmentation, both drawn from the seed) or by plain row numbers (validation: the chunk as cut).
    Returns (wave (samples,), target (C,), loss mask (C,), sample weight ()).
    """

    cache_kind = "audio"  # the cache folder of the recordings (src.prepare.cache_path)

    def __init__(self, chunks: pl.DataFrame, cache_dir: Path, classes: list[str], sample_rate: int, window_s: float,
                 secondary: float | None, jitter_s: float = 0.0, wave_augment: Callable | None = None,
                 rating_weight: tuple[float, float] | None = None):
        self._windows(chunks, cache_dir, sample_rate, window_s, jitter_s, wave_augment)
        y, mask = multi_hot(chunks["primary_label"].to_list(), chunks["secondary_labels"].to_list(), classes, secondary)
        self.targets, self.masks = torch.from_numpy(y), torch.from_numpy(mask)
        rating = chunks["rating"].to_numpy().astype(np.float32)
        if rating_weight is None:
            self.weights = torch.from_numpy(np.ones_like(rating))
        else:  # unrated (0) recordings count as `unrated` stars
            unrated, scale = rating_weight
            self.weights = torch.from_numpy((np.where(rating > 0, rating, unrated) / scale).astype(np.float32))

    def _windows(self, table: pl.DataFrame, cache_dir: Path, sample_rate: int, window_s: float, jitter_s: float,
                 wave_augment: Callable | None) -> None:
        """Where each row's window starts in its cached recording, and how it is cut (shared by the subclasses)."""
        self.chunks = table
        self.cache_dir = Path(cache_dir)
        self.window = round(window_s * sample_rate)
        self.jitter = round(jitter_s * sample_rate)
        self.wave_augment = wave_augment
        self.filenames = table["filename"].to_list()
        self.starts = (table["start_s"].to_numpy() * sample_rate).round().astype(np.int64)
        self._audio: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.filenames)

    def _recording(self, filename: str) -> np.ndarray:
        if filename not in self._audio:  # memory maps are cheap; the OS page cache does the rest
            self._audio[filename] = load_cached(cache_path(self.cache_dir, filename, self.cache_kind))
        return self._audio[filename]

    def crop(self, row: int, rng: np.random.Generator | None) -> np.ndarray:
        """The row's window as float32, randomly shifted by up to +-jitter when `rng` is given, zero-padded."""
        y = self._recording(self.filenames[row])
        start = int(self.starts[row])
        if rng is not None and self.jitter:
            start = int(np.clip(start + rng.integers(-self.jitter, self.jitter + 1), 0, max(len(y) - self.window, 0)))
        out = np.zeros(self.window, np.float32)
        piece = from_int16(y[start:start + self.window])
        out[:len(piece)] = piece
        return out

    def __getitem__(self, item: int | tuple[int, int]):
        row, seed = item if isinstance(item, tuple) else (item, None)
        rng = np.random.default_rng(seed) if seed is not None else None
        wave = self.crop(row, rng)
        if self.wave_augment is not None and seed is not None:
            # audiomentations draws from the global RNGs: pin them to the item's seed
            random.seed(seed)
            np.random.seed(seed)
            wave = self.wave_augment(wave)
        return torch.from_numpy(np.ascontiguousarray(wave, np.float32)), self.targets[row], self.masks[row], \
            self.weights[row]


class PseudoWindowDataset(ChunkDataset):
    """Pseudo-labelled windows of the cached unlabelled soundscapes (`src.pseudo` files) with soft targets.

    Indexed like ChunkDataset; returns (wave, soft target (C,), loss mask of ones (C,), `weight`).
    """

    cache_kind = "soundscapes"

    def __init__(self, table: pl.DataFrame, cache_dir: Path, classes: list[str], sample_rate: int, window_s: float,
                 weight: float = 1.0, jitter_s: float = 0.0, wave_augment: Callable | None = None):
        self._windows(table, cache_dir, sample_rate, window_s, jitter_s, wave_augment)
        self.targets = torch.from_numpy(table.select(classes).to_numpy().astype(np.float32))
        self.masks = torch.ones_like(self.targets)
        self.weights = torch.full((table.height,), float(weight))


class PseudoBatches:
    """Labelled batches joined, step by step, by batches of pseudo-labelled windows.

    `mode="batch"`: the pseudo windows are appended to the batch (the clip loader is built with the smaller
    batch size). `mode="mixup"`: each clip is mixed, with probability `p`, with one pseudo window: wave
    lam * clip + (1 - lam) * window, lam ~ Beta(alpha, alpha), labels combined by `label` (max or weighted);
    the clip keeps its loss mask and weight. Iterates like the clip loader: (wave, target, mask, weight).
    """

    def __init__(self, clips, pseudo, mode: str, p: float = 1.0, alpha: float = 0.5, label: str = "max",
                 ):
        if mode not in ("batch", "mixup"):
            raise ValueError(f"pseudo.mode={mode!r}: use batch or mixup")
        if label not in ("max", "weighted"):
            raise ValueError(f"pseudo.mixup.label={label!r}: use max or weighted")
        self.clips, self.pseudo, self.mode = clips, pseudo, mode
        self.p, self.alpha, self.label = float(p), float(alpha), label

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self):
        # the windows' epoch follows the clips' (so a resumed run repeats it); mixing draws come from torch's
        # global RNG, which training reseeds every epoch
        self.pseudo.sampler.set_epoch(getattr(self.clips.sampler, "epoch", 0))
        windows = iter(self.pseudo)
        for clip in self.clips:
            extra = next(windows, None)
            if extra is None:  # the pseudo sampler's epoch ran out: start it again
                windows = iter(self.pseudo)
                extra = next(windows)
            yield self._join(clip, extra)

    def _join(self, clip, extra):
        if self.mode == "batch":
            return tuple(torch.cat([a, b]) for a, b in zip(clip, extra, strict=True))
        wave, target, mask, weight = clip
        n = min(len(wave), len(extra[0]))
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((n,)) if self.alpha > 0 else torch.ones(n)
        lam = torch.where(torch.rand(n) < self.p, lam, torch.ones(n))
        wave, target = wave.clone(), target.clone()
        wave[:n] = lam[:, None] * wave[:n] + (1 - lam[:, None]) * extra[0][:n]
        mixed = lam < 1
        other = extra[1][:n]
        combined = torch.maximum(target[:n], other) if self.label == "max" else \
            lam[:, None] * target[:n] + (1 - lam[:, None]) * other
        target[:n] = torch.where(mixed[:, None], combined, target[:n])
        return wave, target, mask, weight
