"""`python -m src.pseudo teacher=<ensemble | run | birdnet | perch>`: soft pseudo-labels for every unlabelled
soundscape window.

The teacher (an ensemble's members, weights, blend and post-processing, or one run of any kind, loaded with
`src.models.export.eager_runtime`) predicts every window of prepare's soundscape index, each file decoded once and
windows batched across files. The probabilities are transformed (smoothing over neighbouring windows,
temperature, power, threshold) and written as a parquet (`filename, window, start_s, end_s, <class>...`) with
a sidecar `<file>.json` (teacher, round, classes, competition, transform). When the windows' truth is known
(the demo's `train_soundscapes_truth.csv`), the macro ROC-AUC of the pseudo-labels against it is printed.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import hydra
import numpy as np
import polars as pl
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.config import (
    fold_classes,  # (importing src.config registers the root_tag resolver)
    fold_dirs,
)
from src.data.audio_cache import load_soundscape_index
from src.data.competition import load_competition
from src.data.pseudo_labels import KEYS, PseudoLabelError, sidecar
from src.evaluation.metrics import macro_auc
from src.infer.blend import combine_members, member_weights
from src.infer.io import atomic_write
from src.infer.postprocess import postprocess_rows
from src.models.predict import member_predictions

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- teacher

def resolve_teacher(name: str, runs_dir: Path, ensembles_dir: Path, inference: DictConfig) -> dict:
    """The teacher `name` as {members: [{run, fold_dirs, weight}], blend, power, inference, kind}.

    An ensemble (`ensembles/<name>/ensemble.yaml`) brings its members, weights, blend and inference settings;
    otherwise a run (`runs/<name>/fold*/`, e.g. the teacher runs `birdnet`, `perch`) is a one-member teacher
    with the given `inference` settings.
    """
    if not name:
        raise PseudoLabelError("no teacher: python -m src.pseudo teacher=<ensemble or run name>")
    spec = Path(ensembles_dir) / str(name) / "ensemble.yaml"
    if spec.exists():
        ens = OmegaConf.load(spec)
        ens_runs = Path(ens.get("runs_dir", runs_dir))
        members = [{"run": m.run, "weight": float(m.weight), "classes": m.get("classes"),
                    "fold_dirs": [str(ens_runs / m.run / f"fold{k}") for k in m.folds]} for m in ens.members]
        return {"kind": "ensemble", "name": str(name), "members": members, "blend": str(ens.blend),
                "class_weights": ens.get("class_weights"),
                "power": float(ens.power), "inference": ens.inference}
    if not (Path(runs_dir) / str(name)).is_dir():
        raise PseudoLabelError(f"teacher {name!r}: neither {spec} nor a run folder {Path(runs_dir) / str(name)}/ "
                               "exists: build it (`python -m src.ensemble`, `python -m src.train`, or the teacher "
                               "run, e.g. `python -m src.probe teacher=birdnet`) or check the name")
    dirs = [str(d) for d in fold_dirs(Path(runs_dir), str(name))]
    return {"kind": "run", "name": str(name), "members": [{"run": str(name), "weight": 1.0, "fold_dirs": dirs}],
            "blend": "mean", "power": 1.0, "inference": inference}


def check_teacher_classes(teacher: dict, classes: list[str]) -> None:
    """The teacher's folds must predict `classes` (the competition's) together: each fold a subset of them (a
    specialist member, `data.classes`) with every class covered by one member at least, and the folds of one
    member in one order. Records each member's class order (`classes`) so its columns are aligned by name."""
    covered: set[str] = set()
    for member in teacher["members"]:
        try:
            member["classes"] = fold_classes(member["fold_dirs"], classes)
        except ValueError as exc:
            raise PseudoLabelError(f"teacher {teacher['name']!r}: {exc}") from exc
        covered |= set(member["classes"])
    if covered != set(classes):
        raise PseudoLabelError(f"teacher {teacher['name']!r}: its classes differ from the competition's: no member "
                               f"predicts {sorted(set(classes) - covered)[:5]} (trained on another competition?)")


def predict_windows(teacher: dict, files: list[Path], classes: list[str], threads: int) -> tuple[list[str], np.ndarray]:
    """The teacher's blended, post-processed probabilities of every 5 s window of `files` (row_ids, (N, C)):
    from the teacher cache when it holds them (`cached_members`), else each file decoded and predicted."""
    cfg = OmegaConf.create({"ensemble": OmegaConf.to_container(teacher["inference"], resolve=True)})
    ids, preds, problems = member_predictions(teacher["members"], "train_soundscapes", files, cfg, classes, threads)
    for p in problems:
        log.warning(p)
    post = OmegaConf.to_container(cfg.ensemble.postprocess, resolve=True) or {}
    probs = combine_members(preds, member_weights(teacher["members"], teacher.get("class_weights")), teacher["blend"],
                            teacher["power"], ids, post, np.zeros(len(classes), np.float32))
    return ids, probs


