"""`python -m src.report [plots] run=runs/<exp>/fold<k> [worst_k=6]`: plots and a listening list for one run;
`python -m src.report compare a=<exp A> b=<exp B>`: per-species ROC-AUC of run B against run A.

Reads the run's `oof.parquet` (validation predictions) and `config.yaml` (the class order); truth is
the one-hot of `primary_label`, as in the run's metrics. Writes into `<run>/report/`:
    per_class_auc.png    per-species ROC-AUC, sorted, with the macro mean
    pr_worst.png         precision-recall curves of the `worst_k` worst species (AP in the legend)
    threshold_worst.png  precision, recall and F1 against the threshold for those species
    score_hist.png       predicted scores of positives vs negatives, pooled and per worst species
    listen.csv           the chunks to listen to: highest-scoring negatives ('false positive') and
                         lowest-scoring positives ('missed positive')
Training calls `write_report` at the end of a run (train.report=true). `compare` reads the two runs'
metrics.json (`per_class_auc`, averaged over the folds both have). Options: configs/report.yaml.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from sklearn.metrics import average_precision_score, precision_recall_curve

from src import config as cfglib
from src.config import load_run_config
from src.data.tables import read_parquet
from src.evaluation.metrics import per_class_auc, primary_one_hot
from src.infer.io import atomic_write
from src.leaderboard import LeaderboardError, read_run

DPI = 110
LISTEN_COLUMNS = ["class", "filename", "chunk", "start_s", "end_s", "score", "kind", "primary_label"]


def load_predictions(run_dir: Path) -> tuple[pl.DataFrame, list[str], np.ndarray, np.ndarray]:
    """The run's oof frame, its classes, one-hot truth (rows, classes) and predictions (rows, classes)."""
    config_path, oof_path = run_dir / "config.yaml", run_dir / "oof.parquet"
    for path in (config_path, oof_path):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {run_dir} a finished run of python -m src.train?")
    classes = [str(c) for c in load_run_config(run_dir).get("classes") or []]
    if not classes:
        raise ValueError(f"{config_path} has no `classes` list: re-run training to save the full config")
    oof = read_parquet(oof_path, f"python -m src.train for {run_dir}")
    missing = [c for c in ["filename", "primary_label", *classes] if c not in oof.columns]
    if missing:
        raise ValueError(f"{oof_path} lacks columns {missing[:10]}: it does not match {config_path}'s classes; "
                         "re-run that fold")
    truth = primary_one_hot(oof["primary_label"].to_list(), classes)
    pred = oof.select(classes).to_numpy().astype(np.float64)
    return oof, classes, truth, pred


