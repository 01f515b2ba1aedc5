"""`src.ensemble` on the tiny pipeline (ensemble.yaml, submission, score), the nested OOF score without
in-sample leakage, a corrupt test soundscape, and `src.models.export` against the eager model."""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil

import numpy as np
import polars as pl
import pytest
from omegaconf import OmegaConf
from scipy.stats import rankdata

from src import ensemble
from src.evaluation.metrics import score, submission_score
from src.infer.audio import load_audio
from src.infer.blend import BLENDS
from src.infer.runtimes import RUNTIME_FILES, RUNTIME_MODULES, load_runtime
from src.infer.soundscape import cut_windows
from src.infer.submission import read_sample_submission, validate_file
from src.models.export import eager_runtime, export_fold
from tests.pipeline import compose_named

FAST = ["ensemble.fit.restarts=1"]


def ensemble_config(pipe, ensembles_dir, name, *extra):
    """The config of `python -m src.ensemble runs=[tiny_a,tiny_b] name=<name>` on the tiny pipeline."""
    data = [o for o in pipe.overrides if o.startswith("data.")]
    return compose_named("ensemble", *data, f"runs_dir={pipe.runs_dir}", f"ensembles_dir={ensembles_dir}",
                         "runs=[tiny_a,tiny_b]", f"name={name}", *extra)


@pytest.fixture(scope="module")
def built(tiny_pipeline, tmp_path_factory):
    """One ensemble of the two tiny runs with the default blend settings (blend=auto), one fit restart."""
    out = tmp_path_factory.mktemp("ensembles")
    summary = ensemble.run(ensemble_config(tiny_pipeline, out, "tiny_ab", *FAST))
    return out / "tiny_ab", summary


def test_ensemble_yaml(built, tiny_pipeline):
    folder, summary = built
    ens = OmegaConf.to_container(OmegaConf.load(folder / "ensemble.yaml"))
    assert [m["run"] for m in ens["members"]] == ["tiny_a", "tiny_b"]
    assert all(m["folds"] == [0] for m in ens["members"])
    assert sum(m["weight"] for m in ens["members"]) == pytest.approx(1.0)
    assert all(m["weight"] >= 0 for m in ens["members"])
    assert ens["blend"] in BLENDS and set(ens["blend_oof_nested"]) == set(BLENDS)
    assert ens["oof_score"] == ens["blend_oof_nested"][ens["blend"]]  # the nested score, not the in-sample one
    fitted = ens["soundscape_blends_nested"] if ens["fit_on"] == "soundscape" else ens["blend_oof_nested"]
    assert ens["blend"] == max(fitted, key=fitted.get)  # blend=auto: the best nested score of what it was fitted on
    assert 0 <= ens["oof_score"] <= 1 and 0 <= ens["oof_score_in_sample"] <= 1
    _, classes = read_sample_submission(tiny_pipeline.data_root / "sample_submission.csv")
    assert ens["classes"] == classes
    assert len(ens["fallback"]) == len(classes) and sum(ens["fallback"]) == pytest.approx(1.0, abs=1e-5)
    assert ens["test_problems"] == []
    assert ens["data"]["competition"] == "birdclef-2025"
    assert ens == OmegaConf.to_container(OmegaConf.create(summary))


def test_submission_and_score(built, tiny_pipeline):
    folder, summary = built
    comp = tiny_pipeline.data_root
    validate_file(folder / "submission.csv", comp / "sample_submission.csv")
    sub = pl.read_csv(folder / "submission.csv")
    sample_rows, _ = read_sample_submission(comp / "sample_submission.csv")
    assert sub["row_id"].to_list() == sample_rows
    result = json.loads((folder / "score.json").read_text())
    assert result["auc"] == pytest.approx(submission_score(pl.read_csv(comp / "solution.csv"), sub, "auc"), abs=1e-12)
    assert set(result["per_class"]) <= set(sub.columns) and "no_clip" not in result  # every class has clips here
    assert summary["test_score"] == result["auc"]
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))


# --- the nested score ---------------------------------------------------------------------------------

