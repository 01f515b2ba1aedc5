"""Post-processing of a soundscape's window probabilities: smoothing over neighbouring windows, file-level prior,
site and hour priors.

A post-processing config (`ensemble.postprocess`, saved in ensemble.yaml / ensemble.json) maps step names to
their settings, e.g. `{"smoothing": [0.1, 0.8, 0.1], "file_prior": {"mode": "max", "power": 0.5, "weight": 0.5}}`;
`STEPS` says which function each name runs and in which order. A step that is absent or null is off; a new step
is one function added to `STEPS`.

Kernel-safe: numpy + `src.infer.submission` (row ids); `src.kernel` inlines this file into the Kaggle script.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable

import numpy as np

from src.infer.submission import row_stem


def smooth(probs: np.ndarray, kernel: list[float] | None) -> np.ndarray:
    """Weighted average over neighbouring windows of one file (kernel centred, edges renormalised)."""
    if not kernel or len(kernel) == 1:
        return probs
    k = np.asarray(kernel, np.float64)
    half = len(k) // 2
    n = len(probs)
    out = np.zeros_like(probs, dtype=np.float64)
    norm = np.zeros((n, 1))
    for j, w in enumerate(k):
        off = j - half
        lo, hi = max(0, -off), min(n, n - off)
        if lo < hi:
            out[lo:hi] += w * probs[lo + off:hi + off]
            norm[lo:hi] += w
    return (out / norm).astype(probs.dtype)


def file_prior(probs: np.ndarray, mode: str | None, power: float, weight: float = 1.0) -> np.ndarray:
    """Rescale each window by the file-level evidence of each class: p * agg(p over file)^power.

    A species heard clearly somewhere in the soundscape is more likely in its faint windows too.
    `weight` blends the rescaled and raw probabilities.
    """
    if not mode:
        return probs
    agg = probs.max(axis=0, keepdims=True) if mode == "max" else probs.mean(axis=0, keepdims=True)
    return (1 - weight) * probs + weight * probs * agg ** power


def _file_prior_step(probs: np.ndarray, prior: dict) -> np.ndarray:
    """`file_prior` from its config: {mode: max | mean | null, power (default 1), weight (default 1)}."""
    return file_prior(probs, prior.get("mode"), float(prior.get("power", 1.0)), float(prior.get("weight", 1.0)))


_UNPARSED: set[str] = set()  # patterns already said not to match a file name (logged once)


def site_hour(stem: str, pattern: str | None) -> tuple[str | None, int | None]:
    """(site, hour) of a soundscape stem by `pattern` (a regex with groups `site` and `time` hhmmss, as
    `data.soundscape_names`); (None, None) when it does not match."""
    match = re.fullmatch(pattern, stem) if pattern else None
    if not match:
        return None, None
    groups = match.groupdict()
    return groups.get("site"), (int(groups["time"][:2]) if groups.get("time") else None)


def metadata_prior(probs: np.ndarray, prior: dict, stem: str = "") -> np.ndarray:
    """Rescale one file's probabilities by the class priors of its recorder site and hour of day (BirdCLEF+ 2026's
    names; the 3rd place): p * ((site prior + floor) x (hour prior + floor) / (global prior + floor)^2)^power,
    blended with p by `weight`. `prior` holds `pattern` (see site_hour), `hour_bin` (hours per bin), `floor`, `global`,
    `site` and `hour` (per key, one value per class, smoothed towards the global prior when fitted); a site or hour
    bin never seen uses the global prior. The floor keeps a class the fit never saw (global prior 0) as it is,
    rather than zeroing it. A name that does not parse leaves the file as it is (logged once per pattern)."""
    site, hour = site_hour(stem, prior.get("pattern"))
    if site is None and hour is None:
        if prior.get("pattern") not in _UNPARSED:
            _UNPARSED.add(prior.get("pattern"))
            logging.getLogger(__name__).warning("metadata prior: %s does not match %r: its rows are left as they "
                                                "are", stem, prior.get("pattern"))
        return probs
    base = np.asarray(prior["global"], np.float64)
    bin_key = None if hour is None else str(hour // int(prior.get("hour_bin", 1)))
    site_p = np.asarray(prior.get("site", {}).get(str(site), base), np.float64)
    hour_p = np.asarray(prior.get("hour", {}).get(bin_key, base), np.float64)
    floor = float(prior.get("floor", 0.01))
    factor = ((site_p + floor) * (hour_p + floor) / (base + floor) ** 2) ** float(prior.get("power", 1.0))
    weight = float(prior.get("weight", 1.0))
    return ((1 - weight) * probs + weight * np.clip(probs * factor, 0.0, 1.0)).astype(probs.dtype)


# step name -> function(one file's probabilities, the step's settings, the file's stem), applied in this order
STEPS: dict[str, Callable[[np.ndarray, object, str], np.ndarray]] = {
    "smoothing": lambda p, kernel, stem: smooth(p, kernel),
    "file_prior": lambda p, prior, stem: _file_prior_step(p, prior),
    "metadata_prior": metadata_prior,
}


def postprocess(probs: np.ndarray, cfg: dict, stem: str = "") -> np.ndarray:
    """Apply the post-processing config (see `STEPS`) to one file's window probabilities (`stem`: its name)."""
    unknown = sorted(set(cfg) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown post-processing step(s) {unknown}: use {list(STEPS)}")
    out = probs
    for name, step in STEPS.items():
        if cfg.get(name):
            out = step(out, cfg[name], stem)
    return out


def postprocess_rows(row_ids: list[str], probs: np.ndarray, post: dict) -> np.ndarray:
    """Apply `postprocess` to each soundscape's consecutive rows (row_id `<stem>_<end second>`)."""
    out = probs.copy()
    stems = [row_stem(r) for r in row_ids]
    start = 0
    for i in range(1, len(stems) + 1):
        if i == len(stems) or stems[i] != stems[start]:
            out[start:i] = postprocess(probs[start:i], post, stems[start])
            start = i
    return out
