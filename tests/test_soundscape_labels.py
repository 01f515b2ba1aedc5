"""BirdCLEF+ 2026's train_soundscapes_labels.csv and soundscape names: parsing, duplicates, every bad row reported
by file and line and skipped, unlisted windows as negatives, names into site / date / hour."""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import write_audio

from src.data.soundscape_labels import SoundscapeLabelsError, parse_names, parse_time, read_soundscape_labels

CLASSES = ["a", "b", "c"]
PATTERN = r"(?P<prefix>.+)_(?P<site>[^_]+)_(?P<date>\d{8})_(?P<time>\d{6})"


def _soundscapes(root: Path, names: dict[str, float]) -> Path:
    folder = root / "train_soundscapes"
    folder.mkdir(parents=True)
    for name, seconds in names.items():
        write_audio(folder / name, np.zeros(round(seconds * 8000), np.float32) + 0.01, sr=8000)
    return folder


def _labels(root: Path, lines: list[str]) -> Path:
    path = root / "train_soundscapes_labels.csv"
    path.write_text("filename,start,end,primary_label\n" + "\n".join(lines) + "\n")
    return path


def test_parse_time_accepts_clock_and_seconds_and_refuses_the_rest():
    assert parse_time("00:00:05") == 5.0
    assert parse_time("01:02:03") == 3723.0
    assert parse_time("00:10") == 10.0
    assert parse_time("15") == 15.0 and parse_time("7.5") == 7.5
    for bad in ("", "five", "1:2:3:4", "-5", "00::05"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_duplicates_lists_and_negatives(tmp_path):
    folder = _soundscapes(tmp_path, {"x_S01_20250101_060000.ogg": 20.0, "y_S02_20250101_220000.ogg": 12.0})
    labels = _labels(tmp_path, ["x_S01_20250101_060000.ogg,00:00:05,00:00:10,a",
                                "x_S01_20250101_060000.ogg,00:00:05,00:00:10,a",  # duplicate: dropped, counted
                                "x_S01_20250101_060000.ogg,10,15,a;b",
                                "y_S02_20250101_220000.ogg,00:00:00,00:00:10,c"])  # two windows
    windows, problems = read_soundscape_labels(labels, folder, CLASSES, 5.0)
    assert any("1 duplicate row(s) dropped" in p for p in problems)
    x = windows.filter(windows["filename"] == "x_S01_20250101_060000.ogg")
    assert x["window"].to_list() == [0, 1, 2, 3]  # 20 s: four windows, the unlisted ones negatives
    assert x["labels"].to_list() == [[], ["a"], ["a", "b"], []]
    y = windows.filter(windows["filename"] == "y_S02_20250101_220000.ogg")
    assert y["window"].to_list() == [0, 1, 2]  # 12 s: the last partial window is scored too
    assert y["labels"].to_list() == [["c"], ["c"], []]
    listed, _ = read_soundscape_labels(labels, folder, CLASSES, 5.0, negatives=False)
    assert listed.height == 4 and all(listed["labels"].list.len() > 0)


def test_each_bad_row_is_reported_by_file_and_line_and_skipped(tmp_path):
    folder = _soundscapes(tmp_path, {"x.ogg": 20.0, "t.ogg": 10.0})
    labels = _labels(tmp_path, ["x.ogg,00:00:00,00:00:05,a",         # line 2: good
                                "x.ogg,soon,00:00:10,a",              # 3: bad time
                                "x.ogg,00:00:15,00:00:10,b",          # 4: end <= start
                                "x.ogg,00:00:02,00:00:07,b",          # 5: off the grid
                                "x.ogg,00:00:10,00:00:15,zzz",        # 6: unknown class only
                                "x.ogg,00:00:15,00:00:20,c;zzz",      # 7: one unknown class among known ones
                                "gone.ogg,00:00:00,00:00:05,a",       # 8: missing file
                                "t.ogg,00:00:00,00:00:05,a"])         # 9: a test file
    windows, problems = read_soundscape_labels(labels, folder, CLASSES, 5.0, test_names={"t.ogg"})
    text = "\n".join(problems)
    for line, what in ((3, "not hh:mm:ss"), (4, "end 00:00:10 <= start 00:00:15"), (5, "off the 5 s window grid"),
                       (6, "no known class"), (7, "unknown class(es) ['zzz']"), (8, "not found"),
                       (9, "also a test soundscape")):
        assert f"{labels}:{line}:" in text and what in text, (line, what)
    assert set(windows["filename"]) == {"x.ogg"}
    # window 3 keeps its known class; window 2 (only a bad row: unknown class) is dropped, not made a negative;
    # window 1 (overlapped by the off-grid row) is dropped too
    assert dict(zip(windows["window"], windows["labels"].to_list())) == {0: ["a"], 3: ["c"]}


def test_a_labels_file_without_its_columns_names_them(tmp_path):
    folder = _soundscapes(tmp_path, {"x.ogg": 10.0})
    path = tmp_path / "labels.csv"
    path.write_text("file,begin,end,label\nx.ogg,0,5,a\n")
    with pytest.raises(SoundscapeLabelsError, match=r"labels.csv: missing column\(s\) \['filename', 'start'"):
        read_soundscape_labels(path, folder, CLASSES, 5.0)


def test_names_into_site_date_hour_and_one_warning_for_the_rest(caplog):
    names = ["BC2026_Test_0001_S05_20250227_010002.ogg", "XC26_Train_0007_S03_20250312_061500.ogg", "odd.ogg",
             "odd2.ogg"]
    table = parse_names(names, PATTERN)
    assert table["site"].to_list() == ["S05", "S03", None, None]
    assert table["date"].to_list() == [datetime.date(2025, 2, 27), datetime.date(2025, 3, 12), None, None]
    assert table["hour"].to_list() == [1, 6, None, None]
    warnings = [r for r in caplog.records if "do not match" in r.getMessage()]
    assert len(warnings) == 1 and "2 soundscape name(s)" in warnings[0].getMessage()
