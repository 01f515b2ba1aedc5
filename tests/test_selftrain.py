"""`src.selftrain` on the tiny pipeline: round 0 from a run, one round of pseudo-labels + a student, each round
an ensemble (a leaderboard row), the best round chosen by CV and copied to `ensembles/<name>/`."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from src import selftrain
from src.leaderboard import read_ensembles
from src.pseudo import load_pseudo
from tests.pipeline import compose_named


def _q(items) -> str:
    return "[" + ",".join(f"'{o}'" for o in items) + "]"


def selftrain_config(pipe, tmp_path, *extra):
    data = [o for o in pipe.overrides if o.startswith("data.")]
    train = [o for o in pipe.overrides if o.startswith(("experiment=", "folds.", "prepare."))]
    student = f"{{exp: tiny_st, command: train, overrides: {_q([*train, 'train.epochs=1'])}}}"
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
    assert summary["rounds"][0]["members"] == ["tiny_a"] and summary["rounds"][1]["members"] == ["tiny_st_r1"]
    assert summary["selected_by"] == "oof_score"
    best = max(summary["rounds"], key=lambda r: r["oof_score"])
    assert summary["best_round"] == best["round"]
    chosen = OmegaConf.load(ens / "tiny" / "ensemble.yaml")
    assert chosen.name == best["ensemble"] and (ens / "tiny" / "submission.csv").exists()
    assert json.loads((ens / "tiny" / "selftrain.json").read_text()) == json.loads(json.dumps(summary))
    assert {e["name"] for e in read_ensembles(ens)} >= {"tiny_r0", "tiny_r1"}  # a leaderboard row per round
    labels = tmp_path / "pseudo" / "tiny" / "tiny_r0.parquet"
    _, meta = load_pseudo(labels, list(chosen.classes), "birdclef-2025")
    assert meta["teacher"] == "tiny_r0" and meta["round"] == 0 and meta["transform"]["power"] == 2
    student = OmegaConf.load(tiny_pipeline.runs_dir / "tiny_st_r1" / "fold0" / "config.yaml")
    assert student.pseudo.path == str(labels) and student.pseudo.ratio == 0.5
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
    with pytest.raises(ValueError, match="soundscape_auc"):
        selftrain.best_round(rounds, "soundscape_auc")


def test_unknown_round0_is_a_clear_error(tiny_pipeline, tmp_path):
    with pytest.raises(FileNotFoundError, match="round0='nobody'"):
        selftrain.selftrain(selftrain_config(tiny_pipeline, tmp_path, "round0=nobody"))
