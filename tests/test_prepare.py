"""`src.prepare`: the int16 cache, bad-file handling, resumable reruns and the chunk index."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from conftest import SR, add_recording, make_tiny_competition, prepare_config, tone

import src.prepare as prep
from src.data import audio_cache
from src.data.chunks import chunk_starts
from src.data.competition import CompetitionError
from src.infer.audio import from_int16, load_audio

XC45 = Path(__file__).resolve().parents[2] / "shared" / "xc45"


def npy_files(cache: Path) -> dict[str, Path]:
    """Cached recordings by their metadata filename (`<label>/<stem>.npy` -> `<label>/<stem>`)."""
    audio = cache / "audio"
    return {str(p.relative_to(audio).with_suffix("")): p for p in sorted(audio.rglob("*.npy"))}


def reference_energy_db(y: np.ndarray, starts: np.ndarray, chunk: int, preemphasis: float) -> np.ndarray:
    """Plain numpy version of chunks.chunk_energy_db (mean power of y[n] - a*y[n-1] in each chunk, dBFS)."""
    x = y.astype(np.float64) / (32767.0 if y.dtype == np.int16 else 1.0)
    out = []
    for s in starts:
        seg = x[s:s + chunk]
        d = seg[1:] - preemphasis * seg[:-1]
        out.append(10 * np.log10(np.sum(d * d) / max(len(d), 1) + 1e-12))
    return np.array(out)


# --- bad input -------------------------------------------------------------------------------------

BAD = {  # metadata filename -> what its problem message must say
    "bird0/corrupt.ogg": "cannot decode",
    "bird0/empty.ogg": "empty file (0 bytes)",
    "bird1/truncated.ogg": "truncated",
    "bird1/short.ogg": "too short",
    "bird2/zeros.ogg": "all samples are zero",
    "bird2/nan.wav": "NaN",
    "bird2/missing.ogg": "file not found",
}


def add_bad_and_odd_files(root: Path) -> None:
    """Every kind of bad recording of SPEC "Bad input", plus a good stereo 48 kHz MP3."""
    rng = np.random.default_rng(0)
    add_recording(root, "bird0/corrupt.ogg", "bird0", rng.bytes(5000))
    add_recording(root, "bird0/empty.ogg", "bird0", b"")
    valid = root / "valid_source.ogg"  # outside train_audio: only its first 30% is used
    sf.write(valid, tone(10.0, 1500, noise=0.1, seed=7), SR)
    data = valid.read_bytes()
    add_recording(root, "bird1/truncated.ogg", "bird1", data[: int(0.3 * len(data))])
    add_recording(root, "bird1/short.ogg", "bird1", tone(0.2, 900))
    add_recording(root, "bird2/zeros.ogg", "bird2", np.zeros(3 * SR, np.float32))
    nan = tone(3.0, 700)
    nan[1000:1100] = np.nan
    path = root / "train_audio" / "bird2" / "nan.wav"
    sf.write(path, nan, SR, subtype="FLOAT")
    add_recording(root, "bird2/nan.wav", "bird2", None)  # row only: the file is written above
    add_recording(root, "bird2/missing.ogg", "bird2", None)
    t = np.arange(3 * 48000) / 48000  # good: stereo, 48 kHz, MP3, different tones left and right
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1760 * t)], axis=1)
    stereo_path = root / "train_audio" / "bird0" / "stereo48k.mp3"
    sf.write(stereo_path, stereo.astype(np.float32), 48000, format="MP3")
    add_recording(root, "bird0/stereo48k.mp3", "bird0", None)


def test_prepare_skips_lists_bad_files_and_finishes_the_rest(tiny_competition, tmp_path):
    add_bad_and_odd_files(tiny_competition)
    cache = tmp_path / "cache"
    result = prep.prepare(prepare_config(tiny_competition, cache))

    bad = pl.read_csv(cache / "bad_files.csv")
    assert sorted(bad["filename"]) == sorted(BAD)
    for filename, problem in bad.iter_rows():
        assert str(tiny_competition / "train_audio" / filename) in problem  # names the file ...
        assert BAD[filename] in problem, problem  # ... and what is wrong
    assert sorted(f for f, _ in result["bad_files"]) == sorted(BAD) and result["bad"] == len(BAD)

    good = sorted(f"bird{i}/XC{i}{j:02d}.ogg" for i in range(3) for j in range(3)) + ["bird0/stereo48k.mp3"]
    chunks = pl.read_parquet(cache / "chunks.parquet")
    assert sorted(chunks["filename"].unique()) == sorted(good)
    recordings = pl.read_parquet(cache / "recordings.parquet")
    assert sorted(recordings.filter("ok")["filename"]) == sorted(good)
    assert sorted(recordings.filter(~pl.col("ok"))["filename"]) == sorted(BAD)
    assert sorted(npy_files(cache)) == sorted(str(Path(f).with_suffix("")) for f in good)
    assert not list(cache.rglob("*.tmp"))  # nothing half-written left behind
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["recordings"] == len(good) + len(BAD) and manifest["bad"] == len(BAD)

    # the stereo 48 kHz MP3 is decoded to mono 32 kHz, both channels mixed in, right duration
    y = from_int16(np.load(cache / "audio" / "bird0" / "stereo48k.npy"))
    assert y.ndim == 1 and abs(len(y) / SR - 3.0) < 0.02
    spectrum = np.abs(np.fft.rfft(y[SR // 2: SR // 2 + SR]))  # 1 s -> 1 Hz bins
    assert {int(np.argmax(spectrum[:1000])), 1000 + int(np.argmax(spectrum[1000:]))} == {440, 1760}
    assert spectrum[440] == pytest.approx(spectrum[1760], rel=0.2)


def test_int16_cache_round_trips(tiny_competition, tmp_path):
    cache = tmp_path / "cache"
    prep.prepare(prepare_config(tiny_competition, cache))
    for filename, npy in npy_files(cache).items():
        cached = np.load(npy)
        assert cached.dtype == np.int16 and cached.ndim == 1
        source = load_audio(tiny_competition / "train_audio" / f"{filename}.ogg", SR)
        assert len(cached) == len(source) == int(7.0 * SR)
        assert np.abs(from_int16(cached) - source).max() <= 0.5 / 32767 + 1e-6
        assert np.array_equal(audio_cache.load_cached(npy), cached)


# --- resumable -------------------------------------------------------------------------------------

def test_rerun_redoes_only_what_is_missing(tiny_competition, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = prepare_config(tiny_competition, cache)
    prep.prepare(cfg)
    first_chunks = pl.read_parquet(cache / "chunks.parquet")
    files = npy_files(cache)
    before = {k: p.stat().st_mtime_ns for k, p in files.items()}
    original = np.load(files["bird1/XC101"])

    decoded: list[str] = []

    def counting_load_audio(path, *args, **kwargs):
        decoded.append(Path(path).relative_to(tiny_competition / "train_audio").as_posix())
        return load_audio(path, *args, **kwargs)

    monkeypatch.setattr(prep, "load_audio", counting_load_audio)

    # one cache file deleted, stale temporary files of an interrupted run lying around
    files["bird1/XC101"].unlink()
    (files["bird1/XC101"].parent / ".XC101.npy.4242.tmp").write_bytes(b"half a file")
    (cache / ".chunks.parquet.4242.tmp").write_bytes(b"half a file")
    result = prep.prepare(cfg)
    assert decoded == ["bird1/XC101.ogg"]
    after = {k: p.stat().st_mtime_ns for k, p in npy_files(cache).items()}
    assert after.keys() == before.keys()
    assert {k for k in after if after[k] != before[k]} == {"bird1/XC101"}
    assert np.array_equal(np.load(files["bird1/XC101"]), original)
    assert pl.read_parquet(cache / "chunks.parquet").equals(first_chunks)
    assert result["bad"] == 0 and result["recordings"] == 9

    # a cache file cut short (not by us: we rename complete files) is noticed and redone
    data = files["bird2/XC202"].read_bytes()
    files["bird2/XC202"].write_bytes(data[: len(data) // 2])
    decoded.clear()
    prep.prepare(cfg)
    assert decoded == ["bird2/XC202.ogg"]
    assert len(np.load(files["bird2/XC202"])) == int(7.0 * SR)


def test_rerun_removes_the_temporaries_of_a_killed_run(tiny_competition, tmp_path):
    """A SIGKILLed prepare leaves `.X.npy.<pid>.tmp` behind (issue 10, item 6): the next run removes those
    whose process is gone, and keeps a live process's."""
    import os
    import subprocess

    cache = tmp_path / "cache"
    cfg = prepare_config(tiny_competition, cache)
    prep.prepare(cfg)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [cache / "audio" / "bird1" / f".XC101.npy.{dead.pid}.tmp", cache / f".chunks.parquet.{dead.pid}.tmp"]
    live = cache / "audio" / "bird1" / f".XC102.npy.{os.getpid()}.tmp"
    for path in (*stale, live):
        path.write_bytes(b"")
    prep.prepare(cfg)
    assert not any(p.exists() for p in stale) and live.exists()