# -------------------------------------------------------------------------------------------- transforms

def _number(value, key: str) -> float:
    """`value` as a finite float; PseudoLabelError naming `pseudo.transform.<key>` for anything else (null, text,
    inf, a list)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PseudoLabelError(f"pseudo.transform.{key}={value!r}: must be a finite number (configs/pseudo.yaml)")
    return float(value)


def class_thresholds(threshold, classes: list[str]) -> np.ndarray:
    """Per-class thresholds from one number, a mapping {default: t, <class>: t}, or null (none), each in [0, 1)."""
    if threshold is None:
        return np.zeros(len(classes), np.float32)
    if isinstance(threshold, Mapping | DictConfig):
        table = {str(k): _number(v, f"threshold.{k}") for k, v in dict(threshold).items()}
        unknown = set(table) - set(classes) - {"default"}
        if unknown:
            raise PseudoLabelError(f"pseudo.transform.threshold names unknown classes {sorted(unknown)[:5]}")
        values = np.array([table.get(c, table.get("default", 0.0)) for c in classes], np.float32)
    elif isinstance(threshold, str | ListConfig | list | tuple):
        raise PseudoLabelError(f"pseudo.transform.threshold={threshold!r}: a number or a mapping {{default: t, "
                               "<class>: t}")
    else:
        values = np.full(len(classes), _number(threshold, "threshold"), np.float32)
    if not ((values >= 0) & (values < 1)).all():
        raise PseudoLabelError(f"pseudo.transform.threshold={threshold}: each threshold must be in [0, 1) (1 or more "
                               "zeroes every label)")
    return values


def check_transform(tcfg, classes: list[str]) -> dict:
    """The transform settings, checked before the teacher predicts anything (PseudoLabelError names the key);
    returns them parsed: {smoothing: [w, ...] | None, temperature, power, thresholds (C,)}."""
    smoothing = tcfg.get("smoothing")
    if smoothing is not None:
        if not isinstance(smoothing, ListConfig | list | tuple):
            raise PseudoLabelError(f"pseudo.transform.smoothing={smoothing!r}: a list of weights, e.g. [0.25, 0.5, "
                                   "0.25], or null")
        if any(isinstance(w, bool) or not isinstance(w, int | float) for w in smoothing):
            raise PseudoLabelError(f"pseudo.transform.smoothing={list(smoothing)}: weights must be numbers")
        weights = np.asarray(list(smoothing), np.float64)
        if (weights < 0).any() or weights.sum() <= 0 or not np.isfinite(weights).all():
            raise PseudoLabelError(f"pseudo.transform.smoothing={list(smoothing)}: weights >= 0 with a positive sum")
    temperature, power = _number(tcfg.get("temperature", 1.0), "temperature"), _number(tcfg.get("power", 1.0), "power")
    if not temperature > 0:
        raise PseudoLabelError(f"pseudo.transform.temperature={tcfg.get('temperature')}: must be > 0")
    if not power > 0:
        raise PseudoLabelError(f"pseudo.transform.power={tcfg.get('power')}: must be > 0 (a negative power turns "
                               "probabilities into values above 1)")
    return {"smoothing": list(smoothing) if smoothing else None, "temperature": temperature, "power": power,
            "thresholds": class_thresholds(tcfg.get("threshold", 0.0), classes)}


def transform(probs: np.ndarray, ids: list[str], classes: list[str], tcfg) -> np.ndarray:
    """Smoothing over neighbouring windows, then temperature, power and threshold (labels below it zeroed)."""
    settings = check_transform(tcfg, classes)
    out = postprocess_rows(ids, probs, {"smoothing": settings["smoothing"]}) if settings["smoothing"] else probs
    out = np.clip(out.astype(np.float64), 1e-7, 1 - 1e-7)
    if settings["temperature"] != 1.0:
        logit = np.log(out) - np.log1p(-out)
        out = 1 / (1 + np.exp(-logit / settings["temperature"]))
    out = out ** settings["power"]
    out[out < settings["thresholds"]] = 0.0
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------- file checks


# ------------------------------------------------------------------------------------------------ truth

def truth_auc(truth_csv: Path | None, ids: list[str], probs: np.ndarray, classes: list[str]) -> float | None:
    """Macro ROC-AUC of window probabilities against a solution-like truth CSV (None when unknown)."""
    if truth_csv is None or not truth_csv.exists():
        return None
    truth = pl.read_csv(truth_csv)
    pred = pl.DataFrame({"row_id": ids, **{c: probs[:, i] for i, c in enumerate(classes)}})
    both = truth.select("row_id", *classes).join(pred, on="row_id", how="inner", suffix="_p")
    if both.height == 0:
        return None
    try:
        return macro_auc(both.select(classes).to_numpy(), both.select([f"{c}_p" for c in classes]).to_numpy())
    except ValueError:  # no class with both positives and negatives
        return None


# ------------------------------------------------------------------------------------------------- run

def _window_ids(index: pl.DataFrame, window_s: float) -> list[str]:
    stems = [Path(f).stem for f in index["filename"].to_list()]
    return [f"{s}_{round((w + 1) * window_s)}" for s, w in zip(stems, index["window"].to_list())]


def pseudo_label(cfg: DictConfig) -> dict:
    """Predict, transform and write the pseudo-labels of `cfg.pseudo`; returns the sidecar's content."""
    pcfg = cfg.pseudo
    comp = load_competition(cfg.data.root, cfg.data.layout)
    check_transform(pcfg.transform, comp.classes)
    teacher = resolve_teacher(pcfg.teacher, Path(cfg.runs_dir), Path(cfg.ensembles_dir), cfg.ensemble)
    classes = comp.classes
    check_teacher_classes(teacher, classes)
    index = load_soundscape_index(cfg.data.cache_dir).sort("filename", "window")
    if "labelled" in index.columns:  # 2026: a labelled soundscape's windows have their truth, not pseudo-labels
        index = index.filter(~pl.col("labelled"))
    if index.height == 0:
        raise PseudoLabelError(f"{Path(cfg.data.cache_dir) / 'soundscapes.parquet'}: no unlabelled window "
                               f"(no good soundscape in {comp.soundscape_dir})")
    files = [comp.soundscape_dir / f for f in index["filename"].unique(maintain_order=True).to_list()]
    ids, raw = predict_windows(teacher, files, classes, int(cfg.threads))
    window_s = float(cfg.audio.window_s)  # prepare cut the index's windows with it
    pos = {r: i for i, r in enumerate(ids)}
    want = _window_ids(index, window_s)
    if any(r not in pos for r in want):
        raise PseudoLabelError(f"teacher {pcfg.teacher!r} cuts windows other than the index's {window_s:g} s ones")
    rows = np.array([pos[r] for r in want])
    raw = raw[rows]
    probs = transform(raw, want, classes, pcfg.transform)
    truth = Path(pcfg.truth) if pcfg.truth else None
    meta = {"teacher": str(pcfg.teacher), "teacher_kind": teacher["kind"], "round": int(pcfg.round),
            "members": [m["run"] for m in teacher["members"]], "classes": classes,
            "competition": str(cfg.data.competition), "data": str(cfg.data.name), "windows": len(want),
            "transform": OmegaConf.to_container(pcfg.transform, resolve=True),
            "teacher_auc": truth_auc(truth, want, raw, classes), "pseudo_auc": truth_auc(truth, want, probs, classes)}
    write_pseudo(Path(pcfg.out), index.select(KEYS), probs, meta)
    return meta


