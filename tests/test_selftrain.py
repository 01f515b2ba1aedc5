"""`src.selftrain` on the tiny pipeline: round 0 from a run, one round of pseudo-labels + a student, each round
an ensemble (a leaderboard row), the best round chosen by CV and copied to `ensembles/<name>/`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from src import selftrain
from src.data.pseudo_labels import load_pseudo
from src.leaderboard import read_ensembles
from tests.pipeline import compose_named


def _q(items) -> str:
    return "[" + ",".join(f"'{o}'" for o in items) + "]"


def selftrain_config(pipe, tmp_path, *extra):
    data = [o for o in pipe.overrides if o.startswith("data.")]
    train = [o for o in pipe.overrides if o.startswith(("experiment=", "folds.", "prepare."))]
    student = f"{{name: st, command: train, overrides: {_q([*train, 'train.epochs=1'])}}}"
    return compose_named("selftrain", *data, f"runs_dir={pipe.runs_dir}", f"ensembles_dir={tmp_path / 'ensembles'}",
                         f"pseudo_dir={tmp_path / 'pseudo'}", "name=tiny", "round0=tiny_a",
                         f"stage_overrides={_q(data)}", f"students=[{student}]",
                         f"ensemble_overrides={_q(['ensemble.fit.restarts=1', 'threads=1'])}",
                         f"pseudo_overrides={_q(['threads=1', 'pseudo.transform.power=2'])}", *extra)


def test_one_round_end_to_end(tiny_pipeline, tmp_path):
    cfg = selftrain_config(tiny_pipeline, tmp_path, "rounds=1")
    summary = selftrain.selftrain(cfg)
    ens = tmp_path / "ensembles"
    assert [r["ensemble"] for r in summary["rounds"]] == ["tiny_r0", "tiny_r1"]
    # the demo recipe keeps round 0 (the teacher) beside its student
    assert summary["rounds"][0]["members"] == ["tiny_a"] and summary["rounds"][1]["members"] == ["tiny_a", "tiny_r1_st"]
    key = summary["selected_by"]
    assert key == "soundscape_auc" and all(r[key] is not None for r in summary["rounds"])  # valsets exist
    assert summary["best_round"] == selftrain.best_round(summary["rounds"], key, cfg.min_gain)[0]
    best = summary["rounds"][summary["best_round"]]
    chosen = OmegaConf.load(ens / "tiny" / "ensemble.yaml")
    assert chosen.name == "tiny" and chosen.selftrain_round == best["round"]
    assert (ens / "tiny" / "submission.csv").exists()
    assert json.loads((ens / "tiny" / "selftrain.json").read_text()) == json.loads(json.dumps(summary))
    assert {e["name"] for e in read_ensembles(ens)} >= {"tiny_r0", "tiny_r1"}  # a leaderboard row per round
    labels = tmp_path / "pseudo" / "tiny" / "tiny_r0.parquet"
    _, meta = load_pseudo(labels, list(chosen.classes), "birdclef-2025")
    assert meta["teacher"] == "tiny_r0" and meta["round"] == 0 and meta["transform"]["power"] == 2
    student = OmegaConf.load(tiny_pipeline.runs_dir / "tiny_r1_st" / "fold0" / "config.yaml")
    assert student.pseudo.path == str(labels) and student.pseudo.ratio == 0.5
    # round 1's ensemble may fit its site and hour priors on the same labels (a no-op here: 2025 names)
    assert OmegaConf.load(ens / "tiny_r1" / "ensemble.yaml").inference.metadata_pseudo.path == str(labels)
    assert OmegaConf.load(ens / "tiny_r0" / "ensemble.yaml").inference.metadata_pseudo.path is None
    for r in summary["rounds"]:
        assert r["test_score"] is not None and 0 <= r["test_score"] <= 1

    again = selftrain.selftrain(selftrain_config(tiny_pipeline, tmp_path, "rounds=1", "resume=true"))
    assert again["rounds"][1]["seconds"] < summary["rounds"][1]["seconds"]  # nothing retrained


def test_best_round_prefers_the_soundscape_cv():
    rounds = [{"round": 0, "oof_score": 0.9, "soundscape_auc": 0.6}, {"round": 1, "oof_score": 0.8,
                                                                       "soundscape_auc": 0.7}]
    assert selftrain.best_round(rounds, "auto") == (1, "soundscape_auc")
    assert selftrain.best_round(rounds, "oof_score") == (0, "oof_score")
    rounds[0]["soundscape_auc"] = None
    assert selftrain.best_round(rounds, "auto") == (0, "oof_score")
    rounds[0]["soundscape_auc"], rounds[1]["soundscape_auc"] = 0.7, 0.701
    assert selftrain.best_round(rounds, "soundscape_auc", min_gain=0.002) == (0, "soundscape_auc")
    assert selftrain.best_round(rounds, "soundscape_auc") == (1, "soundscape_auc")
    rounds[0]["soundscape_auc"] = None
    with pytest.raises(ValueError, match="soundscape_auc"):
        selftrain.best_round(rounds, "soundscape_auc")


def test_unknown_round0_is_a_clear_error(tiny_pipeline, tmp_path):
    with pytest.raises(FileNotFoundError, match="round0='nobody'"):
        selftrain.selftrain(selftrain_config(tiny_pipeline, tmp_path, "round0=nobody"))


def test_probe_students_refit_on_pseudo_labelled_windows(tiny_pipeline, tiny_teacher, tmp_path):
    """The xc45 recipe on the tiny teacher: round 0 is the zero-shot run, each round refits the embedding probe
    on the chunks plus every pseudo-labelled window's cached embedding, blended with round 0's run (keep_round0)."""
    overrides, classes = tiny_teacher
    teacher = [o for o in overrides if o.startswith(("teacher", "probe.", "experiment=", "folds.", "prepare."))]
    # probe.bed_labels: the mixed copies' beds carry their pseudo-labels too
    student = f"{{name: probe, command: probe, overrides: {_q([*teacher, 'probe.bed_labels=true'])}}}"
    cfg = selftrain_config(tiny_pipeline, tmp_path, "rounds=1", "round0=tinyperch", f"students=[{student}]",
                           "keep_round0=true", "pseudo_overrides=['threads=1']")
    summary = selftrain.selftrain(cfg)
    assert summary["rounds"][1]["members"] == ["tinyperch", "tiny_r1_probe"]  # round 0's run kept beside
    run = tiny_pipeline.runs_dir / "tiny_r1_probe" / "fold0"
    labels = tmp_path / "pseudo" / "tiny" / "tiny_r0.parquet"
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.pseudo.path == str(labels) and saved.probe.bed_labels
    metrics = json.loads((run / "metrics.json").read_text())
    table, _ = load_pseudo(labels, classes, "birdclef-2025")
    assert 0 < metrics["n_pseudo_windows"] <= table.height
    assert "soundscape_auc" in metrics and (run / "oof_soundscape.parquet").exists()
    plain = tiny_pipeline.runs_dir / "tinyperch_probe" / "fold0" / "probe.npz"
    assert not np.allclose(np.load(run / "probe.npz")["w0"], np.load(plain)["w0"])  # the windows changed the fit
