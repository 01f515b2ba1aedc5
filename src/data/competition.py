"""Readers for the BirdCLEF 2023, 2024, 2025 and BirdCLEF+ 2026 Kaggle layouts, into one polars table.

Every later stage reads `Competition.meta` (one row per training recording) and
`Competition.classes` (the columns of `sample_submission.csv`, in order).
"""
from __future__ import annotations

import ast
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from src.infer.audio import list_audio

log = logging.getLogger(__name__)

# File names of each layout, as Kaggle ships each year's data.
LAYOUTS: dict[str, dict[str, str | None]] = {
    "birdclef2026": {"metadata": "train.csv", "taxonomy": "taxonomy.csv", "soundscapes": "train_soundscapes",
                     "soundscape_labels": "train_soundscapes_labels.csv"},
    "birdclef2025": {"metadata": "train.csv", "taxonomy": "taxonomy.csv", "soundscapes": "train_soundscapes"},
    "birdclef2024": {"metadata": "train_metadata.csv", "taxonomy": "eBird_Taxonomy_v2021.csv",
                     "soundscapes": "unlabeled_soundscapes"},
    "birdclef2023": {"metadata": "train_metadata.csv", "taxonomy": "eBird_Taxonomy_v2021.csv",
                     "soundscapes": None},
}
META_COLUMNS = ["filename", "path", "primary_label", "secondary_labels", "author", "rating", "collection", "group"]
COMPETITION_SOURCE = "competition"  # the `source` of the competition's own recordings when prepare merges data.extra
EXTRA_PREFIX = "extra"  # the filenames of `data.extra` recordings start with it: never in a folds file, never validated
OPTIONAL_COLUMNS = {"secondary_labels": "[]", "author": None, "rating": None, "collection": None}


class CompetitionError(ValueError):
    """A competition folder or CSV that cannot be read; the message names the file and the fix."""


@dataclass
class Competition:
    """A competition on disk: class list, training metadata and the soundscape folders."""

    root: Path
    layout: str
    classes: list[str]
    meta: pl.DataFrame  # META_COLUMNS: filename, path, primary_label, secondary_labels (list), ..., group
    sample_submission: Path
    test_dir: Path
    soundscape_dir: Path | None
    problems: list[str] = field(default_factory=list)
    labels_file: Path | None = None  # 2026: train_soundscapes_labels.csv (expert labels of some soundscapes)
    taxa: dict[str, str] = field(default_factory=dict)  # class -> taxonomy class_name (Aves, Insecta, ...) if known

    def test_files(self) -> list[Path]:
        """Every audio file in `test_soundscapes/`, sorted."""
        return list_audio(self.test_dir)

    def soundscape_files(self) -> list[Path]:
        """Unlabelled training soundscapes (background noise), sorted; [] if the layout has none."""
        return list_audio(self.soundscape_dir) if self.soundscape_dir else []


def parse_label_list(text: str | None) -> list[str]:
    """`"['a', 'b']"` -> ['a', 'b']; empty, null or malformed -> []."""
    if text is None or not str(text).strip():
        return []
    try:
        value = ast.literal_eval(str(text))
    except (ValueError, SyntaxError):
        return [t.strip() for t in str(text).strip("[]").replace("'", "").split(",") if t.strip()]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def read_classes(sample_submission: Path) -> list[str]:
    """The class list: every column of `sample_submission.csv` after `row_id`."""
    if not sample_submission.exists():
        raise CompetitionError(f"{sample_submission} not found: the class list comes from it; "
                               "download the competition files (kaggle competitions download -c <slug>)")
    columns = pl.read_csv(sample_submission, n_rows=0).columns
    if not columns or columns[0] != "row_id":
        raise CompetitionError(f"{sample_submission}: first column must be 'row_id', got {columns[:1]}")
    return columns[1:]


