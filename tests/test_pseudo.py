"""`src.pseudo`: the transforms, the file / class / competition checks, and pseudo-labelling the tiny pipeline's
unlabelled soundscapes with a run and with an ensemble as teacher."""
from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from omegaconf import OmegaConf

from src import ensemble, pseudo
from src.data.audio_cache import load_soundscape_index
from src.data.pseudo_labels import load_pseudo
from src.models import predict
from src.synth import TRUTH_CSV
from tests.pipeline import compose_named

CLASSES = ["a", "b", "c"]


def _cfg(**t):
    return OmegaConf.create({"smoothing": None, "temperature": 1.0, "power": 1.0, "threshold": 0.0} | t)


def test_identity_transform_keeps_probabilities():
    p = np.random.default_rng(0).uniform(0.01, 0.99, (6, 3)).astype(np.float32)
    np.testing.assert_allclose(pseudo.transform(p, [f"s_{5 * i}" for i in range(6)], CLASSES, _cfg()), p, atol=1e-6)


def test_power_temperature_threshold():
    p = np.array([[0.9, 0.5, 0.2]], np.float32)
    ids = ["s_5"]
    np.testing.assert_allclose(pseudo.transform(p, ids, CLASSES, _cfg(power=2.0)), p ** 2, atol=1e-6)
    sharp = pseudo.transform(p, ids, CLASSES, _cfg(temperature=0.5))
    logit = np.log(p / (1 - p))
    np.testing.assert_allclose(sharp, 1 / (1 + np.exp(-logit / 0.5)), atol=1e-6)
    assert sharp[0, 0] > 0.9 and sharp[0, 2] < 0.2 and sharp[0, 1] == pytest.approx(0.5)
    np.testing.assert_allclose(pseudo.transform(p, ids, CLASSES, _cfg(threshold=0.4)), [[0.9, 0.5, 0.0]], atol=1e-6)
    per_class = _cfg(threshold={"default": 0.1, "a": 0.95})
    np.testing.assert_allclose(pseudo.transform(p, ids, CLASSES, per_class), [[0.0, 0.5, 0.2]], atol=1e-6)
    with pytest.raises(pseudo.PseudoLabelError, match="unknown classes"):
        pseudo.transform(p, ids, CLASSES, _cfg(threshold={"zzz": 0.5}))
    with pytest.raises(pseudo.PseudoLabelError, match="temperature"):
        pseudo.transform(p, ids, CLASSES, _cfg(temperature=0.0))


@pytest.mark.parametrize("override, message", [
    ({"power": None}, "power=None"), ({"temperature": "x"}, "temperature='x'"), ({"power": float("inf")}, "power=inf"),
    ({"threshold": [0.1, 0.2]}, "threshold=.*a number or a mapping"), ({"threshold": "abc"}, "threshold='abc'"),
    ({"threshold": {"a": "high"}}, "threshold.a='high'"), ({"smoothing": 0.5}, "smoothing=0.5"),
    ({"smoothing": ["a"]}, "smoothing=.*numbers")])
def test_transform_settings_that_are_not_numbers_are_named(override, message):
    with pytest.raises(pseudo.PseudoLabelError, match=f"pseudo.transform.{message}"):
        pseudo.check_transform(_cfg(**override), CLASSES)


def test_a_null_threshold_zeroes_nothing():
    p = np.array([[0.9, 0.5, 0.2]], np.float32)
    np.testing.assert_allclose(pseudo.transform(p, ["s_5"], CLASSES, _cfg(threshold=None)), p, atol=1e-6)


def test_smoothing_stays_inside_one_soundscape():
    p = np.zeros((4, 3), np.float32)
    p[1, 0] = 1.0  # file x, second window
    ids = ["x_5", "x_10", "y_5", "y_10"]
    out = pseudo.transform(p, ids, CLASSES, _cfg(smoothing=[0.25, 0.5, 0.25]))
    assert out[0, 0] == pytest.approx(0.25 / 0.75, abs=1e-5) and out[1, 0] == pytest.approx(0.5 / 0.75, abs=1e-5)
    assert np.all(out[2:, 0] < 1e-5)  # the next file's first window does not see file x


def _write(tmp_path, classes=CLASSES, competition="birdclef-2025"):
    keys = pl.DataFrame({"filename": ["s.ogg"] * 2, "window": [0, 1], "start_s": [0.0, 5.0], "end_s": [5.0, 10.0]})
    out = tmp_path / "p.parquet"
    pseudo.write_pseudo(out, keys, np.full((2, len(classes)), 0.5, np.float32),
                        {"teacher": "t", "round": 0, "classes": classes, "competition": competition,
                         "pseudo_auc": None})
    return out


