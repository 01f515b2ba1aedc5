"""`src.infer.soundscape`: windows and row ids, context/shift windows, batching across files, test-time shifts,
post-processing formulas, and bad test soundscapes (rows still written, fallback, problems listed).

No model: `predict_fn` is a fake that returns per-window features, so every expected value is hand-computed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone, write_audio

from src.infer.audio import load_audio
from src.infer.postprocess import file_prior, postprocess, smooth
from src.infer.soundscape import cut_windows, n_windows, predict_soundscapes
from src.infer.submission import row_ids

SR = 1000  # a low rate keeps the hand-computed windows small; load_audio does not resample at its own rate


def window_features(batch: np.ndarray) -> np.ndarray:
    """Fake model: (B, samples) -> (B, 2) = (mean, mean |x|) of each window."""
    batch = np.asarray(batch, np.float64)
    return np.stack([batch.mean(axis=1), np.abs(batch).mean(axis=1)], axis=1)


def staircase(seconds: int, sr: int = SR) -> np.ndarray:
    """Second s (0-based) holds the constant (s + 1) / 100: a window's mean tells which seconds it covers."""
    return np.repeat((np.arange(seconds) + 1) / 100, sr).astype(np.float32)


def write_float_wav(path: Path, y: np.ndarray, sr: int = SR) -> Path:
    sf.write(path, y, sr, subtype="FLOAT")  # exact float32 samples (and NaN, for the bad-input case)
    return path


# --- windows and row ids ----------------------------------------------------------------------------

def test_n_windows_counts_a_last_partial_window():
    w = 5 * SR
    assert n_windows(w, w) == 1
    assert n_windows(w + 1, w) == 2
    assert n_windows(12 * SR, w) == 3  # 5 + 5 + a padded 2 s window
    assert n_windows(3 * SR, w) == 1   # a 3 s file is one (padded) window
    assert n_windows(0, w) == 1


def test_row_ids_are_stem_and_end_second():
    assert row_ids("soundscape_1", 3, 5.0) == ["soundscape_1_5", "soundscape_1_10", "soundscape_1_15"]
    assert row_ids("soundscape_1", 12, 5.0)[-1] == "soundscape_1_60"


def reference_windows(y: np.ndarray, window: int, context: int, shift: int, count: int) -> np.ndarray:
    """Window i = y[i*window + shift - context : (i+1)*window + shift + context], zeros outside y."""
    out = np.zeros((count, window + 2 * context), np.float32)
    for i in range(count):
        for j in range(window + 2 * context):
            k = i * window + shift - context + j
            if 0 <= k < len(y):
                out[i, j] = y[k]
    return out


def test_cut_windows_plain_pads_only_the_last_window():
    y = np.arange(1, 13, dtype=np.float32)  # 12 samples, window 5 -> 3 windows, the last 2 real + 3 zeros
    w = cut_windows(y, 5)
    np.testing.assert_array_equal(w, [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 0, 0, 0]])
    assert w.dtype == np.float32


@pytest.mark.parametrize("context", [0, 1, 3, 7])
@pytest.mark.parametrize("shift", [-6, -2, 0, 2, 4, 9])
def test_cut_windows_context_and_shift_take_the_right_samples(context, shift):
    y = np.arange(1, 24, dtype=np.float32)  # 23 samples: 5 windows of 5, the last one partial
    count = n_windows(len(y), 5)
    got = cut_windows(y, 5, context=context, shift=shift, count=count)
    np.testing.assert_array_equal(got, reference_windows(y, 5, context, shift, count))


def test_cut_windows_context_by_hand():
    y = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(cut_windows(y, 5, context=2),
                                  [[0, 0, 1, 2, 3, 4, 5, 6, 7], [4, 5, 6, 7, 8, 9, 10, 0, 0]])
    np.testing.assert_array_equal(cut_windows(y, 5, shift=2), [[3, 4, 5, 6, 7], [8, 9, 10, 0, 0]])
    np.testing.assert_array_equal(cut_windows(y, 5, shift=-2), [[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]])


# --- predict_soundscapes on good files ---------------------------------------------------------------

def test_windows_of_a_file_end_to_end(tmp_path):
    f = write_float_wav(tmp_path / "soundscape_1.wav", staircase(12))
    ids, probs, problems = predict_soundscapes([f], window_features, 2, SR, 5.0)
    assert ids == ["soundscape_1_5", "soundscape_1_10", "soundscape_1_15"]
    assert problems == []
    # seconds 0-4 (mean 3/100), 5-9 (8/100), then 10-11 plus 3 s of padding ((11+12)/5/100)
    np.testing.assert_allclose(probs[:, 0], [0.03, 0.08, 0.046], atol=1e-6)
    assert probs.dtype == np.float32 and probs.shape == (3, 2)


