"""Epoch samplers over the chunk index: class-balanced, count^-power weighted, plain shuffle.

Each yields `(chunk_row, item_seed)` pairs: the seed makes a chunk's random crop and augmentation
depend only on (seed, epoch, position), so results do not depend on worker count and a resumed
run repeats an epoch exactly. Under DDP each rank takes a disjoint, equal-length share.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class _EpochSampler(Sampler):
    def __init__(self, labels: np.ndarray, seed: int, rank: int = 0, world: int = 1):
        self.labels = np.asarray(labels)
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _epoch_rows(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        rows = self._draw(rng)
        usable = len(rows) - len(rows) % self.world  # equal shares, or DDP ranks wait on each other
        return rows[:usable][self.rank::self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rows = self._epoch_rows()
        seeds = np.random.default_rng([self.seed, self.epoch, 1]).integers(0, 2**31 - 1, size=len(rows) * self.world)
        return iter(zip(rows.tolist(), seeds[self.rank::self.world][: len(rows)].tolist()))

    def __len__(self) -> int:
        return len(self._epoch_rows())


class BalancedSampler(_EpochSampler):
    """`per_class` chunks of every class per epoch, with replacement where a class has fewer."""

    def __init__(self, labels: np.ndarray, per_class: int, seed: int, rank: int = 0, world: int = 1):
        super().__init__(labels, seed, rank, world)
        self.per_class = int(per_class)
        self.groups = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        picks = [rng.choice(g, self.per_class, replace=len(g) < self.per_class) for g in self.groups]
        return rng.permutation(np.concatenate(picks))


class WeightedSampler(_EpochSampler):
    """Chunks drawn with p ~ count(class)^-power (0 = natural, 0.5 = sqrt, 1 = balanced)."""

    def __init__(self, labels: np.ndarray, power: float, epoch_size: int | None, seed: int, rank: int = 0,
                 world: int = 1):
        super().__init__(labels, seed, rank, world)
        _, inverse, counts = np.unique(self.labels, return_inverse=True, return_counts=True)
        w = counts[inverse].astype(np.float64) ** -float(power)
        self.p = w / w.sum()
        self.epoch_size = int(epoch_size or len(self.labels))

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(self.labels), self.epoch_size, replace=True, p=self.p)


class ShuffleSampler(_EpochSampler):
    """Every chunk once per epoch, shuffled."""

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(len(self.labels))


def build_sampler(cfg, labels: np.ndarray, seed: int, rank: int = 0, world: int = 1) -> _EpochSampler:
    """The sampler named by `cfg.kind` (the `sampler:` config section) over chunk labels."""
    if cfg.kind == "balanced":
        return BalancedSampler(labels, cfg.per_class, seed, rank, world)
    if cfg.kind == "weighted":
        return WeightedSampler(labels, cfg.power, cfg.epoch_size, seed, rank, world)
    if cfg.kind == "shuffle":
        return ShuffleSampler(labels, seed, rank, world)
    raise ValueError(f"sampler.kind={cfg.kind!r}: use balanced, weighted or shuffle")


class MassSampler(_EpochSampler):
    """`epoch_size` pseudo-labelled windows drawn with replacement, p ~ (label mass + floor)^power
    (power 0 = uniform): windows the teacher found calls in come up more often than empty ambience."""

    def __init__(self, mass: np.ndarray, power: float, floor: float, epoch_size: int, seed: int, rank: int = 0,
                 world: int = 1):
        super().__init__(mass, seed, rank, world)
        w = (np.asarray(mass, np.float64) + float(floor)) ** float(power)
        if not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError("pseudo.sampler: the window weights are not positive: raise pseudo.sampler.floor")
        self.p = w / w.sum()
        self.epoch_size = int(epoch_size)

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(self.p), self.epoch_size, replace=True, p=self.p)


class GroupSampler(_EpochSampler):
    """`epoch_size` rows drawn with replacement: a group uniformly, then a row of it uniformly. With one group per
    class (the rows holding it) and one of the rows holding none, class-balanced sampling reaches every class of
    the rows, those without a clip included (2026's labelled soundscape windows)."""

    def __init__(self, groups: list[np.ndarray], epoch_size: int, seed: int, rank: int = 0, world: int = 1):
        groups = [np.asarray(g, np.int64) for g in groups if len(g)]
        if not groups:
            raise ValueError("GroupSampler: every group is empty: nothing to draw")
        super().__init__(np.concatenate(groups), seed, rank, world)
        self.groups, self.epoch_size = groups, int(epoch_size)

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        which = rng.integers(len(self.groups), size=self.epoch_size)
        return np.array([g[rng.integers(len(g))] for g in (self.groups[k] for k in which)], np.int64)