def _run_title(run_dir: Path) -> str:
    return f"{run_dir.parent.name} / {run_dir.name}"


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def plot_per_class_auc(aucs: dict[str, float], n_pos: dict[str, int], n_classes: int, title: str, path: Path) -> None:
    """Horizontal bars of per-species ROC-AUC, worst at the top, with the macro mean as a line."""
    names = sorted(aucs, key=lambda c: (aucs[c], c))
    values = np.array([aucs[c] for c in names])
    m = len(names)
    font = 9 if m <= 40 else 7.5 if m <= 100 else 6.5
    fig = Figure(figsize=(8.5, max(3.2, m * 1.7 * font / 72 + 1.4)))  # a bar about 1.7 lines of text high
    ax = fig.subplots()
    colors = colormaps["RdYlGn"](Normalize(0.5, 1.0)(values))
    ax.barh(np.arange(m), values, color=colors, edgecolor="none", height=0.8)
    ax.set_yticks(np.arange(m), [f"{c} ({n_pos[c]})" for c in names], fontsize=font)
    ax.set_ylim(m - 0.4, -0.6)  # worst at the top, no empty margin
    left = min(0.5, float(values.min()) - 0.02)
    ax.set_xlim(left, 1.0)
    mean = float(values.mean())
    ax.axvline(mean, color="black", linestyle="--", linewidth=1.2, label=f"macro mean {mean:.4f}")
    ax.axvline(0.5, color="gray", linestyle=":", linewidth=1, label="chance (0.5)")
    if m <= 60:
        for i, v in enumerate(values):
            ax.text(v - 0.004, i, f"{v:.3f}", va="center", ha="right", fontsize=font - 1,
                    bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 0.6})
    if m > 50:  # a tall figure: repeat the x axis at the top
        ax.tick_params(axis="x", labeltop=True, top=True)
    ax.set_xlabel("ROC-AUC (validation chunks, one-vs-rest)")
    ax.set_ylabel("species (validation positives)")
    skipped = n_classes - m
    note = f"\n({skipped} species without validation positives not shown)" if skipped else ""
    ax.set_title(f"{title}: per-species ROC-AUC, {m} species{note}", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # outside: never on a bar
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_pr_worst(truth: np.ndarray, pred: np.ndarray, worst: list[tuple[int, str, float]], title: str,
                  path: Path) -> None:
    """Precision-recall curves of the worst species, AP and positives count in the legend."""
    fig = Figure(figsize=(7.5, 5.8))
    ax = fig.subplots()
    for i, name, auc in worst:
        precision, recall, _ = precision_recall_curve(truth[:, i], pred[:, i])
        ap = average_precision_score(truth[:, i], pred[:, i])
        ax.plot(recall, precision, linewidth=1.6, drawstyle="steps-post",
                label=f"{name}: AP {ap:.3f}, AUC {auc:.3f}, n={int(truth[:, i].sum())}")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{title}: precision-recall of the {len(worst)} worst species (by ROC-AUC)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left", framealpha=0.9)  # PR curves start top-left and fall to the right
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_threshold_worst(truth: np.ndarray, pred: np.ndarray, worst: list[tuple[int, str, float]], title: str,
                         path: Path) -> None:
    """Small multiples: precision, recall and F1 against the decision threshold, one panel per worst species."""
    ncols = min(3, len(worst))
    nrows = math.ceil(len(worst) / ncols)
    fig = Figure(figsize=(3.6 * ncols + 0.6, 2.9 * nrows + 0.6))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (i, name, auc) in zip(axes, worst):
        precision, recall, thresholds = precision_recall_curve(truth[:, i], pred[:, i])
        p, r = precision[:-1], recall[:-1]
        f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
        ax.plot(thresholds, p, label="precision", color="tab:blue", linewidth=1.5)
        ax.plot(thresholds, r, label="recall", color="tab:orange", linewidth=1.5)
        ax.plot(thresholds, f1, label="F1", color="gray", linestyle=":", linewidth=1.3)
        best = int(np.argmax(f1))
        ax.axvline(thresholds[best], color="gray", linewidth=0.8, alpha=0.6)
        ax.set_title(f"{name}  AUC {auc:.3f}  best F1 {f1[best]:.2f} @ {thresholds[best]:.2f}", fontsize=8.5)
        ax.set_ylim(0, 1.03)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes[len(worst):]:
        ax.set_visible(False)
    for ax in axes[::ncols][:nrows]:
        ax.set_ylabel("precision / recall", fontsize=8.5)
    for ax in axes[max(0, len(worst) - ncols): len(worst)]:  # the panels with none below them
        ax.set_xlabel("threshold (predicted probability)", fontsize=8.5)
    axes[0].legend(fontsize=7.5, loc="best")
    fig.suptitle(f"{title}: precision and recall vs threshold, worst species", fontsize=10)
    _save(fig, path)


def plot_score_hist(truth: np.ndarray, pred: np.ndarray, worst: list[tuple[int, str, float]], title: str,
                    path: Path) -> None:
    """Histograms (log count) of predicted scores for positives vs negatives: all classes pooled, then
    one small panel per worst species."""
    lo, hi = min(0.0, float(pred.min())), max(1.0, float(pred.max()))
    bins = np.linspace(lo, hi, 51)
    ncols = min(3, len(worst))
    rows = math.ceil(len(worst) / ncols)
    mosaic = [["pooled"] * ncols] + [[f"w{r * ncols + c}" if r * ncols + c < len(worst) else "." for c in range(ncols)]
                                     for r in range(rows)]
    fig = Figure(figsize=(max(8.0, 3.4 * ncols), 3.4 + 2.5 * rows))
    axes = fig.subplot_mosaic(mosaic, height_ratios=[1.5] + [1] * rows)

    def hist(ax, positives: np.ndarray, negatives: np.ndarray, fontsize: float) -> None:
        style = {"bins": bins, "histtype": "stepfilled", "alpha": 0.6, "log": True}
        ax.hist(negatives, color="tab:gray", label=f"negatives ({len(negatives)})", **style)
        ax.hist(positives, color="tab:red", label=f"positives ({len(positives)})", **style)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=fontsize)

    hist(axes["pooled"], pred[truth > 0], pred[truth == 0], 9)
    axes["pooled"].set_title(f"{title}: predicted scores, all species pooled", fontsize=10)
    axes["pooled"].set_xlabel("predicted probability")
    axes["pooled"].set_ylabel("chunks x species (log)")
    axes["pooled"].legend(fontsize=8.5)
    for j, (i, name, auc) in enumerate(worst):
        ax = axes[f"w{j}"]
        hist(ax, pred[truth[:, i] > 0, i], pred[truth[:, i] == 0, i], 7.5)
        ax.set_title(f"{name} (AUC {auc:.3f})", fontsize=8.5)
        ax.legend(fontsize=6.5)
        ax.yaxis.set_minor_formatter(NullFormatter())  # no "6x10^0" minor labels on short log axes
        if j % ncols == 0:
            ax.set_ylabel("chunks (log)", fontsize=8)
    _save(fig, path)


