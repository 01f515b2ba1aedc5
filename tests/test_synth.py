"""src.synth: a small synthetic competition is deterministic and has the BirdCLEF 2025 layout."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from omegaconf import DictConfig, OmegaConf

from src.synth import TAXONOMY_COLUMNS, TRAIN_COLUMNS, build_species, make_competition, species_counts

ROOT = Path(__file__).resolve().parents[1]
CSVS = ("train.csv", "taxonomy.csv", "sample_submission.csv", "solution.csv", "train_soundscapes_truth.csv")


def small_cfg(**over) -> DictConfig:
    """The real config, shrunk: 4 species x 3 recordings (+1 short), 1 noise bed, 2 test soundscapes."""
    cfg = OmegaConf.load(ROOT / "configs" / "synth.yaml").synth
    cfg.merge_with({"n_species": 4, "recordings_per_species": [3, 3], "max_duration_s": 6.0,
                    "n_train_soundscapes": 1, "n_test_soundscapes": 2, "progress": False, "workers": 2, **over})
    return cfg


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "demo"
    stale = out.with_name("demo.tmp")
    (stale / "junk").mkdir(parents=True)  # left over by an interrupted run
    make_competition(out, small_cfg())
    assert not stale.exists()
    return out


def _oggs(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*.ogg"))


def test_deterministic_for_any_worker_count(comp, tmp_path):
    again = make_competition(tmp_path / "again", small_cfg(workers=1))
    for name in CSVS:
        assert (comp / name).read_bytes() == (again / name).read_bytes(), name
    assert _oggs(comp) == _oggs(again)
    for rel in _oggs(comp):  # Vorbis streams carry a random serial number: compare the decoded audio
        np.testing.assert_array_equal(sf.read(comp / rel)[0], sf.read(again / rel)[0], err_msg=str(rel))


def test_layout_and_train_csv(comp):
    assert {p.name for p in comp.iterdir()} == {*CSVS, "train_audio", "train_soundscapes", "test_soundscapes"}
    assert not (comp / "junk").exists()
    train = pl.read_csv(comp / "train.csv")
    tax = pl.read_csv(comp / "taxonomy.csv")
    assert tuple(train.columns) == TRAIN_COLUMNS
    assert tuple(tax.columns) == TAXONOMY_COLUMNS
    labels = tax["primary_label"].to_list()
    assert labels == sorted(labels) and len(labels) == 4
    assert train.height == 4 * 3 + 1
    assert set(train["primary_label"]) == set(labels)
    assert set(train["collection"]) <= {"XC", "iNat"}
    assert train["rating"].dtype == pl.Float64 and train["rating"].is_between(0, 5).all()
    for row in train.iter_rows(named=True):
        assert row["filename"] == f"{row['primary_label']}/{Path(row['filename']).name}"
        assert (comp / "train_audio" / row["filename"]).is_file()
        sec = ast.literal_eval(row["secondary_labels"])
        assert isinstance(sec, list) and set(sec) <= set(labels) - {row["primary_label"]}
        assert isinstance(ast.literal_eval(row["type"]), list)
    assert sorted(_oggs(comp / "train_audio")) == sorted(Path(f) for f in train["filename"])
    # several recordists, some with several recordings: author-grouped folds are meaningful
    per_author = train["author"].value_counts()
    assert per_author.height >= 2 and per_author["count"].max() >= 2


def test_audio_decodes_32k_mono(comp):
    cfg = small_cfg()
    durations = []
    for rel in _oggs(comp):
        info = sf.info(comp / rel)
        assert (info.samplerate, info.channels) == (32000, 1), rel
        y, sr = sf.read(comp / rel, dtype="float32")
        assert y.ndim == 1 and np.isfinite(y).all() and 0 < np.abs(y).max() <= 1.0, rel
        if rel.parts[0] == "train_audio":
            durations.append(len(y) / sr)
        else:
            assert abs(len(y) / sr - cfg.soundscape_s) < 0.01, rel
    assert len(_oggs(comp / "test_soundscapes")) == 2 and len(_oggs(comp / "train_soundscapes")) == 1
    durations = np.array(durations)
    assert (np.abs(durations - cfg.short_duration_s) < 0.01).sum() == 1
    long = durations[np.abs(durations - cfg.short_duration_s) >= 0.01]
    assert ((long >= cfg.min_duration_s - 0.01) & (long <= cfg.max_duration_s + 0.01)).all()


def test_submission_and_solution(comp):
    sub = pl.read_csv(comp / "sample_submission.csv")
    sol = pl.read_csv(comp / "solution.csv")
    labels = pl.read_csv(comp / "taxonomy.csv")["primary_label"].to_list()
    assert sub.columns == sol.columns == ["row_id", *sorted(labels)]
    assert sub["row_id"].to_list() == sol["row_id"].to_list()
    stems = [p.stem for p in sorted((comp / "test_soundscapes").glob("*.ogg"))]
    assert stems == ["soundscape_000", "soundscape_001"]
    assert sub["row_id"].to_list() == [f"{s}_{t}" for s in stems for t in range(5, 61, 5)]
    np.testing.assert_allclose(sub.drop("row_id").to_numpy(), 1 / len(labels))
    y = sol.drop("row_id").to_numpy()
    assert set(np.unique(y)) <= {0, 1}
    assert (y.sum(axis=0) > 0).sum() > 1


def test_cli_replaces_only_a_competition(tmp_path):
    """`python -m src.synth` (Hydra entry point) replaces an earlier competition, never another folder."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        make_competition(other, small_cfg())
    assert (other / "keep.txt").exists()

    out = tmp_path / "comp"
    out.mkdir()
    (out / "train.csv").write_text("old")
    (out / "stale.txt").write_text("x")
    tiny = ["synth.n_species=2", "synth.recordings_per_species=[1,1]", "synth.max_duration_s=5",
            "synth.n_short_recordings=0", "synth.n_train_soundscapes=0", "synth.n_test_soundscapes=0",
            "synth.progress=false"]
    subprocess.run([sys.executable, "-m", "src.synth", f"synth.out={out}", *tiny], cwd=ROOT, check=True,
                   capture_output=True)
    assert not (out / "stale.txt").exists() and not out.with_name("comp.tmp").exists()
    assert tuple(pl.read_csv(out / "train.csv").columns) == TRAIN_COLUMNS
    assert pl.read_csv(out / "train.csv").height == 2 and (out / "test_soundscapes").is_dir()