def test_filenames_that_leave_the_cache_are_bad_rows(tiny_competition, tmp_path):
    """`../../evil/x.ogg` or an absolute filename in train.csv (issue 10, item 3): a bad row with a clear
    message, and nothing written (or overwritten) outside the cache."""
    cache = tmp_path / "cache"
    add_recording(tiny_competition, "../../evil/x.ogg", "bird0", tone(3.0, 800))
    absolute = tmp_path / "elsewhere" / "y.ogg"
    absolute.parent.mkdir()
    add_recording(tiny_competition, str(absolute), "bird1", tone(3.0, 900))
    victim = tmp_path / "evil" / "x.npy"  # where the cache path of ../../evil/x.ogg points
    victim.write_bytes(b"not ours")
    result = prep.prepare(prepare_config(tiny_competition, cache))
    assert victim.read_bytes() == b"not ours" and not absolute.with_suffix(".npy").exists()
    bad = dict(result["bad_files"])
    assert "leaves train_audio/" in bad["../../evil/x.ogg"] and "leaves train_audio/" in bad[str(absolute)]
    assert result["bad"] == 2 and result["recordings"] == 11
    assert len(list((cache / "audio").rglob("*.npy"))) == 9 and list(tmp_path.glob("*/*.npy")) == [victim]


