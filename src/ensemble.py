"""`python -m src.ensemble runs=[exp1,exp2] name=<name>`: blend runs on their out-of-fold predictions,
fit the weights honestly, predict the test soundscapes and write the submission.

Writes `ensembles/<name>/ensemble.yaml` (members, weights, blend, post-processing, OOF scores),
`submission.csv`, and `score.json` when a `solution.csv` lies beside the test soundscapes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig, OmegaConf
from scipy.optimize import minimize
from sklearn.model_selection import GroupKFold
from tqdm import tqdm

from src.blend import BLENDS, blend
from src.competition import AUDIO_SUFFIXES, load_competition
from src.export import eager_runtime
from src.io import atomic_write
from src.metrics import primary_one_hot, score, submission_score
from src.soundscape import combine_members, mean_by_owner, one_file_per_stem, predict_model_groups
from src.submission import align, expected_rows, read_sample_submission, validate_file, write_submission

log = logging.getLogger(__name__)


def fold_dirs(runs_dir: Path, exp: str) -> list[Path]:
    """Finished folds of a run (those with oof.parquet and best.pt, or teacher.json for a teacher run), sorted."""
    dirs = sorted(p for p in (runs_dir / exp).glob("fold*")
                  if ((p / "best.pt").exists() or (p / "teacher.json").exists()) and (p / "oof.parquet").exists())
    if not dirs:
        raise FileNotFoundError(f"{runs_dir / exp}: no finished fold (best.pt + oof.parquet); "
                                f"train one with `python -m src.train exp={exp} fold=0`")
    return dirs


def load_oof(runs_dir: Path, exps: list[str]) -> tuple[pl.DataFrame, list[np.ndarray], list[str]]:
    """Rows every member predicted (joined on filename, chunk), each member's probabilities, and the classes."""
    keys = ["filename", "chunk"]
    frames, classes = [], None
    for exp in exps:
        parts = []
        for d in fold_dirs(runs_dir, exp):
            run_classes = list(OmegaConf.load(d / "config.yaml").classes)
            if classes is None:
                classes = run_classes
            elif run_classes != classes:
                raise ValueError(f"{d}: its classes differ from the other members' (different competition?)")
            fold = int(d.name.removeprefix("fold"))
            parts.append(pl.read_parquet(d / "oof.parquet").with_columns(pl.lit(fold).alias("fold")))
        frames.append(pl.concat(parts))
    base = frames[0].select(*keys, "fold", "primary_label")
    for f in frames[1:]:
        base = base.join(f.select(keys), on=keys, how="inner")
    if base.height == 0:
        raise ValueError(f"members {exps} share no out-of-fold rows: train them on the same folds file")
    base = base.sort(keys)
    preds = [base.select(keys).join(f, on=keys, how="left").select(classes).to_numpy() for f in frames]
    return base, preds, classes


def fit_weights(preds: list[np.ndarray], y: np.ndarray, method: str, metric: str, power: float,
                restarts: int, seed: int = 0) -> np.ndarray:
    """Weights (summing to 1) that maximise the metric of the blend, by Nelder-Mead over softmax logits."""
    if method == "mean" or len(preds) == 1:
        return np.full(len(preds), 1 / len(preds))

    def weights(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max())
        return e / e.sum()

    def loss(z: np.ndarray) -> float:
        return -score(y, blend(preds, weights(z), method, power), metric)

    rng = np.random.default_rng(seed)
    n = len(preds)

    def search(z0: np.ndarray):
        # a simplex one logit wide: SciPy's default first step (5% of 0) is too small to move an AUC
        simplex = np.vstack([z0, z0 + np.eye(n)])
        return minimize(loss, z0, method="Nelder-Mead",
                        options={"initial_simplex": simplex, "xatol": 1e-2, "fatol": 1e-6, "maxiter": 100 * n})

    starts = [np.zeros(n)] + [rng.normal(0, 1, n) for _ in range(restarts - 1)]
    best = min((search(z0) for z0 in starts), key=lambda r: r.fun)
    return weights(best.x)


