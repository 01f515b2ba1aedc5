"""`python -m src.selftrain rounds=N round0=<ensemble or run>`: noisy-student self-training on the unlabelled
soundscapes.

Round 0 is the given ensemble or run (copied, or ensembled alone, as `<name>_r0`). Round k: `src.pseudo`
labels every unlabelled window with `<name>_r<k-1>`, each student trains on the clips plus those labels
(`src.train pseudo.path=...`, or an embedding probe), and `src.ensemble` blends the students (with the runs
of `keep_runs`, e.g. a teacher's zero-shot run, and with `keep_round0` round 0's own members) as `<name>_r<k>`.
Every round is an ensemble folder, so a leaderboard row; the round with the best CV (`select`: the soundscape
CV when every round has one, else the nested OOF score, never a test score) is copied to `ensembles/<name>/`
with `selftrain.json`, the table of rounds (CV, pseudo-label AUC when the truth is known, test score when a
solution exists, time).
"""
from __future__ import annotations

import functools
import importlib
import json
import logging
import shutil
import time
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from src import config as cfglib
from src.infer.io import atomic_write

log = logging.getLogger(__name__)
# student command -> (config name, "module:function", the key naming its run, the key taking the pseudo-labels)
SELECTABLE = ("labelled_auc", "soundscape_auc", "oof_score")  # the CVs a round can be chosen by, auto's order
STAGE_CONFIGS = ("train", "teacher", "pseudo", "ensemble")  # what the stages of a round compose
COMMANDS = {"train": ("train", "src.train:train", "exp", "pseudo.path"),
            "probe": ("teacher", "src.probe:train_probe", "probe.exp", "pseudo.path")}