def test_train_soundscapes_hold_calls_with_truth(tmp_path):
    """The unlabelled soundscapes hold calls, and their truth (solution layout) says where."""
    out = make_competition(tmp_path / "comp", small_cfg(n_train_soundscapes=3, train_soundscape_call_prob=1.0,
                                                        n_test_soundscapes=0, recordings_per_species=[1, 1]))
    truth = pl.read_csv(out / "train_soundscapes_truth.csv")
    stems = [p.stem for p in sorted((out / "train_soundscapes").glob("*.ogg"))]
    assert truth.columns == pl.read_csv(out / "sample_submission.csv").columns
    assert truth["row_id"].to_list() == [f"{s}_{t}" for s in stems for t in range(5, 61, 5)]
    y = truth.drop("row_id").to_numpy()
    assert set(np.unique(y)) <= {0, 1}
    per_file = y.reshape(len(stems), 12, -1).sum(axis=(1, 2))
    assert (per_file > 0).all()  # call_prob 1: every soundscape holds calls
    # a positive window is louder (above the bed) than the same file's negative windows, on average
    audio, _ = sf.read(out / "train_soundscapes" / f"{stems[0]}.ogg", dtype="float32")
    hp = np.diff(audio, append=0.0).reshape(12, -1).std(axis=1)
    pos = y.reshape(len(stems), 12, -1)[0].sum(axis=1) > 0
    if pos.any() and (~pos).any():
        assert hp[pos].mean() > hp[~pos].mean()


def test_long_tail_counts_and_generated_species():
    counts = species_counts(206, 28564, 500)
    assert counts.sum() == 28564 and counts.min() >= 1 and np.all(np.diff(counts) <= 0)
    assert 200 < counts[0] / counts[-1] < 700  # the commonest class has hundreds of times the rarest one's share
    assert np.ptp(species_counts(10, 95, None)) <= 1  # no tail: even
    with pytest.raises(ValueError, match="n_recordings"):
        species_counts(10, 5, None)
    species = build_species(small_cfg(n_species=206))
    assert len({sp.label for sp in species}) == 206  # listed variants, then generated ones


def test_birdclef2026_layout(tmp_path):
    """synth.layout=birdclef2026: 2026's CSV columns, non-bird taxa, classes without clips that occur in the
    labelled soundscapes, site/date/time names, a labels file with every row twice that the 2026 reader reads."""
    from src.data.soundscape_labels import parse_names, read_soundscape_labels

    out = make_competition(tmp_path / "comp", small_cfg(layout="birdclef2026", n_train_soundscapes=4,
                                                        recordings_per_species=[1, 1],
                                                        birdclef2026={"n_labelled": 3, "no_clip": 2}))
    train, taxonomy = pl.read_csv(out / "train.csv"), pl.read_csv(out / "taxonomy.csv")
    assert train.columns[7:9] == ["class_name", "inat_taxon_id"]
    assert {"Insecta", "Amphibia", "Aves"} == set(taxonomy["class_name"])
    classes = pl.read_csv(out / "sample_submission.csv").columns[1:]
    no_clip = sorted(set(classes) - set(train["primary_label"]))
    assert len(no_clip) == 2 and no_clip == sorted(taxonomy.filter(pl.col("class_name") != "Aves")["primary_label"])
    names = sorted(p.name for p in (out / "train_soundscapes").glob("*.ogg"))
    parsed = parse_names(names, r"(?P<prefix>.+)_(?P<site>[^_]+)_(?P<date>\d{8})_(?P<time>\d{6})")
    assert parsed["site"].null_count() == 0 and parsed["hour"].null_count() == 0
    raw = pl.read_csv(out / "train_soundscapes_labels.csv")
    assert raw.height == 2 * raw.unique().height  # every row twice
    windows, problems = read_soundscape_labels(out / "train_soundscapes_labels.csv", out / "train_soundscapes",
                                               classes, 5.0)
    assert windows["filename"].n_unique() == 3 and windows.height == 3 * 12
    labelled = set(windows.explode("labels")["labels"].drop_nulls())
    assert set(no_clip) <= labelled  # the classes without clips are learnable from the labelled soundscapes
    assert len(problems) == 1 and "duplicate" in problems[0]
    heard = windows.explode("labels").drop_nulls("labels").group_by("filename").agg(pl.col("labels"))
    for row in parsed.join(heard, on="filename").iter_rows(named=True):
        if set(row["labels"]) & set(no_clip):
            assert row["hour"] >= 19 or row["hour"] < 6  # the non-bird species call at night