def load_competition(root: str | Path, layout: str) -> Competition:
    """Read a competition folder in the given layout (`birdclef2023|2024|2025`).

    Rows with an unknown primary label or a duplicate filename are dropped and reported in
    `problems`; unknown secondary labels are dropped from the row's list and reported.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise CompetitionError(f"unknown layout {layout!r}: use one of {sorted(LAYOUTS)} (data.layout)")
    if not root.is_dir():
        raise CompetitionError(f"{root} is not a folder: set data.root=PATH to the competition folder")
    files = LAYOUTS[layout]
    classes = read_classes(root / "sample_submission.csv")
    meta, problems = read_metadata(root, layout, classes)
    problems += _taxonomy_problems(root / str(files["taxonomy"]), root / "sample_submission.csv", classes,
                                   exhaustive=layout not in ("birdclef2023", "birdclef2024"))
    for p in problems:
        log.warning(p)
    soundscapes, labels = files["soundscapes"], files.get("soundscape_labels")
    return Competition(root=root, layout=layout, classes=classes, meta=meta, sample_submission=root / "sample_submission.csv", test_dir=root / "test_soundscapes",
                       soundscape_dir=root / soundscapes if soundscapes else None, problems=problems,
                       labels_file=root / labels if labels else None,
                       taxa=read_taxa(root / str(files["taxonomy"])))


def read_metadata(root: Path, layout: str, classes: list[str]) -> tuple[pl.DataFrame, list[str]]:
    """The training recordings of a folder in `layout` (`META_COLUMNS`; `path` under its train_audio/), rows with
    a primary label outside `classes` or a duplicate filename dropped, and the problems found."""
    meta_path = root / str(LAYOUTS[layout]["metadata"])
    if not meta_path.exists():
        raise CompetitionError(f"{meta_path} not found: is {root} a {layout} folder? (data.layout)")
    meta = pl.read_csv(meta_path, infer_schema_length=0)  # all strings: nothing silently mis-typed
    for col in ("primary_label", "filename"):
        if col not in meta.columns:
            raise CompetitionError(f"{meta_path}: missing column {col!r} (columns: {meta.columns})")
    for col, default in OPTIONAL_COLUMNS.items():
        if col not in meta.columns:
            meta = meta.with_columns(pl.lit(default, dtype=pl.Utf8).alias(col))
    meta, problems = _clean(meta, classes, meta_path)
    meta = meta.with_columns(
        pl.col("filename").map_elements(lambda f: str(root / "train_audio" / f), return_dtype=pl.Utf8).alias("path"),
        pl.col("rating").cast(pl.Float32, strict=False).fill_null(0.0),
        pl.coalesce(pl.col("author").str.strip_chars().replace("", None), pl.col("filename")).alias("group"),
    )
    return meta.select(META_COLUMNS), problems


def detect_layout(root: Path) -> str:
    """The layout of a folder from the files it holds: 2026 (train_soundscapes_labels.csv), 2025 (train.csv), 2024
    (train_metadata.csv + unlabeled_soundscapes/) or 2023 (train_metadata.csv)."""
    for layout in ("birdclef2026", "birdclef2025", "birdclef2024"):
        files = LAYOUTS[layout]
        marker = files.get("soundscape_labels") or files["soundscapes"] if layout != "birdclef2025" else "train.csv"
        if (root / str(marker)).exists() and (root / str(files["metadata"])).exists():
            return layout
    if (root / "train_metadata.csv").exists():
        return "birdclef2023"
    raise CompetitionError(f"{root}: no train.csv or train_metadata.csv: not a folder in a known layout (give its "
                           "layout: data.extra=[{root: PATH, layout: birdclef2025}])")


def load_extra(sources, classes: list[str], keep: bool) -> tuple[pl.DataFrame | None, list[str], list[str]]:
    """The recordings of the extra training folders `data.extra` (previous editions, recordings downloaded from
    Xeno-canto / iNat into a train.csv + train_audio/ folder; each a path or {root, layout, name}), merged by class
    label: (their META_COLUMNS rows + `source`, filenames `extra/<name>/<file>` and `source` = name, None without any; the
    extra classes kept; problems). A label outside `classes` is dropped, or with `keep` kept as an extra output (for pretraining)."""
    frames, kept, problems = [], set(), []
    for spec in sources or []:
        entry = dict(spec) if isinstance(spec, Mapping) else {"root": str(spec)}
        root = Path(str(entry["root"]))
        if not root.is_dir():
            raise CompetitionError(f"data.extra: {root} is not a folder: give the folder holding its train.csv / "
                                   "train_metadata.csv and train_audio/")
        layout, name = str(entry.get("layout") or detect_layout(root)), str(entry.get("name") or root.name)
        raw = pl.read_csv(root / str(LAYOUTS[layout]["metadata"]), infer_schema_length=0)
        labels = set(raw["primary_label"].drop_nulls().to_list()) if "primary_label" in raw.columns else set()
        outside = sorted(labels - set(classes))
        if outside:
            problems.append(f"data.extra: {root}: {len(outside)} label(s) outside the competition's classes "
                            f"(e.g. {outside[:3]}): " + ("kept as extra outputs" if keep else
                                                         "their recordings dropped (data.extra_classes=keep keeps them)"))
        meta, found = read_metadata(root, layout, sorted(set(classes) | (set(outside) if keep else set())))
        kept |= set(outside) if keep else set()
        problems += found
        frames.append(meta.with_columns(pl.lit(name).alias("source"),
                                        (pl.lit(f"{EXTRA_PREFIX}/{name}/") + pl.col("filename")).alias("filename")))
    return (pl.concat(frames) if frames else None), sorted(kept), problems


def read_taxa(taxonomy: Path) -> dict[str, str]:
    """class -> `class_name` (Aves, Amphibia, Insecta, Mammalia, Reptilia) from a taxonomy with that column
    (2025 / 2026); {} for one without (2023 / 2024's eBird taxonomy lists birds only)."""
    if not taxonomy.exists():
        return {}
    table = pl.read_csv(taxonomy, infer_schema_length=0)
    if not {"primary_label", "class_name"} <= set(table.columns):
        return {}
    return {k: v for k, v in zip(table["primary_label"], table["class_name"]) if k and v}


def _taxonomy_problems(taxonomy: Path, sample: Path, classes: list[str], exhaustive: bool) -> list[str]:
    """A warning when the taxonomy's labels differ from sample_submission.csv's columns: classes it lacks (their
    names cannot be mapped onto a teacher's labels) and, when it lists the competition's classes only
    (`exhaustive`: 2025's taxonomy.csv, not 2023/2024's whole eBird taxonomy), labels that are not columns."""
    if not taxonomy.exists():
        return []
    table = pl.read_csv(taxonomy, infer_schema_length=0)
    column = next((c for c in ("primary_label", "SPECIES_CODE") if c in table.columns), None)
    if column is None:
        return [f"{taxonomy}: no primary_label column: class names are not read from it"]
    listed = set(table[column].drop_nulls().to_list())
    missing = [c for c in classes if c not in listed]
    extra = sorted(listed - set(classes)) if exhaustive else []
    if not missing and not extra:
        return []
    return [(f"{taxonomy}: its labels differ from the columns of {sample}: {len(missing)} class(es) missing from "
             f"it (e.g. {missing[:3]}), {len(extra)} label(s) that are not columns (e.g. {extra[:3]}); the class "
             "list comes from sample_submission.csv: check that both files are from the same competition")]


def _clean(meta: pl.DataFrame, classes: list[str], meta_path: Path) -> tuple[pl.DataFrame, list[str]]:
    known = set(classes)
    problems: list[str] = []
    dup = meta.filter(pl.col("filename").is_duplicated())["filename"].unique().sort().to_list()
    if dup:
        problems.append(f"{meta_path}: duplicate filename(s) {dup[:5]}{'...' if len(dup) > 5 else ''}: "
                        "keeping the first row of each")
        meta = meta.unique("filename", keep="first", maintain_order=True)
    unknown = meta.filter(~pl.col("primary_label").is_in(classes))
    for row in unknown.select("filename", "primary_label").iter_rows():
        problems.append(f"{meta_path}: {row[0]}: primary_label {row[1]!r} is not a column of "
                        "sample_submission.csv: row skipped")
    meta = meta.filter(pl.col("primary_label").is_in(classes))
    secondary, dropped = [], set()
    for text in meta["secondary_labels"].to_list():
        labels = parse_label_list(text)
        dropped.update(lab for lab in labels if lab not in known)
        secondary.append([lab for lab in labels if lab in known])
    if dropped:
        problems.append(f"{meta_path}: secondary label(s) not in the class list ignored: {sorted(dropped)[:10]}")
    meta = meta.with_columns(pl.Series("secondary_labels", secondary, dtype=pl.List(pl.Utf8)))
    return meta, problems


def multi_hot(primary: list[str], secondary: list[list[str]], classes: list[str],
              secondary_value: float | None = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Targets and loss mask, both (n, n_classes) float32.

    Primary label -> 1. Secondary labels -> `secondary_value`, or masked out of the loss
    (mask 0, target 0) when `secondary_value` is None.
    """
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(primary), len(classes)), np.float32)
    mask = np.ones_like(y)
    for row, (p, sec) in enumerate(zip(primary, secondary)):
        for s in sec:
            if s in index and s != p:
                if secondary_value is None:
                    mask[row, index[s]] = 0.0
                else:
                    y[row, index[s]] = secondary_value
        if p in index:  # a primary label outside `classes` (a specialist's other classes): a negative row
            y[row, index[p]] = 1.0
    return y, mask


def select_classes(spec, classes: list[str], root: str | Path, layout: str) -> list[str]:
    """The classes a run trains and predicts (`data.classes`): all of `classes` (null), a list of them, or
    `{class_name: [Amphibia, Insecta]}` (the taxonomy's class_name, 2025/2026): a specialist. Kept in the
    competition's order. CompetitionError naming the unknown class or taxon and the taxonomy file."""
    if spec is None:
        return list(classes)
    taxonomy = Path(root) / str(LAYOUTS[layout]["taxonomy"])
    if isinstance(spec, Mapping):
        unknown_keys = set(spec) - {"class_name"}
        if unknown_keys:
            raise CompetitionError(f"data.classes: unknown key(s) {sorted(unknown_keys)}: a list of classes or "
                                   "{class_name: [Amphibia, Insecta]}")
        taxa, wanted = read_taxa(taxonomy), {str(t) for t in spec["class_name"]}
        missing = sorted(wanted - set(taxa.values()))
        if missing:
            raise CompetitionError(f"data.classes: taxon {missing} is not a class_name of {taxonomy} (it has "
                                   f"{sorted(set(taxa.values()))})")
        chosen = {c for c, t in taxa.items() if t in wanted}
    else:
        chosen = {str(c) for c in spec}
        unknown = sorted(chosen - set(classes))
        if unknown:
            raise CompetitionError(f"data.classes: {unknown[:5]} are not columns of {Path(root) / 'sample_submission.csv'}")
    subset = [c for c in classes if c in chosen]
    if not subset:
        raise CompetitionError(f"data.classes={spec}: selects no class of this competition")
    return subset