def compose_stage(config_name: str, overrides: list[str]) -> DictConfig:
    """A stage's config as its command line would compose it (inside or outside a running Hydra app)."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=cfglib.CONFIG_DIR, version_base=None):
        return compose(config_name=config_name, overrides=overrides)


def _call(target: str, cfg: DictConfig):
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)(cfg)


def _ensemble_yaml(cfg: DictConfig, name: str) -> Path:
    return Path(cfg.ensembles_dir) / name / "ensemble.yaml"


def _dirs(cfg: DictConfig, config_name: str) -> list[str]:
    """`stage_overrides` that `config_name`'s config has a key (or group) for, then `runs_dir`: one list serves
    every stage (`folds.n=3` reaches train and the probe, not src.pseudo)."""
    return [*stage_keys(config_name, list(cfg.stage_overrides)), f"runs_dir={cfg.runs_dir}"]


def stage_keys(config_name: str, overrides: list[str]) -> list[str]:
    """The overrides `config_name`'s config takes (a key it has, a config group it composes such as `data=` or
    `experiment=`, or a `+key` it adds): each is tried on a composition of that config."""
    return [o for o in overrides if _takes(config_name, o)]


@functools.lru_cache(maxsize=256)
def _takes(config_name: str, override: str) -> bool:
    try:
        cfglib.compose(config_name, [override])
    except cfglib.CommandLineError:
        return False
    return True


def _number(cfg: DictConfig, key: str, kind: type) -> float:
    try:
        return kind(str(cfg[key]))
    except ValueError:
        raise ValueError(f"{key}={cfg[key]!r}: not a {'whole ' if kind is int else ''}number") from None


def check_settings(cfg: DictConfig) -> None:
    """Every setting of the loop, checked before round 0 is built; a ValueError names the key (and a stage
    override that no stage takes: a typo would otherwise vanish)."""
    rounds, min_gain = _number(cfg, "rounds", int), _number(cfg, "min_gain", float)
    stray = [o for o in cfg.stage_overrides if not any(_takes(c, o) for c in STAGE_CONFIGS)]
    problems = [
        (bool(stray), f"stage_overrides: {stray} fit no stage's config ({', '.join(STAGE_CONFIGS)}): a typo?"),
        (rounds < 1, f"rounds={cfg.rounds}: at least 1 round (round 0 alone is `python -m src.ensemble`)"),
        (not cfg.round0, "round0=<ensemble or run>: the teacher of round 1 (e.g. round0=birdnet)"),
        (not cfg.name, "name=<loop name>: its rounds are ensembles <name>_r<k>"),
        (not cfg.students, "students: the recipe lists none (recipe=demo | birdnet_probe, configs/recipe/)"),
        (str(cfg.select) not in ("auto", *SELECTABLE), f"select={cfg.select}: auto, {', '.join(SELECTABLE)}"),
        (min_gain < 0, f"min_gain={cfg.min_gain}: >= 0"),
    ]
    for student in cfg.students or []:
        command, name = str(student.get("command", "train")), student.get("name")
        problems.append((command not in COMMANDS, f"students: command {command!r} of {name!r}: use train or probe"))
        problems.append((not name, f"students: {dict(student)} has no name (its runs are <loop>_r<k>_<name>)"))
    for bad, message in problems:
        if bad:
            raise ValueError(message)


def round_zero(cfg: DictConfig) -> None:
    """`<name>_r0`: a copy of the round-0 ensemble, or an ensemble of the round-0 run alone."""
    out = Path(cfg.ensembles_dir) / f"{cfg.name}_r0"
    if cfg.resume and (out / "ensemble.yaml").exists():
        return
    source = _ensemble_yaml(cfg, str(cfg.round0))
    if source.parent == out and source.exists():  # round 0 was built under its round name
        return
    if source.exists():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source.parent, tmp)
        summary = OmegaConf.load(tmp / "ensemble.yaml")
        summary.name = out.name
        OmegaConf.save(summary, tmp / "ensemble.yaml")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        return
    if not (Path(cfg.runs_dir) / str(cfg.round0)).is_dir():
        raise FileNotFoundError(f"round0={cfg.round0!r}: neither {source} nor {Path(cfg.runs_dir) / str(cfg.round0)}/ "
                                "exists: give an ensemble or a run (e.g. birdnet, a probe run, a CNN run)")
    run_ensemble(cfg, [str(cfg.round0)], out.name)


def run_ensemble(cfg: DictConfig, runs: list[str], name: str, labels: Path | None = None) -> None:
    """`src.ensemble` of `runs` as `name`; with a round's pseudo-`labels` (and `priors_from_pseudo`), its site and
    hour prior tables also count them."""
    from src.ensemble import run

    extra = [f"ensemble.metadata_pseudo.path={labels}"] if labels is not None and cfg.priors_from_pseudo else []
    run(compose_stage("ensemble", [*_dirs(cfg, "ensemble"), f"ensembles_dir={cfg.ensembles_dir}", f"runs=[{','.join(runs)}]",
                                   f"name={name}", *extra, *cfg.ensemble_overrides]))


def kept_runs(cfg: DictConfig) -> list[str]:
    """The runs blended into every round's ensemble beside its students: `keep_runs`, and with `keep_round0`
    the members of round 0 (the teacher ensembled with its students), each once."""
    runs = list(cfg.keep_runs)
    if cfg.keep_round0:
        runs += [str(m.run) for m in OmegaConf.load(_ensemble_yaml(cfg, f"{cfg.name}_r0")).members]
    return list(dict.fromkeys(runs))


def pseudo_round(cfg: DictConfig, k: int, reuse: bool) -> tuple[Path, bool]:
    """Round k's pseudo-labels, from round k-1's ensemble: (the parquet, whether it was written now). With `reuse`
    (resume, and round k-1 was not rebuilt) an existing file is kept."""
    from src.pseudo import pseudo_label

    teacher = f"{cfg.name}_r{k - 1}"
    out = Path(cfg.pseudo_dir) / str(cfg.data.name) / f"{teacher}.parquet"
    if reuse and out.exists():
        return out, False
    pseudo_label(compose_stage("pseudo", [*_dirs(cfg, "pseudo"), f"ensembles_dir={cfg.ensembles_dir}",
                                          f"pseudo.teacher={teacher}", f"pseudo.round={k - 1}",
                                          f"pseudo.out={out}", *cfg.pseudo_overrides]))
    return out, True


def student_run(cfg: DictConfig, k: int, student: DictConfig) -> str:
    """The run name of a student of round k: `<loop>_r<k>_<student>`, so two loops never share a student run."""
    return f"{cfg.name}_r{k}_{student.name}"


def loop_folds(cfg: DictConfig) -> list[int]:
    """The folds every student trains: `folds`, or (null) every fold of the folds file (folds.n of the train
    stage, with the stage overrides)."""
    if cfg.folds is not None:
        return [int(f) for f in cfg.folds]
    return list(range(int(compose_stage("train", _dirs(cfg, "train")).folds.n)))


def reusable(run_fold: Path, labels: Path) -> bool:
    """A finished student run fold trained on exactly these pseudo-labels (path and content): `resume` keeps it."""
    from src.infer.runtimes import file_digest

    if not (run_fold / "metrics.json").exists():
        return False
    saved = json.loads((run_fold / "metrics.json").read_text())
    path = OmegaConf.load(run_fold / "config.yaml").pseudo.get("path")
    same = str(path) == str(labels) and saved.get("pseudo_sha256") == file_digest(labels)
    if not same:
        print(f"{run_fold}: trained on other pseudo-labels than {labels}: trained again")
    return same


def train_students(cfg: DictConfig, k: int, labels: Path) -> tuple[list[str], bool]:
    """Every student of round k on every fold (`loop_folds`); returns (their run names, whether any was trained
    now rather than resumed)."""
    exps, trained = [], False
    for student in cfg.students:
        config_name, target, exp_key, pseudo_key = COMMANDS[str(student.get("command", "train"))]
        exp = student_run(cfg, k, student)
        for fold in loop_folds(cfg):
            if cfg.resume and reusable(Path(cfg.runs_dir) / exp / f"fold{fold}", labels):
                continue
            extra = list(cfg.train_overrides) if config_name == "train" else []
            _call(target, compose_stage(config_name, [*_dirs(cfg, config_name), *student.overrides, *extra,
                                                      f"{exp_key}={exp}", f"fold={fold}", f"{pseudo_key}={labels}"]))
            trained = True
        exps.append(exp)
    return exps, trained


def round_record(cfg: DictConfig, k: int, seconds: float, labels: Path | None) -> dict:
    """One row of the rounds table, read from the round's ensemble.yaml and its pseudo-labels' sidecar."""
    summary = OmegaConf.to_container(OmegaConf.load(_ensemble_yaml(cfg, f"{cfg.name}_r{k}")))
    meta = json.loads(Path(f"{labels}.json").read_text()) if labels else {}
    return {"round": k, "ensemble": f"{cfg.name}_r{k}", "members": [m["run"] for m in summary["members"]],
            "oof_score": summary.get("oof_score"), "soundscape_auc": summary.get("soundscape_oof_score"),
            "labelled_auc": summary.get("labelled_oof_score"), "test_score": summary.get("test_score"), "pseudo_auc": meta.get("pseudo_auc"),
            "seconds": round(seconds, 1)}


def best_round(rounds: list[dict], select: str, min_gain: float = 0.0) -> tuple[int, str]:
    """The round with the highest CV and which CV decided (auto: labelled_auc when every round has it (2026),
    else soundscape_auc when every round has it, else oof_score); a later round replaces the best so far only
    when its CV is higher by more than `min_gain` (CV noise)."""
    key = select
    if select == "auto":
        key = next((k for k in SELECTABLE if all(r.get(k) is not None for r in rounds)), "oof_score")
    if key not in SELECTABLE or any(r.get(key) is None for r in rounds):
        raise ValueError(f"select={select}: {key} is not known for every round (use auto or oof_score)")
    best = rounds[0]
    for r in rounds[1:]:
        if r[key] > best[key] + min_gain:
            best = r
    return best["round"], key


def selftrain(cfg: DictConfig) -> dict:
    """Run round 0 and `cfg.rounds` rounds of self-training; returns the summary written to selftrain.json."""
    check_settings(cfg)
    t0 = time.time()
    round_zero(cfg)
    rounds = [round_record(cfg, 0, time.time() - t0, None)]
    rebuilt = not cfg.resume  # once a round is rebuilt, every later round is (its inputs changed)
    for k in range(1, int(cfg.rounds) + 1):
        t0 = time.time()
        labels, relabelled = pseudo_round(cfg, k, reuse=not rebuilt)
        exps, retrained = train_students(cfg, k, labels)
        rebuilt = rebuilt or relabelled or retrained or not _ensemble_yaml(cfg, f"{cfg.name}_r{k}").exists()
        if rebuilt:
            run_ensemble(cfg, kept_runs(cfg) + exps, f"{cfg.name}_r{k}", labels)
        rounds.append(round_record(cfg, k, time.time() - t0, labels))
        print_rounds(rounds)
    best, key = best_round(rounds, str(cfg.select), float(cfg.min_gain))
    summary = {"name": str(cfg.name), "round0": str(cfg.round0), "best_round": best, "selected_by": key,
               "rounds": rounds}
    keep_best(cfg, best, summary)
    print_rounds(rounds)
    print(f"best round by {key}: {best} -> {Path(cfg.ensembles_dir) / str(cfg.name)}")
    return summary


def keep_best(cfg: DictConfig, best: int, summary: dict) -> None:
    """`ensembles/<name>/` becomes a copy of the chosen round (renamed into place), with selftrain.json."""
    out = Path(cfg.ensembles_dir) / str(cfg.name)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(Path(cfg.ensembles_dir) / f"{cfg.name}_r{best}", tmp)
    chosen = OmegaConf.load(tmp / "ensemble.yaml")  # its own leaderboard row, named for the loop
    chosen.name, chosen.selftrain_round = str(cfg.name), best
    OmegaConf.save(chosen, tmp / "ensemble.yaml")
    with atomic_write(tmp / "selftrain.json") as part:
        Path(part).write_text(json.dumps(summary, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def print_rounds(rounds: list[dict]) -> None:
    def num(v):
        return "-" if v is None else f"{v:.4f}"

    print("round  ensemble                 oof_score  soundscape_auc  labelled_auc  pseudo_auc  test_score  minutes")
    for r in rounds:
        print(f"{r['round']:5d}  {r['ensemble']:<24} {num(r['oof_score']):>9}  {num(r['soundscape_auc']):>14}  "
              f"{num(r.get('labelled_auc')):>12}  {num(r['pseudo_auc']):>10}  {num(r['test_score']):>10}  "
              f"{r['seconds'] / 60:7.1f}")


@hydra.main(config_path="../configs", config_name="selftrain", version_base=None)
def main(cfg: DictConfig) -> None:
    # the data choice of this command line reaches every stage
    given = [o for o in HydraConfig.get().overrides.task if o.startswith("data")]
    selftrain(OmegaConf.merge(cfg, {"stage_overrides": [*given, *cfg.stage_overrides]}))


if __name__ == "__main__":
    main()
