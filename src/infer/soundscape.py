"""Soundscape inference: the test files, 5 s windows, batching across files, test-time shifts, several models
decoded once.

Kernel-safe: numpy + the other kernel-safe modules (`src.infer.audio`, `src.infer.submission`); `src.kernel`
inlines this file into the Kaggle script, stripping the `from src.` imports.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Self

import numpy as np

from src.infer.audio import AUDIO_SUFFIXES, AudioError, list_audio, load_audio
from src.infer.submission import row_ids, row_stem

log = logging.getLogger(__name__)


def n_windows(n_samples: int, window: int) -> int:
    """Number of scored windows: every full window plus a last partial one (padded)."""
    return max(1, -(-n_samples // window))


def list_soundscapes(folder: str | Path | None) -> tuple[list[Path], list[str]]:
    """The audio files of `folder` (e.g. `test_soundscapes/`), one per stem, sorted, and a message per file
    left out (`one_file_per_stem`); ([], []) when the folder is missing."""
    return one_file_per_stem(list_audio(folder))


def one_file_per_stem(files: list[Path], suffixes: tuple[str, ...] = AUDIO_SUFFIXES) -> tuple[list[Path], list[str]]:
    """(files with one per stem, sorted; a message per file left out). Row ids name the stem, so x.ogg and
    x.flac would give the same rows twice: the first suffix in `suffixes` order is kept."""
    rank = {s: i for i, s in enumerate(suffixes)}
    kept: dict[str, Path] = {}
    for path in sorted(files, key=lambda p: (p.stem, rank.get(p.suffix.lower(), len(rank)), p.name)):
        kept.setdefault(path.stem, path)
    skipped = [f"{p}: same stem as {kept[p.stem].name} (row ids name the stem): skipped"
               for p in sorted(files) if kept[p.stem] != p]
    return sorted(kept.values()), skipped


def cut_windows(y: np.ndarray, window: int, context: int = 0, shift: int = 0, count: int | None = None) -> np.ndarray:
    """(count, window + 2*context) array: window i covers [i*window + shift - context, (i+1)*window + shift + context),
    zero-padded outside the recording."""
    count = n_windows(len(y), window) if count is None else count
    length = window + 2 * context
    left = max(0, context - shift)
    padded = np.zeros(left + count * window + 2 * context + abs(shift) + length, np.float32)
    padded[left:left + len(y)] = y
    offset = left + shift - context
    starts = offset + np.arange(count) * window
    idx = starts[:, None] + np.arange(length)[None, :]
    return padded[idx]


def _decode(path: Path, sample_rate: int) -> np.ndarray | AudioError:
    try:
        return load_audio(path, sample_rate)
    except AudioError as exc:
        return exc


def decoded(files: list[Path], sample_rate: int, ahead: int = 0) -> Iterator[tuple[Path, np.ndarray | AudioError]]:
    """(path, its audio at `sample_rate` or the AudioError that names the problem) for each file in order. With
    `ahead` > 0 a thread decodes up to that many files in advance: decoding and resampling release the GIL, so
    they overlap the models' forward instead of leaving the cores idle between batches."""
    if ahead <= 0:
        yield from ((Path(p), _decode(Path(p), sample_rate)) for p in files)
        return
    pending = iter(files)
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
        queue = deque((Path(p), pool.submit(_decode, Path(p), sample_rate)) for p in islice(pending, ahead))
        while queue:
            path, future = queue.popleft()
            nxt = next(pending, None)
            if nxt is not None:
                queue.append((Path(nxt), pool.submit(_decode, Path(nxt), sample_rate)))
            yield path, future.result()


class Batches:
    """Windows of several files batched into `predict_fn` calls of at least `batch_size` windows; each call runs
    on a thread while the caller cuts the next batch (one call in flight). `parts[file][shift]` gets its
    windows' probabilities. A context manager: leaving it predicts what is left and waits for it."""

    def __init__(self, predict_fn: Callable[[np.ndarray], np.ndarray], batch_size: int,
                 parts: list[list[np.ndarray | None]]):
        self.predict_fn, self.batch_size, self.parts = predict_fn, batch_size, parts
        self.pending: list[tuple[int, int, np.ndarray]] = []  # (file, shift, windows) waiting for a full batch
        self.inflight: tuple[Future, list[tuple[int, int, np.ndarray]]] | None = None
        self.runner = ThreadPoolExecutor(1, thread_name_prefix="predict")

    def add(self, file: int, windows: list[np.ndarray]) -> None:
        """A file's windows, one array per test-time shift; a batch is sent once it holds `batch_size`."""
        self.pending += [(file, k, w) for k, w in enumerate(windows)]
        if sum(len(w) for _, _, w in self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        batch = np.concatenate([w for _, _, w in self.pending])
        self.collect()
        self.inflight = (self.runner.submit(self.predict_fn, batch), self.pending)
        self.pending = []

    def collect(self) -> None:
        if self.inflight is None:
            return
        future, items = self.inflight
        self.inflight = None
        probs, pos = np.asarray(future.result(), np.float32), 0
        for f, k, w in items:
            self.parts[f][k] = probs[pos:pos + len(w)]
            pos += len(w)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, *_) -> None:
        try:
            if kind is None:
                if self.pending:
                    self.flush()
                self.collect()
        finally:
            self.runner.shutdown()


