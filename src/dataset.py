"""Training and validation datasets over the prepared cache: no audio decoding in the loop."""
from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset

from src.audio import from_int16
from src.competition import multi_hot
from src.prepare import cache_path, load_cached


class ChunkDataset(Dataset):
    """5 s windows of cached recordings with multi-hot targets.

    Indexed by `(row, seed)` pairs from the samplers (train: random crop around the chunk and
    augmentation, both drawn from the seed) or by plain row numbers (validation: the chunk as cut).
    Returns (wave (samples,), target (C,), loss mask (C,), sample weight ()).
    """

    def __init__(self, chunks: pl.DataFrame, cache_dir: Path, classes: list[str], sample_rate: int, window_s: float,
                 secondary: float | None, jitter_s: float = 0.0, wave_augment: Callable | None = None,
                 rating_weight: bool = False):
        self.chunks = chunks
        self.cache_dir = Path(cache_dir)
        self.window = round(window_s * sample_rate)
        self.jitter = round(jitter_s * sample_rate)
        self.wave_augment = wave_augment
        self.filenames = chunks["filename"].to_list()
        self.starts = (chunks["start_s"].to_numpy() * sample_rate).round().astype(np.int64)
        y, mask = multi_hot(chunks["primary_label"].to_list(), chunks["secondary_labels"].to_list(), classes, secondary)
        self.targets, self.masks = torch.from_numpy(y), torch.from_numpy(mask)
        rating = chunks["rating"].to_numpy().astype(np.float32)
        # unrated (0) recordings count as average ones
        self.weights = torch.from_numpy(np.where(rating > 0, rating, 3.0) / 5.0 if rating_weight
                                        else np.ones_like(rating))
        self._audio: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.filenames)

    def _recording(self, filename: str) -> np.ndarray:
        if filename not in self._audio:  # memory maps are cheap; the OS page cache does the rest
            self._audio[filename] = load_cached(cache_path(self.cache_dir, filename))
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
