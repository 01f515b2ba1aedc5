"""Config helpers shared by every command: Hydra resolvers, run naming and run folders, loading saved configs."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def _root_tag(root: str) -> str:
    """`<basename>-<6 hex of the absolute path>`: two data roots of one competition never share a cache."""
    path = os.path.abspath(os.path.expanduser(str(root)))
    return f"{Path(path).name}-{hashlib.sha1(path.encode()).hexdigest()[:6]}"


if not OmegaConf.has_resolver("root_tag"):
    OmegaConf.register_new_resolver("root_tag", _root_tag)


def to_plain(cfg: DictConfig) -> dict:
    """Resolved plain-dict copy of a config (for hashing and saving)."""
    return OmegaConf.to_container(cfg, resolve=True)


def config_hash(cfg: DictConfig, ignore: tuple[str, ...] = ("exp", "fold", "resume", "device", "seeds",
                                                           "full_fit")) -> str:
    """Short stable hash of everything that changes what a run learns (not its name or fold)."""
    plain = {k: v for k, v in to_plain(cfg).items() if k not in ignore}
    return hashlib.sha1(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_name(cfg: DictConfig) -> str:
    """The run's folder name under runs/: `exp` if given, else `<model.name>-<config hash>`."""
    return str(cfg.exp) if cfg.get("exp") else f"{cfg.model.name}-{config_hash(cfg)}"


def fold_number(fold_dir: str | Path) -> int | None:
    """k of a CV fold folder `runs/<exp>/fold<k>/`; None for any other folder (the full-data fits `foldall*`)."""
    digits = Path(fold_dir).name.removeprefix("fold")
    return int(digits) if Path(fold_dir).name.startswith("fold") and digits.isdigit() else None


def run_folds(exp_dir: str | Path) -> list[tuple[int, Path]]:
    """The CV fold folders of a run `runs/<exp>/` as (k, folder), by k (finished or not; no `foldall*`)."""
    found = [(fold_number(d), d) for d in Path(exp_dir).glob("fold*") if d.is_dir()]
    return sorted((k, d) for k, d in found if k is not None)


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The saved `config.yaml` of a run folder (enough to rebuild its model)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished run of `python -m src.train`?")
    return OmegaConf.load(path)