def nested_score(preds: list[np.ndarray], y: np.ndarray, groups: np.ndarray, method: str, metric: str,
                 power: float, restarts: int) -> float:
    """Score of the blend where each held-out part is blended with weights fitted on the other parts
    (folds when there are several, else GroupKFold over recordings): weights never score what fitted them."""
    uniq = np.unique(groups)
    out = np.zeros_like(preds[0])
    for train_idx, test_idx in _splits(groups, len(uniq)):
        w = fit_weights([p[train_idx] for p in preds], y[train_idx], method, metric, power, restarts)
        out[test_idx] = blend([p[test_idx] for p in preds], w, method, power)
    return score(y, out, metric)


def _splits(groups: np.ndarray, n: int):
    if n < 2:
        raise ValueError("the nested check needs at least 2 recordings in the out-of-fold rows")
    return GroupKFold(n_splits=n).split(np.zeros(len(groups)), groups=groups)


def class_prior(cfg: DictConfig, classes: list[str]) -> np.ndarray:
    """Share of training chunks per class (the fallback for undecodable test files)."""
    chunks = pl.read_parquet(Path(cfg.data.cache_dir) / "chunks.parquet")
    counts = chunks.group_by("primary_label").len()
    lookup = dict(zip(counts["primary_label"], counts["len"]))
    prior = np.array([lookup.get(c, 0) for c in classes], np.float64)
    return (prior / max(prior.sum(), 1)).astype(np.float32)


def predict_members(members: list[dict], files: list[Path], cfg: DictConfig, n_classes: int,
                    runtime_for) -> tuple[list[str], list[np.ndarray], list[str]]:
    """Each member's test probabilities (its folds averaged; NaN rows for undecodable files);
    `runtime_for(fold_dir)` gives a predict fn. Folds that cut the audio alike decode each file once."""
    owners, dirs = zip(*[(i, Path(d)) for i, m in enumerate(members) for d in m["fold_dirs"]], strict=True)
    audio = [OmegaConf.load(d / "config.yaml").audio for d in dirs]

    def load_group(ks: list[int]):
        predicts = [runtime_for(dirs[k]) for k in ks]
        return lambda batch: np.concatenate([p(batch) for p in predicts], axis=1)

    ens = cfg.ensemble
    ids, model_preds, problems = predict_model_groups(
        files, [(int(a.sample_rate), float(a.window_s)) for a in audio], load_group, n_classes, float(ens.context_s),
        tuple(ens.shifts_s), int(ens.batch_size), float(ens.fallback_duration_s),
        progress=lambda f: tqdm(f, desc=f"{len(dirs)} model(s)", unit="file"))
    preds = mean_by_owner(model_preds, list(owners), len(members))
    return ids, preds, problems