def test_a_cache_made_with_other_settings_is_an_error(tiny_competition, tmp_path):
    """A 32 kHz cache (issue 10, item 4): preparing into it at 16 kHz is an error naming the setting and the
    fix, and so is training on it with another rate or other chunking; rechunking by prepare itself is fine."""
    cache = tmp_path / "cache"
    prep.prepare(prepare_config(tiny_competition, cache))
    settings = json.loads((cache / "manifest.json").read_text())["settings"]
    assert settings["decode"]["audio.sample_rate"] == SR and settings["index"]["prepare.overlap_s"] == 1.0
    with pytest.raises(audio_cache.CacheSettingsError, match=r"audio\.sample_rate=32000 \(now 16000\).*data\.cache_dir="):
        prep.prepare(prepare_config(tiny_competition, cache, "audio.sample_rate=16000"))
    assert json.loads((cache / "manifest.json").read_text())["settings"] == settings
    with pytest.raises(audio_cache.CacheSettingsError, match=r"audio\.sample_rate=32000 \(now 16000\).*src\.prepare"):
        audio_cache.check_cache_settings(prepare_config(tiny_competition, cache, "audio.sample_rate=16000"))
    prep.prepare(prepare_config(tiny_competition, cache, "prepare.overlap_s=2.0"))  # rebuilds the index
    with pytest.raises(audio_cache.CacheSettingsError, match=r"prepare\.overlap_s=2\.0 \(now 1\.0\)"):
        audio_cache.check_cache_settings(prepare_config(tiny_competition, cache))
    audio_cache.check_cache_settings(prepare_config(tiny_competition, cache, "prepare.overlap_s=2.0"))


