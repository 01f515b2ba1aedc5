"""Training with pseudo-labelled soundscape windows: batch and mixup joining, the label-mass sampler, the
noisy-student switch, and tiny runs that never validate on a pseudo-labelled window."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from omegaconf import OmegaConf

import src.train as train_mod
from src.data.audio_cache import load_soundscape_index
from src.data.dataset import Extra, JoinedBatches
from src.data.pseudo_labels import KEYS, PseudoLabelError
from src.data.samplers import MassSampler
from src.pseudo import write_pseudo
from src.training.batches import extra_batch_sizes


class _Loader(list):
    """A list of batches standing in for a DataLoader (with the sampler JoinedBatches reads the epoch from)."""

    def __init__(self, batches, sampler):
        super().__init__(batches)
        self.sampler = sampler


def _batch(n, value, c=3):
    return (torch.full((n, 10), float(value)), torch.full((n, c), value / 10), torch.ones(n, c), torch.ones(n))


def test_batch_mode_appends_pseudo_windows():
    clips = _Loader([_batch(6, 1), _batch(6, 1), _batch(6, 1)], MassSampler(np.ones(3), 0, 0, 3, 0))
    windows = _Loader([_batch(2, 5)], MassSampler(np.ones(2), 0, 0, 2, 0))
    joined = list(JoinedBatches(clips, [Extra(windows, "batch")]))
    assert len(joined) == 3  # the windows' loader restarts when it runs out
    wave, target, _, _ = joined[0]
    assert wave.shape == (8, 10) and (wave[:6] == 1).all() and (wave[6:] == 5).all()
    assert torch.allclose(target[6:], torch.full((2, 3), 0.5))


def test_mixup_mode_mixes_waves_and_combines_labels():
    torch.manual_seed(0)
    clips = _Loader([_batch(4, 1)], MassSampler(np.ones(1), 0, 0, 1, 0))
    windows = _Loader([_batch(4, 5)], MassSampler(np.ones(1), 0, 0, 1, 0))
    wave, target, _, _ = next(iter(JoinedBatches(clips, [Extra(windows, "mixup", p=1.0, alpha=2.0, label="max")])))
    assert wave.shape == (4, 10) and ((wave > 1) & (wave < 5)).all()  # every clip mixed
    assert torch.allclose(target, torch.full((4, 3), 0.5))  # max(0.1, 0.5)
    wave, target, _, _ = next(iter(JoinedBatches(clips, [Extra(windows, "mixup", p=1.0, alpha=2.0, label="weighted")])))
    lam = (5 - wave[:, 0]) / 4
    assert torch.allclose(target[:, 0], lam * 0.1 + (1 - lam) * 0.5, atol=1e-6)
    wave, _, _, _ = next(iter(JoinedBatches(clips, [Extra(windows, "mixup", p=0.0)])))
    assert (wave == 1).all()  # p 0: nothing mixed
    with pytest.raises(ValueError, match="pseudo.mode"):
        Extra(windows, "both", name="pseudo")


def test_mass_sampler_prefers_windows_with_labels():
    mass = np.array([0.0, 0.0, 2.0, 0.0])
    rows = [r for r, _ in MassSampler(mass, power=1.0, floor=0.05, epoch_size=2000, seed=0)]
    counts = np.bincount(rows, minlength=4)
    assert counts[2] > 0.85 * 2000 and counts.sum() == 2000
    uniform = np.bincount([r for r, _ in MassSampler(mass, 0.0, 0.05, 2000, 0)], minlength=4)
    assert uniform.min() > 350
    with pytest.raises(ValueError, match="floor"):
        MassSampler(np.zeros(3), 1.0, 0.0, 10, 0)


def test_noisy_student_merges_the_noise(tiny_pipeline):
    cfg = tiny_pipeline.train_config("pseudo.noisy_student=true", "pseudo.noise.model.drop_path_rate=0.3")
    noisy = train_mod.noisy_student(cfg)
    assert noisy.model.drop_path_rate == 0.3 and noisy.aug.spec_augment.p == cfg.pseudo.noise.aug.spec_augment.p
    assert train_mod.noisy_student(tiny_pipeline.train_config()).model.drop_path_rate == cfg.model.drop_path_rate


@pytest.fixture(scope="module")
def pseudo_file(tiny_pipeline, tmp_path_factory):
    """Random soft labels for every window of the tiny pipeline's unlabelled soundscapes."""
    index = load_soundscape_index(tiny_pipeline.root / "cache").sort("filename", "window")
    classes = json.loads((tiny_pipeline.root / "cache" / "manifest.json").read_text())["classes"]
    probs = np.random.default_rng(0).uniform(0, 1, (index.height, len(classes))).astype(np.float32)
    out = tmp_path_factory.mktemp("pseudo") / "random.parquet"
    write_pseudo(out, index.select(KEYS), probs, {"teacher": "random", "round": 0, "classes": classes,
                                                 "competition": "birdclef-2025", "pseudo_auc": None})
    return out


@pytest.mark.parametrize("mode", ["batch", "mixup"])
def test_training_with_pseudo_labels_never_validates_on_them(tiny_pipeline, pseudo_file, mode):
    cfg = tiny_pipeline.train_config(f"exp=pseudo_{mode}", f"pseudo.path={pseudo_file}", f"pseudo.mode={mode}",
                                     "pseudo.sampler.power=1", "pseudo.include_silent=true", "train.epochs=1",
                                     "pseudo.noisy_student=true")
    metrics = train_mod.train(cfg)
    run = tiny_pipeline.runs_dir / f"pseudo_{mode}" / "fold0"
    oof = pl.read_parquet(run / "oof.parquet")
    soundscapes = set(load_soundscape_index(tiny_pipeline.root / "cache")["filename"])
    assert not set(oof["filename"]) & soundscapes and oof.height == metrics["n_val_chunks"]
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.pseudo.path == str(pseudo_file) and saved.model.drop_path_rate == cfg.pseudo.noise.model.drop_path_rate


def test_pseudo_file_of_another_competition_stops_training(tiny_pipeline, pseudo_file):
    cfg = tiny_pipeline.train_config("exp=pseudo_bad", f"pseudo.path={pseudo_file}", "data.competition=birdclef-2024")
    with pytest.raises(PseudoLabelError, match="competition"):
        train_mod.train(cfg)


def test_pseudo_ratio_must_leave_clips_and_windows(tiny_pipeline, pseudo_file):
    with pytest.raises(ValueError, match="ratio"):
        extra_batch_sizes(tiny_pipeline.train_config(f"pseudo.path={pseudo_file}", "pseudo.ratio=1.0"))
    assert extra_batch_sizes(tiny_pipeline.train_config(f"pseudo.path={pseudo_file}")).get("pseudo", 0) == 4
