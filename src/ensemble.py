"""`python -m src.ensemble runs=[exp1,exp2] name=<name>`: blend runs on their out-of-fold predictions,
fit the weights honestly, predict the test soundscapes and write the submission.

Writes `ensembles/<name>/ensemble.yaml` (members, weights, blend, post-processing, OOF scores),
`submission.csv`, and `score.json` when a `solution.csv` lies beside the test soundscapes.
With `full_data=true` the test set (and the kernel built from the ensemble) is predicted by each run's
full-data fits (`runs/<exp>/foldall*`, `python -m src.train fold=all`) with the weights fitted on OOF.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import polars as pl
from omegaconf import DictConfig, OmegaConf
from scipy.optimize import minimize
from sklearn.model_selection import GroupKFold

from src.config import fold_classes, fold_dirs, fold_number
from src.data.competition import load_competition
from src.data.pseudo_labels import load_pseudo
from src.data.soundscape_labels import label_matrix
from src.data.tables import read_parquet
from src.evaluation.metrics import class_aucs, primary_one_hot, score, submission_per_class, submission_score
from src.infer.blend import BLENDS, blend, class_ranks, combine_members, member_weights, widen_columns
from src.infer.io import atomic_write
from src.infer.postprocess import postprocess_rows, site_hour
from src.infer.soundscape import list_soundscapes
from src.infer.submission import align, expected_rows, read_sample_submission, row_stem, validate_file, write_submission
from src.models.predict import member_predictions

log = logging.getLogger(__name__)


def full_data_dirs(runs_dir: Path, exp: str) -> list[Path]:
    """A run's full-data fits (`python -m src.train fold=all`, one per seed): runs/<exp>/foldall* with best.pt."""
    dirs = sorted(p for p in (runs_dir / exp).glob("foldall*") if (p / "best.pt").exists())
    if not dirs:
        raise FileNotFoundError(f"{runs_dir / exp}: no full-data fit (foldall/best.pt); train one with "
                                f"`python -m src.train exp={exp} fold=all` or leave out full_data=true")
    return dirs


def member_entry(runs_dir: Path, exp: str, weight: float, full_data: bool) -> dict:
    """An ensemble member: its OOF folds, the model folders that predict the test set (the fold models, or
    with `full_data` its full-data fits, listed as `models` for the kernel) and its weight (fitted on OOF)."""
    folds = fold_dirs(runs_dir, exp)
    models = full_data_dirs(runs_dir, exp) if full_data else folds
    entry = {"run": exp, "folds": [fold_number(d) for d in folds], "weight": weight,
             "fold_dirs": [str(d) for d in models]}
    return entry | ({"models": [d.name for d in models]} if full_data else {})


def member_classes(runs_dir: Path, exp: str, classes: list[str]) -> list[str]:
    """The classes a member predicts (`src.config.fold_classes` over its folds)."""
    return fold_classes(fold_dirs(runs_dir, exp), classes)


def widen(frame: pl.DataFrame, classes: list[str]) -> np.ndarray:
    """A member's probability columns on the ensemble's `classes` (`widen_columns`: NaN where it does not predict
    one, a specialist, which the blend leaves out of that class)."""
    cols = [c for c in classes if c in frame.columns]
    return widen_columns(frame.select(cols).to_numpy().astype(np.float32), cols, classes)


def load_oof(runs_dir: Path, exps: list[str], classes: list[str]) -> tuple[pl.DataFrame, list[np.ndarray], list[str]]:
    """Rows every member predicted (joined on filename, chunk), each member's probabilities on `classes` (NaN
    columns for the classes a specialist does not predict), and the classes."""
    keys = ["filename", "chunk"]
    frames = []
    for exp in exps:
        member_classes(runs_dir, exp, classes)
        frames.append(pl.concat([read_parquet(d / "oof.parquet", f"python -m src.train / src.probe exp={exp} "
                                              "fold=<k>").with_columns(pl.lit(fold_number(d)).alias("fold"))
                                 for d in fold_dirs(runs_dir, exp)], how="diagonal_relaxed"))
    base = frames[0].select(*keys, "fold", "primary_label")
    for f in frames[1:]:
        base = base.join(f.select(keys), on=keys, how="inner")
    if base.height == 0:
        raise ValueError(f"members {exps} share no out-of-fold rows: train them on the same folds file")
    base = base.sort(keys)
    preds = [widen(base.select(keys).join(f, on=keys, how="left"), classes) for f in frames]
    return base, preds, classes