def listening_list(oof: pl.DataFrame, classes: list[str], truth: np.ndarray, pred: np.ndarray,
                   n: int = 50) -> pl.DataFrame:
    """The `n` highest-scoring negatives and `n` lowest-scoring positives (chunk x species pairs).

    A species listed in a chunk's `secondary_labels` is not counted as a negative there: a high score
    for it is probably right, not worth a listen.
    """
    negative = truth == 0
    if "secondary_labels" in oof.columns:
        index = {c: i for i, c in enumerate(classes)}
        for row, labels in enumerate(oof["secondary_labels"].to_list()):
            for label in labels or []:
                if label in index:
                    negative[row, index[label]] = False
    keys = [c for c in ("chunk", "start_s", "end_s") if c in oof.columns]
    meta = oof.select(["filename", *keys, "primary_label"])

    def pick(mask: np.ndarray, highest: bool, kind: str) -> pl.DataFrame:
        rows, cols = np.nonzero(mask)
        scores = pred[rows, cols]
        order = np.argsort(-scores if highest else scores, kind="stable")[:n]
        picked = meta[rows[order].tolist()]
        return picked.with_columns(pl.Series("class", [classes[c] for c in cols[order]], dtype=pl.Utf8),
                                   pl.Series("score", scores[order], dtype=pl.Float64),
                                   pl.lit(kind).alias("kind"))

    frame = pl.concat([pick(negative, True, "false positive"), pick(truth > 0, False, "missed positive")])
    for c in ("chunk", "start_s", "end_s"):
        if c not in frame.columns:
            frame = frame.with_columns(pl.lit(None).alias(c))
    return frame.select(LISTEN_COLUMNS)