def macro_aucs(preds: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Macro ROC-AUC of every member at once (rank formula; equals sklearn's for continuous scores)."""
    ranks = rankdata(np.stack(preds), axis=1)
    pos = y.sum(axis=0)
    return (((ranks * y[None]).sum(axis=1) - pos * (pos + 1) / 2) / (pos * (len(y) - pos))).mean(axis=1)


def pick_best(preds, y, method, metric, power, restarts, seed=0, max_rows=None):
    """The most overfitting weight fit there is: all weight on the member that scores best on these rows."""
    w = np.zeros(len(preds))
    w[int(np.argmax(macro_aucs(preds, y)))] = 1.0
    return w


def random_problem(seed: int, rows: int = 300, classes: int = 6, members: int = 400):
    rng = np.random.default_rng(seed)
    y = (rng.random((rows, classes)) < 0.3).astype(np.float32)
    preds = [rng.random((rows, classes)) for _ in range(members)]
    groups = rng.permutation(rows) % 5
    return preds, y, groups


def test_nested_score_does_not_leak_the_fit_into_the_score(monkeypatch):
    """Members and labels are independent noise: every honest score is ~0.5. Fitting on all rows and
    scoring them finds a lucky member; the nested score, whose weights never saw the scored rows, does not."""
    preds, y, groups = random_problem(seed=7)
    assert macro_aucs(preds[:3], y) == pytest.approx([score(y, p, "auc") for p in preds[:3]], abs=1e-12)
    monkeypatch.setattr(ensemble, "fit_weights", pick_best)
    in_sample = score(y, ensemble.blend(preds, pick_best(preds, y, "weighted", "auc", 2.0, 1), "weighted"), "auc")
    nested = ensemble.nested_score(preds, y, groups, "weighted", "auc", 2.0, 1)
    assert abs(nested - 0.5) < 0.03
    assert in_sample > nested + 0.03 and in_sample > 0.53


def test_nested_score_fits_and_scores_disjoint_groups(monkeypatch):
    rng = np.random.default_rng(0)
    rows = 40
    row_tag = np.arange(rows, dtype=np.float64)[:, None] / 1000  # member 0's first column identifies the row
    preds = [np.hstack([row_tag, rng.random((rows, 1))]), rng.random((rows, 2))]
    y = np.zeros((rows, 2), np.float32)
    y[np.arange(rows), rng.integers(0, 2, rows)] = 1
    groups = np.repeat(np.arange(4), 10)[rng.permutation(rows)]
    fitted, blended = [], []

    def spy_fit(p, yy, *args, **kwargs):
        fitted.append(set(np.round(p[0][:, 0] * 1000).astype(int)))
        return np.array([0.5, 0.5])

    real_blend = ensemble.blend

    def spy_blend(p, w, method, power):
        blended.append(set(np.round(p[0][:, 0] * 1000).astype(int)))
        return real_blend(p, w, method, power)

    monkeypatch.setattr(ensemble, "fit_weights", spy_fit)
    monkeypatch.setattr(ensemble, "blend", spy_blend)
    ensemble.nested_score(preds, y, groups, "weighted", "auc", 2.0, 1)
    assert len(fitted) == len(blended) == 4
    for fit_rows, scored_rows in zip(fitted, blended):
        assert not fit_rows & scored_rows
        assert fit_rows | scored_rows == set(range(rows))
        assert not set(groups[list(fit_rows)]) & set(groups[list(scored_rows)])  # whole groups held out
    assert sorted(r for s in blended for r in s) == list(range(rows))  # each row scored exactly once


def test_nested_score_with_the_real_fit_on_a_good_and_a_noise_member():
    rng = np.random.default_rng(1)
    rows = 60
    y = np.zeros((rows, 3), np.float32)
    y[np.arange(rows), rng.integers(0, 3, rows)] = 1
    good = np.clip(y * 0.6 + rng.random((rows, 3)) * 0.5, 0, 1)
    noise = rng.random((rows, 3))
    nested = ensemble.nested_score([good, noise], y, np.arange(rows) % 3, "weighted", "auc", 2.0, 2)
    assert nested > 0.8 > score(y, noise, "auc")


def test_fit_weights_on_a_row_subset_still_finds_the_good_member(monkeypatch):
    rng = np.random.default_rng(2)
    rows = 400
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, rows)]
    good, noise = np.clip(y * 0.6 + rng.random((rows, 3)) * 0.5, 0, 1), rng.random((rows, 3))
    seen = []
    real_score = ensemble.score
    monkeypatch.setattr(ensemble, "score", lambda yy, p, m: seen.append(len(yy)) or real_score(yy, p, m))
    for method in ("weighted", "rank"):
        w = ensemble.fit_weights([good, noise], y, method, "auc", 2.0, 1, max_rows=100)
        assert w[0] > 0.7 and set(seen) == {100}