def fit_weights(preds: list[np.ndarray], y: np.ndarray, method: str, metric: str, power: float,
                restarts: int, seed: int = 0, max_rows: int | None = None) -> np.ndarray:
    """Weights (summing to 1) that maximise the metric of the blend, by Nelder-Mead over softmax logits,
    on a fixed random `max_rows` of the rows when there are more (None = all)."""
    if method == "mean" or len(preds) == 1:
        return np.full(len(preds), 1 / len(preds))
    rng = np.random.default_rng(seed)
    if max_rows and len(y) > max_rows:
        # every evaluation ranks all rows of all classes: a subset bounds the fit's cost (weights are few)
        rows = np.sort(rng.choice(len(y), int(max_rows), replace=False))
        preds, y = [p[rows] for p in preds], y[rows]
    if method == "rank":  # the ranks do not depend on the weights: rank once, then fit a weighted mean
        preds, method = [class_ranks(p) for p in preds], "weighted"

    def weights(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max())
        return e / e.sum()

    def loss(z: np.ndarray) -> float:
        return -score(y, blend(preds, weights(z), method, power), metric)

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
                 power: float, restarts: int, max_rows: int | None = None) -> float:
    """Score of the blend where each held-out part is blended with weights fitted on the other parts
    (folds when there are several, else GroupKFold over recordings): weights never score what fitted them."""
    uniq = np.unique(groups)
    out = np.zeros_like(preds[0])
    for train_idx, test_idx in _splits(groups, len(uniq)):
        w = fit_weights([p[train_idx] for p in preds], y[train_idx], method, metric, power, restarts,
                        max_rows=max_rows)
        out[test_idx] = blend([p[test_idx] for p in preds], w, method, power)
    return score(y, out, metric)


def _splits(groups: np.ndarray, n: int):
    if n < 2:
        raise ValueError("the nested check needs at least 2 recordings in the out-of-fold rows")
    return GroupKFold(n_splits=n).split(np.zeros(len(groups)), groups=groups)


def choose_blend(table: dict[str, float], ens: DictConfig, n_members: int) -> str:
    """`ensemble.blend`, or with `auto` the blend with the best nested score; a single member is its own
    blend (`mean`): a rank "blend" of one model would only turn its probabilities into ranks, which near-ties
    flip between runtimes, so the kernel could not match the ensemble."""
    if ens.blend != "auto":
        return str(ens.blend)
    return "mean" if n_members == 1 else max(table, key=table.get)


def fit_clips(base: pl.DataFrame, oof: list[np.ndarray], classes: list[str], exps: list[str], ens: DictConfig,
              metric: str) -> dict:
    """Blend and weights fitted on the clip OOF, the blend chosen by its nested score (weights fitted on the
    other folds, or on other recording groups when there is one fold)."""
    y = primary_one_hot(base["primary_label"].to_list(), classes)
    folds = base["fold"].to_numpy()
    groups = folds if len(np.unique(folds)) > 1 else base["filename"].to_numpy()
    n_splits = min(len(np.unique(groups)), int(ens.fit.splits)) if len(np.unique(folds)) == 1 else len(np.unique(folds))
    if len(np.unique(folds)) == 1:  # one fold: split its recordings into n_splits groups
        codes = np.unique(groups, return_inverse=True)[1]
        groups = codes % n_splits
    member_scores = {e: score(y, p, metric) for e, p in zip(exps, oof)}
    power, restarts = float(ens.power), int(ens.fit.restarts)
    max_rows = ens.fit.get("max_rows")
    table = {m: nested_score(oof, y, groups, m, metric, power, restarts, max_rows) for m in BLENDS}
    method = choose_blend(table, ens, len(oof))
    weights = fit_weights(oof, y, method, metric, power, restarts, max_rows=max_rows)
    fitted_in_sample = score(y, blend(oof, weights, method, power), metric)
    print(f"OOF {metric} on {base.height} chunks: " + ", ".join(f"{e} {s:.4f}" for e, s in member_scores.items()))
    print("blends (nested: weights fitted without the scored part): "
          + ", ".join(f"{m} {s:.4f}" for m, s in table.items()) + f" -> {method}, weights "
          + ", ".join(f"{w:.3f}" for w in weights))
    return {"method": method, "weights": weights,
            "summary": {"member_oof": member_scores, "blend_oof_nested": table, "oof_score": table[method],
                        "oof_score_in_sample": fitted_in_sample, "fit_on": "clip"}}


