"""The local CV leaderboard (`python -m src.leaderboard`), on fake runs that follow the file contract."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import polars as pl
import pytest
from fake_runs import make_fake_ensemble, make_fake_run

from src import leaderboard


def _run_cli(tmp_path: Path, *args: str) -> int:
    return leaderboard.main([f"runs_dir={tmp_path / 'runs'}", f"ensembles_dir={tmp_path / 'ensembles'}",
                             f"out={tmp_path / 'out'}", f"lb_file={tmp_path / 'lb' / 'public_lb.csv'}", *args])


def _table(tmp_path: Path) -> pl.DataFrame:
    return pl.read_csv(tmp_path / "out" / "leaderboard.csv", schema_overrides={"folds": pl.Utf8})


@pytest.fixture
def three_runs(tmp_path: Path) -> Path:
    """effnet (folds 0,1; CV 0.90), regnet (fold 0; 0.80), effnet_lr (fold 0; 0.85), ensemble (0.93)."""
    for fold, score in ((0, 0.89), (1, 0.91)):
        make_fake_run(tmp_path / "runs", "effnet", fold, score=score, duration_s=100.0)
    make_fake_run(tmp_path / "runs", "regnet", 0, backbone="regnety_002", score=0.80)
    make_fake_run(tmp_path / "runs", "effnet_lr", 0, lr=3e-3, score=0.85)
    make_fake_ensemble(tmp_path / "ensembles", "blend", ["effnet", "regnet"], oof_score=0.93, folds=[0, 1],
                       test_auc=0.88)
    return tmp_path


def test_lists_runs_and_ensembles_best_cv_first(three_runs: Path, capsys) -> None:
    assert _run_cli(three_runs) == 0
    table = _table(three_runs)
    assert table["exp"].to_list() == ["blend", "effnet", "effnet_lr", "regnet"]
    assert table["kind"].to_list() == ["ensemble", "run", "run", "run"]
    effnet = table.row(1, named=True)
    assert effnet["cv"] == pytest.approx(0.90)
    assert effnet["folds"] == "0 1"
    assert effnet["fold_scores"] == "0.890000 0.910000"
    assert effnet["train_s"] == pytest.approx(200.0)
    assert effnet["commit"] == "0123456"
    assert table.row(0, named=True)["test_auc"] == pytest.approx(0.88)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in printed[2:6]] == ["blend", "effnet", "effnet_lr", "regnet"]
    md = (three_runs / "out" / "leaderboard.md").read_text()
    assert "| 1 | blend |" in md and "0.9000 ±0.0100" in md


def test_rows_come_from_the_runs_own_metrics(three_runs: Path) -> None:
    """Acceptance: editing a run's saved metrics.json changes the leaderboard."""
    assert _run_cli(three_runs) == 0
    assert _table(three_runs)["exp"].to_list()[-1] == "regnet"
    path = three_runs / "runs" / "regnet" / "fold0" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["score"] = metrics["auc"] = 0.99
    path.write_text(json.dumps(metrics))
    assert _run_cli(three_runs) == 0
    table = _table(three_runs)
    assert table["exp"].to_list()[0] == "regnet"
    assert table.row(0, named=True)["cv"] == pytest.approx(0.99)


def test_config_differences_list_only_the_varied_keys(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_fake_run(runs, "a", 0, score=0.9)
    # bookkeeping differs too (data root, cache, workers, device): it must not show up
    make_fake_run(runs, "b", 0, backbone="regnety_002", lr=3e-3, score=0.8,
                  overrides={"data.root": "/elsewhere", "data.cache_dir": "/tmp/c", "train.num_workers": 8,
                             "device": "cuda"})
    make_fake_run(runs, "c", 0, score=0.7, overrides={"aug.mixup.p": 0.0})
    assert _run_cli(tmp_path) == 0
    config = dict(zip(*_table(tmp_path).select("exp", "config").to_dict(as_series=False).values()))
    assert config["a"] == "model.backbone=efficientnet_b0, train.lr=0.001, aug.mixup.p=0.5"
    assert config["b"] == "model.backbone=regnety_002, train.lr=0.003, aug.mixup.p=0.5"
    assert config["c"] == "model.backbone=efficientnet_b0, train.lr=0.001, aug.mixup.p=0"


def test_config_differences_unit() -> None:
    diffs = leaderboard.config_differences({
        "x": {"exp": "x", "fold": 0, "model": {"backbone": "b0", "head": "linear"}, "train": {"lr": 0.001},
              "data": {"root": "/a"}, "classes": ["a"]},
        "y": {"exp": "y", "fold": 1, "model": {"backbone": "b0", "head": "sed"}, "train": {"lr": 0.001},
              "data": {"root": "/b"}, "classes": ["a", "b"], "labels": {"smoothing": 0.1}},
    })
    assert diffs == {"x": ["model.head=linear"], "y": ["model.head=sed", "labels.smoothing=0.1"]}
    assert leaderboard._shorten(["a=1", "b=2", "c=3"], 8) == "a=1, b=2 (+1 more)"


def test_unfinished_fold_is_skipped(three_runs: Path, capsys) -> None:
    (three_runs / "runs" / "effnet" / "fold2").mkdir()
    assert _run_cli(three_runs) == 0
    assert "fold2: no metrics.json" in capsys.readouterr().err
    assert _table(three_runs).row(1, named=True)["folds"] == "0 1"


def test_public_lb_records_replaces_and_plots(three_runs: Path, capsys) -> None:
    lb_file = three_runs / "lb" / "public_lb.csv"
    assert _run_cli(three_runs, "lb", "exp=effnet", "score=0.80", "note=first try") == 0
    assert "needs public LB scores for >= 2" in capsys.readouterr().out
    assert not (three_runs / "out" / "leaderboard_cv_lb.png").exists()

    assert _run_cli(three_runs, "lb", "exp=effnet", "score=0.84") == 0  # replaces the first entry
    assert _run_cli(three_runs, "lb", "exp=regnet", "score=0.79", "note=regnet sub") == 0
    with open(lb_file, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["exp"], float(r["score"])) for r in rows] == [("effnet", 0.84), ("regnet", 0.79)]
    assert list(rows[0]) == ["exp", "score", "date", "note"]
    assert rows[1]["note"] == "regnet sub"

    printed = capsys.readouterr().out
    assert "CV-LB rank correlation (Spearman, n=2): +1.000" in printed
    png = three_runs / "out" / "leaderboard_cv_lb.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    lb = dict(zip(*_table(three_runs).select("exp", "lb").to_dict(as_series=False).values()))
    assert lb == {"blend": None, "effnet": 0.84, "effnet_lr": None, "regnet": 0.79}
    assert "leaderboard_cv_lb.png" in (three_runs / "out" / "leaderboard.md").read_text()


