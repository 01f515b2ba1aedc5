"""The per-run report (`python -m src.report run=...`) and the comparison of two runs (`compare a=... b=...`), on
fake runs that follow the file contract."""
from __future__ import annotations

import json
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


def _compare(tmp_path: Path, a: str, b: str) -> int:
    return report.main(["compare", f"a={a}", f"b={b}", f"runs_dir={tmp_path / 'runs'}"])


def test_compare_orders_species_by_difference(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    classes = ["sp_a", "sp_b", "sp_c", "sp_d"]
    for exp, fold, per_class in (("A", 0, [0.9, 0.8, 0.7, 0.6]), ("A", 1, [0.9, 0.8, 0.7, 0.6]),
                                 ("B", 0, [0.5, 0.8, 0.9, 0.7]), ("B", 2, [0.0, 0.0, 0.0, 0.0])):
        run = make_fake_run(runs, exp, fold, classes=classes)
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["per_class_auc"] = dict(zip(classes, per_class))
        (run / "metrics.json").write_text(json.dumps(metrics))
    result = report.compare_runs(runs, "A", "B")
    assert result["folds"] == [0]  # only the fold both have
    assert [s for s, *_ in result["species"]] == ["sp_a", "sp_b", "sp_d", "sp_c"]
    assert result["species"][0][3] == pytest.approx(-0.4)
    assert result["species"][-1][3] == pytest.approx(0.2)

    assert _compare(tmp_path, "A", "B") == 0
    out = capsys.readouterr().out
    assert out.index("sp_a") < out.index("sp_b") < out.index("sp_d") < out.index("sp_c")
    assert "B vs A over folds [0]" in out and "mean diff -0.0250" in out


def test_compare_lists_worst_and_best_fifteen(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    make_fake_run(runs, "A", 0, n_classes=40, seed=1)
    make_fake_run(runs, "B", 0, n_classes=40, seed=2)
    assert _compare(tmp_path, "A", "B") == 0
    out = capsys.readouterr().out
    assert "worst 15 species" in out and "best 15 species" in out


def test_compare_names_a_missing_run(tmp_path: Path, capsys) -> None:
    make_fake_run(tmp_path / "runs", "A", 0)
    assert _compare(tmp_path, "A", "missing") == 1
    assert "missing" in capsys.readouterr().err