WINDOW_OOFS = ("labelled", "soundscape")  # window OOF sets, in the order ensemble.fit.oof=auto prefers them


def load_window_oof(runs_dir: Path, exps: list[str], classes: list[str], kind: str = "soundscape"
                    ) -> tuple[pl.DataFrame, list[np.ndarray]] | None:
    """The window rows of `oof_<kind>.parquet` (`soundscape`: the validation soundscapes; `labelled`: the held-out
    labelled soundscapes, 2026) every member predicted (row_id, filename, labels, fold; each soundscape's windows
    consecutive) and each member's probabilities; None unless every fold of every member has that file (said
    why when some have it)."""
    frames, name = [], f"oof_{kind}.parquet"
    for exp in exps:
        dirs = fold_dirs(runs_dir, exp)
        missing = [d for d in dirs if not (d / name).exists()]
        if missing:
            if kind == "soundscape" or len(missing) < len(dirs):
                print(f"{missing[0]}: no {name} (score it: python -m src.valsets +runs=[{exp}]): the ensemble is not "
                      f"fitted on the {kind} OOF")
            return None
        frames.append(pl.concat([read_parquet(d / name, f"python -m src.valsets +runs=[{exp}]").with_columns(
            pl.lit(fold_number(d)).alias("fold")) for d in dirs]))
    base = frames[0].select("row_id", "filename", "labels", "fold")
    for f in frames[1:]:
        base = base.join(f.select("row_id"), on="row_id", how="inner", maintain_order="left")
    if base.height == 0:
        print(f"members {exps} share no {kind} OOF rows (other folds or valsets settings?): not fitted on them")
        return None
    keys = base.select("row_id")
    return base, [widen(keys.join(f, on="row_id", how="left", maintain_order="left"), classes) for f in frames]


POST_STEPS = ("blend", "smoothing", "file_prior", "metadata_prior")  # each adds its candidates to the previous


def post_candidates(search: DictConfig, step: str, pattern: str | None = None) -> list[dict]:
    """Post-processing configs tried up to `step` (`POST_STEPS`): blend (none), smoothing (each kernel),
    file_prior (each kernel x each prior), metadata_prior (each of those x each site/hour prior setting, with
    the soundscape name `pattern`; its tables are fitted on the rows it is chosen on, `with_priors`), from
    `ensemble.search`."""
    upto = POST_STEPS.index(step)
    smoothing = [None] + [list(k) for k in search.smoothing if k] if upto >= 1 else [None]
    priors = [None] + [OmegaConf.to_container(p) for p in search.file_prior] if upto >= 2 else [None]
    meta = [None] + [OmegaConf.to_container(p) | {"pattern": pattern} for p in search.metadata_prior] \
        if upto >= 3 and pattern else [None]
    return [{"smoothing": k, "file_prior": p, "metadata_prior": m} for k in smoothing for p in priors for m in meta]


PseudoRows = tuple[list[str], np.ndarray, float]  # pseudo-labelled rows for the prior tables: (ids, labels, weight)


