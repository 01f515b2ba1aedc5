"""`python -m src.leaderboard`: the local CV leaderboard of every run and ensemble.

Usage (`key=value` overrides of configs/leaderboard.yaml):
    python -m src.leaderboard [table] [runs_dir=runs ensembles_dir=ensembles out=. lb_file=...]
        one row per experiment, best CV first: backbone, the config keys that differ between
        experiments, folds done, mean CV and per-fold scores, the soundscape CV (validation soundscapes,
        src.valsets) beside it, padded cmAP, training time, git commit(s), public LB when recorded, the
        local test score (score.json; a run borrows its single-member ensemble's), and the Spearman rank
        correlation of each CV with the public LB and with the local test score. Printed, and written to `<out>/leaderboard.md`,
        `<out>/leaderboard.csv` and (with >= 2 public LB scores) `<out>/leaderboard_cv_lb.png`.
    python -m src.leaderboard lb exp=<name> score=<float> [note=...]
        records a public LB score in `lb_file` (default `<out>/public_lb.csv`, beside leaderboard.csv:
        exp,score,date,note; a later entry for an exp replaces the earlier), then rebuilds the leaderboard.
Per-species differences between two runs: `python -m src.report compare a=A b=B`.

Every number comes from what the runs and ensembles saved (`metrics.json`, `config.yaml`,
`ensemble.yaml`, `score.json`); nothing is recomputed here.
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import sys
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from scipy.stats import spearmanr

from src import config as cfglib
from src.config import load_run_config, run_folds
from src.evaluation import metrics as metriclib
from src.infer.io import atomic_write

# Config keys that name, place or schedule a run rather than change what it learns. A dotted key is
# ignored when it equals one of these or lies below one; keys ending in `_dir`/`_path` are ignored too.
# (`model.name` only names a model preset: its values show up as model.backbone, model.head, ...)
BOOKKEEPING = ("exp", "fold", "resume", "device", "runs_dir", "classes", "paths", "hydra", "data.root",
               "data.cache_dir", "folds.dir", "model.name", "model.weights", "prepare.workers",
               "train.num_workers", "train.threads", "train.report", "train.val_batch_size")
# Config differences are listed in this order of sections, then alphabetically.
SECTION_ORDER = ("model", "data", "train", "audio", "aug", "sampler", "labels", "seed")
LB_COLUMNS = ["exp", "score", "date", "note"]
CSV_COLUMNS = ["rank", "exp", "kind", "backbone", "config", "folds", "cv", "cv_std", "soundscape_cv", "labelled_cv",
               "fold_scores",
               "metric",
               "auc", "cmap", "lb", "lb_date", "test_auc", "train_s", "commit"]
# The local CVs whose agreement with the leaderboard is measured: clip OOF, validation soundscapes, and (2026)
# the held-out labelled train soundscapes.
CV_KINDS = {"clip": "cv", "soundscape": "soundscape_cv", "labelled": "labelled_cv"}


class LeaderboardError(Exception):
    """A missing or malformed file; the message names the file and the fix."""


# ---------------------------------------------------------------- reading runs and ensembles

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LeaderboardError(f"{path} is not valid JSON ({err}): re-run that fold or delete its folder") from err


def read_run(exp_dir: Path) -> dict | None:
    """One experiment folder `runs/<exp>/` -> {'exp', 'metrics': {fold: metrics.json}, 'config': dict}.

    Folds without `metrics.json` (still training, or crashed) are skipped with a note on stderr;
    None when no fold has finished. `config` is the first finished fold's config.yaml as a plain dict.
    """
    metrics, config = {}, None
    for fold, fold_dir in run_folds(exp_dir):
        path = fold_dir / "metrics.json"
        if not path.exists():
            print(f"note: skipping {fold_dir}: no metrics.json yet (still training, or it crashed)", file=sys.stderr)
            continue
        m = _read_json(path)
        missing = [k for k in ("score", "metric") if k not in m]
        if missing:
            raise LeaderboardError(f"{path} lacks {missing}: it was not written by python -m src.train; "
                                   "re-run that fold")
        metrics[fold] = m
        if config is None and (fold_dir / "config.yaml").exists():
            config = OmegaConf.to_container(load_run_config(fold_dir), resolve=False)
    if not metrics:
        return None
    return {"exp": exp_dir.name, "metrics": metrics, "config": config or {}}


def read_runs(runs_dir: Path) -> list[dict]:
    """Every experiment under `runs_dir` with at least one finished fold (see `read_run`)."""
    if not runs_dir.is_dir():
        return []
    runs = [read_run(d) for d in sorted(runs_dir.iterdir()) if d.is_dir()]
    return [r for r in runs if r is not None]


def read_ensembles(ensembles_dir: Path) -> list[dict]:
    """Every `ensembles/<name>/ensemble.yaml` as a plain dict, plus `test_auc` from score.json if present."""
    if not ensembles_dir.is_dir():
        return []
    out = []
    for path in sorted(ensembles_dir.glob("*/ensemble.yaml")):
        ens = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
        if ens.get("oof_score") is None:
            raise LeaderboardError(f"{path} has no oof_score: rebuild it with python -m src.ensemble")
        ens.setdefault("name", path.parent.name)
        score_path = path.parent / "score.json"
        ens["test_auc"] = _read_json(score_path).get("auc") if score_path.exists() else None
        out.append(ens)
    return out


def read_public_lb(lb_file: Path) -> dict[str, dict]:
    """The recorded public LB scores: {exp: {'score': float, 'date': str, 'note': str}} (last entry wins)."""
    if not lb_file.exists():
        return {}
    with open(lb_file, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"exp", "score"} <= set(reader.fieldnames):
            raise LeaderboardError(f"{lb_file} must have the header {','.join(LB_COLUMNS)}; fix or delete it")
        entries = {}
        for line, row in enumerate(reader, start=2):
            score = _lb_score(row["score"], f"{lb_file} line {line}: score {row['score']!r}",
                              "; fix or delete that line")
            entries[row["exp"]] = {"score": score, "date": row.get("date") or "", "note": row.get("note") or ""}
    return entries


def check_public_lb(score, exp: str, runs_dir: Path, ensembles_dir: Path, force: bool = False) -> float:
    """The score to record for `exp`, refused (LeaderboardError) when it is not a number in [0, 1] (the range of
    macro ROC-AUC and cmAP) or when `exp` is neither a run (runs/<exp>/) nor an ensemble (ensembles/<exp>/) and
    `force` is off."""
    value = _lb_score(score, f"score={score!r}", " (e.g. score=0.842)")
    if not force and not (runs_dir / exp).is_dir() and not (ensembles_dir / exp).is_dir():
        raise LeaderboardError(f"exp={exp}: neither {runs_dir / exp}/ nor {ensembles_dir / exp}/ exists (a typo?); "
                               "pass force=true to record it anyway")
    return value


def _lb_score(value, where: str, fix: str) -> float:
    """`value` as a public LB score: a number (not a boolean) in [0, 1], the range of macro ROC-AUC and cmAP;
    otherwise a LeaderboardError that starts with `where` and ends with `fix`."""
    try:
        if isinstance(value, bool):  # YAML's true would otherwise be recorded as 1.0
            raise TypeError
        score = float(value)
    except (TypeError, ValueError):
        raise LeaderboardError(f"{where} is not a number{fix}") from None
    if not 0.0 <= score <= 1.0:
        raise LeaderboardError(f"{where}: a public LB score (macro ROC-AUC, cmAP) is between 0 and 1{fix}")
    return score


def record_public_lb(lb_file: Path, exp: str, score: float, note: str = "", date: str | None = None) -> None:
    """Add (or replace) the public LB score of `exp` in `lb_file`, creating it with a header if absent."""
    entries = read_public_lb(lb_file)
    entries.pop(exp, None)
    entries[exp] = {"score": score, "date": date or datetime.date.today().isoformat(), "note": note}
    with atomic_write(lb_file) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LB_COLUMNS)
        for name, e in entries.items():
            writer.writerow([name, repr(e["score"]), e["date"], e["note"]])


# ---------------------------------------------------------------- config differences

def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """Nested dict -> {dotted key: leaf value}; lists are kept whole as leaves."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _is_bookkeeping(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return (leaf.endswith(("_dir", "_path"))
            or any(key == b or key.startswith(b + ".") for b in BOOKKEEPING))