def test_load_pseudo_checks_classes_and_competition(tmp_path):
    table, meta = load_pseudo(_write(tmp_path), CLASSES, "birdclef-2025")
    assert table.columns == [*pseudo.KEYS, *CLASSES] and meta["teacher"] == "t"
    with pytest.raises(pseudo.PseudoLabelError, match=r"p\.parquet.*class list"):
        load_pseudo(_write(tmp_path), ["a", "c", "b"], "birdclef-2025")
    with pytest.raises(pseudo.PseudoLabelError, match=r"p\.parquet.*competition 'birdclef-2024'"):
        load_pseudo(_write(tmp_path, competition="birdclef-2024"), CLASSES, "birdclef-2025")
    with pytest.raises(pseudo.PseudoLabelError, match="not found"):
        load_pseudo(tmp_path / "none.parquet", CLASSES, "birdclef-2025")
    assert not list(tmp_path.glob("*.tmp*"))


def pseudo_config(pipe, tmp_path, teacher, *extra):
    data = [o for o in pipe.overrides if o.startswith("data.")]
    return compose_named("pseudo", *data, "threads=1", f"runs_dir={pipe.runs_dir}",
                         f"ensembles_dir={tmp_path / 'ensembles'}", f"pseudo.teacher={teacher}",
                         f"pseudo.out={tmp_path / 'pseudo' / teacher}.parquet", *extra)


def test_unknown_teacher_is_a_clear_error(tiny_pipeline, tmp_path):
    with pytest.raises(pseudo.PseudoLabelError, match="'nobody'.*ensemble.yaml.*run folder"):
        pseudo.pseudo_label(pseudo_config(tiny_pipeline, tmp_path, "nobody"))


def test_pseudo_labels_from_a_run_and_an_ensemble(tiny_pipeline, tmp_path):
    meta = pseudo.pseudo_label(pseudo_config(tiny_pipeline, tmp_path, "tiny_a", "pseudo.round=2",
                                             "pseudo.transform.power=2"))
    out = tmp_path / "pseudo" / "tiny_a.parquet"
    table, saved = load_pseudo(out, meta["classes"], "birdclef-2025")
    index = load_soundscape_index(tiny_pipeline.root / "cache")
    assert table.select(pseudo.KEYS).equals(index.sort("filename", "window").select(pseudo.KEYS))
    probs = table.select(meta["classes"]).to_numpy()
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    assert saved == json.loads(json.dumps(meta)) and saved["round"] == 2 and saved["transform"]["power"] == 2
    assert (tiny_pipeline.data_root / TRUTH_CSV).exists()
    if saved["teacher_auc"] is not None:  # None when the one tiny soundscape has no positive class
        assert 0 <= saved["teacher_auc"] <= 1 and 0 <= saved["pseudo_auc"] <= 1

    ens_cfg = compose_named("ensemble", *[o for o in tiny_pipeline.overrides if o.startswith("data.")],
                            f"runs_dir={tiny_pipeline.runs_dir}", f"ensembles_dir={tmp_path / 'ensembles'}",
                            "runs=[tiny_a,tiny_b]", "name=ab", "ensemble.fit.restarts=1", "threads=1")
    ensemble.run(ens_cfg)
    meta_ab = pseudo.pseudo_label(pseudo_config(tiny_pipeline, tmp_path, "ab"))
    assert meta_ab["teacher_kind"] == "ensemble" and meta_ab["members"] == ["tiny_a", "tiny_b"]
    assert meta_ab["round"] == 0


def test_teacher_runs_pseudo_label_from_their_cache_as_from_the_audio(tiny_pipeline, tiny_teacher, tmp_path,
                                                                       monkeypatch, capsys):
    """A teacher made of teacher runs reads the windows' embeddings from its cache: the same labels as running
    the teacher on the decoded soundscapes."""
    cached = pseudo.pseudo_label(pseudo_config(tiny_pipeline, tmp_path / "cached", "tinyperch_probe"))
    assert "read from its teacher cache" in capsys.readouterr().out
    monkeypatch.setattr(predict, "cached_run_predictions", lambda *a: None)
    live = pseudo.pseudo_label(pseudo_config(tiny_pipeline, tmp_path / "live", "tinyperch_probe"))
    a, b = (pl.read_parquet(tmp_path / d / "pseudo" / "tinyperch_probe.parquet") for d in ("cached", "live"))
    assert a.select(pseudo.KEYS).equals(b.select(pseudo.KEYS)) and cached["windows"] == live["windows"]
    np.testing.assert_allclose(a.select(live["classes"]).to_numpy(), b.select(live["classes"]).to_numpy(), atol=1e-5)


def test_teacher_from_another_competition_is_refused(tiny_pipeline, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_pipeline.runs_dir / "tiny_a", runs / "other")
    cfg_path = runs / "other" / "fold0" / "config.yaml"
    saved = OmegaConf.load(cfg_path)
    saved.classes = [*saved.classes[:-1], "not_a_class"]
    OmegaConf.save(saved, cfg_path)
    cfg = pseudo_config(tiny_pipeline, tmp_path, "other", f"runs_dir={runs}")
    with pytest.raises(pseudo.PseudoLabelError, match="not this competition's"):
        pseudo.pseudo_label(cfg)
