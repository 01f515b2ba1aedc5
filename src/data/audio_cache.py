"""Reading what `python -m src.prepare` wrote under `data.cache_dir`: where each decoded recording and soundscape
lives, the cache's sample rate and settings, the chunk index and the unlabelled soundscapes' window index.

Training, teachers, validation sets and the kernel build read the cache through these functions; only
`src.prepare` writes it (its docstring shows the layout).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from omegaconf import DictConfig

from src.data.soundscape_labels import NAME_SCHEMA, WINDOW_SCHEMA


class CacheSettingsError(ValueError):
    """A cache made with other settings than the command's; the message names each one and the fix."""


def cache_settings(cfg: DictConfig) -> dict[str, dict[str, object]]:
    """What a cache is made with, by config key. `decode`: what the cached arrays depend on (a rerun into
    the cache must match it, or two kinds of arrays would mix); `index`: what chunks.parquet depends on
    (a rerun rebuilds it; training must match both). Record any new setting of prepare here."""
    return {"decode": {"audio.sample_rate": int(cfg.audio.sample_rate),
                       "prepare.min_duration_s": float(cfg.prepare.min_duration_s),
                       "prepare.max_duration_s": (None if cfg.prepare.get("max_duration_s") is None
                                                  else float(cfg.prepare.max_duration_s))},
            "index": {"prepare.chunk_s": float(cfg.prepare.chunk_s), "prepare.overlap_s": float(cfg.prepare.overlap_s),
                      "prepare.preemphasis": float(cfg.prepare.preemphasis),
                      "prepare.silence.abs_db": float(cfg.prepare.silence.abs_db),
                      "prepare.silence.rel_db": float(cfg.prepare.silence.rel_db),
                      "prepare.soundscape_min_s": float(cfg.prepare.soundscape_min_s),
                      "data.extra": [str(e) for e in cfg.data.get("extra") or []],
                      "data.extra_classes": str(cfg.data.get("extra_classes", "drop"))}}


def cache_rate(cache_dir: str | Path) -> int:
    """The sample rate of the prepared cache at `cache_dir` (its manifest): the rate of every cached array."""
    path = Path(cache_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m src.prepare` for this data first")
    return int(json.loads(path.read_text())["sample_rate"])


def settings_differences(cfg: DictConfig, sections: tuple[str, ...] = ("decode", "index")) -> list[str]:
    """`key=<cache's> (now <cfg's>)` for every setting of `sections` where `cfg` differs from what the cache
    at `data.cache_dir` recorded (settings it did not record are not compared); [] without a manifest."""
    path = Path(cfg.data.cache_dir) / "manifest.json"
    if not path.exists():
        return []
    manifest = json.loads(path.read_text())
    recorded = manifest.get("settings") or {  # caches made before the settings were recorded
        "decode": {"audio.sample_rate": manifest.get("sample_rate")},
        "index": {"prepare.chunk_s": manifest.get("chunk_s"), "prepare.overlap_s": manifest.get("overlap_s")}}
    wanted = cache_settings(cfg)
    return [f"{key}={recorded[section][key]} (now {value})" for section in sections
            for key, value in wanted[section].items()
            if recorded.get(section, {}).get(key) is not None and recorded[section][key] != value]


def cache_path(cache_dir: Path, filename: str, kind: str = "audio") -> Path:
    """Where the int16 cache of a recording (`kind='audio'`) or soundscape lives."""
    return Path(cache_dir) / kind / Path(filename).with_suffix(".npy")


def load_cached(path: Path) -> np.ndarray:
    """Memory-map a cached recording (int16)."""
    return np.load(path, mmap_mode="r")


SOUNDSCAPE_INDEX = "soundscapes.parquet"
LABELLED_INDEX = "labelled.parquet"  # 2026: the expert-labelled train soundscape windows (src.prepare)


def load_soundscape_index(cache_dir: str | Path) -> pl.DataFrame:
    """The unlabelled soundscapes' window index, with a clear error if prepare has not written it."""
    path = Path(cache_dir) / SOUNDSCAPE_INDEX
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m src.prepare data=...` (it caches and indexes "
                                "every unlabelled soundscape)")
    return pl.read_parquet(path)


def check_cache_settings(cfg: DictConfig) -> None:
    """CacheSettingsError naming every setting where `cfg` differs from what its cache was made with
    (training on it would silently use other audio or chunks than configured)."""
    differences = settings_differences(cfg)
    if differences:
        raise CacheSettingsError(
            f"{Path(cfg.data.cache_dir) / 'manifest.json'}: the cache was prepared with {', '.join(differences)}: "
            "prepare one with these settings (python -m src.prepare with the same overrides and a new "
            "data.cache_dir=PATH, passed here too), or drop the overrides to use this cache")


def load_chunk_index(cfg: DictConfig) -> tuple[pl.DataFrame, list[str]]:
    """The prepared chunk index and the class list, with a clear error if prepare has not run."""
    cache = Path(cfg.data.cache_dir)
    index, manifest = cache / "chunks.parquet", cache / "manifest.json"
    if not index.exists() or not manifest.exists():
        raise FileNotFoundError(f"{index} not found: run `python -m src.prepare data={cfg.data.name} "
                                f"data.root={cfg.data.root} data.cache_dir={cfg.data.cache_dir}` first")
    check_cache_settings(cfg)
    return pl.read_parquet(index), json.loads(manifest.read_text())["classes"]


def cached_soundscapes(cache_dir: str | Path) -> list[str]:
    """Stems of the unlabelled soundscapes prepare cached (`<cache_dir>/soundscapes/<stem>.npy`), sorted: the
    labelled ones (2026, `labelled.parquet`) left out, as their windows are training data and labelled CV."""
    labelled = {Path(f).stem for f in load_labelled(cache_dir)["filename"].unique()}
    return sorted(p.stem for p in (Path(cache_dir) / "soundscapes").glob("*.npy") if p.stem not in labelled)


def load_labelled(cache_dir: str | Path) -> pl.DataFrame:
    """The labelled train soundscape windows prepare cached (`filename, window, start_s, end_s, labels, site, date,
    hour`; `labels` a list of classes, empty for a negative window); an empty table for a competition without
    labels or a cache prepared before they were read."""
    path = Path(cache_dir) / LABELLED_INDEX
    return pl.read_parquet(path) if path.exists() else pl.DataFrame(schema=WINDOW_SCHEMA | NAME_SCHEMA)


def extra_classes(cache_dir: str | Path) -> list[str]:
    """The classes of the `data.extra` folders outside the competition's that prepare kept (`data.extra_classes`:
    keep), in its manifest; [] when none."""
    return list(json.loads((Path(cache_dir) / "manifest.json").read_text()).get("extra_classes") or [])