def test_cv_lb_correlation() -> None:
    rows = [{"cv": cv, "lb": lb} for cv, lb in ((0.9, 0.80), (0.8, 0.82), (0.7, 0.70), (0.6, None))]
    rho, n = leaderboard.cv_lb_correlation(rows)
    assert n == 3 and rho == pytest.approx(0.5)
    assert leaderboard.cv_lb_correlation(rows[:1]) is None


def test_errors_name_the_file_and_the_fix(tmp_path: Path, capsys) -> None:
    assert _run_cli(tmp_path) == 1
    err = capsys.readouterr().err
    assert f"no runs in {tmp_path / 'runs'}/" in err and "python -m src.train fold=0" in err

    make_fake_run(tmp_path / "runs", "A", 0)
    bad = tmp_path / "runs" / "A" / "fold0" / "metrics.json"
    bad.write_text("{not json")
    assert _run_cli(tmp_path) == 1
    assert str(bad) in capsys.readouterr().err

    assert _run_cli(tmp_path, "lb", "exp=A", "score=high") == 1
    assert "not a number" in capsys.readouterr().err
    assert _run_cli(tmp_path, "colour=red") == 1
    assert "unknown option 'colour'" in capsys.readouterr().err


def test_soundscape_cv_beside_clip_cv_with_both_correlations(tmp_path: Path, capsys) -> None:
    """Three runs whose soundscape CV ranks them like their local test scores and whose clip CV does not;
    each run's test score comes from its single-member ensemble, counted once."""
    for exp, clip, sound, test in (("a", 0.90, 0.60, 0.55), ("b", 0.80, 0.70, 0.65), ("c", 0.70, 0.80, 0.75)):
        fold_dir = make_fake_run(tmp_path / "runs", exp, 0, score=clip)
        metrics = json.loads((fold_dir / "metrics.json").read_text())
        (fold_dir / "metrics.json").write_text(json.dumps(metrics | {"soundscape_auc": sound}))
        make_fake_ensemble(tmp_path / "ensembles", f"only_{exp}", [exp], oof_score=clip, test_auc=test)
    assert _run_cli(tmp_path) == 0
    table = _table(tmp_path)
    assert [c for c in table.columns if "soundscape" in c] == ["soundscape_cv"]
    runs = table.filter(pl.col("kind") == "run").sort("exp")
    assert runs["soundscape_cv"].to_list() == pytest.approx([0.60, 0.70, 0.80])
    assert runs["test_auc"].to_list() == pytest.approx([0.55, 0.65, 0.75])
    printed = capsys.readouterr().out
    assert "soundscape cv" in printed.splitlines()[0]
    assert "soundscape CV - local test rank correlation (Spearman, n=3): +1.000" in printed
    assert "clip CV - local test rank correlation (Spearman, n=3): -1.000" in printed
    assert "soundscape CV - local test" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_a_boolean_score_and_an_impossible_recorded_score_are_refused(three_runs: Path, capsys) -> None:
    assert _run_cli(three_runs, "lb", "exp=effnet", "score=true") == 1  # YAML's true is not the score 1.0
    assert "score=True is not a number" in capsys.readouterr().err
    lb_file = three_runs / "lb" / "public_lb.csv"
    lb_file.parent.mkdir(parents=True, exist_ok=True)
    lb_file.write_text("exp,score,date,note\neffnet,0.8,2025-01-01,\nregnet,2.0,2025-01-02,hand-edited\n")
    assert _run_cli(three_runs) == 1
    assert re.search(rf"{lb_file} line 3: score '2.0'.*between 0 and 1.*fix or delete", capsys.readouterr().err)
