"""Ensembling the 2026 way: a specialist member (a class subset) blended per class by src.ensemble and by the
kernel, per-class weights, the site and hour prior step."""
from __future__ import annotations

import json
import logging

import numpy as np
import polars as pl
import pytest
from omegaconf import OmegaConf

from src import ensemble, kernel
from src.data.pseudo_labels import PseudoLabelError
from src.ensemble import fit_class_weights, metadata_pseudo_rows, with_priors
from src.infer.blend import blend, widen_columns
from src.infer.postprocess import metadata_prior, postprocess_rows
from src.pseudo import write_pseudo
from src.train import train
from tests.pipeline import compose_named
from tests.test_kernel import SLUG, assert_same_submission, copy_competition, run_script_alone

PATTERN = r"(?P<prefix>.+)_(?P<site>[^_]+)_(?P<date>\d{8})_(?P<time>\d{6})"


def test_a_class_no_member_predicts_is_blended_over_those_that_do():
    a = np.full((4, 3), 0.2, np.float32)
    b = widen_columns(np.full((4, 2), 0.8, np.float32), ["c1", "c2"], ["c0", "c1", "c2"])
    assert np.isnan(b[:, 0]).all()
    out = blend([a, b], [0.5, 0.5], "weighted")
    np.testing.assert_allclose(out[:, 0], 0.2, atol=1e-6)  # only a predicts c0
    np.testing.assert_allclose(out[:, 1:], 0.5, atol=1e-6)
    table = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    np.testing.assert_allclose(blend([a, np.full((4, 3), 0.8, np.float32)], table, "weighted")[0], [0.2, 0.8, 0.5],
                               atol=1e-6)


def test_per_class_weights_follow_the_member_that_ranks_each_class_and_shrink_with_few_positives():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 2)) < 0.3).astype(np.float32)
    noise = rng.random((400, 2))
    good_on_0 = np.stack([y[:, 0] + 0.1 * noise[:, 0], noise[:, 1]], axis=1)
    good_on_1 = np.stack([noise[:, 0], y[:, 1] + 0.1 * noise[:, 1]], axis=1)
    table = fit_class_weights([good_on_0, good_on_1], y, np.array([0.5, 0.5]), "weighted", 2.0, strength=1.0)
    assert table[0, 0] > 0.9 and table[1, 1] > 0.9
    shrunk = fit_class_weights([good_on_0, good_on_1], y, np.array([0.5, 0.5]), "weighted", 2.0, strength=1e6)
    np.testing.assert_allclose(shrunk, 0.5, atol=1e-3)  # a huge strength keeps the global weights


def test_the_site_and_hour_prior_is_fitted_on_rows_and_leaves_unparsable_names_alone(caplog):
    ids = [f"BC_{site}_20250101_{hour:02d}0000_{5 * (w + 1)}" for site, hour in (("S1", 2), ("S2", 14))
           for w in range(4)]
    y = np.zeros((8, 2), np.float32)
    y[:4, 0] = 1  # class 0 calls at site S1 at night, class 1 never
    spec = {"weight": 1.0, "power": 1.0, "alpha": 1.0, "hour_bin": 3, "pattern": PATTERN}
    fitted = with_priors({"metadata_prior": spec}, ids, y)
    probs = np.full((8, 2), 0.5, np.float32)
    out = postprocess_rows(ids, probs, fitted)
    assert (out[:4, 0] > 0.5).all() and (out[4:, 0] < 0.5).all()  # raised at S1, lowered at S2
    with caplog.at_level(logging.WARNING):
        same = metadata_prior(probs[:2], fitted["metadata_prior"], "odd_name")
        metadata_prior(probs[:2], fitted["metadata_prior"], "odd_name2")
    np.testing.assert_array_equal(same, probs[:2])
    assert sum("does not match" in r.getMessage() for r in caplog.records) <= 1
    np.testing.assert_allclose(out[:, 1], 0.5, atol=1e-6)  # class 1 was never seen: left as it is, not zeroed


def test_a_class_the_prior_never_saw_keeps_its_ranking_at_a_new_site():
    """Fitted on other sites' rows where class 1 never calls (global prior 0), the prior applied to an unseen site
    leaves class 1's scores as they are: before the floor it zeroed them, and the nested labelled CV read 0.47."""
    ids = [f"BC_S1_20250101_{hour:02d}0000_{5 * (w + 1)}" for hour in (2, 14) for w in range(4)]
    y = np.zeros((8, 2), np.float32)
    y[:4, 0] = 1
    fitted = with_priors({"metadata_prior": {"weight": 1.0, "power": 1.0, "alpha": 20.0, "hour_bin": 3,
                                             "floor": 0.01, "pattern": PATTERN}}, ids, y)
    new = [f"BC_S9_20250101_020000_{5 * (w + 1)}" for w in range(4)]
    probs = np.array([[0.1, 0.9], [0.2, 0.1], [0.3, 0.5], [0.4, 0.3]], np.float32)
    out = postprocess_rows(new, probs, fitted)
    np.testing.assert_allclose(out[:, 1], probs[:, 1], atol=1e-6)
    assert (np.argsort(out[:, 0]) == np.argsort(probs[:, 0])).all()