def predict_soundscapes(files: list[Path], predict_fn: Callable[[np.ndarray], np.ndarray], n_classes: int,
                        sample_rate: int, window_s: float, context_s: float = 0.0, shifts_s: tuple[float, ...] = (0.0,),
                        batch_size: int = 64, fallback: np.ndarray | None = None, fallback_duration_s: float = 60.0,
                        progress: Callable | None = None, decode_ahead: int = 0
                        ) -> tuple[list[str], np.ndarray, list[str]]:
    """Window probabilities of every file, batching windows across files.

    `predict_fn` maps a (B, samples) float32 batch to (B, n_classes) probabilities; each window is
    predicted once per test-time shift and the shifts are averaged. A file that cannot be decoded
    gets `fallback` rows (default 0) for `fallback_duration_s` of audio and a logged problem: its
    rows are still written. `decode_ahead` files are decoded in advance on a thread (`decoded`), and a
    batch is predicted on a thread while the next one is cut (one batch in flight).
    Returns (row_ids, probs (rows, n_classes), problems).
    """
    window = round(window_s * sample_rate)
    context = round(context_s * sample_rate)
    fallback = np.zeros(n_classes, np.float32) if fallback is None else np.asarray(fallback, np.float32)
    ids: list[str] = []
    problems: list[str] = []
    parts: list[list[np.ndarray | None]] = []  # per file: one prediction per shift (or the fallback)
    audio = decoded(files, sample_rate, decode_ahead)
    with Batches(predict_fn, batch_size, parts) as batches:
        for _, (path, y) in zip(progress(files) if progress else files, audio, strict=True):
            if isinstance(y, AudioError):
                problems.append(str(y))
                log.warning("%s: rows filled with the fallback", y)
                count = n_windows(int(fallback_duration_s * sample_rate), window)
                ids += row_ids(path.stem, count, window_s)
                parts.append([np.tile(fallback, (count, 1))])
                continue
            count = n_windows(len(y), window)
            ids += row_ids(path.stem, count, window_s)
            parts.append([None] * len(shifts_s))
            batches.add(len(parts) - 1, [cut_windows(y, window, context, round(shift * sample_rate), count)
                                         for shift in shifts_s])
    out = [np.mean(np.stack(p), axis=0) for p in parts]
    return ids, (np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)), problems


def check_windows(audio_keys: list[tuple[int, float]], names: list[str] | None = None) -> None:
    """Raise if the models cut different window lengths: their rows (`<stem>_<end second>`) would not be the
    same windows, so they cannot be blended row by row. Sample rates may differ."""
    windows = sorted({float(w) for _, w in audio_keys})
    if len(windows) > 1:
        names = names or [f"model {k}" for k in range(len(audio_keys))]
        detail = ", ".join(f"{n}: {w} s" for n, (_, w) in zip(names, audio_keys, strict=True))
        raise ValueError(f"the models cut windows of {windows} s ({detail}): a blend needs one audio.window_s "
                         "(the submission's window); retrain or leave out the members that differ")


def align_rows(ref_ids: list[str], ids: list[str], probs: np.ndarray) -> np.ndarray:
    """`probs` (rows `ids`) reordered to `ref_ids`. A row the group lacks (a file a few samples shorter at its
    sample rate) takes the same file's last row; rows `ref_ids` lacks are dropped."""
    if ids == ref_ids:
        return probs
    index = {r: i for i, r in enumerate(ids)}
    last: dict[str, int] = {}
    for i, r in enumerate(ids):
        last[row_stem(r)] = i
    pick = [index.get(r, last.get(row_stem(r), -1)) for r in ref_ids]
    out = probs[np.maximum(pick, 0)].copy()
    out[np.asarray(pick) < 0] = np.nan  # no row of that file at all: treated as undecodable
    return out


def predict_model_groups(files: list[Path], audio_keys: list[tuple[int, float]],
                         load_group: Callable[[list[int]], Callable[[np.ndarray], np.ndarray]],
                         n_classes: int | list[int],
                         context_s: float = 0.0, shifts_s: tuple[float, ...] = (0.0,), batch_size: int = 64,
                         fallback_duration_s: float = 60.0, progress: Callable | None = None,
                         decode_ahead: int = 0) -> tuple[list[str], list[np.ndarray], list[str]]:
    """Window probabilities of several models, decoding every file once per group.

    Models with the same `audio_keys` entry (sample_rate, window_s) form a group; `load_group(indices)`
    gives its predict, with those models' probabilities side by side: (B, samples) -> (B, sum of the models'
    `n_classes`: one count for all, or one per model, e.g. a specialist's fewer columns; `decode_ahead`: see
    `predict_soundscapes`). Undecodable files get NaN rows (the caller's fallback replaces them after
    blending). Every model must cut the same window length (`check_windows`); each group's rows are aligned to
    the first group's row ids (`align_rows`). Returns
    (row_ids, each model's (rows, its classes) probabilities in model order, problems, each listed once)."""
    check_windows(audio_keys)
    counts = [n_classes] * len(audio_keys) if isinstance(n_classes, int) else list(n_classes)
    groups: dict[tuple[int, float], list[int]] = {}
    for k, key in enumerate(audio_keys):
        groups.setdefault(key, []).append(k)
    out: dict[int, np.ndarray] = {}
    ref_ids: list[str] | None = None
    problems: list[str] = []
    for (sample_rate, window_s), indices in groups.items():
        width = sum(counts[i] for i in indices)
        ids, probs, group_problems = predict_soundscapes(files, load_group(indices), width, sample_rate, window_s,
                                                         context_s, shifts_s, batch_size,
                                                         np.full(width, np.nan, np.float32), fallback_duration_s,
                                                         progress, decode_ahead)
        ref_ids = ids if ref_ids is None else ref_ids
        probs = align_rows(ref_ids, ids, probs)
        problems += [p for p in group_problems if p not in problems]
        starts = np.cumsum([0] + [counts[i] for i in indices])
        for j, i in enumerate(indices):
            out[i] = probs[:, starts[j]:starts[j + 1]]
    return ref_ids or [], [out[i] for i in range(len(audio_keys))], problems