def test_nested_score_needs_two_groups():
    with pytest.raises(ValueError, match="at least 2 recordings"):
        ensemble.nested_score([np.random.rand(4, 2)], np.eye(2)[[0, 1, 0, 1]], np.zeros(4), "mean", "auc", 2.0, 1)


# --- a corrupt test soundscape -------------------------------------------------------------------------

def test_corrupt_test_soundscape_gets_prior_rows_and_a_logged_problem(tiny_pipeline, tmp_path, caplog):
    comp = shutil.copytree(tiny_pipeline.data_root, tmp_path / "comp")
    bad = comp / "test_soundscapes" / "soundscape_001.ogg"
    bad.write_bytes(b"OggS" + bytes(range(256)) * 16)
    # default blend and post-processing: the rows of the unreadable file are still exactly the fallback
    cfg = ensemble_config(tiny_pipeline, tmp_path / "ensembles", "bad", f"data.root={comp}", *FAST)
    with caplog.at_level(logging.WARNING, logger="src"):
        summary = ensemble.run(cfg)
    folder = tmp_path / "ensembles" / "bad"
    validate_file(folder / "submission.csv", comp / "sample_submission.csv")
    sub = pl.read_csv(folder / "submission.csv")
    sample_rows, classes = read_sample_submission(comp / "sample_submission.csv")
    assert sub["row_id"].to_list() == sample_rows
    prior = ensemble.class_prior(cfg, classes)
    assert summary["fallback"] == pytest.approx(prior.tolist())
    bad_rows = sub.filter(pl.col("row_id").str.starts_with("soundscape_001_"))
    assert bad_rows.height == 12
    np.testing.assert_allclose(bad_rows.select(classes).to_numpy(), np.tile(prior, (12, 1)), atol=1e-6)
    good_rows = sub.filter(pl.col("row_id").str.starts_with("soundscape_000_")).select(classes).to_numpy()
    assert not np.allclose(good_rows, prior, atol=1e-3)  # the readable file is still predicted
    assert len(summary["test_problems"]) == 1 and str(bad) in summary["test_problems"][0]
    assert any("soundscape_001.ogg" in r.getMessage() and "fallback" in r.getMessage() for r in caplog.records)
    assert (folder / "score.json").exists()


# --- exports --------------------------------------------------------------------------------------------

def test_exports_match_the_eager_model(tiny_pipeline, tmp_path):
    fold_dir = tiny_pipeline.runs_dir / "tiny_a" / "fold0"
    run_cfg = OmegaConf.load(fold_dir / "config.yaml")
    sr, window = int(run_cfg.audio.sample_rate), round(run_cfg.audio.window_s * run_cfg.audio.sample_rate)
    y = load_audio(tiny_pipeline.data_root / "test_soundscapes" / "soundscape_000.ogg", sr)
    waves = cut_windows(y, window)[:6]  # real soundscape windows
    runtimes = [k for k in RUNTIME_FILES if importlib.util.find_spec(RUNTIME_MODULES[k])]  # openvino is optional
    diffs = export_fold(fold_dir, tmp_path, runtimes, waves)
    assert set(diffs) == set(runtimes) >= {"torchscript", "onnx"} and max(diffs.values()) <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.onnx", "frontend.ts", "model.ts"]
    reference = eager_runtime(fold_dir)(waves)
    assert reference.shape == (6, len(run_cfg.classes))
    other = cut_windows(y, window, shift=sr)[3:10]  # other windows and another batch size than the check's
    reference_other = eager_runtime(fold_dir)(other)
    for fmt in runtimes:
        predict = load_runtime(fmt, tmp_path)
        assert np.abs(predict(waves) - reference).max() <= 1e-4
        assert np.abs(predict(other) - reference_other).max() <= 1e-4
        assert np.abs(predict(other[:1]) - reference_other[:1]).max() <= 1e-4


def test_export_rejects_an_unknown_format(tiny_pipeline, tmp_path):
    fold_dir = tiny_pipeline.runs_dir / "tiny_a" / "fold0"
    with pytest.raises(ValueError, match="tflite"):
        export_fold(fold_dir, tmp_path, ["tflite"], np.zeros((2, 160000), np.float32))