# --- disk: max_duration_s and the size estimate -------------------------------------------------------

def test_max_duration_caps_each_cached_recording(tmp_path):
    root = make_tiny_competition(tmp_path / "comp", n_classes=2, per_class=2, seconds=4.0)
    add_recording(root, "bird0/long.ogg", "bird0", tone(12.0, 600))
    cache = tmp_path / "cache"
    prep.prepare(prepare_config(root, cache, "prepare.max_duration_s=5"))
    cached = {f: len(np.load(p, mmap_mode="r")) for f, p in npy_files(cache).items()}
    assert cached["bird0/long"] == 5 * SR  # cut at the cap ...
    assert cached["bird0/XC000"] == 4 * SR  # ... shorter files are left whole
    assert json.loads((cache / "manifest.json").read_text())["settings"]["decode"]["prepare.max_duration_s"] == 5.0
    y = load_audio(root / "train_audio" / "bird0" / "long.ogg", SR, max_duration_s=5)
    assert np.allclose(from_int16(np.load(npy_files(cache)["bird0/long"])), y, atol=1 / 32767)


def test_cache_estimate_matches_the_cache_and_a_full_disk_stops_prepare_early(tmp_path, monkeypatch):
    root = make_tiny_competition(tmp_path / "comp", n_classes=2, per_class=2, seconds=4.0)
    add_recording(root, "bird0/long.ogg", "bird0", tone(12.0, 600))
    cache = tmp_path / "cache"
    cfg = prepare_config(root, cache, "prepare.max_duration_s=5")
    jobs = [prep.CacheJob(str(root / "train_audio" / f), str(audio_cache.cache_path(cache, f)), SR, 0.5, 5.0)
            for f in ["bird0/XC000.ogg", "bird0/XC001.ogg", "bird1/XC100.ogg", "bird1/XC101.ogg", "bird0/long.ogg"]]
    cache.mkdir()
    estimate = prep.check_disk(jobs, cache, 0.0)
    prep.prepare(cfg)
    assert estimate == sum(p.stat().st_size for p in npy_files(cache).values())
    assert prep.check_disk(jobs, cache, 0.0) == 0  # nothing left to write

    full = tmp_path / "cache_full"
    usage = shutil.disk_usage(tmp_path)._replace(free=int(1.1 * estimate))
    monkeypatch.setattr(prep.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(prep.CacheDiskError) as err:
        prep.prepare(prepare_config(root, full, "prepare.disk_headroom_gb=0"))  # uncapped: 28 s of audio, room for ~23 s
    message = str(err.value)
    assert str(full) in message and "prepare.max_duration_s=" in message and "MB" in message
    assert not (full / "audio").exists()  # stopped before decoding anything
    cap = int(message.split("prepare.max_duration_s=")[1].split(",")[0])
    assert 4 <= cap < 12 and prep.cache_bytes(np.array([4, 4, 4, 4, 12.0]), SR, cap) <= usage.free


# --- metadata problems reach prepare ---------------------------------------------------------------

def test_prepare_reports_unknown_labels_and_duplicates(tiny_competition, tmp_path):
    add_recording(tiny_competition, "newbird/XC900.ogg", "newbird", tone(3.0, 800))
    add_recording(tiny_competition, "bird0/XC000.ogg", "bird2", None, author="someone else")  # duplicate row
    cache = tmp_path / "cache"
    result = prep.prepare(prepare_config(tiny_competition, cache))
    problems = result["metadata_problems"]
    assert any("newbird/XC900.ogg" in p and "'newbird'" in p and "skipped" in p for p in problems)
    assert any("duplicate" in p and "bird0/XC000.ogg" in p for p in problems)
    assert result["recordings"] == 9
    chunks = pl.read_parquet(cache / "chunks.parquet")
    assert "newbird/XC900.ogg" not in chunks["filename"].to_list()
    assert set(chunks.filter(pl.col("filename") == "bird0/XC000.ogg")["primary_label"]) == {"bird0"}  # first kept
    assert not (cache / "audio" / "newbird").exists()


def test_prepare_stops_with_a_clear_error_on_a_missing_column(tmp_path):
    root = make_tiny_competition(tmp_path / "comp", n_classes=2, per_class=1, seconds=1.0)
    meta = root / "train.csv"
    meta.write_text(meta.read_text().replace("primary_label", "label", 1))
    with pytest.raises(CompetitionError) as err:
        prep.prepare(prepare_config(root, tmp_path / "cache"))
    assert str(meta) in str(err.value) and "primary_label" in str(err.value)


# --- chunk index -----------------------------------------------------------------------------------

def test_chunk_starts_edges():
    assert chunk_starts(100, 160, 128).tolist() == [0]  # shorter than a chunk: one (padded) chunk
    assert chunk_starts(160, 160, 128).tolist() == [0]
    assert chunk_starts(161, 160, 128).tolist() == [0, 1]  # tail chunk aligned to the end
    assert chunk_starts(416, 160, 128).tolist() == [0, 128, 256]  # exact fit: no extra tail chunk


@pytest.mark.parametrize("overlap_s", [1.0, 0.0, 2.5])
def test_chunk_index_layout_and_energy(tmp_path, overlap_s):
    root = make_tiny_competition(tmp_path / "comp", n_classes=1, per_class=0)
    durations = {"bird0/a.ogg": 3.0, "bird0/b.ogg": 5.0, "bird0/c.ogg": 7.0, "bird0/d.ogg": 13.0,
                 "bird0/e.ogg": 21.0}
    for i, (name, seconds) in enumerate(durations.items()):
        add_recording(root, name, "bird0", tone(seconds, 1000 + 200 * i, seed=i))
    cache = tmp_path / "cache"
    cfg = prepare_config(root, cache, f"prepare.overlap_s={overlap_s}")
    prep.prepare(cfg)
    chunks = pl.read_parquet(cache / "chunks.parquet")
    hop = 5.0 - overlap_s
    for name, seconds in durations.items():
        rows = chunks.filter(pl.col("filename") == name).sort("chunk")
        expected = [k * hop for k in range(int((seconds - 5.0) // hop) + 1)] if seconds >= 5.0 else [0.0]
        if expected[-1] + 5.0 < seconds:
            expected.append(seconds - 5.0)  # the tail is covered by a chunk aligned to the end
        assert rows["chunk"].to_list() == list(range(len(expected)))
        assert rows["start_s"].to_list() == pytest.approx(expected), name
        assert rows["end_s"].to_list() == pytest.approx([min(s + 5.0, seconds) for s in expected])
        y = np.load(cache / "audio" / Path(name).with_suffix(".npy"))
        starts = (rows["start_s"].to_numpy() * SR).round().astype(np.int64)
        ref = reference_energy_db(y, starts, 5 * SR, cfg.prepare.preemphasis)
        np.testing.assert_allclose(rows["energy_db"].to_numpy(), ref, atol=1e-3)
    assert set(chunks["primary_label"]) == {"bird0"} and chunks["group"].null_count() == 0


def test_silent_chunks_follow_thresholds(tmp_path):
    root = make_tiny_competition(tmp_path / "comp", n_classes=1, per_class=0)
    rng = np.random.default_rng(0)
    y = np.concatenate([tone(5.0, 3000, amp=0.5), 1e-4 * rng.standard_normal(20 * SR).astype(np.float32)])
    add_recording(root, "bird0/loud_then_quiet.flac", "bird0", y)
    cache = tmp_path / "cache"

    result = prep.prepare(prepare_config(root, cache))  # defaults: abs -65 dB, rel -25 dB, chunks every 4 s
    chunks = pl.read_parquet(cache / "chunks.parquet").sort("chunk")
    energy = chunks["energy_db"].to_numpy()
    assert chunks["start_s"].to_list() == [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]
    assert chunks["silent"].to_list() == [False, False, True, True, True, True]  # [4, 9) still has 1 s of tone
    assert energy[2:].max() < -65.0 and energy[0] > -40.0
    assert result["silent_fraction"] == pytest.approx(4 / 6) and result["silent"] == 4

    result = prep.prepare(prepare_config(root, cache, "prepare.silence.abs_db=-200",
                                         "prepare.silence.rel_db=-200"))
    assert result["silent"] == 0
    result = prep.prepare(prepare_config(root, cache, "prepare.silence.abs_db=-200",
                                         "prepare.silence.rel_db=-3"))  # relative threshold alone
    silent = pl.read_parquet(cache / "chunks.parquet").sort("chunk")["silent"].to_numpy()
    assert silent.tolist() == (energy < energy.max() - 3).tolist()
    result = prep.prepare(prepare_config(root, cache, "prepare.silence.abs_db=0"))
    assert result["silent"] == 5  # everything is below 0 dBFS, but the loudest chunk is always kept


# --- real data -------------------------------------------------------------------------------------

def test_prepare_xc45(tmp_path):
    if not (XC45 / "train.csv").exists():
        pytest.skip(f"{XC45} not present")
    cache = tmp_path / "cache"
    cfg = prepare_config(XC45, cache, "prepare.workers=2", "prepare.soundscapes=2")
    result = prep.prepare(cfg)
    assert result["recordings"] == 66 and result["bad"] == 0
    assert len(npy_files(cache)) == 66
    assert len(list((cache / "soundscapes").glob("*.npy"))) == 2
    chunks = pl.read_parquet(cache / "chunks.parquet")
    assert chunks["filename"].n_unique() == 66 and chunks.height == result["chunks"]
    assert 0.0 <= result["silent_fraction"] < 0.5
    assert result["silent_fraction"] == pytest.approx(chunks["silent"].mean())


# --- unlabelled soundscapes ------------------------------------------------------------------------

def test_soundscape_index_skips_and_lists_bad_soundscapes(tiny_competition, tmp_path):
    """Every unlabelled soundscape is cached and indexed in 5 s windows; bad ones are listed, the rest go on."""
    sdir = tiny_competition / "train_soundscapes"
    sf.write(sdir / "good.ogg", tone(12.0, 2000, noise=0.05, seed=3), SR)  # 2 full windows + a 2 s tail
    sf.write(sdir / "good2.wav", tone(10.0, 3000, noise=0.05, seed=4), SR)
    (sdir / "corrupt.ogg").write_bytes(np.random.default_rng(0).bytes(4000))
    (sdir / "empty.ogg").write_bytes(b"")
    sf.write(sdir / "short.ogg", tone(2.0, 2000), SR)
    sf.write(sdir / "quiet.wav", np.full(6 * SR, 1e-5, np.float32), SR, subtype="FLOAT")
    cache = tmp_path / "cache"
    result = prep.prepare(prepare_config(tiny_competition, cache))

    windows = audio_cache.load_soundscape_index(cache)
    assert windows.columns == ["filename", "window", "start_s", "end_s", "energy_db", "silent"]
    assert sorted(windows["filename"].unique()) == ["good.ogg", "good2.wav"]
    good = windows.filter(pl.col("filename") == "good.ogg").sort("window")
    assert good["window"].to_list() == [0, 1, 2]
    assert good["start_s"].to_list() == [0.0, 5.0, 10.0] and good["end_s"].to_list() == [5.0, 10.0, 12.0]
    y = np.load(cache / "soundscapes" / "good.npy")
    np.testing.assert_allclose(good["energy_db"].to_numpy(),
                               reference_energy_db(y, np.array([0, 5 * SR, 10 * SR]), 5 * SR, 0.97), atol=1e-3)
    bad = dict(pl.read_csv(cache / "bad_files.csv").iter_rows())
    expect = {"corrupt.ogg": "cannot decode", "empty.ogg": "empty file", "short.ogg": "too short",
              "quiet.wav": "silent soundscape"}
    for name, what in expect.items():
        assert what in bad[name] and name in bad[name], (name, bad.get(name))
    assert result["soundscapes"] == 2 and result["soundscape_windows"] == windows.height == 5


def test_soundscape_index_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="src.prepare"):
        audio_cache.load_soundscape_index(tmp_path)
