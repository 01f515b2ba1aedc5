"""BirdCLEF+ 2026 end to end on a tiny synthetic competition in its layout (`synth.layout=birdclef2026`): folds
that put each labelled soundscape's site in one fold, prepare's labelled windows and names, training that draws and
mixes the other folds' labelled windows, the labelled CV of every run, an ensemble fitted on it, and the kernel."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

import src.train as train_mod
from src import ensemble, kernel, leaderboard
from src.data.audio_cache import load_labelled, load_soundscape_index
from src.data.dataset import Extra, JoinedBatches
from src.data.samplers import GroupSampler, MassSampler
from src.data.splits import SOUNDSCAPE_FOLD_PREFIX, FoldsError, load_soundscape_folds
from src.folds import write_folds
from src.prepare import prepare
from src.synth import make_competition
from tests.pipeline import compose_named, compose_train
from tests.test_kernel import assert_same_submission, run_script_alone

PATTERN = r"(?P<prefix>.+)_(?P<site>[^_]+)_(?P<date>\d{8})_(?P<time>\d{6})"
SYNTH = ["synth.layout=birdclef2026", "synth.n_species=3", "synth.recordings_per_species=[3,3]",
         "synth.max_duration_s=8", "synth.n_train_soundscapes=6", "synth.n_test_soundscapes=2",
         "synth.birdclef2026.n_labelled=4", "synth.birdclef2026.no_clip=2", "synth.birdclef2026.sites=3",
         "synth.progress=false", "synth.workers=1", "synth.soundscape_s=30"]
SLUG = "birdclef-tiny26"


@pytest.fixture(scope="module")
def comp26(tmp_path_factory):
    """A tiny 2026 competition, its folds and cache: (root folder, the overrides every stage gets)."""
    root = tmp_path_factory.mktemp("tiny26")
    make_competition(root / "comp", compose_named("synth", *SYNTH).synth)
    overrides = [f"data.root={root / 'comp'}", "data.name=tiny26", "data.layout=birdclef2026",
                 "data.competition=birdclef-2026", f"data.soundscape_names='{PATTERN}'",
                 f"data.cache_dir={root / 'cache'}", f"folds.dir={root / 'folds'}", f"runs_dir={root / 'runs'}",
                 "experiment=tiny", "prepare.workers=1", "valsets.n_soundscapes=2"]
    cfg = compose_train(*overrides)
    write_folds(cfg, report=False)
    prepare(cfg)
    return root, overrides


def test_folds_put_each_site_of_the_labelled_soundscapes_in_one_fold(comp26):
    root, overrides = comp26
    labelled = load_labelled(root / "cache")
    names = labelled["filename"].unique().to_list()
    folds = load_soundscape_folds(root / "folds" / "tiny26_2fold.csv", names)
    sites = labelled.group_by("filename").agg(pl.col("site").first())
    site_folds = {}
    for name, site in sites.iter_rows():
        assert site_folds.setdefault(site, folds[name]) == folds[name]  # no site in two folds
    assert set(folds.values()) == {0, 1}
    rows = pl.read_csv(root / "folds" / "tiny26_2fold.csv")
    assert rows.filter(pl.col("filename").str.starts_with(SOUNDSCAPE_FOLD_PREFIX)).height == len(names)
    with pytest.raises(FoldsError, match=r"train_soundscapes_labels.csv.*fewer than folds.n=4.*labelled_group"):
        write_folds(compose_train(*overrides, "folds.n=4", "folds.group=filename", f"folds.dir={root / 'folds4'}"),
                    report=False)


def test_prepare_indexes_the_labelled_windows_and_the_names(comp26, capsys):
    root, overrides = comp26
    labelled = load_labelled(root / "cache")
    assert labelled["filename"].n_unique() == 4 and labelled.height == 4 * 6  # 30 s: six windows each
    assert labelled["site"].null_count() == 0 and labelled["hour"].null_count() == 0
    index = load_soundscape_index(root / "cache")
    assert {"site", "date", "hour", "labelled"} <= set(index.columns)
    assert set(index.filter(pl.col("labelled"))["filename"]) == set(labelled["filename"])
    classes = pl.read_csv(root / "comp" / "sample_submission.csv").columns[1:]
    no_clip = set(classes) - set(pl.read_csv(root / "comp" / "train.csv")["primary_label"])
    assert len(no_clip) == 2 and no_clip <= set(labelled.explode("labels")["labels"].drop_nulls())
    prepare(compose_train(*overrides))
    out = capsys.readouterr().out
    assert "2 classes have no training recording" in out and "labelled windows)" in out


@pytest.fixture(scope="module")
def runs26(comp26):
    """Two tiny runs on fold 0 and 1: labelled windows drawn into every batch (fold 0), mixed onto the clips with
    their labels capped (fold 1 and 0 of a second run)."""
    root, overrides = comp26
    for exp, mode, fold in (("lab_batch", "batch", 0), ("lab_batch", "batch", 1), ("lab_mix", "mixup", 0),
                            ("lab_mix", "mixup", 1)):
        train_mod.train(compose_train(*overrides, f"exp={exp}", f"fold={fold}", f"labelled.mode={mode}",
                                      "labelled.mixup.p=1.0", "train.epochs=1"))
    return root, overrides


def test_runs_are_scored_on_their_folds_held_out_labelled_soundscapes(runs26):
    root, _ = runs26
    labelled = load_labelled(root / "cache")
    folds = load_soundscape_folds(root / "folds" / "tiny26_2fold.csv", labelled["filename"].unique().to_list())
    for exp in ("lab_batch", "lab_mix"):
        for fold in (0, 1):
            run = root / "runs" / exp / f"fold{fold}"
            metrics = json.loads((run / "metrics.json").read_text())
            assert "labelled_auc" in metrics and "soundscape_auc" in metrics
            oof = pl.read_parquet(run / "oof_labelled.parquet")
            assert {folds[f] for f in oof["filename"]} == {fold}  # only this fold's labelled soundscapes
            assert oof.height == labelled.filter(pl.col("filename").is_in(oof["filename"].unique())).height
            assert "labelled_auc" in pl.read_csv(run / "log.csv").columns


def test_an_ensemble_fits_on_the_labelled_cv_and_its_kernel_matches(runs26, tmp_path):
    root, overrides = runs26
    data = [o for o in overrides if o.startswith("data.")]
    summary = ensemble.run(compose_named("ensemble", *data, f"runs_dir={root / 'runs'}",
                                         f"ensembles_dir={tmp_path / 'ensembles'}", "runs=[lab_batch,lab_mix]",
                                         "name=tiny26", "ensemble.blend=weighted", "ensemble.fit.restarts=1"))
    assert summary["fit_on"] == "labelled" and summary["labelled_oof_score"] is not None
    assert summary["soundscape_oof_score"] is not None  # the other window CV, scored with the choice made
    assert "test_no_clip" in summary  # the classes without a clip, scored on the solution
    rows = leaderboard.build_rows([], leaderboard.read_ensembles(tmp_path / "ensembles"), {})
    assert rows[0]["labelled_cv"] == summary["labelled_oof_score"]
    kernel.main(["build", "name=tiny26", f"ensembles_dir={tmp_path / 'ensembles'}",
                 f"kernels_dir={tmp_path / 'kernels'}", "runtime=torchscript", "fallback_runtime=null",
                 "user=tester", f"slug={SLUG}", "check_windows=4", "plan_on_build=false"])
    run_script_alone(tmp_path / "kernels" / "tiny26", root / "comp", tmp_path, competition="birdclef-2026",
                     slug=SLUG)
    assert_same_submission(tmp_path / "working" / "submission.csv", tmp_path / "ensembles" / "tiny26" /
                           "submission.csv")


def test_the_site_and_hour_tables_also_count_the_pseudo_labels(runs26, tmp_path, capsys):
    """`ensemble.metadata_pseudo.path` (as src.selftrain passes each round's labels): the unlabelled train
    soundscapes' pseudo-labelled windows join the site and hour tables the prior step is fitted and chosen with."""
    from src.pseudo import write_pseudo

    root, overrides = runs26
    index = load_soundscape_index(root / "cache").filter(~pl.col("labelled")).sort("filename", "window")
    classes = json.loads((root / "cache" / "manifest.json").read_text())["classes"]
    labels = tmp_path / "pseudo.parquet"
    write_pseudo(labels, index.select("filename", "window", "start_s", "end_s"),
                 np.full((index.height, len(classes)), 0.1, np.float32),
                 {"classes": classes, "competition": "birdclef-2026", "teacher": "t", "round": 1, "pseudo_auc": None})
    data = [o for o in overrides if o.startswith("data.")]
    summary = ensemble.run(compose_named("ensemble", *data, f"runs_dir={root / 'runs'}",
                                         f"ensembles_dir={tmp_path / 'ensembles'}", "runs=[lab_batch]", "name=pp",
                                         "ensemble.fit.restarts=1", f"ensemble.metadata_pseudo.path={labels}"))
    out = capsys.readouterr().out
    files = index["filename"].n_unique()
    assert f"site and hour priors also count {index.height} pseudo-labelled windows of {files} soundscape(s)" in out
    assert "metadata_prior" in summary["labelled_steps_nested"]


def _batch(n, value, c=3):
    return (torch.full((n, 10), float(value)), torch.full((n, c), value / 10), torch.ones(n, c), torch.ones(n))


class _Loader(list):
    def __init__(self, batches, sampler):
        super().__init__(batches)
        self.sampler = sampler


def test_a_clip_is_mixed_with_one_extra_window_at_most_and_the_labels_are_capped():
    torch.manual_seed(0)
    sampler = MassSampler(np.ones(1), 0, 0, 1, 0)
    clips = _Loader([_batch(400, 0)], sampler)
    # clips at 0, labelled windows at +1, pseudo-labelled ones at -1: the sign of a mixed wave says which one
    labelled = _Loader([(torch.full((400, 10), 1.0), torch.ones(400, 3), torch.ones(400, 3), torch.ones(400))],
                       sampler)
    pseudo = _Loader([(torch.full((400, 10), -1.0), torch.full((400, 3), 0.9), torch.ones(400, 3),
                       torch.ones(400))], sampler)
    joined = JoinedBatches(clips, [Extra(labelled, "mixup", p=0.5, cap=0.5, name="labelled"),
                                   Extra(pseudo, "mixup", p=0.5, cap=0.75, name="pseudo")])
    wave, target, _, _ = next(iter(joined))
    mixed_labelled, mixed_pseudo = wave[:, 0] > 0, wave[:, 0] < 0
    assert not (mixed_labelled & mixed_pseudo).any() and (mixed_labelled | mixed_pseudo).all()
    assert 100 < mixed_labelled.sum() < 300
    assert torch.allclose(target[mixed_labelled], torch.full((int(mixed_labelled.sum()), 3), 0.5 / 3))
    assert torch.allclose(target[mixed_pseudo], torch.full((int(mixed_pseudo.sum()), 3), 0.25))
    with pytest.raises(ValueError, match="sum above 1"):
        JoinedBatches(clips, [Extra(labelled, "mixup", p=0.7), Extra(pseudo, "mixup", p=0.7)])


def test_group_sampler_reaches_every_group():
    groups = [np.array([0]), np.array([1, 2, 3, 4, 5, 6, 7, 8]), np.array([9])]
    rows = [r for r, _ in GroupSampler(groups, 3000, seed=0)]
    counts = np.bincount(rows, minlength=10)
    assert counts[0] > 800 and counts[9] > 800  # a class with one window comes up as often as a common one