def test_grouped_models_share_the_front_end_and_match_each_model(tiny_pipeline, tmp_path, monkeypatch):
    """The kernel's grouped predict (src.infer.runtimes.load_models): one front-end pass for models with the same
    frontend id, columns side by side, each model's probabilities as it predicts alone."""
    from src.infer import runtimes
    from src.kernel import frontend_id

    y = load_audio(tiny_pipeline.data_root / "test_soundscapes" / "soundscape_000.ogg", 32000)
    waves = cut_windows(y, 160000)[:5]
    dirs, ids = [], []
    for run in ("tiny_a", "tiny_b"):
        fold_dir = tiny_pipeline.runs_dir / run / "fold0"
        export_fold(fold_dir, tmp_path / run, ["onnx"], waves)
        dirs.append(tmp_path / run)
        ids.append(frontend_id(OmegaConf.load(fold_dir / "config.yaml")))
    assert ids[0] == ids[1]  # same tiny audio config and input channels
    alone = np.concatenate([load_runtime("onnx", d)(waves) for d in dirs], axis=1)
    loads = []
    real = runtimes.load_torchscript
    monkeypatch.setattr(runtimes, "load_torchscript", lambda path, threads: loads.append(path) or real(path, threads))
    grouped = runtimes.load_models("onnx", dirs, ids)(waves)
    assert len(loads) == 1 and grouped.shape == alone.shape
    assert np.abs(grouped - alone).max() <= 1e-6


def test_full_data_members_predict_with_the_weights_fitted_on_oof(built, tiny_pipeline, tmp_path):
    """`full_data=true`: the test set is predicted by each run's full-data fits (runs/<exp>/foldall*, several
    seeds = one member, averaged), listed as the members' `models`; the blend and weights are the OOF fit's.
    Here the "full-data fits" are copies of the fold models (tiny_b twice, as two seeds), so the submission
    must equal the fold ensemble's."""
    folder, summary = built
    runs = shutil.copytree(tiny_pipeline.runs_dir, tmp_path / "runs")
    for run, names in {"tiny_a": ["foldall"], "tiny_b": ["foldall", "foldall_seed7"]}.items():
        for name in names:
            (runs / run / name).mkdir()
            for f in ("best.pt", "config.yaml"):
                shutil.copy(runs / run / "fold0" / f, runs / run / name / f)
    data = [o for o in tiny_pipeline.overrides if o.startswith("data.")]
    cfg = compose_named("ensemble", *data, f"runs_dir={runs}", f"ensembles_dir={tmp_path / 'ens'}",
                        "runs=[tiny_a,tiny_b]", "full_data=true", *FAST)
    full = ensemble.run(cfg)
    assert full["name"] == "tiny_a+tiny_b+full" and full["full_data"] is True
    assert [m.get("models") for m in full["members"]] == [["foldall"], ["foldall", "foldall_seed7"]]
    assert [m["folds"] for m in full["members"]] == [[0], [0]]  # the OOF folds the weights were fitted on
    assert [m["weight"] for m in full["members"]] == pytest.approx([m["weight"] for m in summary["members"]])
    assert full["blend"] == summary["blend"] and full["oof_score"] == pytest.approx(summary["oof_score"])
    ours = pl.read_csv(tmp_path / "ens" / "tiny_a+tiny_b+full" / "submission.csv")
    theirs = pl.read_csv(folder / "submission.csv")
    assert ours["row_id"].to_list() == theirs["row_id"].to_list()
    assert np.abs(ours.drop("row_id").to_numpy() - theirs.drop("row_id").to_numpy()).max() <= 1e-5
    shutil.rmtree(runs / "tiny_a" / "foldall")
    with pytest.raises(FileNotFoundError, match=r"no full-data fit.*fold=all"):
        ensemble.run(cfg)


# --- the validation-soundscape fit -------------------------------------------------------------------

@pytest.fixture(scope="module")
def scored_runs(tiny_pipeline, tmp_path_factory):
    """A copy of the tiny runs, each scored on small validation soundscapes (oof_soundscape.parquet)."""
    from src.valsets import score_run

    runs = tmp_path_factory.mktemp("scored") / "runs"
    for exp in ("tiny_a", "tiny_b"):
        shutil.copytree(tiny_pipeline.runs_dir / exp, runs / exp)
    for fold_dir in sorted(runs.glob("*/fold0")):
        cfg = OmegaConf.load(fold_dir / "config.yaml")
        cfg.valsets.n_soundscapes, cfg.valsets.duration_s = 6, 30.0
        OmegaConf.save(cfg, fold_dir / "config.yaml")
        metrics = score_run(fold_dir, threads=1)
        assert set(metrics) == {"soundscape_auc", "soundscape_cmap"}
        assert json.loads((fold_dir / "metrics.json").read_text())["soundscape_auc"] == metrics["soundscape_auc"]
    return runs