def test_three_second_file_is_one_padded_row(tmp_path):
    f = write_float_wav(tmp_path / "short.wav", staircase(3))
    ids, probs, problems = predict_soundscapes([f], window_features, 2, SR, 5.0)
    assert ids == ["short_5"] and problems == []
    np.testing.assert_allclose(probs[0, 0], (0.01 + 0.02 + 0.03) / 5, atol=1e-6)


def test_context_widens_each_window(tmp_path):
    f = write_float_wav(tmp_path / "s.wav", staircase(12))
    seen = []

    def predict(batch):
        seen.append(batch.shape[1])
        return window_features(batch)

    ids, probs, _ = predict_soundscapes([f], predict, 2, SR, 5.0, context_s=1.0)
    assert ids == ["s_5", "s_10", "s_15"] and seen == [7 * SR]  # 5 s + 1 s either side, row ids unchanged
    # [-1, 6) s: padding + seconds 0-5; [4, 11) s: seconds 4-10; [9, 16) s: seconds 9-11 + padding
    np.testing.assert_allclose(probs[:, 0], [21 / 7 / 100, 56 / 7 / 100, 33 / 7 / 100], atol=1e-6)


def test_shifts_are_averaged(tmp_path):
    f = write_float_wav(tmp_path / "s.wav", staircase(12))
    _, plain, _ = predict_soundscapes([f], window_features, 2, SR, 5.0)
    _, later, _ = predict_soundscapes([f], window_features, 2, SR, 5.0, shifts_s=(1.0,))
    _, both, _ = predict_soundscapes([f], window_features, 2, SR, 5.0, shifts_s=(0.0, 1.0))
    # shifted by +1 s: seconds 1-5 (4/100), 6-10 (9/100), 11 + padding (12/5/100)
    np.testing.assert_allclose(later[:, 0], [0.04, 0.09, 0.024], atol=1e-6)
    np.testing.assert_allclose(both, (plain + later) / 2, atol=1e-7)
    np.testing.assert_allclose(both[:, 0], [0.035, 0.085, 0.035], atol=1e-6)


@pytest.mark.parametrize("decode_ahead", [0, 2])
def test_batching_across_files_matches_one_window_at_a_time(tmp_path, decode_ahead):
    """Any batch size, with the files decoded between batches or ahead on a thread, gives the same rows."""
    files = [write_float_wav(tmp_path / f"f{i}.wav", staircase(s) * (i + 1)) for i, s in enumerate([12, 3, 7, 20])]
    calls: list[int] = []

    def predict(batch):
        calls.append(len(batch))
        return window_features(batch)

    kwargs = {"context_s": 0.5, "shifts_s": (0.0, -1.0, 2.0)}
    one = predict_soundscapes(files, window_features, 2, SR, 5.0, batch_size=1, **kwargs)
    for batch_size in (2, 5, 1000):
        calls.clear()
        got = predict_soundscapes(files, predict, 2, SR, 5.0, batch_size=batch_size, decode_ahead=decode_ahead,
                                  **kwargs)
        assert got[0] == one[0] and got[2] == one[2] == []
        np.testing.assert_array_equal(got[1], one[1])
    assert calls == [(3 + 1 + 2 + 4) * 3]  # batch_size 1000: every window of every file in one call
    assert one[0] == ["f0_5", "f0_10", "f0_15", "f1_5", "f2_5", "f2_10", "f3_5", "f3_10", "f3_15", "f3_20"]


