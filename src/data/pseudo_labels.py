"""Pseudo-label files (`python -m src.pseudo` writes them): reading one back, checked against the caller's classes,
competition and value range, and the windows a run trains on (silent ones and the validation soundscapes' reserved
beds left out).

A file is a parquet (`filename, window, start_s, end_s, <class>...`, soft labels in [0, 1]) with a sidecar
`<file>.json` (teacher, round, classes, competition, transform).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from omegaconf import DictConfig

from src.config import valsets_settings
from src.data.audio_cache import cached_soundscapes, load_labelled, load_soundscape_index
from src.data.tables import read_parquet

KEYS = ["filename", "window", "start_s", "end_s"]


class PseudoLabelError(ValueError):
    """A pseudo-label file or teacher that cannot be used; the message names it and the fix."""


def sidecar(path: str | Path) -> Path:
    return Path(str(path) + ".json")


def load_pseudo(path: str | Path, classes: list[str], competition: str) -> tuple[pl.DataFrame, dict]:
    """A pseudo-label parquet and its sidecar, checked against the competition and class list of the caller (its
    classes, or a subset of them for a specialist run: `data.classes`), with the caller's class columns."""
    path = Path(path)
    if not path.exists() or not sidecar(path).exists():
        raise PseudoLabelError(f"{path}: pseudo-label file or its sidecar {sidecar(path).name} not found: write "
                               "it with `python -m src.pseudo teacher=...`")
    meta = json.loads(sidecar(path).read_text())
    if meta.get("competition") != competition:
        raise PseudoLabelError(f"{path}: pseudo-labels of competition {meta.get('competition')!r}, not "
                               f"{competition!r}: pseudo-label this competition's soundscapes")
    written = list(meta.get("classes") or [])
    if written != list(classes) and not (set(classes) < set(written)):
        raise PseudoLabelError(f"{path}: its class list ({len(written)} classes) differs from this competition's "
                               f"({len(classes)}, sample_submission order): pseudo-label again")
    table = read_parquet(path, "`python -m src.pseudo teacher=...`")
    missing = [c for c in KEYS + list(classes) if c not in table.columns]
    if missing:
        raise PseudoLabelError(f"{path}: missing columns {missing[:5]}: not a src.pseudo file")
    table = table.select(*KEYS, *classes)
    values = table.select(classes).to_numpy()
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise PseudoLabelError(f"{path}: {int(bad.sum())} label(s) are not in [0, 1] (e.g. {classes[col]} = "
                               f"{values[row, col]} at {table['filename'][row]} window {table['window'][row]}): "
                               "pseudo-label again with a valid pseudo.transform")
    return table, meta


def pseudo_digest(cfg: DictConfig) -> dict[str, str]:
    """metrics.json's `pseudo_sha256`: the digest of the pseudo-label file the run trained on ({} without one), so
    a self-training loop resumes a student only on the same labels."""
    from src.infer.runtimes import file_digest

    return {"pseudo_sha256": file_digest(cfg.pseudo.path)} if cfg.pseudo.path else {}


def load_pseudo_windows(cfg: DictConfig, classes: list[str]) -> pl.DataFrame:
    """The checked pseudo-label table of `pseudo.path`, without the windows prepare marked silent (by default),
    those of the labelled soundscapes (2026: their labels are the truth) and of the validation beds."""
    table, meta = load_pseudo(cfg.pseudo.path, classes, str(cfg.data.competition))
    if not cfg.pseudo.include_silent:
        index = load_soundscape_index(cfg.data.cache_dir).select("filename", "window", "silent")
        table = table.join(index, on=["filename", "window"], how="inner").filter(~pl.col("silent")).drop("silent")
    beds = set(bed_soundscapes(cfg) or []) if cfg.train.soundscape_cv else set()
    labelled = set(load_labelled(cfg.data.cache_dir)["filename"])  # their labels are the truth, never replaced
    reserved = [f for f in table["filename"].unique().to_list() if Path(f).stem in beds or f in labelled]
    table = table.filter(~pl.col("filename").is_in(reserved))
    if table.height == 0:
        raise ValueError(f"{cfg.pseudo.path}: no pseudo-labelled window left (all silent, not in this cache, "
                         "labelled soundscapes, or reserved as validation beds: valsets.bed_share)")
    print(f"pseudo-labels {cfg.pseudo.path}: {table.height} windows from teacher {meta['teacher']} "
          f"(round {meta['round']}), mode {cfg.pseudo.mode}")
    return table


def bed_soundscapes(cfg: DictConfig) -> list[str] | None:
    """The cached unlabelled soundscapes (stems) reserved as beds, `valsets.bed_share` of them (every k-th by
    name): self-training never trains on their windows, so a student cannot learn the validation beds.
    None when `bed_share` is null: beds come from every soundscape and none is reserved."""
    share = valsets_settings(cfg).bed_share
    if share is None:
        return None
    if not 0 < float(share) < 1:
        raise ValueError(f"valsets.bed_share={share}: a share in (0, 1), or null (beds from every soundscape, "
                         "none reserved from self-training)")
    return cached_soundscapes(cfg.data.cache_dir)[::max(1, round(1 / float(share)))]
