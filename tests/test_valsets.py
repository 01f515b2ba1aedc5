"""Validation soundscapes (src.valsets): fold isolation, the audibility label rule, determinism, bad input,
and the evaluator that writes oof_soundscape.parquet."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import add_recording, make_tiny_competition, prepare_config, tone, write_audio

from src.data.audio_cache import cache_path
from src.data.soundscape_labels import label_matrix
from src.evaluation.metrics import macro_auc
from src.evaluation.valsets import build_fold, evaluate_soundscapes, fold_dir, load_fold, mix
from src.folds import write_folds
from src.infer.audio import load_audio
from src.prepare import prepare

SR = 32000
VALSETS = ["valsets.n_soundscapes=4", "valsets.duration_s=20", "folds.n=3"]


def _competition(root: Path, soundscapes: bool = True) -> Path:
    """9 tone recordings (3 classes, each recording its own frequency) + two unlabelled noise soundscapes."""
    comp = make_tiny_competition(root, seconds=12.0)
    if soundscapes:
        rng = np.random.default_rng(0)
        for i in range(2):
            write_audio(comp / "train_soundscapes" / f"amb{i}.ogg",
                        (0.02 * rng.standard_normal(30 * SR)).astype(np.float32))
    return comp


def _prepared(tmp_path: Path, *overrides: str, soundscapes: bool = True):
    comp = _competition(tmp_path / "comp", soundscapes)
    cfg = prepare_config(comp, tmp_path / "cache", f"folds.dir={tmp_path / 'folds'}", *VALSETS, *overrides)
    write_folds(cfg, report=False)
    prepare(cfg)
    return cfg


def _classes(cfg) -> list[str]:
    return sorted(pl.read_parquet(Path(cfg.data.cache_dir) / "chunks.parquet")["primary_label"].unique().to_list())


def _tone_freq(filename: str) -> float:
    """The tone frequency make_tiny_competition gave `bird<i>/XC<i><j>.ogg`."""
    stem = Path(filename).stem.removeprefix("XC")
    return 600.0 * (int(stem[0]) + 1) + 25.0 * int(stem[1:])


def test_fold_soundscapes_hold_only_that_folds_recordings(tmp_path):
    cfg = _prepared(tmp_path)
    folds = pl.read_csv(next((tmp_path / "folds").glob("*.csv")))
    classes = _classes(cfg)
    for fold in range(3):
        vs = load_fold(cfg, fold, classes)
        own = set(folds.filter(pl.col("fold") == fold)["filename"])
        assert set(vs.calls["filename"]) <= own and vs.calls.height > 0
        # the audio itself: every other fold's tone is absent, each used tone is present
        spectrum = {}
        for path in vs.files:
            y = load_audio(path, SR)
            mag = np.abs(np.fft.rfft(y))
            freqs = np.fft.rfftfreq(len(y), 1 / SR)
            spectrum[path.stem] = lambda f, mag=mag, freqs=freqs: mag[np.abs(freqs - f) < 3].max() / np.median(mag)
        for row in vs.calls.iter_rows(named=True):
            assert spectrum[row["soundscape"]](_tone_freq(row["filename"])) > 50
        for other in set(folds["filename"]) - own:
            assert all(level(_tone_freq(other)) < 20 for level in spectrum.values()), other


def test_a_run_at_another_rate_gets_the_same_soundscapes_at_true_pitch(tmp_path):
    """A teacher run hears 48 kHz (BirdNET): its sets are the cache's own (mixed at the cache's 32 kHz), not
    32 kHz samples written as 48 kHz (every call 1.5x too high)."""
    cfg = _prepared(tmp_path)
    classes = _classes(cfg)
    teacher_cfg = cfg.copy()
    teacher_cfg.audio.sample_rate = 48000
    assert fold_dir(teacher_cfg, 0) == fold_dir(cfg, 0)
    vs = load_fold(teacher_cfg, 0, classes)
    row = vs.calls.row(0, named=True)
    y = load_audio(vs.files[0].with_name(f"{row['soundscape']}.ogg"), 48000)
    mag, freqs = np.abs(np.fft.rfft(y)), np.fft.rfftfreq(len(y), 1 / 48000)
    level = lambda f: mag[np.abs(freqs - f) < 3].max() / np.median(mag)
    assert level(_tone_freq(row["filename"])) > 50
    assert level(1.5 * _tone_freq(row["filename"])) < 20


def test_labels_follow_the_audibility_rule(tmp_path):
    """An 8 s tone placed at 3 s: window 0 holds 2 s of it (-4 dB from the full window 1), window 2 holds 1 s
    (-7 dB), window 3 none. With a -5 dB rule only windows 0 and 1 are positive; with -10 dB window 2 too."""
    cache = tmp_path / "cache"
    path = cache_path(cache, "bird0/XC000.ogg")
    path.parent.mkdir(parents=True)
    np.save(path, (tone(8.0, 3000.0, noise=0.0) * 32767).astype(np.int16))
    bed = np.zeros(20 * SR, np.float32) + 1e-4
    call = {"filename": "bird0/XC000.ogg", "primary_label": "bird0", "source_start_s": 0.0, "duration_s": 8.0,
            "offset_s": 3.0, "snr_db": 20.0}
    index = {"bird0": 0, "bird1": 1}
    _, strict, _ = mix(bed, [call], cache, SR, 5 * SR, 0.0, -5.0, index)
    _, loose, placed = mix(bed, [call], cache, SR, 5 * SR, 0.0, -10.0, index)
    assert strict[:, 0].tolist() == [1, 1, 0, 0] and loose[:, 0].tolist() == [1, 1, 1, 0]
    assert strict[:, 1].sum() == 0 and placed[0]["duration_s"] == pytest.approx(8.0)


def test_labels_match_the_calls_and_row_ids(tmp_path):
    cfg = _prepared(tmp_path)
    classes = _classes(cfg)
    vs = load_fold(cfg, 0, classes)
    assert vs.labels["row_id"].to_list()[:4] == ["val_f0_000_5", "val_f0_000_10", "val_f0_000_15", "val_f0_000_20"]
    for row in vs.calls.iter_rows(named=True):
        rows = vs.labels.filter(pl.col("filename") == f"{row['soundscape']}.ogg")
        first, last = int(row["offset_s"] // 5), int((row["offset_s"] + row["duration_s"] - 1e-6) // 5)
        assert rows[row["primary_label"]][first:last + 1].sum() >= 1  # audible somewhere it plays
        assert rows[row["primary_label"]][:first].sum() == 0 or (vs.calls.filter(
            (pl.col("soundscape") == row["soundscape"]) & (pl.col("primary_label") == row["primary_label"])).height > 1)
    labelled = {(s, c) for s, c in zip(vs.calls["soundscape"], vs.calls["primary_label"])}
    for row in vs.labels.iter_rows(named=True):
        for c in classes:
            if row[c]:
                assert (row["filename"].removesuffix(".ogg"), c) in labelled


def test_rebuild_is_identical(tmp_path):
    cfg = _prepared(tmp_path)
    classes = _classes(cfg)
    first = load_fold(cfg, 1, classes)
    audio = [load_audio(p, SR) for p in first.files]
    out = fold_dir(cfg, 1)
    for p in out.iterdir():
        p.unlink()
    out.rmdir()
    again = load_fold(cfg, 1, classes)
    assert again.labels.equals(first.labels) and again.calls.equals(first.calls)
    assert all(np.array_equal(a, load_audio(p, SR)) for a, p in zip(audio, again.files, strict=True))
    other_seed = load_fold(prepare_config(cfg.data.root, cfg.data.cache_dir, f"folds.dir={tmp_path / 'folds'}",
                                          *VALSETS, "valsets.seed=1"), 1, classes)
    assert other_seed.files[0].parent != first.files[0].parent and not other_seed.calls.equals(first.calls)


def test_no_unlabelled_soundscapes_falls_back_to_noise_beds(tmp_path):
    cfg = _prepared(tmp_path, soundscapes=False)
    out, problems = build_fold(cfg, 0, _classes(cfg))
    assert out is not None and any("coloured noise" in p for p in problems)
    assert np.std(load_audio(min(out.glob("*.ogg")), SR)) > 0


def test_unusable_fold_and_missing_classes_are_reported(tmp_path):
    comp = make_tiny_competition(tmp_path / "comp", n_classes=2, per_class=2, seconds=7.0)
    add_recording(comp, "bird9/XC900.ogg", "bird0", tone(2.0, 5000.0), author="lonely")
    cfg = prepare_config(comp, tmp_path / "cache", f"folds.dir={tmp_path / 'folds'}", *VALSETS)
    write_folds(cfg, report=False)
    prepare(cfg)
    folds = pl.read_csv(next((tmp_path / "folds").glob("*.csv")))
    fold = int(folds.filter(pl.col("filename") == "bird9/XC900.ogg")["fold"][0])
    others = folds.filter((pl.col("fold") == fold) & (pl.col("filename") != "bird9/XC900.ogg"))
    out, problems = build_fold(cfg, fold, ["bird0", "bird1"])
    assert any("bird9/XC900.ogg: shorter than one 5 s window" in p for p in problems)
    if others.height == 0:
        assert out is None and any("no validation recording is usable" in p for p in problems)
    assert any("no usable validation recording" in p for fold_ in range(3)
               for p in build_fold(cfg, fold_, ["bird0", "bird1", "bird_absent"])[1])


def test_evaluator_writes_oof_soundscape(tmp_path):
    cfg = _prepared(tmp_path)
    classes = _classes(cfg)
    freqs = np.array([600.0 * (i + 1) for i in range(len(classes))])

    def predict(batch: np.ndarray) -> np.ndarray:
        """Band energy around each class's tones: a predictor that knows the answer."""
        mag = np.abs(np.fft.rfft(batch, axis=1))
        f = np.fft.rfftfreq(batch.shape[1], 1 / SR)
        bands = np.stack([mag[:, (f > lo - 10) & (f < lo + 60)].mean(axis=1) for lo in freqs], axis=1)
        return (bands / (1 + bands)).astype(np.float32)

    cfg.fold = 2
    metrics = evaluate_soundscapes(predict, cfg, classes, tmp_path / "run", batch_size=8)
    oof = pl.read_parquet(tmp_path / "run" / "oof_soundscape.parquet")
    vs = load_fold(cfg, 2, classes)
    assert oof.columns == ["row_id", "filename", "labels", *classes]
    assert oof["row_id"].to_list() == vs.labels["row_id"].to_list()
    y = label_matrix(oof["labels"].to_list(), classes)
    assert np.array_equal(y, vs.labels.select(classes).to_numpy())
    assert metrics["soundscape_auc"] == pytest.approx(macro_auc(y, oof.select(classes).to_numpy()))
    assert metrics["soundscape_auc"] > 0.9 and 0 < metrics["soundscape_cmap"] <= 1


