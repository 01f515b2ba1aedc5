"""Training: run folder contents, resume after a crash mid-epoch, DDP with torchrun (gloo, CPU)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

import src.train as train_mod
from src.data.splits import is_full_fit
from tests.pipeline import REPO

RUN_FILES = ["best.pt", "last.pt", "oof.parquet", "metrics.json", "log.csv", "config.yaml"]


def test_run_folder_has_every_file(tiny_pipeline):
    run = tiny_pipeline.runs_dir / "tiny_a" / "fold0"
    for name in RUN_FILES:
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("fold", "best_epoch", "auc", "cmap", "per_class_auc", "duration_s", "git_commit", "config_hash"):
        assert key in metrics
    assert 0.0 <= metrics["auc"] <= 1.0 and metrics["backbone"] == "mobilenetv3_small_100"
    oof = pl.read_parquet(run / "oof.parquet")
    classes = list(__import__("omegaconf").OmegaConf.load(run / "config.yaml").classes)
    assert oof.columns[:6] == ["filename", "chunk", "start_s", "end_s", "primary_label", "secondary_labels"]
    assert oof.columns[6:] == classes and oof.height == metrics["n_val_chunks"]
    assert len(pl.read_csv(run / "log.csv")) == 2
    state = torch.load(run / "best.pt", weights_only=True)  # loads without pickle
    assert "model" in state


def test_no_leftover_temporary_files(tiny_pipeline):
    assert not list(tiny_pipeline.runs_dir.rglob("*.tmp"))


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_resume_after_crash_mid_epoch_matches_uninterrupted(tiny_pipeline, monkeypatch):
    common = ("model=mobilenetv3_small", "train.epochs=3")
    full = tiny_pipeline.train_config("exp=resume_full", *common)
    train_mod.train(full)

    calls = {"n": 0}
    real_loss = train_mod.loss_fn
    steps = len(pl.read_csv(tiny_pipeline.runs_dir / "resume_full" / "fold0" / "log.csv"))
    assert steps == 3

    def crashing_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # some way into the second epoch (4 steps per epoch)
            raise KeyboardInterrupt("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "loss_fn", crashing_loss)
    crashed = tiny_pipeline.train_config("exp=resume_crash", *common)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(crashed)
    monkeypatch.setattr(train_mod, "loss_fn", real_loss)
    assert len(pl.read_csv(tiny_pipeline.runs_dir / "resume_crash" / "fold0" / "log.csv")) == 1
    train_mod.train(tiny_pipeline.train_config("exp=resume_crash", "resume=true", *common))

    a = _weights(tiny_pipeline.runs_dir / "resume_full" / "fold0" / "last.pt")
    b = _weights(tiny_pipeline.runs_dir / "resume_crash" / "fold0" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_ddp_two_processes_gloo(tiny_pipeline):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port: another torchrun on this machine may hold a fixed one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [torchrun, "--nproc_per_node=2", f"--master_port={port}", "-m", "src.train", *tiny_pipeline.overrides,
           "exp=ddp", "train.epochs=1", "train.threads=1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tiny_pipeline.runs_dir / "ddp" / "fold0"
    for name in RUN_FILES:
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_val_chunks"] == pl.read_parquet(run / "oof.parquet").height
    assert proc.stdout.count("best epoch") == 1  # rank 0 alone reports and writes


def test_train_stops_early_with_messages_that_say_what_to_do(tiny_competition, tmp_path):
    """Before any work (issue 10, items 4 and 7): a missing cache names the data.cache_dir given, `fold=abc`
    says to pass a fold number, and a cache prepared at another sample rate names the setting."""
    from conftest import prepare_config

    from src.data.audio_cache import CacheSettingsError
    from src.prepare import prepare

    missing = tmp_path / "no_cache_here"
    with pytest.raises(FileNotFoundError, match=f"data.cache_dir={missing}"):
        train_mod.train(prepare_config(tiny_competition, missing, "train.report=false"))
    cache = tmp_path / "cache"
    prepare(prepare_config(tiny_competition, cache))
    with pytest.raises(ValueError, match=r"fold='abc': pass a fold number 0\.\.4"):
        train_mod.train(prepare_config(tiny_competition, cache, "fold=abc"))
    with pytest.raises(CacheSettingsError, match=r"audio\.sample_rate=32000 \(now 16000\)"):
        train_mod.train(prepare_config(tiny_competition, cache, "audio.sample_rate=16000"))


# --- fold=all: full-data fits --------------------------------------------------------------------------------

def test_full_data_fit_per_seed_with_the_epochs_of_the_cv_runs(tiny_pipeline, tmp_path):
    """`fold=all seeds=[42,7]`: one fit per seed on every non-silent chunk (runs/<exp>/foldall for the run's seed,
    foldall_seed7 for the other), for the median best epoch + 1 of the CV folds, no validation and no oof.parquet."""
    runs = shutil.copytree(tiny_pipeline.runs_dir, tmp_path / "runs")
    cv = json.loads((runs / "tiny_a" / "fold0" / "metrics.json").read_text())
    cfg = tiny_pipeline.train_config("exp=tiny_a", "model=mobilenetv3_small", f"runs_dir={runs}", "fold=all",
                                     "seeds=[42,7]")
    results = train_mod.train_all(cfg)
    chunks = pl.read_parquet(Path(cfg.data.cache_dir) / "chunks.parquet").filter(~pl.col("silent"))
    assert [r["seed"] for r in results] == [42, 7]
    for name, result in zip(["foldall", "foldall_seed7"], results, strict=True):
        run = runs / "tiny_a" / name
        assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "last.pt", "log.csv", "metrics.json"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics == result and metrics["fold"] == "all" and metrics["full_data"] is True
        assert metrics["epochs_run"] == metrics["epochs"] == cv["best_epoch"] + 1 and "fold0" in metrics["epochs_from"]
        assert metrics["n_train_chunks"] == chunks.height  # every recording, nothing held out
        saved = __import__("omegaconf").OmegaConf.load(run / "config.yaml")
        assert saved.fold == "all" and saved.seed == result["seed"] and saved.exp == "tiny_a"
        assert len(pl.read_csv(run / "log.csv")) == metrics["epochs"]
        assert torch.load(run / "best.pt", weights_only=True)["epoch"] == metrics["epochs"] - 1
    weights = [torch.load(runs / "tiny_a" / n / "best.pt", weights_only=True)["model"] for n in ("foldall", "foldall_seed7")]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the seeds differ


def test_full_data_fit_epochs_given_or_missing(tiny_pipeline, tmp_path):
    cfg = tiny_pipeline.train_config("exp=nothing_yet", f"runs_dir={tmp_path}", "fold=all")
    with pytest.raises(FileNotFoundError, match=r"no CV run.*full_fit.epochs=N"):
        train_mod.train_all(cfg)
    [result] = train_mod.train_all(tiny_pipeline.train_config("exp=nothing_yet", f"runs_dir={tmp_path}", "fold=all",
                                                              "full_fit.epochs=1"))
    assert result["epochs_run"] == 1 and result["epochs_from"] == "full_fit.epochs"
    assert (tmp_path / "nothing_yet" / "foldall" / "best.pt").exists()


def test_fold_values():
    assert is_full_fit("all") and not is_full_fit(0) and not is_full_fit("abc")


def test_every_epoch_scores_the_validation_soundscapes(tiny_pipeline):
    run = tiny_pipeline.runs_dir / "tiny_a" / "fold0"
    log = pl.read_csv(run / "log.csv")
    assert {"soundscape_auc", "soundscape_cmap", "auc", "cmap"} <= set(log.columns)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["select"] == "clip" and 0.0 <= metrics["soundscape_cmap"] <= 1.0
    oof = pl.read_parquet(run / "oof_soundscape.parquet")
    assert oof.columns[:3] == ["row_id", "filename", "labels"] and oof.height == 4 * 6  # tiny: 4 x 30 s
    assert oof["row_id"].str.starts_with("val_f0_").all()


@pytest.mark.parametrize(("select", "best_epoch"), [("clip", 0), ("soundscape", 1)])
def test_select_picks_best_pt_by_clip_or_soundscape(tiny_pipeline, monkeypatch, select, best_epoch):
    """Scripted scores (no training): clip AUC peaks at epoch 0, soundscape AUC at epoch 1."""
    clip, sound = iter([0.9, 0.5, 0.6]), iter([0.5, 0.8, 0.6, 0.7])
    monkeypatch.setattr(train_mod, "train_one_epoch", lambda run, epoch: 0.0)
    monkeypatch.setattr(train_mod, "evaluate_chunks", lambda run, model: {"val_loss": 0.1, "auc": next(clip),
                                                                          "cmap": 0.5})
    monkeypatch.setattr(train_mod, "evaluate_soundscapes", lambda *a, **k: {"soundscape_auc": next(sound),
                                                                            "soundscape_cmap": 0.5})
    metrics = train_mod.train(tiny_pipeline.train_config(f"exp=select_{select}", "train.epochs=3",
                                                         f"train.select={select}"))
    assert metrics["best_epoch"] == best_epoch and metrics["select"] == select
    log = pl.read_csv(tiny_pipeline.runs_dir / f"select_{select}" / "fold0" / "log.csv")
    assert log["soundscape_auc"].to_list() == [0.5, 0.8, 0.6]


def test_select_rejects_an_unknown_choice(tiny_pipeline, monkeypatch):
    monkeypatch.setattr(train_mod, "train_one_epoch", lambda run, epoch: 0.0)
    with pytest.raises(ValueError, match="train.select='oof'"):
        train_mod.train(tiny_pipeline.train_config("exp=select_bad", "train.epochs=1", "train.select=oof"))
