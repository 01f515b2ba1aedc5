"""Training and validation datasets over the prepared cache: no audio decoding in the loop."""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
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


class WindowDataset(ChunkDataset):
    """Windows of the cached train soundscapes with given targets: pseudo-labelled windows (`src.pseudo` files,
    soft targets) or expert-labelled ones (BirdCLEF+ 2026, prepare's `labelled.parquet`, 0/1 targets). Indexed
    like ChunkDataset; returns (wave, target (C,), loss mask of ones (C,), `weight`)."""

    cache_kind = "soundscapes"

    def __init__(self, table: pl.DataFrame, targets: np.ndarray, cache_dir: Path, sample_rate: int, window_s: float,
                 weight: float = 1.0, jitter_s: float = 0.0, wave_augment: Callable | None = None):
        self._windows(table, cache_dir, sample_rate, window_s, jitter_s, wave_augment)
        self.targets = torch.from_numpy(np.asarray(targets, np.float32))
        self.masks = torch.ones_like(self.targets)
        self.weights = torch.full((table.height,), float(weight))


@dataclass
class Extra:
    """A source of extra training windows joined to the clips (`JoinedBatches`): its loader of (wave, target,
    mask, weight) batches, and how: `batch` (appended to every batch) or `mixup` (mixed onto a clip with
    probability `p`, lam ~ Beta(alpha, alpha), labels combined by `label`: max or weighted). `cap`: the mixed-in
    window's labels scaled so they sum to at most this (the 2026 1st place: 0.5 for labelled soundscape windows,
    0.75 for pseudo-labels); None = as they are."""

    loader: Iterable
    mode: str
    p: float = 1.0
    alpha: float = 2.0
    label: str = "max"
    cap: float | None = None
    name: str = "extra"

    def __post_init__(self):
        if self.mode not in ("batch", "mixup"):
            raise ValueError(f"{self.name}.mode={self.mode!r}: use batch or mixup")
        if self.label not in ("max", "weighted"):
            raise ValueError(f"{self.name}.mixup.label={self.label!r}: use max or weighted")


class JoinedBatches:
    """Clip batches joined, step by step, by batches of each `Extra` source (pseudo-labelled windows, labelled
    soundscape windows). Batch sources are appended; mixup sources share one draw per clip, so a clip is mixed with
    at most one of them (never both a labelled and a pseudo-labelled window): source j with probability p_j (their
    sum at most 1). A mixed clip keeps its loss mask and weight. Iterates like the clip loader."""

    def __init__(self, clips, extras: list[Extra]):
        mixing = [e for e in extras if e.mode == "mixup"]
        if sum(e.p for e in mixing) > 1 + 1e-9:
            raise ValueError(f"mixup probabilities {[e.p for e in mixing]} of {[e.name for e in mixing]} sum above 1: "
                             "a clip is mixed with one window at most")
        self.clips, self.extras = clips, extras

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self):
        # the extra sources' epoch follows the clips' (so a resumed run repeats it); mixing draws come from torch's
        # global RNG, which training reseeds every epoch
        for extra in self.extras:
            extra.loader.sampler.set_epoch(getattr(self.clips.sampler, "epoch", 0))
        streams = [iter(e.loader) for e in self.extras]
        for clip in self.clips:
            batches = []
            for k, extra in enumerate(self.extras):
                batch = next(streams[k], None)
                if batch is None:  # that source's epoch ran out: start it again
                    streams[k] = iter(extra.loader)
                    batch = next(streams[k])
                batches.append(batch)
            yield self._join(clip, batches)

    def _join(self, clip, batches):
        wave, target, mask, weight = (t.clone() for t in clip)
        n = len(wave)
        draw = torch.rand(n)
        low = 0.0
        for extra, batch in zip(self.extras, batches, strict=True):
            if extra.mode != "mixup":
                continue
            m = min(n, len(batch[0]))
            chosen = (draw[:m] >= low) & (draw[:m] < low + extra.p)
            low += extra.p
            lam = torch.distributions.Beta(extra.alpha, extra.alpha).sample((m,)) if extra.alpha > 0 else torch.ones(m)
            lam = torch.where(chosen, lam, torch.ones(m))
            wave[:m] = lam[:, None] * wave[:m] + (1 - lam[:, None]) * batch[0][:m]
            other = capped(batch[1][:m], extra.cap)
            combined = torch.maximum(target[:m], other) if extra.label == "max" else \
                lam[:, None] * target[:m] + (1 - lam[:, None]) * other
            target[:m] = torch.where((lam < 1)[:, None], combined, target[:m])
        appended = [b for e, b in zip(self.extras, batches, strict=True) if e.mode == "batch"]
        return tuple(torch.cat([a, *[b[i] for b in appended]]) for i, a in enumerate((wave, target, mask, weight)))


def capped(labels: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Each row of labels scaled down so it sums to at most `cap` (None: unchanged)."""
    if cap is None:
        return labels
    total = labels.sum(dim=1, keepdim=True)
    return labels * torch.clamp(float(cap) / total.clamp(min=1e-12), max=1.0)
