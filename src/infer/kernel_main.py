"""Entry point of the generated Kaggle inference script (see `src.kernel`).

Kernel-safe: uses only the other modules of `src/infer/` (the script inlines that package, `src.kernel.kernel_modules`)
plus the standard library and numpy. Reads `/kaggle/input` and writes
`/kaggle/working/submission.csv`; `KAGGLE_INPUT_DIR` / `KAGGLE_WORKING_DIR` override both.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from src.infer.blend import combine_members, member_weights, widen_columns
from src.infer.runtimes import (
    TeacherError,
    ensure_runtime,
    export_problem,
    is_teacher_dir,
    load_models,
    teacher_model_path,
)
from src.infer.soundscape import align_rows, list_soundscapes, n_windows, predict_model_groups
from src.infer.submission import align, expected_rows, read_sample_submission, row_ids, write_submission

COMPETITION_SLUG = "birdclef-2025"  # replaced by src.kernel build
DATASET_SLUG = "birdclef-weights"  # replaced by src.kernel build
UNREADABLE_ENSEMBLE_VALUE = 0.5  # every value of the crash fallback when ensemble.json cannot be read


class MembersLostError(RuntimeError):
    """Every member of the ensemble was dropped (corrupt exports, broken teacher models, failures): the message
    says why, per member; the kernel writes the class prior (`main`)."""


def kaggle_paths() -> tuple[Path, Path, Path]:
    """(competition dir, weights dataset dir, working dir)."""
    input_dir = Path(os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input"))
    working = Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))
    return input_dir / COMPETITION_SLUG, input_dir / DATASET_SLUG, working


def choose_runtime(cfg: dict, weights_dir: Path) -> str:
    """The ensemble's runtime if its package imports or installs from the shipped wheels, else its
    fallback (exported too, e.g. TorchScript, which Kaggle's torch always runs): a wheel that does not
    match Kaggle's Python must not cost the submission. Only the wheels ensemble.json names are installed."""
    log = logging.getLogger("kernel")
    runtime, fallback = cfg["runtime"], cfg.get("fallback_runtime")
    try:
        # installed outside /kaggle/working, which Kaggle keeps as the kernel's output
        ensure_runtime(runtime, weights_dir / "wheels", Path(tempfile.gettempdir()) / "birdclef-site-packages",
                       python_wheels(cfg.get("wheels")))
        return runtime
    except (ImportError, OSError, subprocess.CalledProcessError) as err:
        if not fallback or fallback == runtime:
            raise
        log.warning("runtime %s unavailable (%s): running the %s exports instead", runtime, err, fallback)
        return fallback


def python_wheels(wheels: dict | list | None) -> list[str] | None:
    """The shipped wheels for this interpreter: ensemble.json's `wheels` maps a Python version ("3.12") to
    its wheel files (none listed for this Python: []); a plain list (older kernels) is used as it is."""
    if not isinstance(wheels, dict):
        return wheels
    return wheels.get(f"{sys.version_info.major}.{sys.version_info.minor}", [])


def list_test_soundscapes(test_dir: Path) -> list[Path]:
    """The audio files of `test_dir`, sorted; [] when it is missing or empty (a Kaggle notebook when it is
    saved: the hidden test files appear only at scoring). One file per stem (a row id names the stem):
    see `one_file_per_stem`."""
    log = logging.getLogger("kernel")
    files, skipped = list_soundscapes(test_dir)
    if not files:
        log.warning("%s: %s: writing the sample submission's rows with the fallback", test_dir,
                    "no audio files" if test_dir.is_dir() else "not found")
    for problem in skipped:
        log.warning(problem)
    return files


def model_runtimes(runtime: str, fallback: str | None, dirs: list[Path], specs: list[dict | None],
                   dropped: dict[Path, str] | None = None) -> list[str | None]:
    """Per model, the runtime whose export files are intact: `runtime`, else `fallback`, else None (the
    model is dropped, as is one without a readable model.json). A teacher run has one set of files whatever
    the runtime (teacher.json, probe.npz, its teacher model file): it is dropped when one is missing or
    corrupt. Each bad file is logged by name, and `dropped` (if given) gets each dropped model's reason."""
    log = logging.getLogger("kernel")
    kinds: list[str | None] = []
    for d, spec in zip(dirs, specs, strict=True):
        kind = None
        candidates = list(dict.fromkeys(k for k in (runtime, fallback) if k)) if spec is not None else []
        if is_teacher_dir(d):
            candidates = candidates[:1]
        problem = f"{d / 'model.json'}: unreadable"
        for candidate in candidates:
            problem = export_problem(candidate, d, spec.get("files"))
            if problem is None:
                kind = candidate
                break
            log.warning("%s: %s", problem, f"trying its {fallback} export" if candidate != candidates[-1]
                        else "model dropped")
        if kind is None and dropped is not None:
            dropped[d] = problem
        kinds.append(kind)
    return kinds


def read_model_spec(model_dir: Path) -> dict | None:
    """The model's model.json (audio key, front-end id, file digests); None, logged, if it cannot be read."""
    try:
        return json.loads((model_dir / "model.json").read_text())
    except (OSError, ValueError) as exc:
        logging.getLogger("kernel").warning("%s: unreadable (%s): model dropped", model_dir / "model.json", exc)
        return None


def time_budget(cfg: dict) -> tuple[float, float]:
    """(budget in minutes, safety margin as a fraction of it): `budget_min` / `margin` of ensemble.json (set
    by `src.kernel build`; none: no guard), overridden by the environment variables BIRDCLEF_BUDGET_MIN /
    BIRDCLEF_MARGIN (`python -m src.kernel run ... budget_min=X` sets them)."""
    budget = float(os.environ.get("BIRDCLEF_BUDGET_MIN") or cfg.get("budget_min") or "inf")
    margin = float(os.environ.get("BIRDCLEF_MARGIN") or cfg.get("margin") or 0.0)
    return budget, margin


def member_models(member: dict) -> list[str]:
    """A member's model folders under runs/<run>/ (and the kernel's models/<run>/): its `models` (full-data
    fits, e.g. `foldall`), else its folds (`fold<k>`)."""
    return list(member.get("models") or [f"fold{f}" for f in member["folds"]])


def member_dirs(cfg: dict, weights_dir: Path) -> list[list[Path]]:
    """Each member's exported model folders: `models/<run>/<model>` for each of its `member_models`."""
    return [[weights_dir / "models" / m["run"] / name for name in member_models(m)] for m in cfg["members"]]


def predict_member(files: list[Path], kinds: list[str], dirs: list[Path], specs: list[dict], n_classes: int,
                   inference: dict, threads: int, timings: dict | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """One member's window probabilities (its models averaged): `predict_models`'s, averaged."""
    ids, preds, problems = predict_models(files, kinds, dirs, specs, n_classes, inference, threads, timings)
    return ids, np.mean(np.stack(preds), axis=0), problems


def predict_models(files: list[Path], kinds: list[str], dirs: list[Path], specs: list[dict], n_classes: int | list[int],
                   inference: dict, threads: int, timings: dict | None = None
                   ) -> tuple[list[str], list[np.ndarray], list[str]]:
    """Each model's window probabilities (model k run with `kinds[k]`), the way the kernel runs them: models that
    cut the audio alike share a decoding pass and, with a split runtime, a mel; teacher runs of one teacher model
    share its forward (one per window for all their heads). `timings["load_s"]` (if given) accumulates the time
    spent loading models. Returns (row_ids, per-model probs, problems)."""
    def load_group(js: list[int]):
        t0 = time.time()
        predict = load_models([kinds[j] for j in js], [dirs[j] for j in js],
                              [specs[j].get("frontend_id") or str(dirs[j]) for j in js], threads)
        if timings is not None:
            timings["load_s"] = timings.get("load_s", 0.0) + time.time() - t0
        return predict

    return predict_model_groups(
        files, [(spec["sample_rate"], spec["window_s"]) for spec in specs], load_group, n_classes,
        inference["context_s"], tuple(inference["shifts_s"]), inference["batch_size"], inference["fallback_duration_s"],
        decode_ahead=int(inference.get("decode_ahead") or 0))  # absent from kernels built before it: off


def member_units(models: dict[int, list[int]], parts) -> list[list[int]]:
    """The members (index -> its model indices; `parts(ks)` -> their kinds, dirs, specs) in passes over the test
    files: the members whose models run the same teacher model file share one pass (zero-shot and probe runs of
    every fold: one teacher forward per window for all of them); any other member is a pass of its own. Ordered by
    each pass's first member."""
    units: list[list[int]] = []
    by_teacher: dict[tuple[str, ...], int] = {}
    for i, ks in models.items():
        key = tuple(sorted({str(p) for p in map(teacher_model_path, parts(ks)[1]) if p is not None}))
        if key and key in by_teacher:
            units[by_teacher[key]].append(i)
            continue
        if key:
            by_teacher[key] = len(units)
        units.append([i])
    return units


def predict_members(cfg: dict, weights_dir: Path, files: list[Path],
                    deadline: float = float("inf")) -> tuple[list[str], np.ndarray, list[str]]:
    """(row ids, blended and post-processed probabilities in the ensemble's class order, problems) of the
    test files. Members whose every model is dropped (a corrupt export, a missing or corrupt teacher model
    file) or that fail to load or run (e.g. a teacher model its runtime cannot read) leave the blend, whose
    weights renormalise over the rest; with no member left this raises MembersLostError, saying why. The
    members run one at a time in ensemble order under the time guard (`run_members`)."""
    log = logging.getLogger("kernel")
    owners, dirs = zip(*[(i, d) for i, ds in enumerate(member_dirs(cfg, weights_dir)) for d in ds], strict=True)
    # teacher runs bring their own runtime (installed when their model loads): the CNN runtime's wheels are
    # installed only when a CNN export will run (onnxruntime's install is half of the 3.8 s that both take)
    runtime = cfg["runtime"] if all(map(is_teacher_dir, dirs)) else choose_runtime(cfg, weights_dir)
    specs = [read_model_spec(d) for d in dirs]
    dropped: dict[Path, str] = {}
    kinds = model_runtimes(runtime, cfg.get("fallback_runtime"), list(dirs), specs, dropped)
    keep = [k for k, kind in enumerate(kinds) if kind]
    members = sorted({owners[k] for k in keep})
    lost = {i: "; ".join(dropped[d] for d, o in zip(dirs, owners, strict=True) if o == i and d in dropped)
            for i in range(len(cfg["members"])) if i not in members}
    for i, why in lost.items():
        log.warning("member %s dropped (%s): blending the other %d", cfg["members"][i]["run"], why, len(members))
    models = {i: [k for k in keep if owners[k] == i] for i in members}
    ids, preds, kept, problems = run_members(cfg, files, models, lambda ks: ([kinds[k] for k in ks],
                                             [dirs[k] for k in ks], [specs[k] for k in ks]), deadline, lost)
    if not kept:
        raise MembersLostError("every member lost (" + "; ".join(f"{cfg['members'][i]['run']}: {why}" for i, why in
                                                                 sorted(lost.items())) +
                               "): the submission is the class prior; rebuild the kernel")
    weights = member_weights(cfg["members"], cfg.get("class_weights"))[kept]  # renormalised per class by the blend
    if weights.ndim == 1 and weights.sum() <= 0:
        weights = np.ones(len(kept))
    probs = combine_members(preds, weights, cfg["blend"], cfg["power"], ids, cfg["inference"]["postprocess"],
                            np.asarray(cfg["fallback"], np.float32))
    log.info("%d of %d member(s) blended: %d windows each", len(kept), len(cfg["members"]), len(ids))
    return ids, probs, problems


def run_members(cfg: dict, files: list[Path], models: dict[int, list[int]], parts, deadline: float,
                lost: dict[int, str] | None = None) -> tuple[list[str], list[np.ndarray], list[int], list[str]]:
    """Predict the members (`models`: member index -> its model indices; `parts(ks)` -> their kinds, dirs, specs)
    pass by pass (`member_units`: the members of one teacher model share a pass) in ensemble order under the time
    guard: a pass starts only if it is projected to finish before `deadline` (a time.time() value); the first
    always runs. Its cost is projected from `plan` (seconds per file measured at build) scaled by how the finished
    passes compared with their plan, or else from the seconds per model so far. A pass that raises (a teacher model
    its runtime cannot load, a missing runtime, ...) drops its members, logged with the teacher model file, and the
    others go on; a teacher that failed to load (TeacherError, ImportError) drops the later members on it without
    a retry. `lost` (if given) gets each dropped member's reason. Returns (row_ids, finished members' predictions,
    their indices, problems)."""
    log = logging.getLogger("kernel")
    threads = int(cfg["inference"].get("threads") or os.cpu_count() or 1)
    units = member_units(models, parts)
    done = {"ids": [], "preds": [], "kept": [], "spent": [], "problems": [], "broken": {}}
    lost = {} if lost is None else lost
    for u, unit in enumerate(units):
        names = ", ".join(cfg["members"][i]["run"] for i in unit)
        ks = [k for i in unit for k in models[i]]
        teachers = sorted({p for p in map(teacher_model_path, parts(ks)[1]) if p is not None})
        if any(t in done["broken"] for t in teachers):
            lost |= {i: "not retried: " + "; ".join(done["broken"][t] for t in teachers if t in done["broken"])
                     for i in unit}
            log.error("member(s) %s dropped: %s", names, lost[unit[0]])
            continue
        if done["kept"] and over_budget(cfg, unit, models, done, deadline):
            dropped = [cfg["members"][i]["run"] for rest in units[u:] for i in rest]
            log.warning("time guard: member(s) %s projected past the budget minus the margin (%.0f s left): dropped "
                        "%s; blending %d member(s)", names, deadline - time.time(), ", ".join(dropped),
                        len(done["kept"]))
            break
        run_unit(cfg, files, unit, models, parts, threads, teachers, done, lost)
    return done["ids"], done["preds"], done["kept"], done["problems"]


def over_budget(cfg: dict, unit: list[int], models: dict[int, list[int]], done: dict, deadline: float) -> bool:
    """True when the pass of `unit` is projected (`_projected_s`) to end after `deadline`."""
    planned = [float(p.get("s_per_file", 0.0)) for p in cfg.get("plan") or []]
    n_models = [len(models.get(i, [])) for i in range(len(cfg["members"]))]
    return time.time() + _projected_s(unit, done["kept"], sum(done["spent"]), planned, n_models) > deadline


def run_unit(cfg: dict, files: list[Path], unit: list[int], models: dict[int, list[int]], parts, threads: int,
             teachers: list[Path], done: dict, lost: dict[int, str]) -> None:
    """One pass: the models of `unit`'s members over every file, each member's models averaged into `done`; a
    failure drops the unit's members (see run_members)."""
    log = logging.getLogger("kernel")
    ks = [k for i in unit for k in models[i]]
    member_classes = {i: cfg["members"][i].get("classes") or cfg["classes"] for i in unit}  # a specialist's fewer
    t0 = time.time()
    try:
        ids, preds, problems = predict_models(files, *parts(ks), [len(member_classes[i]) for i in unit
                                                                  for _ in models[i]], cfg["inference"], threads)
    except Exception as exc:  # one pass's failure must not cost the others (nor the kernel)
        what = (f"teacher model {', '.join(map(str, teachers))} failed to load or run" if teachers else
                "failed to load or run")
        reason = f"{what} ({type(exc).__name__}: {exc})"
        lost |= {i: reason for i in unit}
        if teachers and isinstance(exc, (TeacherError, ImportError)):
            done["broken"] |= {t: reason for t in teachers}
        log.exception("member(s) %s dropped: %s; blending the others",
                      ", ".join(cfg["members"][i]["run"] for i in unit), reason)
        return
    done["spent"].append(time.time() - t0)
    done["ids"] = done["ids"] or ids
    start = 0
    for i in unit:
        member = widen_columns(np.mean(np.stack(preds[start:start + len(models[i])]), axis=0), member_classes[i],
                               cfg["classes"])
        start += len(models[i])
        done["preds"].append(align_rows(done["ids"], ids, member))
        done["kept"].append(i)
    done["problems"] += [p for p in problems if p not in done["problems"]]
    log.info("member(s) %s: %d model(s) in one pass, %d windows, %.1f s",
             ", ".join(cfg["members"][i]["run"] for i in unit), len(ks), len(ids), done["spent"][-1])


def _projected_s(unit: list[int], done: list[int], spent: float, planned: list[float], n_models: list[int]) -> float:
    """Seconds the pass of `unit` should take, from the finished members' time `spent` (see run_members): their
    plan scaled by how the finished ones compared with theirs, or else the seconds per model so far."""
    if len(planned) == len(n_models) and all(planned[k] >= 0 for k in done) and sum(planned[k] for k in done) > 0 \
            and sum(planned[i] for i in unit) > 0:
        return sum(planned[i] for i in unit) * spent / sum(planned[k] for k in done)
    return spent / max(sum(n_models[k] for k in done), 1) * sum(n_models[i] for i in unit)


def run_kernel() -> Path:
    """Predict every test soundscape with the ensemble and write submission.csv; returns its path."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    log = logging.getLogger("kernel")
    started = time.time()
    comp_dir, weights_dir, working = kaggle_paths()
    cfg = json.loads((weights_dir / "ensemble.json").read_text())
    classes = cfg["classes"]
    sample_rows, sample_classes = read_sample_submission(comp_dir / "sample_submission.csv")
    if sample_classes != classes:
        log.warning("sample_submission.csv classes differ from the ensemble's: columns follow the sample")
    files = list_test_soundscapes(comp_dir / "test_soundscapes")
    budget_min, margin = time_budget(cfg)
    deadline = started + budget_min * 60 * (1 - margin)
    ids, probs, problems = predict_members(cfg, weights_dir, files, deadline) if files else \
        ([], np.zeros((0, len(classes)), np.float32), [])
    for p in problems:
        log.warning(p)
    fallback = np.asarray(cfg["fallback"], np.float32)
    probs = _reorder_columns(probs, classes, sample_classes)
    rows = expected_rows(ids, sample_rows)
    probs, align_problems = align(ids, probs, rows, _reorder_columns(fallback[None], classes, sample_classes)[0])
    for p in align_problems:
        log.warning(p)
    out = working / "submission.csv"
    write_submission(out, rows, sample_classes, probs)
    log.info("wrote %s: %d rows, %d files, %.1f s wall (budget %.1f min - %.0f%%)", out, len(rows), len(files),
             time.time() - started, budget_min, 100 * margin)
    return out


def _reorder_columns(probs: np.ndarray, classes: list[str], target: list[str]) -> np.ndarray:
    """`probs` (columns `classes`) with the columns `target` (the sample submission's); 0 where a class is new."""
    if classes == target:
        return probs
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(probs), len(target)), np.float32)
    for j, c in enumerate(target):
        out[:, j] = probs[:, index[c]] if c in index else 0.0
    return out


def fallback_rows(weights_dir: Path, files: list[Path], classes: list[str]) -> tuple[list[str], np.ndarray]:
    """(row ids, one row of values in `classes` order) of the crash fallback: every file's windows at the
    ensemble's window length for `fallback_duration_s`, at the ensemble's class prior. Raises (OSError,
    ValueError, KeyError, ...) when ensemble.json or every model.json cannot be read."""
    cfg = json.loads((weights_dir / "ensemble.json").read_text())
    specs = [read_model_spec(d) for ds in member_dirs(cfg, weights_dir) for d in ds]
    spec = next(s for s in specs if s is not None)
    count = n_windows(round(float(cfg["inference"]["fallback_duration_s"]) * spec["sample_rate"]),
                      round(spec["window_s"] * spec["sample_rate"]))
    ids = [r for f in files for r in row_ids(f.stem, count, spec["window_s"])]
    prior = np.asarray(cfg["fallback"], np.float32)
    return ids, _reorder_columns(prior[None], cfg["classes"], classes)[0]


def write_fallback_submission() -> Path:
    """The submission of a crashed kernel: `fallback_rows`, or the sample submission's rows at
    UNREADABLE_ENSEMBLE_VALUE when ensemble.json (or every model.json) cannot be read. Returns its path."""
    log = logging.getLogger("kernel")
    comp_dir, weights_dir, working = kaggle_paths()
    sample_rows, classes = read_sample_submission(comp_dir / "sample_submission.csv")
    files = list_test_soundscapes(comp_dir / "test_soundscapes")
    try:
        ids, values = fallback_rows(weights_dir, files, classes)
    except (OSError, ValueError, KeyError, IndexError, TypeError, StopIteration) as exc:
        log.warning("%s unreadable (%s: %s): the sample submission's rows at %s", weights_dir / "ensemble.json",
                    type(exc).__name__, exc, UNREADABLE_ENSEMBLE_VALUE)
        ids, values = [], np.full(len(classes), UNREADABLE_ENSEMBLE_VALUE, np.float32)
    rows = expected_rows(ids, sample_rows)
    out = working / "submission.csv"
    write_submission(out, rows, classes, np.tile(values, (len(rows), 1)))
    return out


def main() -> None:
    """Run the kernel; on any unexpected error still write a complete fallback submission."""
    try:
        run_kernel()
    except MembersLostError as exc:  # every member corrupt or failing: say so loudly, then the class prior
        logging.getLogger("kernel").error("%s", exc)
        write_fallback_submission()
        print("kernel failed: every member lost, fallback submission (the class prior) written", file=sys.stderr)
    except Exception as exc:  # a crashed kernel scores nothing: always leave a valid file behind
        logging.getLogger("kernel").exception("kernel failed (%s): writing the fallback submission", type(exc).__name__)
        write_fallback_submission()
        print("kernel failed: fallback submission written", file=sys.stderr)


if __name__ == "__main__":
    main()