def test_pseudo_labelled_windows_count_in_the_site_and_hour_tables():
    """A site only the pseudo-labelled soundscapes hold gets its own table; a pseudo-labelled window counts
    `weight` of a labelled one (weight 0: as if absent)."""
    spec = {"weight": 1.0, "power": 1.0, "alpha": 1.0, "hour_bin": 3, "pattern": PATTERN}
    ids = [f"BC_S1_20250101_020000_{5 * (w + 1)}" for w in range(4)]
    y = np.zeros((4, 2))
    extra_ids = [f"BC_S3_20250101_140000_{5 * (w + 1)}" for w in range(4)]
    extra_y = np.tile([0.0, 0.8], (4, 1))
    plain = with_priors({"metadata_prior": spec}, ids, y)["metadata_prior"]
    assert "S3" not in plain["site"]
    for weight in (1.0, 0.25):
        table = with_priors({"metadata_prior": spec}, ids, y, (extra_ids, extra_y, weight))["metadata_prior"]
        base = 0.8 * 4 * weight / (4 + 4 * weight)
        np.testing.assert_allclose(table["global"], [0.0, base], atol=1e-6)
        np.testing.assert_allclose(table["site"]["S3"][1], (0.8 * 4 * weight + base) / (4 * weight + 1), atol=1e-6)
        np.testing.assert_allclose(table["site"]["S1"][1], base / 5, atol=1e-6)  # alpha 1: 4 zeros + the base
    absent = with_priors({"metadata_prior": spec}, ids, y, (extra_ids, extra_y, 0.0))["metadata_prior"]
    assert absent["global"] == plain["global"] and absent["site"]["S1"] == plain["site"]["S1"]


def test_metadata_pseudo_rows_read_the_pseudo_labels_and_leave_out_the_cv_soundscapes(tmp_path):
    keys = pl.DataFrame({"filename": ["BC_S1_20250101_020000.ogg"] * 2 + ["BC_S2_20250101_140000.ogg"] * 2,
                         "window": [0, 1, 0, 1], "start_s": [0.0, 5.0, 0.0, 5.0], "end_s": [5.0, 10.0, 5.0, 10.0]})
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]], np.float32)
    path = tmp_path / "r1.parquet"
    write_pseudo(path, keys, probs, {"classes": ["a", "b"], "competition": "birdclef-2026", "teacher": "t",
                                     "round": 1, "pseudo_auc": None})
    spec = OmegaConf.create({"path": str(path), "weight": 0.5})
    ids, labels, weight = metadata_pseudo_rows(spec, ["a", "b"], "birdclef-2026", ["BC_S1_20250101_020000_5"])
    assert ids == ["BC_S2_20250101_140000_5", "BC_S2_20250101_140000_10"] and weight == 0.5
    np.testing.assert_allclose(labels, probs[2:], atol=1e-6)
    assert metadata_pseudo_rows(OmegaConf.create({"path": None, "weight": 0.5}), ["a", "b"], "x", []) is None
    with pytest.raises(PseudoLabelError, match="r1.parquet.*competition"):
        metadata_pseudo_rows(spec, ["a", "b"], "birdclef-2025", [])


@pytest.fixture(scope="module")
def specialist(tiny_pipeline):
    classes = json.loads((tiny_pipeline.root / "cache" / "manifest.json").read_text())["classes"]
    train(tiny_pipeline.train_config("exp=spec2", f"data.classes=[{','.join(classes[:2])}]", "train.epochs=1"))
    return classes[:2]


def test_a_specialist_member_is_blended_by_the_ensemble_and_the_kernel(tiny_pipeline, specialist, tmp_path):
    data = [o for o in tiny_pipeline.overrides if o.startswith("data.")]
    summary = ensemble.run(compose_named("ensemble", *data, f"runs_dir={tiny_pipeline.runs_dir}",
                                         f"ensembles_dir={tmp_path / 'ensembles'}", "runs=[tiny_a,spec2]",
                                         "name=withspec", "ensemble.blend=weighted", "ensemble.fit.restarts=1"))
    members = {m["run"]: m for m in summary["members"]}
    assert members["spec2"]["classes"] == specialist and len(summary["classes"]) > len(specialist)
    sub = pl.read_csv(tmp_path / "ensembles" / "withspec" / "submission.csv")
    values = sub.drop("row_id").to_numpy()
    assert np.isfinite(values).all() and values.min() >= 0
    saved = OmegaConf.load(tmp_path / "ensembles" / "withspec" / "ensemble.yaml")
    assert "class_weights" in saved
    kernel.main(["build", "name=withspec", f"ensembles_dir={tmp_path / 'ensembles'}",
                 f"kernels_dir={tmp_path / 'kernels'}", "runtime=torchscript", "fallback_runtime=null", "user=tester",
                 f"slug={SLUG}", "check_windows=4", "plan_on_build=false"])
    comp = copy_competition(tiny_pipeline, tmp_path / "comp")
    run_script_alone(tmp_path / "kernels" / "withspec", comp, tmp_path)
    assert_same_submission(tmp_path / "working" / "submission.csv",
                           tmp_path / "ensembles" / "withspec" / "submission.csv")