def test_ensemble_fits_blend_and_post_processing_on_the_soundscape_oof(tiny_pipeline, scored_runs, tmp_path):
    data = [o for o in tiny_pipeline.overrides if o.startswith("data.")]
    base = [*data, f"runs_dir={scored_runs}", f"ensembles_dir={tmp_path}", "runs=[tiny_a,tiny_b]", *FAST]
    fitted = ensemble.run(compose_named("ensemble", *base, "name=sound"))
    default = ensemble.run(compose_named("ensemble", *base, "name=clip", "ensemble.fit.oof=clip"))
    assert fitted["fit_on"] == "soundscape" and default["fit_on"] == "clip"
    steps = fitted["soundscape_steps_nested"]
    assert set(steps) == {"blend", "smoothing", "file_prior"}
    # the steps kept end at the best nested score; a later step that lowers it is left out of the choice
    kept = fitted["soundscape_steps_kept"]
    assert steps[kept] == max(steps.values()) and fitted["soundscape_oof_score"] == steps[kept]
    assert fitted["soundscape_step_gain"]["smoothing"] == pytest.approx(steps["smoothing"] - steps["blend"])
    candidates = ensemble.post_candidates(compose_named("ensemble").ensemble.search, kept)
    assert fitted["inference"]["postprocess"] in candidates  # the chosen one goes to the test and the kernel
    assert default["inference"]["postprocess"] == OmegaConf.to_container(compose_named("ensemble").ensemble.postprocess)
    assert 0 <= default["soundscape_oof_score"] <= 1
    assert fitted["oof_score"] == fitted["blend_oof_nested"][fitted["blend"]]  # the clip CV of the blend it uses
    # the in-sample choice is the best candidate on all rows: at least as good as no post-processing there
    from src.data.soundscape_labels import label_matrix
    from src.infer.blend import blend
    from src.infer.postprocess import postprocess_rows
    base, preds = ensemble.load_window_oof(scored_runs, ["tiny_a", "tiny_b"], fitted["classes"])
    y, ids = label_matrix(base["labels"].to_list(), fitted["classes"]), base["row_id"].to_list()
    mixed = blend(preds, [m["weight"] for m in fitted["members"]], fitted["blend"], fitted["power"])
    chosen = score(y, postprocess_rows(ids, mixed, fitted["inference"]["postprocess"]), "auc")
    assert chosen == pytest.approx(fitted["soundscape_oof_score_in_sample"]) and chosen >= score(y, mixed, "auc") - 1e-12


def test_a_post_processing_step_that_lowers_the_nested_score_is_left_out(scored_runs, monkeypatch):
    cfg = compose_named("ensemble", "ensemble.fit.restarts=1")
    n_smoothing = len(ensemble.post_candidates(cfg.ensemble.search, "smoothing"))
    # nested scores by step (told apart by their candidate counts): smoothing helps, the file prior hurts
    monkeypatch.setattr(ensemble, "nested_pipeline", lambda *a: {1: 0.80, n_smoothing: 0.90}.get(len(a[7]), 0.85))
    classes = OmegaConf.load(scored_runs / "tiny_a" / "fold0" / "config.yaml").classes
    base, preds = ensemble.load_window_oof(scored_runs, ["tiny_a", "tiny_b"], list(classes))
    fitted = ensemble.fit_windows(base, preds, list(classes), cfg.ensemble, "auc")
    assert fitted["summary"]["soundscape_steps_kept"] == "smoothing"
    assert fitted["summary"]["soundscape_oof_score"] == 0.90 and fitted["postprocess"]["file_prior"] is None


def test_ensemble_without_soundscape_oof_keeps_the_clip_fit(tiny_pipeline, scored_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(scored_runs, runs)
    (runs / "tiny_b" / "fold0" / "oof_soundscape.parquet").unlink()
    data = [o for o in tiny_pipeline.overrides if o.startswith("data.")]
    base = [*data, f"runs_dir={runs}", f"ensembles_dir={tmp_path / 'ens'}", "runs=[tiny_a,tiny_b]", *FAST]
    summary = ensemble.run(compose_named("ensemble", *base, "name=fallback"))
    assert summary["fit_on"] == "clip" and "soundscape_oof_score" not in summary
    assert summary["inference"]["postprocess"] == OmegaConf.to_container(compose_named("ensemble").ensemble.postprocess)
    with pytest.raises(ValueError, match="needs every member's oof_soundscape.parquet"):
        ensemble.run(compose_named("ensemble", *base, "name=forced", "ensemble.fit.oof=soundscape"))
