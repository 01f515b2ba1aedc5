"""The per-run report (`python -m src.report run=...`), on a fake run that follows the file contract."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from fake_runs import make_fake_run

from src import report

PNGS = ("per_class_auc.png", "pr_worst.png", "threshold_worst.png", "score_hist.png")


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_write_report_writes_plots_and_listening_list(tmp_path: Path) -> None:
    run = make_fake_run(tmp_path / "runs", "effnet", 0, n_classes=12, n_chunks=300)
    out = report.write_report(run, worst_k=4, listen_n=20)
    assert out == run / "report"
    for name in PNGS:
        assert _is_png(out / name), name

    listen = pl.read_csv(out / "listen.csv")
    assert listen.columns == ["class", "filename", "chunk", "start_s", "end_s", "score", "kind", "primary_label"]
    assert listen["kind"].value_counts().sort("kind").rows() == [("false positive", 20), ("missed positive", 20)]
    fp = listen.filter(pl.col("kind") == "false positive")
    missed = listen.filter(pl.col("kind") == "missed positive")
    assert fp["score"].to_list() == sorted(fp["score"].to_list(), reverse=True)
    assert missed["score"].to_list() == sorted(missed["score"].to_list())
    assert (fp["class"] != fp["primary_label"]).all() and (missed["class"] == missed["primary_label"]).all()
    assert fp["score"].min() > missed["score"].max()  # the fake run's signal separates the extremes

    # a secondary label is not a false positive
    oof = pl.read_parquet(run / "oof.parquet")
    secondary = {(f, c, lab) for f, c, labs in oof.select("filename", "chunk", "secondary_labels").iter_rows()
                 for lab in labs}
    assert not {(f, c, k) for f, c, k in fp.select("filename", "chunk", "class").iter_rows()} & secondary


@pytest.mark.parametrize("n_classes, worst_k", [(3, 6), (60, 6)])
def test_report_few_and_many_classes(tmp_path: Path, n_classes: int, worst_k: int) -> None:
    run = make_fake_run(tmp_path / "runs", "x", 1, n_classes=n_classes, n_chunks=4 * n_classes)
    out = report.write_report(run, worst_k=worst_k)
    assert all(_is_png(out / name) for name in PNGS)


def test_truth_is_one_hot_of_primary_label(tmp_path: Path) -> None:
    run = make_fake_run(tmp_path / "runs", "x", 0, n_classes=5)
    oof, classes, truth, pred = report.load_predictions(run)
    assert truth.sum(axis=1).tolist() == [1.0] * len(oof)
    assert [classes[i] for i in truth.argmax(axis=1)] == oof["primary_label"].to_list()
    assert pred.shape == truth.shape


def test_cli_prints_top_ten_and_names_missing_files(tmp_path: Path, capsys) -> None:
    run = make_fake_run(tmp_path / "runs", "x", 0, n_classes=6)
    assert report.main([f"run={run}"]) == 0
    out = capsys.readouterr().out
    assert "top 10 false positives" in out and "top 10 missed positives" in out

    assert report.main([f"run={tmp_path / 'runs' / 'nope' / 'fold0'}"]) == 1
    assert "nope/fold0/config.yaml not found" in capsys.readouterr().err
    assert report.main([]) == 1
