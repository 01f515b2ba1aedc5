"""Shared test helpers: tiny competitions written into tmp_path, and the Hydra config composed as users get it.

`make_tiny_competition` and `add_recording` are plain functions (import them with
`from conftest import ...`) so a test can build the variant it needs; `tiny_competition` is the
default one as a fixture.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src import config as _config  # noqa: F401  (registers the root_tag resolver used by data.cache_dir)

REPO = Path(__file__).resolve().parents[1]
SR = 32000
METADATA = {"birdclef2025": "train.csv", "birdclef2024": "train_metadata.csv", "birdclef2023": "train_metadata.csv"}
TAXONOMY = {"birdclef2025": "taxonomy.csv", "birdclef2024": "eBird_Taxonomy_v2021.csv",
            "birdclef2023": "eBird_Taxonomy_v2021.csv"}
SOUNDSCAPES = {"birdclef2025": "train_soundscapes", "birdclef2024": "unlabeled_soundscapes", "birdclef2023": None}
COLUMNS = ["primary_label", "secondary_labels", "type", "author", "rating", "filename", "collection"]


def tone(seconds: float, freq: float, sr: int = SR, amp: float = 0.3, noise: float = 0.01,
         seed: int = 0) -> np.ndarray:
    """A sine at `freq` Hz plus a little white noise (so it compresses like real audio), float32 mono."""
    t = np.arange(round(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (amp * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(len(t))).astype(np.float32)


def write_audio(path: Path, y: np.ndarray, sr: int = SR, **kwargs) -> None:
    """sf.write in blocks: libsndfile 1.2's OGG Vorbis writer segfaults on a long signal written in one call."""
    with sf.SoundFile(path, "w", sr, 1 if y.ndim == 1 else y.shape[1], **kwargs) as fh:
        for start in range(0, len(y), 1 << 16):
            fh.write(y[start:start + (1 << 16)])


def add_recording(root: Path, filename: str, label: str, audio: np.ndarray | bytes | None = None,
                  sr: int = SR, layout: str = "birdclef2025", **row) -> Path:
    """Write `train_audio/<filename>` (float audio via soundfile, raw bytes as is, None = no file) and
    append its row to the layout's metadata CSV; returns the audio path."""
    path = Path(root) / "train_audio" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(audio, (bytes, bytearray)):
        path.write_bytes(audio)
    elif audio is not None:
        write_audio(path, audio, sr)
    meta = Path(root) / METADATA[layout]
    with open(meta, newline="") as fh:
        columns = next(csv.reader(fh))
    values = {"primary_label": label, "secondary_labels": "[]", "type": "['call']", "author": "tester",
              "rating": "4.0", "filename": filename, "collection": "XC"} | row
    with open(meta, "a", newline="") as fh:
        csv.writer(fh).writerow([values.get(c, "") for c in columns])
    return path


def make_tiny_competition(root: str | Path, n_classes: int = 3, per_class: int = 3, seconds: float = 7.0,
                          layout: str = "birdclef2025") -> Path:
    """Write a tiny competition in `layout` (birdclef2023|2024|2025) under `root` and return `root`.

    Classes `bird0..`; each has `per_class` OGG tones of `seconds` s at 32 kHz (class i at 600*(i+1) Hz),
    `train_audio/<label>/XC<i><j>.ogg`; authors cycle over 2 per class; the first recording of each
    class after the first lists the previous class as a secondary label. Also writes
    sample_submission.csv (class list), the taxonomy, an empty test_soundscapes/ and (2024/2025)
    an empty unlabelled-soundscape folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    classes = [f"bird{i}" for i in range(n_classes)]
    with open(root / "sample_submission.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row_id", *classes])
        for end in (5, 10):
            w.writerow([f"soundscape_0_{end}", *[round(1 / n_classes, 6)] * n_classes])
    with open(root / TAXONOMY[layout], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["primary_label", "common_name", "class_name"])
        w.writerows([c, c.title(), "Aves"] for c in classes)
    with open(root / METADATA[layout], "w", newline="") as fh:
        csv.writer(fh).writerow(COLUMNS if layout == "birdclef2025" else COLUMNS[:-1])
    for i, label in enumerate(classes):
        for j in range(per_class):
            secondary = f"['{classes[i - 1]}']" if i > 0 and j == 0 else "[]"
            add_recording(root, f"{label}/XC{i}{j:02d}.ogg", label,
                          tone(seconds, 600.0 * (i + 1) + 25.0 * j, seed=i * 100 + j), layout=layout,
                          secondary_labels=secondary, author=f"author{i}_{j % 2}")
    (root / "test_soundscapes").mkdir(exist_ok=True)
    if SOUNDSCAPES[layout]:
        (root / SOUNDSCAPES[layout]).mkdir(exist_ok=True)
    return root


def compose_config(*overrides: str) -> DictConfig:
    """`configs/train.yaml` composed with command-line style overrides, as `python -m src.<stage>` sees it."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


def prepare_config(root: Path, cache_dir: Path, *overrides: str, layout: str = "birdclef2025") -> DictConfig:
    """The config of `python -m src.prepare` for a tiny competition (one worker, in-process)."""
    return compose_config(f"data.root={root}", f"data.cache_dir={cache_dir}", f"data.layout={layout}",
                          "prepare.workers=1", *overrides)


@pytest.fixture
def tiny_competition(tmp_path: Path) -> Path:
    """A 3-class, 9-recording BirdCLEF 2025 competition (7 s tones) under tmp_path/comp."""
    return make_tiny_competition(tmp_path / "comp")


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A synthetic competition, folds, cache and two trained tiny runs (`tiny_a`, `tiny_b`), built once."""
    from tests.pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("pipeline"),
                               {"tiny_a": "mobilenetv3_small", "tiny_b": "regnety_002"})


@pytest.fixture(scope="session")
def tiny_teacher(tiny_pipeline, tmp_path_factory):
    """The tiny pipeline plus a tiny Perch-signature teacher's cache and its runs `tinyperch` (zero-shot)
    and `tinyperch_probe` (fold 0), built once: (overrides of src.teacher / src.probe, classes)."""
    from tests.pipeline import add_teacher_runs

    return add_teacher_runs(tiny_pipeline, tmp_path_factory.mktemp("teacher_model"))