def test_model_groups_decode_once_per_group_and_split_columns(tmp_path, monkeypatch):
    """Three fake models: two share a group (sample rate, window), one has its own sample rate. Each model's
    probabilities equal its own predict_soundscapes pass; each group decodes each file once."""
    from src.infer import soundscape

    files = [write_float_wav(tmp_path / f"f{i}.wav", staircase(s)) for i, s in enumerate([12, 7])]
    models = [window_features, lambda b: window_features(b) * 2, lambda b: window_features(b) + 1]
    decoded: list[tuple[str, int]] = []
    monkeypatch.setattr(soundscape, "load_audio", lambda path, sr: decoded.append((Path(path).name, sr))
                        or load_audio(path, sr))
    def load_group(ks):
        return lambda b: np.concatenate([models[k](b) for k in ks], axis=1)

    keys = [(SR, 5.0), (SR, 5.0), (SR // 2, 5.0)]
    ids, preds, problems = soundscape.predict_model_groups(files, keys, load_group, 2, shifts_s=(0.0, 1.0))
    assert sorted(decoded) == sorted((f.name, sr) for f in files for sr in (SR, SR // 2)) and problems == []
    for k, (model, sr) in enumerate(zip(models, (SR, SR, SR // 2), strict=True)):
        alone_ids, alone, _ = predict_soundscapes(files, model, 2, sr, 5.0, shifts_s=(0.0, 1.0))
        assert ids == alone_ids
        np.testing.assert_allclose(preds[k], alone, rtol=1e-6)


def test_model_groups_refuse_different_window_lengths(tmp_path):
    """Regression: a 5 s and a 2.5 s model gave the 2.5 s model's row ids with the 5 s model's rows, silently."""
    from src.infer import soundscape

    files = [write_float_wav(tmp_path / "f0.wav", staircase(12))]
    with pytest.raises(ValueError, match=r"windows of \[2.5, 5.0\] s"):
        soundscape.predict_model_groups(files, [(SR, 5.0), (SR, 2.5)],
                                        lambda ks: lambda b: np.concatenate([window_features(b)] * len(ks), axis=1), 2)


def test_model_groups_align_rows_when_a_sample_rate_gives_fewer_windows(tmp_path):
    """Regression: 5.001 s of audio is 2 windows at 1000 Hz but 1 at 200 Hz (1000 samples after resampling);
    the groups' rows are aligned to the first group's ids (the short group repeats its last row), not cut off."""
    from src.infer import soundscape

    files = [write_float_wav(tmp_path / "a.wav", np.full(5001, 0.5, np.float32)),
             write_float_wav(tmp_path / "b.wav", staircase(10))]
    ids, preds, problems = soundscape.predict_model_groups(
        files, [(SR, 5.0), (SR // 5, 5.0)], lambda ks: lambda b: np.concatenate([window_features(b)] * len(ks), axis=1),
        2)
    assert ids == ["a_5", "a_10", "b_5", "b_10"] and problems == []
    assert [len(p) for p in preds] == [4, 4]
    _, slow, _ = predict_soundscapes(files, window_features, 2, SR // 5, 5.0)  # a_5, b_5, b_10
    np.testing.assert_allclose(preds[1], slow[[0, 0, 1, 2]], rtol=1e-6)


def test_no_files_gives_no_rows():
    ids, probs, problems = predict_soundscapes([], window_features, 2, SR, 5.0)
    assert ids == [] and probs.shape == (0, 2) and problems == []


# --- bad test soundscapes ----------------------------------------------------------------------------

@pytest.mark.parametrize("decode_ahead", [0, 3])
def test_bad_files_get_fallback_rows_and_are_listed(tmp_path, decode_ahead):
    sr = 32000
    good = tmp_path / "good.ogg"
    write_audio(good, tone(12.0, 1000.0), sr)
    short = tmp_path / "short3s.wav"
    sf.write(short, tone(3.0, 800.0), sr)
    stereo = tmp_path / "stereo48k.wav"
    sf.write(stereo, np.stack([tone(7.0, 500.0, 48000), tone(7.0, 700.0, 48000, seed=1)], axis=1), 48000)
    corrupt = tmp_path / "corrupt.ogg"
    corrupt.write_bytes(b"OggS" + bytes(range(256)) * 8)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    nan = tmp_path / "nan.wav"
    y = tone(6.0, 900.0)
    y[1000:1010] = np.nan
    sf.write(nan, y, sr, subtype="FLOAT")
    truncated = tmp_path / "truncated.ogg"
    write_audio(truncated, tone(8.0, 1200.0), sr)
    truncated.write_bytes(truncated.read_bytes()[:-700])

    files = [good, corrupt, short, empty, stereo, nan, truncated]
    fallback = np.array([0.25, 0.75], np.float32)
    ids, probs, problems = predict_soundscapes(files, window_features, 2, sr, 5.0, batch_size=4,
                                               fallback=fallback, fallback_duration_s=10.0, decode_ahead=decode_ahead)

    bad = {"corrupt": "cannot decode", "empty": "empty", "nan": "NaN", "truncated": "truncated"}
    assert ids == ["good_5", "good_10", "good_15", "corrupt_5", "corrupt_10", "short3s_5", "empty_5", "empty_10",
                   "stereo48k_5", "stereo48k_10", "nan_5", "nan_10", "truncated_5", "truncated_10"]
    assert len(problems) == len(bad)
    for problem, (stem, what) in zip(problems, bad.items()):
        assert f"{stem}." in problem and what in problem, problem
    rows = {stem: [i for i, r in enumerate(ids) if r.rsplit("_", 1)[0] == stem] for stem in bad}
    for stem, idx in rows.items():
        np.testing.assert_array_equal(probs[idx], np.tile(fallback, (len(idx), 1)))

    # the good files (the stereo 48 kHz one resampled to 32 kHz mono) are unaffected by the bad ones
    good_files = [good, short, stereo]
    alone_ids, alone, alone_problems = predict_soundscapes(good_files, window_features, 2, sr, 5.0)
    assert alone_problems == []
    keep = [i for i, r in enumerate(ids) if r.rsplit("_", 1)[0] not in bad]
    assert [ids[i] for i in keep] == alone_ids
    np.testing.assert_allclose(probs[keep], alone, atol=1e-7)
    mono = load_audio(stereo, sr)
    assert len(mono) == 7 * sr
    np.testing.assert_allclose(alone[-2:], window_features(cut_windows(mono, 5 * sr)), atol=1e-6)


def test_default_fallback_is_zero_for_a_minute(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wav file")
    ids, probs, problems = predict_soundscapes([bad], window_features, 3, 32000, 5.0)
    assert ids == [f"broken_{5 * (i + 1)}" for i in range(12)]
    assert not probs.any() and probs.shape == (12, 3)
    assert len(problems) == 1 and "broken.wav" in problems[0]


# --- post-processing ---------------------------------------------------------------------------------

def test_smoothing_renormalises_at_the_edges():
    p = np.array([[1.0], [0.0], [0.0], [2.0]], np.float32)
    got = smooth(p, [0.1, 0.8, 0.1])
    np.testing.assert_allclose(got[:, 0], [0.8 / 0.9, 0.1, 0.2, 1.6 / 0.9], rtol=1e-6)
    assert got.dtype == np.float32


def test_smoothing_kernel_is_centred_previous_first():
    p = np.array([[1.0, 0.0], [2.0, 1.0], [4.0, 0.0]])
    got = smooth(p, [1.0, 2.0, 3.0])  # k[0] weighs the previous window, k[2] the next one
    want = np.array([[(2 * 1 + 3 * 2) / 5, (2 * 0 + 3 * 1) / 5],
                     [(1 * 1 + 2 * 2 + 3 * 4) / 6, (1 * 0 + 2 * 1 + 3 * 0) / 6],
                     [(1 * 2 + 2 * 4) / 3, (1 * 1 + 2 * 0) / 3]])
    np.testing.assert_allclose(got, want)


def test_smoothing_off_and_one_window():
    p = np.array([[0.3, 0.7]], np.float32)
    assert smooth(p, None) is p and smooth(p, [1.0]) is p
    np.testing.assert_allclose(smooth(p, [0.1, 0.8, 0.1]), p)  # a single window is its own average
    five = np.arange(5, dtype=np.float64)[:, None]
    np.testing.assert_allclose(smooth(five, [1, 1, 1, 1, 1])[:, 0], [1.0, 1.5, 2.0, 2.5, 3.0])


def test_file_prior_formulas():
    p = np.array([[0.2, 0.9], [0.4, 0.1]])
    np.testing.assert_allclose(file_prior(p, "max", 0.5), p * np.sqrt([[0.4, 0.9]]))
    np.testing.assert_allclose(file_prior(p, "mean", 1.0), p * np.array([[0.3, 0.5]]))
    np.testing.assert_allclose(file_prior(p, "max", 2.0, weight=0.25),
                               0.75 * p + 0.25 * p * np.array([[0.16, 0.81]]))
    assert file_prior(p, None, 1.0) is p


def test_postprocess_smooths_then_applies_the_prior():
    p = np.array([[0.2, 0.9], [0.4, 0.1], [0.6, 0.5]], np.float32)
    cfg = {"smoothing": [0.25, 0.5, 0.25], "file_prior": {"mode": "max", "power": 1.0, "weight": 0.5}}
    s = smooth(p, cfg["smoothing"])
    np.testing.assert_allclose(postprocess(p, cfg), 0.5 * s + 0.5 * s * s.max(axis=0, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(postprocess(p, {"smoothing": None, "file_prior": None}), p)


def test_a_directory_named_like_audio_is_reported_as_a_directory(tmp_path):
    """`x.ogg` that is a folder (issue 10, item 7): "a directory, not an audio file", not "file not found"."""
    from src.infer.audio import AudioError

    (tmp_path / "x.ogg").mkdir()
    with pytest.raises(AudioError, match=r"x\.ogg: a directory, not an audio file"):
        load_audio(tmp_path / "x.ogg", SR)


def test_one_file_per_stem_prefers_the_first_suffix_and_names_the_others():
    from src.infer.soundscape import one_file_per_stem

    files = [Path("t/b.wav"), Path("t/a.flac"), Path("t/a.ogg"), Path("t/a.OGG.wav"), Path("t/c.flac")]
    kept, skipped = one_file_per_stem(files, (".ogg", ".mp3", ".wav", ".flac"))
    assert kept == [Path("t/a.OGG.wav"), Path("t/a.ogg"), Path("t/b.wav"), Path("t/c.flac")]
    assert skipped == ["t/a.flac: same stem as a.ogg (row ids name the stem): skipped"]
