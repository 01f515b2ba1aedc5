"""The BirdCLEF 2023/2024/2025 layout readers and their handling of bad metadata."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from conftest import make_tiny_competition

from src.data.competition import CompetitionError, load_competition, multi_hot, parse_label_list


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def minimal(root: Path, metadata_name: str, rows: str, classes: str = "row_id,a,b,c") -> Path:
    """A competition folder with only sample_submission.csv and a metadata CSV (no audio needed to read it)."""
    write(root / "sample_submission.csv", classes + "\n")
    write(root / metadata_name, rows)
    return root


@pytest.mark.parametrize("layout", ["birdclef2023", "birdclef2024", "birdclef2025"])
def test_tiny_competition_reads_in_every_layout(tmp_path, layout):
    root = make_tiny_competition(tmp_path / layout, n_classes=3, per_class=2, seconds=1.0, layout=layout)
    comp = load_competition(root, layout)
    assert comp.classes == ["bird0", "bird1", "bird2"]
    assert comp.meta.height == 6 and comp.problems == []
    assert comp.meta["path"].to_list() == [str(root / "train_audio" / f) for f in comp.meta["filename"]]
    assert all(Path(p).exists() for p in comp.meta["path"])
    assert comp.meta.filter(pl.col("filename") == "bird1/XC100.ogg")["secondary_labels"].to_list() == [["bird0"]]
    expected_soundscapes = {"birdclef2025": "train_soundscapes", "birdclef2024": "unlabeled_soundscapes",
                            "birdclef2023": None}[layout]
    assert (comp.soundscape_dir.name if comp.soundscape_dir else None) == expected_soundscapes
    assert comp.test_dir == root / "test_soundscapes"


def test_2023_train_metadata_minimal_columns(tmp_path):
    # 2023 names its metadata train_metadata.csv; only primary_label and filename are required
    root = minimal(tmp_path, "train_metadata.csv",
                   "primary_label,filename\na,a/XC1.ogg\nc,c/XC2.ogg\n")
    comp = load_competition(root, "birdclef2023")
    meta = comp.meta
    assert meta.columns == ["filename", "path", "primary_label", "secondary_labels", "author", "rating",
                            "collection", "group"]
    assert meta["filename"].to_list() == ["a/XC1.ogg", "c/XC2.ogg"]
    assert meta["secondary_labels"].to_list() == [[], []]
    assert meta["rating"].to_list() == [0.0, 0.0]
    assert meta["group"].to_list() == meta["filename"].to_list()  # no author: each recording is its own group
    assert comp.soundscape_dir is None and comp.soundscape_files() == []


def test_2024_train_metadata_full_row(tmp_path):
    rows = ("primary_label,secondary_labels,type,latitude,longitude,scientific_name,common_name,author,"
            "license,rating,url,filename\n"
            "b,\"['a', 'zzz']\",\"['song']\",1.0,2.0,X y,Bee,Ann,cc,3.5,http://x,b/XC10.ogg\n"
            "a,[],\"['call']\",1.0,2.0,X z,Ay,,cc,,http://y,a/XC11.ogg\n")
    root = minimal(tmp_path, "train_metadata.csv", rows)
    write(root / "unlabeled_soundscapes" / "s1.ogg", "")
    comp = load_competition(root, "birdclef2024")
    assert comp.meta["secondary_labels"].to_list() == [["a"], []]  # unknown 'zzz' dropped ...
    assert any("zzz" in p and "train_metadata.csv" in p for p in comp.problems)  # ... and reported
    assert comp.meta["rating"].to_list() == [3.5, 0.0]
    assert comp.meta["group"].to_list() == ["Ann", "a/XC11.ogg"]  # empty author falls back to the filename
    assert [p.name for p in comp.soundscape_files()] == ["s1.ogg"]


def test_2025_file_is_not_read_as_2023(tmp_path):
    root = minimal(tmp_path, "train.csv", "primary_label,filename\na,a/1.ogg\n")
    with pytest.raises(CompetitionError, match="train_metadata.csv not found"):
        load_competition(root, "birdclef2023")


def test_missing_primary_label_column_names_the_file(tmp_path):
    root = minimal(tmp_path, "train.csv", "label,filename\na,a/1.ogg\n")
    with pytest.raises(CompetitionError) as err:
        load_competition(root, "birdclef2025")
    assert str(root / "train.csv") in str(err.value) and "'primary_label'" in str(err.value)


def test_missing_sample_submission_and_bad_layout(tmp_path):
    write(tmp_path / "train.csv", "primary_label,filename\na,a/1.ogg\n")
    with pytest.raises(CompetitionError, match="sample_submission.csv not found"):
        load_competition(tmp_path, "birdclef2025")
    with pytest.raises(CompetitionError, match="unknown layout"):
        load_competition(tmp_path, "birdclef2099")
    with pytest.raises(CompetitionError, match="not a folder"):
        load_competition(tmp_path / "nope", "birdclef2025")
    write(tmp_path / "sample_submission.csv", "id,a\n")
    with pytest.raises(CompetitionError, match="row_id"):
        load_competition(tmp_path, "birdclef2025")


def test_unknown_label_row_is_skipped_and_reported(tmp_path):
    root = minimal(tmp_path, "train.csv", "primary_label,filename\na,a/1.ogg\nnewbird,newbird/2.ogg\nb,b/3.ogg\n")
    comp = load_competition(root, "birdclef2025")
    assert comp.meta["filename"].to_list() == ["a/1.ogg", "b/3.ogg"]
    [problem] = comp.problems
    assert "train.csv" in problem and "newbird/2.ogg" in problem and "'newbird'" in problem


def test_duplicate_filename_keeps_first_and_reports(tmp_path):
    root = minimal(tmp_path, "train.csv",
                   "primary_label,filename,rating\na,a/1.ogg,5\nb,b/2.ogg,4\na,a/1.ogg,1\n")
    comp = load_competition(root, "birdclef2025")
    assert comp.meta["filename"].to_list() == ["a/1.ogg", "b/2.ogg"]
    assert comp.meta["rating"].to_list() == [5.0, 4.0]  # the first row of the duplicate is kept
    [problem] = comp.problems
    assert "duplicate" in problem and "a/1.ogg" in problem and "train.csv" in problem


def test_class_order_comes_from_sample_submission(tmp_path):
    root = minimal(tmp_path, "train.csv", "primary_label,filename\na,a/1.ogg\n", classes="row_id,c,a,b")
    assert load_competition(root, "birdclef2025").classes == ["c", "a", "b"]


def test_parse_label_list_and_multi_hot():
    assert parse_label_list("['a', 'b']") == ["a", "b"]
    assert parse_label_list("[]") == [] and parse_label_list(None) == [] and parse_label_list("") == []
    assert parse_label_list("[a, b") == ["a", "b"]  # malformed: best effort
    y, mask = multi_hot(["a", "b"], [["b"], ["a"]], ["a", "b", "c"], secondary_value=None)
    assert y.tolist() == [[1, 0, 0], [0, 1, 0]] and mask.tolist() == [[1, 0, 1], [0, 1, 1]]
    y, _ = multi_hot(["a"], [["c"]], ["a", "b", "c"])
    assert y.tolist() == [[1, 0, 0.5]]