def test_bed_soundscapes_are_reserved_from_self_training(tmp_path):
    """valsets.bed_share: every k-th cached soundscape gives the beds and no student trains on its windows."""
    from src.data.pseudo_labels import bed_soundscapes, load_pseudo_windows
    from src.pseudo import write_pseudo
    from tests.pipeline import compose_train

    cache = tmp_path / "cache"
    (cache / "soundscapes").mkdir(parents=True)
    stems = [f"s{i}" for i in range(8)]
    for s in stems:
        (cache / "soundscapes" / f"{s}.npy").write_bytes(b"")
    cfg = compose_train(f"data.cache_dir={cache}", "valsets.bed_share=0.25")
    assert bed_soundscapes(cfg) == ["s0", "s4"]
    assert bed_soundscapes(compose_train(f"data.cache_dir={cache}", "valsets.bed_share=null")) is None
    with pytest.raises(ValueError, match="bed_share"):
        bed_soundscapes(compose_train(f"data.cache_dir={cache}", "valsets.bed_share=1.5"))
    classes = ["a", "b"]
    keys = pl.DataFrame({"filename": [f"{s}.ogg" for s in stems], "window": [0] * 8,
                         "start_s": [0.0] * 8, "end_s": [5.0] * 8})
    out = tmp_path / "p.parquet"
    write_pseudo(out, keys, np.full((8, 2), 0.5, np.float32),
                 {"classes": classes, "competition": "birdclef-2025", "teacher": "t", "round": 0,
                  "pseudo_auc": None})
    used = load_pseudo_windows(compose_train(f"data.cache_dir={cache}", f"pseudo.path={out}",
                                             "pseudo.include_silent=true", "valsets.bed_share=0.25"), classes)
    assert sorted(used["filename"].to_list()) == [f"{s}.ogg" for s in stems if s not in ("s0", "s4")]