def write_report(run_dir: Path, worst_k: int = 6, listen_n: int = 50) -> Path:
    """Write the plots and listen.csv of a finished run into `<run_dir>/report/`; returns that folder."""
    run_dir = Path(run_dir)
    oof, classes, truth, pred = load_predictions(run_dir)
    if not np.isfinite(pred).all():
        raise ValueError(f"{run_dir / 'oof.parquet'} has NaN or infinite predictions: the run diverged; "
                         "check its log.csv and re-train")
    aucs = per_class_auc(truth, pred, classes)
    if not aucs:
        raise ValueError(f"{run_dir / 'oof.parquet'}: no species has both positive and negative validation "
                         "chunks, so there is nothing to plot")
    n_pos = {c: int(truth[:, i].sum()) for i, c in enumerate(classes)}
    index = {c: i for i, c in enumerate(classes)}
    worst = [(index[c], c, aucs[c]) for c in sorted(aucs, key=lambda c: (aucs[c], c))[:max(1, worst_k)]]
    title = _run_title(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot_per_class_auc(aucs, n_pos, len(classes), title, out / "per_class_auc.png")
    plot_pr_worst(truth, pred, worst, title, out / "pr_worst.png")
    plot_threshold_worst(truth, pred, worst, title, out / "threshold_worst.png")
    plot_score_hist(truth, pred, worst, title, out / "score_hist.png")
    with atomic_write(out / "listen.csv") as tmp:
        listening_list(oof, classes, truth, pred, listen_n).write_csv(tmp)
    return out


# ---------------------------------------------------------------- compare two runs

def compare_runs(runs_dir: Path, a: str, b: str) -> dict:
    """Per-species ROC-AUC of run `b` minus run `a`, each the mean of `per_class_auc` over the folds both have.

    Returns {'folds', 'cv_a', 'cv_b', 'metric', 'species': [(name, auc_a, auc_b, diff), ...] worst first}.
    """
    runs = {}
    for name in (a, b):
        run = read_run(runs_dir / name) if (runs_dir / name).is_dir() else None
        if run is None:
            raise FileNotFoundError(f"{runs_dir / name}/ has no finished fold (metrics.json): check the name "
                                   f"(python -m src.leaderboard lists them) or train it with "
                                   f"python -m src.train exp={name} fold=0")
        runs[name] = run
    folds = sorted(set(runs[a]["metrics"]) & set(runs[b]["metrics"]))
    if not folds:
        raise ValueError(f"{a} has folds {sorted(runs[a]['metrics'])} and {b} has folds "
                               f"{sorted(runs[b]['metrics'])}: no fold in common; train the missing fold")

    def mean_per_class(name: str) -> dict[str, float]:
        per_fold = [runs[name]["metrics"][k].get("per_class_auc") or {} for k in folds]
        species = {s for d in per_fold for s in d}
        means = {s: [v for v in (d.get(s) for d in per_fold) if v is not None and not math.isnan(v)]
                 for s in species}
        return {s: float(np.mean(v)) for s, v in means.items() if v}

    auc_a, auc_b = mean_per_class(a), mean_per_class(b)
    species = [(s, auc_a[s], auc_b[s], auc_b[s] - auc_a[s]) for s in sorted(set(auc_a) & set(auc_b))]
    species.sort(key=lambda t: (t[3], t[0]))
    cv = {n: float(np.mean([runs[n]["metrics"][k]["score"] for k in folds])) for n in (a, b)}
    return {"folds": folds, "cv_a": cv[a], "cv_b": cv[b], "metric": runs[a]["metrics"][folds[0]]["metric"],
            "species": species}


def print_comparison(result: dict, a: str, b: str, top: int = 15) -> None:
    species = result["species"]
    diffs = np.array([t[3] for t in species])
    print(f"{b} vs {a} over folds {result['folds']}: CV ({result['metric']}) "
          f"{result['cv_a']:.4f} -> {result['cv_b']:.4f} ({result['cv_b'] - result['cv_a']:+.4f})")
    if not species:
        print("no species with a per-class AUC in both runs")
        return
    print(f"per-species AUC ({len(species)} species): mean diff {diffs.mean():+.4f}, "
          f"better {int((diffs > 0).sum())}, worse {int((diffs < 0).sum())}, same {int((diffs == 0).sum())}")
    width = max(len("species"), *(len(t[0]) for t in species))

    def block(title: str, items: list[tuple]) -> None:
        print(f"\n{title}")
        print(f"  {'species'.ljust(width)}  {a[:10]:>10}  {b[:10]:>10}  {'diff':>8}")
        for name, va, vb, d in items:
            print(f"  {name.ljust(width)}  {va:10.4f}  {vb:10.4f}  {d:+8.4f}")

    if len(species) <= 2 * top:
        block("all species, worst first (B - A):", species)
    else:
        block(f"worst {top} species (B - A):", species[:top])
        block(f"best {top} species (B - A):", species[::-1][:top])


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    """`python -m src.report [plots] run=runs/<exp>/fold<k>` / `python -m src.report compare a=<exp> b=<exp>`."""
    try:
        action, cfg = cfglib.command_config("report", ("plots", "compare"), argv, default="plots")
        if action == "compare":
            if not cfg.a or not cfg.b:
                raise ValueError("usage: python -m src.report compare a=<exp A> b=<exp B> [runs_dir=runs]")
            print_comparison(compare_runs(Path(cfg.runs_dir), str(cfg.a), str(cfg.b)), str(cfg.a), str(cfg.b),
                             int(cfg.top))
            return 0
        if not cfg.run:
            raise ValueError("usage: python -m src.report run=runs/<exp>/fold<k> [worst_k=6] [listen_n=50]")
        out = write_report(Path(cfg.run), int(cfg.worst_k), int(cfg.listen_n))
    except (FileNotFoundError, ValueError, LeaderboardError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_listening_list(out)
    return 0


def print_listening_list(out: Path) -> None:
    """The top 10 of each kind of `out/listen.csv`, and what the report folder holds."""
    listen = pl.read_csv(out / "listen.csv")
    with pl.Config(tbl_rows=10, tbl_cols=-1, fmt_str_lengths=40, tbl_hide_dataframe_shape=True):
        for kind in ("false positive", "missed positive"):
            print(f"top 10 {kind}s (listen to these):")
            top = listen.filter(pl.col("kind") == kind).head(10).drop("kind")
            print(top if kind == "false positive" else top.drop("primary_label"))
    print(f"wrote {out}/: " + ", ".join(sorted(p.name for p in out.iterdir())))


if __name__ == "__main__":
    sys.exit(main())