def write_pseudo(out: Path, keys: pl.DataFrame, probs: np.ndarray, meta: dict) -> None:
    """The parquet and its sidecar, each written to a temporary name and renamed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    table = keys.with_columns([pl.Series(c, probs[:, i], dtype=pl.Float32) for i, c in enumerate(meta["classes"])])
    with atomic_write(out) as tmp:
        table.write_parquet(tmp)
    with atomic_write(sidecar(out)) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1))
    mass = probs.sum(axis=1)
    print(f"wrote {out}: {len(probs)} windows from teacher {meta['teacher']} (round {meta['round']}), "
          f"mean label mass {mass.mean():.3f}, {np.mean(mass > 0):.0%} windows with a label")
    if meta["pseudo_auc"] is not None:
        print(f"pseudo-label macro ROC-AUC against the truth: {meta['pseudo_auc']:.4f} "
              f"(teacher before the transform {meta['teacher_auc']:.4f})")


@hydra.main(config_path="../configs", config_name="pseudo", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        pseudo_label(cfg)
    except (PseudoLabelError, FileNotFoundError) as exc:
        sys.exit(f"src.pseudo: {exc}")


if __name__ == "__main__":
    # here `teacher=<name>` names the teacher run or ensemble, not src.teacher's config group
    sys.argv = [f"pseudo.{a}" if a.startswith("teacher=") else a for a in sys.argv]
    main()
