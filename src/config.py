"""Config helpers shared by every command: the command line, Hydra resolvers, run naming and run folders,
loading saved configs.

Every command reads configs/<name>.yaml with `key=value` overrides composed by Hydra (`+key=value` adds a
key, `group=option` picks a config group's file). Single-stage commands are `@hydra.main` functions; a tool
with several actions takes the action word first (`python -m src.kernel build name=demo`): `command_config`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


class CommandLineError(ValueError):
    """An action or override the command does not know; the message says what it takes."""


def compose(name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """configs/<name>.yaml composed with Hydra `key=value` overrides, as `@hydra.main` composes its config
    (Hydra's compose API). A key the config lacks is a CommandLineError naming it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    try:
        if GlobalHydra.instance().is_initialized():  # inside another Hydra context (a test, a Hydra command)
            return hydra_compose(config_name=name, overrides=list(overrides))
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            return hydra_compose(config_name=name, overrides=list(overrides))
    except HydraException as err:
        unknown = re.search(r"Could not override '([^']+)'", str(err))
        if unknown:
            raise CommandLineError(f"unknown option {unknown.group(1)!r}: configs/{name}.yaml has no such key "
                                   f"(its keys: {', '.join(_keys(name))})") from None
        raise CommandLineError(f"configs/{name}.yaml: {err}") from None


def _keys(name: str) -> list[str]:
    return [str(k) for k in OmegaConf.load(Path(CONFIG_DIR) / f"{name}.yaml") if k != "defaults"]


def command_config(name: str, actions: tuple[str, ...], argv: list[str] | None = None,
                   default: str | None = None) -> tuple[str, DictConfig]:
    """`python -m src.<name> [action] key=value ...`: (the action word, configs/<name>.yaml composed with the
    overrides). The action is the first word without `=` (written first by convention); with none, `default`.
    An unknown or missing action is a CommandLineError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    words = [k for k, arg in enumerate(argv) if "=" not in arg]
    action = argv.pop(words[0]) if words else default
    if action not in actions:
        raise CommandLineError(f"usage: python -m src.{name} {'|'.join(actions)} key=value ... (got "
                               f"{action!r}; the keys are those of configs/{name}.yaml)")
    return action, compose(name, argv)


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


def valsets_settings(cfg: DictConfig) -> DictConfig:
    """The `valsets` settings of `cfg`, filled from configs/train.yaml where a (teacher) run config lacks them."""
    defaults = OmegaConf.load(Path(CONFIG_DIR) / "train.yaml").valsets
    return OmegaConf.merge(defaults, cfg.get("valsets") or {})


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The saved `config.yaml` of a run folder (enough to rebuild its model)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished run of `python -m src.train`?")
    return OmegaConf.load(path)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fold_classes(dirs: list[str | Path], classes: list[str]) -> list[str]:
    """The classes the run folds `dirs` predict (their saved configs must agree): all of `classes` (the
    competition's), or a subset (a specialist, `data.classes`). ValueError naming the fold otherwise."""
    found = None
    for d in dirs:
        run_classes = list(load_run_config(d).classes)
        if not set(run_classes) <= set(classes):
            raise ValueError(f"{d}: it predicts classes that are not this competition's (not columns of its sample "
                             f"submission, e.g. {sorted(set(run_classes) - set(classes))[:3]}): another competition?")
        if found is not None and run_classes != found:
            raise ValueError(f"{d}: its classes differ from its other folds': retrain them with one data.classes")
        found = run_classes
    return found or []


def fold_dirs(runs_dir: Path, exp: str) -> list[Path]:
    """Finished folds of a run (those with oof.parquet and best.pt, or teacher.json for a teacher run), sorted."""
    dirs = [p for _, p in run_folds(runs_dir / exp)
            if ((p / "best.pt").exists() or (p / "teacher.json").exists()) and (p / "oof.parquet").exists()]
    if not dirs:
        raise FileNotFoundError(f"{runs_dir / exp}: no finished fold (best.pt + oof.parquet); "
                                f"train one with `python -m src.train exp={exp} fold=0`")
    return dirs