def _fmt_value(value: object, width: int = 24) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ",".join(_fmt_value(v, width) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _key_order(key: str) -> tuple[int, str]:
    head = key.split(".", 1)[0]
    return (SECTION_ORDER.index(head) if head in SECTION_ORDER else len(SECTION_ORDER), key)


def config_differences(configs: dict[str, dict]) -> dict[str, list[str]]:
    """{exp: ['model.backbone=regnety_002', 'train.lr=0.003', ...]}: for each experiment, its values of
    the (non-bookkeeping) config keys whose values are not the same across all experiments. A key one
    experiment lacks counts as different; it is listed only where present."""
    flat = {exp: {k: v for k, v in flatten(cfg).items() if not _is_bookkeeping(k)} for exp, cfg in configs.items()}
    keys = sorted({k for f in flat.values() for k in f}, key=_key_order)
    varying = [k for k in keys
               if len({_fmt_value(f[k], 10**6) if k in f else "<absent>" for f in flat.values()}) > 1]
    return {exp: [f"{k}={_fmt_value(f[k])}" for k in varying if k in f] for exp, f in flat.items()}


def _shorten(parts: list[str], width: int) -> str:
    """Join `parts` with ', ' up to about `width` characters, then '(+N more)'."""
    text = ""
    for i, part in enumerate(parts):
        candidate = part if not text else f"{text}, {part}"
        if len(candidate) > width and text:
            return f"{text} (+{len(parts) - i} more)"
        text = candidate
    return text


# ---------------------------------------------------------------- rows

def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def run_row(run: dict, config_diff: list[str]) -> dict:
    """Leaderboard row of one training experiment, from its folds' metrics.json."""
    metrics = run["metrics"]
    folds = sorted(metrics)
    scores = [float(metrics[k]["score"]) for k in folds]
    first = metrics[folds[0]]
    commits = sorted({str(m.get("git_commit") or "")[:7] for m in metrics.values()} - {""})
    return {
        "exp": run["exp"], "kind": "run", "backbone": first.get("backbone") or first.get("model") or "",
        "config_parts": config_diff, "folds": folds, "cv": float(np.mean(scores)),
        "cv_std": float(np.std(scores)) if len(scores) > 1 else None, "fold_scores": scores,
        "soundscape_cv": _mean([m.get(f"soundscape_{first['metric']}") for m in metrics.values()]),
        "labelled_cv": _mean([m.get(f"labelled_{first['metric']}") for m in metrics.values()]),
        "metric": first["metric"], "auc": _mean([m.get("auc") for m in metrics.values()]),
        "cmap": _mean([m.get("cmap") for m in metrics.values()]), "test_auc": None,
        "train_s": float(sum(float(m.get("duration_s") or 0.0) for m in metrics.values())),
        "commit": ",".join(commits),
    }


def ensemble_row(ens: dict, backbones: dict[str, str]) -> dict:
    """Leaderboard row of one ensemble, from its ensemble.yaml (+ score.json)."""
    members = ens.get("members") or []
    folds = sorted({int(k) for m in members for k in (m.get("folds") or [])})
    member_text = " + ".join(
        f"{m.get('run')}" + (f"*{float(m['weight']):.2g}" if m.get("weight") is not None else "") for m in members)
    metric = ens.get("metric") or "auc"
    score = float(ens["oof_score"])
    parts = [f"blend={ens.get('blend', '?')}", f"members: {member_text}"]
    if ens.get("postprocess"):
        parts.append("postprocess=" + ",".join(f"{k}:{_fmt_value(v)}" for k, v in flatten(ens["postprocess"]).items()))
    used = [backbones.get(str(m.get("run")), "?") for m in members]
    return {
        "exp": str(ens["name"]), "kind": "ensemble", "backbone": "+".join(dict.fromkeys(used)),
        "config_parts": parts, "folds": folds, "cv": score, "cv_std": None, "fold_scores": [],
        "soundscape_cv": ens.get("soundscape_oof_score"), "labelled_cv": ens.get("labelled_oof_score"),
        "members": [str(m.get("run")) for m in members],
        "metric": metric, **metriclib.by_name(metric, score),
        "test_auc": ens.get("test_auc"), "train_s": None, "commit": "",
    }


def build_rows(runs: list[dict], ensembles: list[dict], public_lb: dict[str, dict]) -> list[dict]:
    """All leaderboard rows, best CV first, with their public LB score where one is recorded."""
    configs = {r["exp"]: r["config"] for r in runs if r["config"]}  # a run without config.yaml has none to compare
    diffs = config_differences(configs) if len(configs) > 1 else {}
    rows = [run_row(r, diffs.get(r["exp"], [])) for r in runs]
    backbones = {r["exp"]: r["backbone"] for r in rows}
    rows += [ensemble_row(e, backbones) for e in ensembles]
    lend_test_scores(rows)
    for row in rows:
        lb = public_lb.get(row["exp"])
        row["lb"], row["lb_date"] = (lb["score"], lb["date"]) if lb else (None, "")
    rows.sort(key=lambda r: -r["cv"] if r["cv"] is not None and not math.isnan(r["cv"]) else math.inf)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def lend_test_scores(rows: list[dict]) -> None:
    """A run without a test score of its own takes the one of an ensemble of that run alone
    (`src.ensemble runs=[exp]`), which is then marked `lent` so correlations count the pair once."""
    by_exp = {r["exp"]: r for r in rows if r["kind"] == "run"}
    for row in rows:
        run = by_exp.get(row["members"][0]) if row["kind"] == "ensemble" and len(row["members"]) == 1 else None
        if run is not None and row["test_auc"] is not None and run["test_auc"] is None:
            run["test_auc"], row["lent"] = row["test_auc"], True


def _valid(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def cv_lb_correlation(rows: list[dict], cv: str = "cv", target: str = "lb") -> tuple[float, int] | None:
    """Spearman rank correlation between the `cv` column and the `target` column (public LB, or `test_auc`)
    over the rows that have both, and their count; None with fewer than 2 such rows."""
    pairs = [(r[cv], r[target]) for r in rows
             if _valid(r.get(cv)) and _valid(r.get(target)) and not (target == "test_auc" and r.get("lent"))]
    if len(pairs) < 2:
        return None
    cv, lb = np.array(pairs).T
    rho = spearmanr(cv, lb).statistic if np.ptp(cv) > 0 and np.ptp(lb) > 0 else float("nan")
    return float(rho), len(pairs)


# ---------------------------------------------------------------- output

def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _duration(seconds: float | None) -> str:
    if not seconds:
        return ""
    minutes = seconds / 60
    return f"{seconds:.0f}s" if seconds < 60 else f"{minutes:.0f}m" if minutes < 60 else \
        f"{int(minutes // 60)}h{int(minutes % 60):02d}m"


def _display(row: dict, config_width: int | None) -> dict[str, str]:
    cv = _num(row["cv"]) + (f" ±{row['cv_std']:.4f}" if row["cv_std"] is not None else "")
    folds = ",".join(map(str, row["folds"]))
    parts = row["config_parts"]
    return {
        "#": str(row["rank"]), "exp": row["exp"], "kind": row["kind"], "backbone": row["backbone"],
        "folds": folds, "metric": row["metric"], "cv": cv, "soundscape cv": _num(row["soundscape_cv"]),
        "labelled cv": _num(row.get("labelled_cv")),
        "per fold": " ".join(_num(s) for s in row["fold_scores"]),
        "cmap": _num(row["cmap"]), "public LB": _num(row["lb"]), "test auc": _num(row["test_auc"]),
        "time": _duration(row["train_s"]), "commit": row["commit"],
        "config differences": _shorten(parts, config_width) if config_width else ", ".join(parts),
    }


def _text_table(records: list[dict[str, str]]) -> str:
    headers = [h for h in records[0] if any(r[h] for r in records)]
    widths = {h: max(len(h), *(len(r[h]) for r in records)) for h in headers}
    lines = ["  ".join(h.ljust(widths[h]) for h in headers).rstrip(),
             "  ".join("-" * widths[h] for h in headers)]
    lines += ["  ".join(r[h].ljust(widths[h]) for h in headers).rstrip() for r in records]
    return "\n".join(lines)


def _markdown_table(records: list[dict[str, str]]) -> str:
    headers = [h for h in records[0] if any(r[h] for r in records)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in headers) + " |" for r in records]
    return "\n".join(lines)


def _correlation_line(corr: tuple[float, int] | None, label: str = "CV-LB") -> str:
    if corr is None:
        return (f"{label} rank correlation: needs public LB scores for >= 2 experiments "
                "(python -m src.leaderboard lb exp=<name> score=<float>)") if label == "CV-LB" else \
            f"{label} rank correlation: needs >= 2 experiments with both scores"
    rho, n = corr
    value = "undefined (all CV or all LB values equal)" if math.isnan(rho) else f"{rho:+.3f}"
    return f"{label} rank correlation (Spearman, n={n}): {value}"


def correlation_lines(rows: list[dict]) -> list[str]:
    """Each local CV's (clip, soundscape, labelled) rank correlation with the public LB and the local test score."""
    lines = [_correlation_line(cv_lb_correlation(rows), "CV-LB")]
    for kind, column in CV_KINDS.items():
        for target, name in (("lb", "public LB"), ("test_auc", "local test")):
            if kind == "clip" and target == "lb":
                continue
            corr = cv_lb_correlation(rows, column, target)
            if corr is not None:
                lines.append(_correlation_line(corr, f"{kind} CV - {name}"))
    return lines


def plot_cv_lb(rows: list[dict], path: Path) -> bool:
    """Scatter of local CV against public LB, one labelled point per experiment that has both, with a
    least-squares trend line. Written atomically to `path`; False (nothing written) with < 2 points."""
    points = [r for r in rows if r["lb"] is not None and r["cv"] is not None]
    if len(points) < 2:
        return False
    cv = np.array([r["cv"] for r in points])
    lb = np.array([r["lb"] for r in points])
    fig = Figure(figsize=(7.5, 6), dpi=110)
    ax = fig.subplots()
    colors = {"run": "tab:blue", "ensemble": "tab:orange"}
    for kind, color in colors.items():
        mask = np.array([r["kind"] == kind for r in points])
        if mask.any():
            ax.scatter(cv[mask], lb[mask], s=60, color=color, edgecolor="black", linewidth=0.6, zorder=3,
                       label=kind)
    for r, x, y in zip(points, cv, lb):
        ax.annotate(r["exp"], (x, y), xytext=(6, 5), textcoords="offset points", fontsize=9)
    if np.ptp(cv) > 0:
        slope, intercept = np.polyfit(cv, lb, 1)
        xs = np.linspace(cv.min(), cv.max(), 2)
        pad = 0.08 * np.ptp(cv)
        xs = np.array([xs[0] - pad, xs[1] + pad])
        ax.plot(xs, slope * xs + intercept, "--", color="gray", linewidth=1.2, zorder=2,
                label=f"trend: LB = {slope:.2f} CV {intercept:+.3f}")
    # room for the labels on the right and top
    for arr, setter in ((cv, ax.set_xlim), (lb, ax.set_ylim)):
        span = np.ptp(arr) or max(abs(arr.mean()) * 0.01, 1e-3)
        setter(arr.min() - 0.12 * span, arr.max() + 0.25 * span)
    corr = cv_lb_correlation(rows)
    metric = points[0]["metric"]
    ax.set_title(f"Local CV vs public LB ({len(points)} experiments)\n{_correlation_line(corr)}", fontsize=11)
    ax.set_xlabel(f"local CV ({metriclib.LABELS.get(metric, metric)}, mean over folds)")
    ax.set_ylabel("public LB score")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


def write_leaderboard(rows: list[dict], out: Path) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.csv and (with >= 2 LB scores) leaderboard_cv_lb.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    table = pl.DataFrame(
        [{**{k: r.get(k) for k in CSV_COLUMNS if k not in ("config", "folds", "fold_scores")},
          "config": ", ".join(r["config_parts"]), "folds": " ".join(map(str, r["folds"])),
          "fold_scores": " ".join(f"{s:.6f}" for s in r["fold_scores"])} for r in rows],
        schema_overrides={"cv_std": pl.Float64, "auc": pl.Float64, "cmap": pl.Float64, "lb": pl.Float64,
                          "test_auc": pl.Float64, "train_s": pl.Float64},
    ).select(CSV_COLUMNS)
    with atomic_write(out / "leaderboard.csv") as tmp:
        table.write_csv(tmp)
    written["csv"] = out / "leaderboard.csv"

    plot_path = out / "leaderboard_cv_lb.png"
    has_plot = plot_cv_lb(rows, plot_path)
    if not has_plot and plot_path.exists():
        plot_path.unlink()  # a stale plot would show scores that are no longer recorded
    md = [f"# Local CV leaderboard ({datetime.datetime.now():%Y-%m-%d %H:%M})", "",
          ("Best CV first. `cv` is the mean over folds of each run's main metric (`metric` in metrics.json); "
           "for ensembles, the nested out-of-fold score of the blend. `config differences` are the config keys "
           "whose values differ between runs."), "",
          _markdown_table([_display(r, None) for r in rows]), "", *correlation_lines(rows)]
    if has_plot:
        md += ["", f"![CV vs public LB]({plot_path.name})"]
        written["png"] = plot_path
    with atomic_write(out / "leaderboard.md") as tmp:
        Path(tmp).write_text("\n".join(md) + "\n")
    written["md"] = out / "leaderboard.md"
    return written


def leaderboard(runs_dir: Path, ensembles_dir: Path, out: Path, lb_file: Path, config_width: int = 70) -> list[dict]:
    """Build, print and write the leaderboard; returns its rows (best CV first)."""
    runs, ensembles = read_runs(runs_dir), read_ensembles(ensembles_dir)
    if not runs and not ensembles:
        raise LeaderboardError(f"no runs in {runs_dir}/ (and no ensembles in {ensembles_dir}/): "
                               "train one with python -m src.train fold=0")
    public_lb = read_public_lb(lb_file)
    rows = build_rows(runs, ensembles, public_lb)
    unknown = sorted(set(public_lb) - {r["exp"] for r in rows})
    if unknown:
        print(f"note: {lb_file} has LB scores for {unknown}, which have no run or ensemble here", file=sys.stderr)
    print(_text_table([_display(r, config_width) for r in rows]))
    print()
    print("\n".join(correlation_lines(rows)))
    written = write_leaderboard(rows, out)
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return rows


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    """`python -m src.leaderboard [table] key=value ...` / `lb exp=<name> score=<float> [note=...]`."""
    try:
        command, cfg = cfglib.command_config("leaderboard", ("table", "lb"), argv, default="table")
        runs_dir, ensembles_dir, out, lb_file = (Path(cfg[k]) for k in ("runs_dir", "ensembles_dir", "out", "lb_file"))
        if command == "lb":
            if not cfg.exp or cfg.score is None:
                raise LeaderboardError("usage: python -m src.leaderboard lb exp=<name> score=<float> [note=...]")
            score = check_public_lb(cfg.score, str(cfg.exp), runs_dir, ensembles_dir, bool(cfg.force))
            record_public_lb(lb_file, str(cfg.exp), score, str(cfg.note))
            print(f"recorded public LB {score} for {cfg.exp} in {lb_file}\n")
        leaderboard(runs_dir, ensembles_dir, out, lb_file, int(cfg.config_width))
    except (LeaderboardError, cfglib.CommandLineError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