def with_priors(candidate: dict, ids: list[str], y: np.ndarray, extra: PseudoRows | None = None) -> dict:
    """A candidate whose metadata prior (settings: weight, power, alpha, hour_bin, pattern) gets its tables from
    these rows' truth, plus the `extra` pseudo-labelled rows (`metadata_pseudo_rows`) counted at their weight:
    the global class prior, and per site and per hour bin the rows' mean labels smoothed towards it
    ((sum + alpha x global) / (count + alpha))."""
    spec = candidate.get("metadata_prior")
    if not spec:
        return candidate
    count = np.ones(len(ids))
    if extra is not None:
        ids, y = list(ids) + list(extra[0]), np.concatenate([y, extra[1]])
        count = np.concatenate([count, np.full(len(extra[0]), extra[2])])
    keys = [site_hour(row_stem(r), spec["pattern"]) for r in ids]
    mass = y * count[:, None]
    base = mass.sum(axis=0) / count.sum()
    tables: dict[str, dict] = {"site": {}, "hour": {}}
    for name, values in (("site", [k[0] for k in keys]),
                         ("hour", [None if k[1] is None else k[1] // int(spec["hour_bin"]) for k in keys])):
        for value in {v for v in values if v is not None}:
            rows = np.array([v == value for v in values])
            smoothed = (mass[rows].sum(axis=0) + float(spec["alpha"]) * base) / (count[rows].sum() + float(spec["alpha"]))
            tables[name][str(value)] = smoothed.round(6).tolist()
    return candidate | {"metadata_prior": spec | tables | {"global": base.round(6).tolist()}}


def metadata_pseudo_rows(spec: DictConfig | None, classes: list[str], competition: str,
                         held: list[str]) -> PseudoRows | None:
    """(row ids, soft labels, weight) of `ensemble.metadata_pseudo.path` (a `src.pseudo` parquet: the unlabelled
    train soundscapes) for the site and hour tables, or None when it is off. Windows of a soundscape among the
    CV rows' (`held`) are left out: the CV scores those files and must not see their teacher's labels."""
    if not spec or not spec.get("path"):
        return None
    table, _ = load_pseudo(spec.path, classes, competition)
    held_stems = {row_stem(r) for r in held}
    stems = [Path(f).stem for f in table["filename"]]
    keep = np.array([s not in held_stems for s in stems], bool)
    ids = [f"{s}_{round(end)}" for s, end, k in zip(stems, table["end_s"], keep, strict=True) if k]
    print(f"site and hour priors also count {len(ids)} pseudo-labelled windows of "
          f"{len({s for s, k in zip(stems, keep, strict=True) if k})} soundscape(s) from {spec.path} at weight "
          f"{float(spec.weight):g}")
    return ids, table.select(classes).to_numpy()[keep].astype(np.float64), float(spec.weight)


def choose_post(preds: list[np.ndarray], y: np.ndarray, ids: list[str], weights: np.ndarray, method: str,
                power: float, candidates: list[dict], metric: str, extra: PseudoRows | None = None) -> tuple[dict, float]:
    """The candidate post-processing that scores best on these rows (its priors fitted on them and `extra`), and
    its score."""
    blended = blend(preds, weights, method, power)
    fitted = [with_priors(c, ids, y, extra) for c in candidates]
    scored = [(score(y, postprocess_rows(ids, blended, c), metric), k) for k, c in enumerate(fitted)]
    best, k = max(scored)
    return fitted[k], best


def nested_pipeline(preds: list[np.ndarray], y: np.ndarray, ids: list[str], groups: np.ndarray, method: str,
                    power: float, restarts: int, candidates: list[dict], metric: str,
                    strength: float | None = None, extra: PseudoRows | None = None) -> float:
    """Score of blend weights (per class with a `strength`, `fit_class_weights`) + post-processing chosen on the
    other groups, for each held-out group (whole soundscapes): the choice never scores what fitted it."""
    ids_arr = np.asarray(ids)
    out = np.zeros(preds[0].shape, np.float32)
    for tr, te in _splits(groups, len(np.unique(groups))):
        train = [p[tr] for p in preds]
        w = fit_weights(train, y[tr], method, metric, power, restarts)
        if strength is not None:
            w = fit_class_weights(train, y[tr], w, method, power, strength)
        post, _ = choose_post(train, y[tr], list(ids_arr[tr]), w, method, power, candidates, metric, extra)
        out[te] = postprocess_rows(list(ids_arr[te]), blend([p[te] for p in preds], w, method, power), post)
    return score(y, out, metric)


def fit_class_weights(preds: list[np.ndarray], y: np.ndarray, weights: np.ndarray, method: str, power: float,
                      strength: float) -> np.ndarray:
    """Per-class member weights (members, classes): for each class, of the global `weights`, each member alone
    and each member's even mix with the global weights, the one whose blend ranks that class's rows best
    (ROC-AUC), shrunk towards the global weights by positives / (positives + `strength`): a class with few
    positives keeps about the global weights. A class without a positive keeps them."""
    m, _n_classes = len(preds), y.shape[1]
    eye = np.eye(m)
    candidates = [np.asarray(weights, np.float64)] + list(eye) + [(np.asarray(weights) + e) / 2 for e in eye]
    aucs = np.stack([class_aucs(y, blend(preds, c, method, power)) for c in candidates])  # (candidates, classes)
    best = np.stack(candidates)[np.nanargmax(np.nan_to_num(aucs, nan=-1.0), axis=0)].T  # (members, classes)
    positives = (y > 0).sum(axis=0)
    share = positives / (positives + float(strength))
    return share * best + (1 - share) * np.asarray(weights, np.float64)[:, None]



def fit_windows(base: pl.DataFrame, preds: list[np.ndarray], classes: list[str], ens: DictConfig,
                metric: str, kind: str = "soundscape", pattern: str | None = None, competition: str = "") -> dict:
    """Blend, weights and post-processing chosen on a window OOF (`kind`: soundscape or labelled), with the
    nested score of each step (blend alone, + smoothing, + file prior) so each step's gain is measured honestly;
    the summary's keys start with `kind`. `pattern` (data.soundscape_names) adds the site and hour prior step
    when the rows' soundscape names parse; its tables also count `ensemble.metadata_pseudo` (of `competition`)."""
    y, ids = label_matrix(base["labels"].to_list(), classes), base["row_id"].to_list()
    extra = metadata_pseudo_rows(ens.get("metadata_pseudo"), classes, competition, ids) \
        if parses(ids, pattern) else None
    folds = base["fold"].to_numpy()
    if len(np.unique(folds)) > 1:
        groups = folds
    else:  # one fold: its soundscapes in ensemble.fit.splits groups
        codes = np.unique(base["filename"].to_numpy(), return_inverse=True)[1]
        groups = codes % min(int(ens.fit.splits), codes.max() + 1)
    power, restarts = float(ens.power), int(ens.fit.restarts)
    table = {m: nested_pipeline(preds, y, ids, groups, m, power, restarts, [{}], metric) for m in BLENDS}
    method = choose_blend(table, ens, len(preds))
    strength, per_class = choose_class_weights(preds, y, ids, groups, method, ens, metric, table[method])
    steps = {"blend": per_class[str(strength)]} | {  # the blend alone was scored with the class weights
        step: nested_pipeline(preds, y, ids, groups, method, power, restarts,
                              post_candidates(ens.search, step, pattern), metric, strength, extra)
        for step in POST_STEPS[1:] if step != "metadata_prior" or parses(ids, pattern)}
    # the steps kept are those up to the best nested score (a later step that lowers it is left out; on a tie
    # the simpler pipeline wins): the in-sample choice among all candidates would pick what overfits
    kept = max(steps, key=steps.get)
    weights = fit_weights(preds, y, method, metric, power, restarts)
    if strength is not None:
        weights = fit_class_weights(preds, y, weights, method, power, strength)
    post, in_sample = choose_post(preds, y, ids, weights, method, power,
                                  post_candidates(ens.search, kept, pattern), metric, extra)
    print(f"{kind} OOF {metric} on {base.height} windows, nested: blends "
          + ", ".join(f"{m} {v:.4f}" for m, v in table.items()) + f" -> {method}; per-class weights "
          + ", ".join(f"{k} {v:.4f}" for k, v in per_class.items()) + f" -> {strength}; steps "
          + ", ".join(f"{k} {v:.4f}" for k, v in steps.items()) + f" -> up to {kept}: post-processing {post}")
    return {"method": method, "weights": weights, "postprocess": post,
            "summary": {f"{kind}_blends_nested": table, f"{kind}_class_weights_nested": per_class,
                        f"{kind}_class_weight_strength": strength, f"{kind}_steps_nested": steps,
                        f"{kind}_step_gain": {"class_weights": per_class[str(strength)] - per_class["None"]} | {
                            step: steps[step] - steps[POST_STEPS[n]] for n, step in enumerate(POST_STEPS[1:])
                            if step in steps},
                        f"{kind}_steps_kept": kept, f"{kind}_oof_score": steps[kept],
                        f"{kind}_oof_score_in_sample": in_sample, "fit_on": kind}}


def parses(ids: list[str], pattern: str | None) -> bool:
    """True when some row's soundscape name parses with `pattern` (a site or an hour to fit priors on)."""
    return bool(pattern) and any(site_hour(row_stem(r), pattern) != (None, None) for r in ids[:: max(1, len(ids) // 50)])


def choose_class_weights(preds: list[np.ndarray], y: np.ndarray, ids: list[str], groups: np.ndarray, method: str,
                         ens: DictConfig, metric: str, global_score: float) -> tuple[float | None, dict[str, float]]:
    """The per-class weights' shrinkage strength (`ensemble.class_weights.strengths`) with the best nested score,
    or None (one weight per member) when none beats `global_score` (the nested score of the global weights); and
    every candidate's nested score ("None": the global weights)."""
    power, restarts = float(ens.power), int(ens.fit.restarts)
    strengths = [] if method == "mean" or len(preds) < 2 else list(ens.class_weights.strengths or [])
    table = {"None": global_score} | {str(float(s)): nested_pipeline(preds, y, ids, groups, method, power, restarts,
                                                                      [{}], metric, float(s)) for s in strengths}
    best = max(table, key=table.get)  # the first (None) wins ties: per-class weights must earn their place
    return (None if best == "None" else float(best)), table


def class_prior(cfg: DictConfig, classes: list[str]) -> np.ndarray:
    """Share of training chunks per class (the fallback for undecodable test files)."""
    chunks = pl.read_parquet(Path(cfg.data.cache_dir) / "chunks.parquet")
    counts = chunks.group_by("primary_label").len()
    lookup = dict(zip(counts["primary_label"], counts["len"]))
    prior = np.array([lookup.get(c, 0) for c in classes], np.float64)
    return (prior / max(prior.sum(), 1)).astype(np.float32)


def fit(cfg: DictConfig, exps: list[str], classes: list[str]) -> tuple[list[str], str, np.ndarray, dict, dict]:
    """Blend, weights and post-processing fitted on the members' OOF (`ensemble.fit.oof`): auto fits on the
    labelled soundscapes' OOF (2026) when every member has one, else on the validation soundscapes' when every
    member has one, else on the clip OOF with the configured post-processing; the window OOF sets not fitted on
    are scored with the choice made. Returns (classes, blend method, weights, post-processing, summary)."""
    runs_dir, ens, metric = Path(cfg.runs_dir), cfg.ensemble, str(cfg.data.metric)
    base, oof, classes = load_oof(runs_dir, exps, classes)
    clip = fit_clips(base, oof, classes, exps, ens, metric)
    method, weights, summary = clip["method"], clip["weights"], clip["summary"]
    post = OmegaConf.to_container(ens.postprocess, resolve=True)
    sets = {kind: load_window_oof(runs_dir, exps, classes, kind) for kind in WINDOW_OOFS}
    wanted = str(ens.fit.oof)
    if wanted not in ("auto", "clip", *WINDOW_OOFS):
        raise ValueError(f"ensemble.fit.oof={wanted}: use auto, clip, {' or '.join(WINDOW_OOFS)}")
    if wanted in WINDOW_OOFS and sets[wanted] is None:
        raise ValueError(f"ensemble.fit.oof={wanted} needs every member's oof_{wanted}.parquet: "
                         f"python -m src.valsets +runs=[{','.join(exps)}]")
    fit_on = next((k for k in WINDOW_OOFS if sets[k] is not None), None) if wanted == "auto" else \
        (None if wanted == "clip" else wanted)
    if fit_on is not None:
        sfit = fit_windows(*sets[fit_on], classes, ens, metric, fit_on, cfg.data.get("soundscape_names"),
                           str(cfg.data.competition))
        method, weights, post = sfit["method"], sfit["weights"], sfit["postprocess"]
        summary |= sfit["summary"] | {"oof_score": summary["blend_oof_nested"][method]}
    for kind, found in sets.items():  # the other window sets, scored with the choices made
        if found is not None and kind != fit_on:
            wbase, wpreds = found
            summary[f"{kind}_oof_score"] = score(label_matrix(wbase["labels"].to_list(), classes), postprocess_rows(
                wbase["row_id"].to_list(), blend(wpreds, weights, method, float(ens.power)), post), metric)
    return classes, method, weights, post, summary


def run(cfg: DictConfig) -> dict:
    """Fit the blend on OOF, predict the test soundscapes, write the ensemble folder; returns its summary."""
    exps = list(cfg.runs)
    if not exps:
        raise ValueError("no members: python -m src.ensemble runs=[exp1,exp2] name=<name>")
    runs_dir = Path(cfg.runs_dir)
    name = cfg.name or "+".join(exps) + ("+full" if cfg.full_data else "")
    out_dir = Path(cfg.ensembles_dir) / name
    ens = cfg.ensemble
    comp = load_competition(cfg.data.root, cfg.data.layout)
    classes, method, weights, post, scores = fit(cfg, exps, comp.classes)
    fallback = class_prior(cfg, classes) if ens.fallback == "prior" else np.zeros(len(classes), np.float32)
    table = np.asarray(weights, np.float64)
    members = [member_entry(runs_dir, e, float(w.mean() if table.ndim > 1 else w), bool(cfg.full_data))
               | {"classes": member_classes(runs_dir, e, classes)} for e, w in zip(exps, table)]
    summary = {"name": name, "metric": str(cfg.data.metric), "blend": method, "power": float(ens.power),
               "runs_dir": str(runs_dir),  # where `src.kernel build` finds the members' folds
               "members": [{k: m[k] for k in ("run", "folds", "models", "weight", "classes") if k in m}
                           for m in members],
               "class_weights": table.tolist() if table.ndim > 1 else None,
               "full_data": bool(cfg.full_data),
               **scores, "classes": classes, "fallback": fallback.tolist(),
               "inference": OmegaConf.to_container(ens, resolve=True) | {"postprocess": post},
               "data": {"name": cfg.data.name, "competition": cfg.data.competition}}
    out_dir.mkdir(parents=True, exist_ok=True)
    summary |= predict_test(cfg, comp, members, summary, out_dir)
    with atomic_write(out_dir / "ensemble.yaml") as tmp:
        OmegaConf.save(OmegaConf.create(summary), tmp)
    return summary


def predict_test(cfg: DictConfig, comp, members: list[dict], summary: dict, out_dir: Path) -> dict:
    """Predict the competition's test soundscapes with the fitted ensemble (`summary`: blend, power, classes,
    fallback, inference.postprocess), write and validate `out_dir/submission.csv` and, when a solution.csv lies
    beside them, score.json. Returns the summary's test fields ({} without test soundscapes)."""
    files, skipped = list_soundscapes(comp.test_dir)
    for problem in skipped:
        log.warning(problem)
    if not files:
        print(f"{comp.test_dir}: no test soundscapes (Kaggle fills it at scoring time): no submission written")
        return {}
    classes, fallback = summary["classes"], np.asarray(summary["fallback"], np.float32)
    ids, preds, problems = member_predictions(members, "test_soundscapes", files, cfg, classes,
                                              int(cfg.threads))
    probs = combine_members(preds, member_weights(members, summary.get("class_weights")), summary["blend"],
                            summary["power"], ids,
                            summary["inference"]["postprocess"], fallback)
    sample_rows, _ = read_sample_submission(comp.sample_submission)
    rows = expected_rows(ids, sample_rows)
    probs, align_problems = align(ids, probs, rows, fallback)
    for p in problems + align_problems:
        log.warning(p)
    write_submission(out_dir / "submission.csv", rows, classes, probs)
    validate_file(out_dir / "submission.csv", comp.sample_submission, ids)
    print(f"wrote {out_dir / 'submission.csv'}: {len(rows)} rows from {len(files)} soundscapes "
          f"({len(problems)} unreadable)")
    test = {"test_problems": problems + align_problems}
    solution = comp.test_dir.parent / "solution.csv"
    if solution.exists():
        result = score_submission(solution, out_dir / "submission.csv", summary["metric"], comp)
        with atomic_write(out_dir / "score.json") as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1))
        test["test_score"] = result[summary["metric"]]
        test |= {"test_no_clip": result["no_clip_mean"]} if result.get("no_clip_mean") is not None else {}
    return test


def score_submission(solution: Path, submission: Path, metric: str, comp) -> dict:
    """score.json: the submission's score against a solution.csv (scoring only, never a choice), each class's
    ROC-AUC, and those of the classes without a training clip (2026) with their mean; printed."""
    truth, predicted = pl.read_csv(solution), pl.read_csv(submission)
    result = {metric: submission_score(truth, predicted, metric), "per_class": submission_per_class(truth, predicted)}
    no_clip = sorted(set(comp.classes) - set(comp.meta["primary_label"]))
    scored = {c: result["per_class"][c] for c in no_clip if c in result["per_class"]}
    print(f"test {metric} against {solution}: {result[metric]:.4f}")
    if scored:
        result |= {"no_clip": scored, "no_clip_mean": float(np.mean(list(scored.values())))}
        print("  classes without a training clip: " + ", ".join(f"{c} {v:.4f}" for c, v in scored.items())
              + f" (mean {result['no_clip_mean']:.4f})")
    return result


@hydra.main(config_path="../configs", config_name="ensemble", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