def run(cfg: DictConfig) -> dict:
    """Fit the blend on OOF, predict the test soundscapes, write the ensemble folder; returns its summary."""
    exps = list(cfg.runs)
    if not exps:
        raise ValueError("no members: python -m src.ensemble runs=[exp1,exp2] name=<name>")
    runs_dir = Path(cfg.runs_dir)
    name = cfg.name or "+".join(exps)
    out_dir = Path(cfg.ensembles_dir) / name
    ens = cfg.ensemble
    metric = str(cfg.data.metric)

    base, oof, classes = load_oof(runs_dir, exps)
    y = primary_one_hot(base["primary_label"].to_list(), classes)
    folds = base["fold"].to_numpy()
    groups = folds if len(np.unique(folds)) > 1 else base["filename"].to_numpy()
    n_splits = min(len(np.unique(groups)), int(ens.fit.splits)) if len(np.unique(folds)) == 1 else len(np.unique(folds))
    if len(np.unique(folds)) == 1:  # one fold: split its recordings into n_splits groups
        codes = np.unique(groups, return_inverse=True)[1]
        groups = codes % n_splits
    member_scores = {e: score(y, p, metric) for e, p in zip(exps, oof)}
    table = {}
    for method in BLENDS:
        table[method] = nested_score(oof, y, groups, method, metric, float(ens.power), int(ens.fit.restarts))
    method = max(table, key=table.get) if ens.blend == "auto" else str(ens.blend)
    weights = fit_weights(oof, y, method, metric, float(ens.power), int(ens.fit.restarts))
    fitted_in_sample = score(y, blend(oof, weights, method, float(ens.power)), metric)
    print(f"OOF {metric} on {base.height} chunks: " + ", ".join(f"{e} {s:.4f}" for e, s in member_scores.items()))
    print("blends (nested: weights fitted without the scored part): "
          + ", ".join(f"{m} {s:.4f}" for m, s in table.items()) + f" -> {method}, weights "
          + ", ".join(f"{w:.3f}" for w in weights))

    comp = load_competition(cfg.data.root, cfg.data.layout)
    if comp.classes != classes:
        raise ValueError(f"{comp.sample_submission}: classes differ from the runs' (trained on another competition?)")
    fallback = class_prior(cfg, classes) if ens.fallback == "prior" else np.zeros(len(classes), np.float32)
    members = [{"run": e, "folds": [int(d.name.removeprefix("fold")) for d in fold_dirs(runs_dir, e)],
                "fold_dirs": [str(d) for d in fold_dirs(runs_dir, e)], "weight": float(w)}
               for e, w in zip(exps, weights)]
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    files, skipped = one_file_per_stem(comp.test_files(), AUDIO_SUFFIXES)
    for problem in skipped:
        log.warning(problem)
    summary = {"name": name, "metric": metric, "blend": method, "power": float(ens.power),
               "runs_dir": str(runs_dir),  # where `src.kernel build` finds the members' folds
               "members": [{k: m[k] for k in ("run", "folds", "weight")} for m in members],
               "member_oof": member_scores, "blend_oof_nested": table, "oof_score": table[method],
               "oof_score_in_sample": fitted_in_sample, "classes": classes, "fallback": fallback.tolist(),
               "inference": OmegaConf.to_container(ens, resolve=True), "data": {"name": cfg.data.name,
                                                                                 "competition": cfg.data.competition}}
    out_dir.mkdir(parents=True, exist_ok=True)
    if files:
        ids, preds, problems = predict_members(members, files, cfg, len(classes),
                                               lambda d: eager_runtime(d, int(cfg.threads)))
        probs = combine_members(preds, weights, method, float(ens.power), ids,
                                OmegaConf.to_container(ens.postprocess, resolve=True), fallback)
        sample_rows, _ = read_sample_submission(comp.sample_submission)
        rows = expected_rows(ids, sample_rows)
        probs, align_problems = align(ids, probs, rows, fallback)
        for p in problems + align_problems:
            log.warning(p)
        write_submission(out_dir / "submission.csv", rows, classes, probs)
        validate_file(out_dir / "submission.csv", comp.sample_submission, ids)
        summary["test_problems"] = problems + align_problems
        print(f"wrote {out_dir / 'submission.csv'}: {len(rows)} rows from {len(files)} soundscapes "
              f"({len(problems)} unreadable)")
        solution = comp.test_dir.parent / "solution.csv"
        if solution.exists():
            sol = pl.read_csv(solution)
            sub = pl.read_csv(out_dir / "submission.csv")
            result = {metric: submission_score(sol, sub, metric)}
            with atomic_write(out_dir / "score.json") as tmp:
                Path(tmp).write_text(json.dumps(result, indent=1))
            summary["test_score"] = result[metric]
            print(f"test {metric} against {solution}: {result[metric]:.4f}")
    else:
        print(f"{comp.test_dir}: no test soundscapes (Kaggle fills it at scoring time): no submission written")
    with atomic_write(out_dir / "ensemble.yaml") as tmp:
        OmegaConf.save(OmegaConf.create(summary), tmp)
    return summary


@hydra.main(config_path="../configs", config_name="ensemble", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
