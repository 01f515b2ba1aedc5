"""Regression tests of the hostile- and unlucky-input defects of the teacher, pseudo-label and self-training stages
(one section per defect; the corrupt teacher file in a kernel is tested in test_kernel_teacher.py)."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import make_tiny_competition, prepare_config
from fake_runs import fake_classes, make_fake_run
from omegaconf import OmegaConf

import src.train as train_mod
from src import leaderboard, pseudo, selftrain
from src.data.audio_cache import load_soundscape_index
from src.data.competition import load_competition
from src.data.pseudo_labels import load_pseudo
from src.data.splits import FoldsError
from src.data.tables import TableError
from src.data.teacher_cache import cached_rows, load_cache
from src.folds import write_folds
from src.infer.io import RunLockedError, run_lock
from src.prepare import prepare
from src.probe import check_settings, train_probe
from src.push import PushError, credentials
from src.teacher import build_cache, model_files
from tests.fake_teacher import write_fake_perch
from tests.pipeline import compose_named

REPO = Path(__file__).resolve().parents[1]


# ---- 2. the teacher cache after a re-prepare ---------------------------------------------------------------

def test_teacher_cache_embeds_again_the_recordings_whose_chunks_changed(tmp_path, capsys):
    root = make_tiny_competition(tmp_path / "comp", n_classes=2, per_class=2, seconds=9.0)
    model, labels = write_fake_perch(tmp_path / "perch", ["bird0", "bird1"])
    overrides = [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", "prepare.workers=1", "teacher=perch",
                 f"teacher.path={model}", f"teacher.labels={labels}", "teacher_cache.workers=1",
                 "teacher_cache.mix.copies=0"]
    prepare(compose_named("teacher", *overrides))
    build_cache(compose_named("teacher", *overrides))
    before = pl.read_parquet(tmp_path / "cache" / "chunks.parquet").height
    capsys.readouterr()
    cfg = compose_named("teacher", *overrides, "prepare.overlap_s=2.5")
    prepare(cfg)  # more chunks per recording: every part was embedded from other chunks
    chunks = pl.read_parquet(tmp_path / "cache" / "chunks.parquet")
    assert chunks.height > before
    build_cache(cfg)
    assert "part(s) embedded from other chunks (a re-prepare) are embedded again" in capsys.readouterr().out
    windows, _, _, _ = load_cache(cfg)
    rows = cached_rows(windows, chunks, copies=False)  # every chunk is there, at its new start
    assert rows.height == chunks.height
    # a cache whose chunks start elsewhere than the index's (re-prepared without src.teacher) is refused
    moved = windows.with_columns(pl.when(pl.col("source") == "chunks").then(pl.col("start_s") + 0.5)
                                 .otherwise(pl.col("start_s")).alias("start_s"))
    with pytest.raises(ValueError, match="start elsewhere.*rerun `python -m src.teacher"):
        cached_rows(moved, chunks, copies=False)


# ---- 3. one run folder, one writer ---------------------------------------------------------------------------

def _lock_holder(folder: Path) -> subprocess.Popen:
    """A process that takes run_lock(folder) and keeps it (until killed); returned once it holds it."""
    code = f"import time; from src.infer.io import run_lock\nwith run_lock({str(folder)!r}): time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    deadline = time.time() + 30
    while not ((folder / ".lock").exists() and (folder / ".lock").read_text() == str(holder.pid)):
        assert time.time() < deadline and holder.poll() is None, "the lock holder did not start"
        time.sleep(0.05)
    return holder


def test_run_lock_refuses_a_live_holder_and_clears_a_dead_one(tmp_path):
    folder = tmp_path / "runs" / "dup" / "fold0"
    holder = _lock_holder(folder)
    try:
        with pytest.raises(RunLockedError, match=f"{folder}.*process {holder.pid}"), run_lock(folder):
            pass
    finally:
        holder.kill()  # SIGKILL: its .lock file stays behind
        holder.wait()
    assert (folder / ".lock").read_text() == str(holder.pid)
    with run_lock(folder):  # the holder is dead: its lock file is taken
        assert (folder / ".lock").read_text() == str(os.getpid())
    assert not (folder / ".lock").exists()


def test_a_second_training_into_a_locked_run_folder_writes_nothing(tiny_pipeline):
    folder = tiny_pipeline.runs_dir / "dup8" / "fold0"
    holder = _lock_holder(folder)
    try:
        with pytest.raises(RunLockedError, match=f"dup8.*process {holder.pid}"):
            train_mod.train(tiny_pipeline.train_config("exp=dup8", "seed=2", "train.epochs=1"))
    finally:
        holder.kill()
        holder.wait()
    assert not (folder / "config.yaml").exists() and not (folder / "log.csv").exists()


def test_resumed_run_reports_the_time_of_every_piece(tiny_pipeline):
    first = train_mod.train(tiny_pipeline.train_config("exp=pieces", "train.epochs=1"))
    last = torch.load(tiny_pipeline.runs_dir / "pieces" / "fold0" / "last.pt", weights_only=True)
    assert last["elapsed_s"] > 0
    second = train_mod.train(tiny_pipeline.train_config("exp=pieces", "train.epochs=2", "resume=true"))
    assert second["epochs_run"] == 2 and second["duration_s"] >= last["elapsed_s"]
    assert second["duration_s"] > first["duration_s"] - 1.0


# ---- 4. self-training runs are named after their loop --------------------------------------------------------

def _student_run(folder: Path, labels: Path, digest: str | None) -> Path:
    folder.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"pseudo": {"path": str(labels)}}), folder / "config.yaml")
    (folder / "metrics.json").write_text(json.dumps({"pseudo_sha256": digest} if digest else {}))
    return folder


def test_student_runs_are_named_after_the_loop_and_resumed_only_on_their_labels(tmp_path):
    from src.infer.runtimes import file_digest

    loop = OmegaConf.create({"name": "stu"})
    assert selftrain.student_run(loop, 1, OmegaConf.create({"name": "probe"})) == "stu_r1_probe"
    labels = tmp_path / "stu_r0.parquet"
    labels.write_bytes(b"labels of loop stu")
    assert selftrain.reusable(_student_run(tmp_path / "a", labels, file_digest(labels)), labels)
    assert not selftrain.reusable(_student_run(tmp_path / "b", tmp_path / "stk_r0.parquet", file_digest(labels)),
                                  labels)  # trained on another loop's labels
    old = _student_run(tmp_path / "c", labels, "0" * 64)
    assert not selftrain.reusable(old, labels)  # same path, other content (the labels were written again)


@pytest.mark.parametrize("override, message", [("rounds=-1", "rounds=-1: at least 1"),
                                                ("rounds=abc", "rounds='abc'"),
                                                ("select=best", "select=best"),
                                                ("min_gain=-0.1", "min_gain"), ("min_gain=abc", "min_gain='abc'")])
def test_selftrain_settings_are_checked_before_round_0(tmp_path, override, message):
    cfg = compose_named("selftrain", "round0=anything", f"ensembles_dir={tmp_path / 'ensembles'}", override)
    with pytest.raises(ValueError, match=message):
        selftrain.selftrain(cfg)
    assert not (tmp_path / "ensembles").exists()


def test_stage_overrides_reach_only_the_stages_that_have_the_key():
    overrides = ["folds.n=3", "probe.background='jura_*'", "threads=1", "data=demo", "experiment=tiny",
                 "+extra.key=1"]
    assert selftrain.stage_keys("train", overrides) == ["folds.n=3", "data=demo", "experiment=tiny", "+extra.key=1"]
    assert selftrain.stage_keys("teacher", overrides) == ["folds.n=3", "probe.background='jura_*'", "data=demo",
                                                           "experiment=tiny", "+extra.key=1"]
    assert "folds.n=3" not in selftrain.stage_keys("pseudo", overrides)
    assert "threads=1" in selftrain.stage_keys("pseudo", overrides)


def test_a_stage_override_no_stage_takes_is_refused(tmp_path):
    cfg = compose_named("selftrain", "round0=anything", f"ensembles_dir={tmp_path / 'ensembles'}",
                        "stage_overrides=['fodls.n=3']")
    with pytest.raises(ValueError, match=r"fodls.n=3.*fit no stage"):
        selftrain.selftrain(cfg)


def test_recipe_folds_follow_the_folds_file():
    cfg = compose_named("selftrain", "recipe=birdnet_probe", "round0=x", "stage_overrides=['folds.n=3']")
    assert cfg.folds is None and selftrain.loop_folds(cfg) == [0, 1, 2]
    assert selftrain.loop_folds(compose_named("selftrain", "recipe=demo")) == [0]


# ---- 5. pseudo-label values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [({"power": -1}, "power=-1"), ({"smoothing": [0, 0]}, "smoothing"),
                                                ({"smoothing": [1, -1, 1]}, "smoothing"),
                                                ({"threshold": 2}, "threshold=2"),
                                                ({"threshold": {"default": 0.1, "a": 1.5}}, "threshold"),
                                                ({"temperature": 0}, "temperature")])
def test_bad_transforms_are_refused_up_front(override, message):
    tcfg = OmegaConf.create({"smoothing": None, "temperature": 1.0, "power": 1.0, "threshold": 0.0} | override)
    with pytest.raises(pseudo.PseudoLabelError, match=message):
        pseudo.check_transform(tcfg, ["a", "b"])


def _pseudo_file(pipe, folder: Path, fill: float) -> Path:
    index = load_soundscape_index(pipe.root / "cache").sort("filename", "window")
    classes = json.loads((pipe.root / "cache" / "manifest.json").read_text())["classes"]
    probs = np.full((index.height, len(classes)), fill, np.float32)
    out = folder / f"labels_{fill}.parquet"
    pseudo.write_pseudo(out, index.select(pseudo.KEYS), probs, {"teacher": "t", "round": 0, "classes": classes,
                                                                 "competition": "birdclef-2025", "pseudo_auc": None})
    return out


@pytest.mark.parametrize("fill", [4.1, float("nan")])
def test_out_of_range_pseudo_labels_stop_training_before_the_run_folder(tiny_pipeline, tmp_path, fill):
    path = _pseudo_file(tiny_pipeline, tmp_path, fill)
    with pytest.raises(pseudo.PseudoLabelError, match=f"{path.name}.*not in \\[0, 1\\]"):
        train_mod.train(tiny_pipeline.train_config("exp=badlabels", f"pseudo.path={path}"))
    assert not (tiny_pipeline.runs_dir / "badlabels").exists()


def test_a_truncated_pseudo_label_file_is_named(tiny_pipeline, tmp_path):
    path = _pseudo_file(tiny_pipeline, tmp_path, 0.5)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(TableError, match=f"{path}.*truncated or corrupt.*src.pseudo"):
        load_pseudo(path, json.loads((tiny_pipeline.root / "cache" / "manifest.json").read_text())["classes"],
                           "birdclef-2025")


# ---- 6. killing src.teacher stops its workers ----------------------------------------------------------------

WORKERS_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from src.teacher import die_with_parent

    def job(k):
        open(os.path.join(sys.argv[1], f"worker{k}.pid"), "w").write(str(os.getpid()))
        time.sleep(60)

    with ProcessPoolExecutor(2, initializer=die_with_parent) as pool:
        list(pool.map(job, range(2)))
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_teacher_workers_die_with_their_parent(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", WORKERS_SCRIPT, str(tmp_path)], cwd=REPO)
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("worker*.pid"))) < 2 and time.time() < deadline:
            time.sleep(0.2)
        workers = [int(p.read_text()) for p in tmp_path.glob("worker*.pid")]
        assert len(workers) == 2 and all(map(_alive, workers))
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while any(map(_alive, workers)) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, workers))
    finally:
        parent.kill()


def test_the_teacher_workers_ask_for_the_parent_death_signal():
    import inspect

    from src import teacher

    assert "die_with_parent(" in inspect.getsource(teacher._init_worker)


# ---- 7. public LB scores -------------------------------------------------------------------------------------

def _lb(tmp_path: Path, *args: str) -> int:
    return leaderboard.main([f"runs_dir={tmp_path / 'runs'}", f"ensembles_dir={tmp_path / 'ensembles'}",
                             f"out={tmp_path / 'out'}", f"lb_file={tmp_path / 'public_lb.csv'}", "lb", *args])


def test_impossible_public_lb_scores_are_refused(tmp_path, capsys):
    make_fake_run(tmp_path / "runs", "effnet", 0)
    for args, message in ((["exp=effnet", "score=2.0"], "between 0 and 1"), (["exp=effnet", "score=-1"], "between"),
                          (["exp=efnet", "score=0.8"], "efnet.*force=true")):
        assert _lb(tmp_path, *args) == 1
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "public_lb.csv").exists()
    assert _lb(tmp_path, "exp=efnet", "score=0.8", "force=true") == 0
    assert "efnet" in (tmp_path / "public_lb.csv").read_text()


# ---- 8. messages that help -----------------------------------------------------------------------------------

def test_a_missing_teacher_model_is_named_as_such(tmp_path):
    cfg = compose_named("teacher", "teacher=perch", f"teacher.path={tmp_path / 'MISSING.onnx'}")
    with pytest.raises(ValueError, match="MISSING.onnx: teacher model file not found"):
        model_files(cfg.teacher)


def test_a_missing_teacher_cache_names_an_option_that_exists(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"teacher=perch`"):
        load_cache(tmp_path / "teacher" / "perch")
    with pytest.raises(FileNotFoundError, match=r"teacher=<birdnet \| perch> teacher.name=nocache"):
        load_cache(tmp_path / "teacher" / "nocache")


@pytest.mark.parametrize("override, key", [("probe.hidden=-1", "probe.hidden"), ("probe.epochs=0", "probe.epochs"),
                                            ("probe.lr=0", "probe.lr"), ("probe.hidden=null", "probe.hidden"),
                                            ("probe.hidden=2.5", "probe.hidden"), ("probe.lr=inf", "probe.lr"),
                                            ("probe.lr=abc", "probe.lr='abc'"),
                                            ("probe.weight_decay=null", "probe.weight_decay")])
def test_probe_settings_are_checked_up_front(override, key):
    with pytest.raises(ValueError, match=key):
        check_settings(compose_named("teacher", override).probe)
    with pytest.raises(ValueError, match=key):  # before anything is read: no cache or chunk index is needed
        train_probe(compose_named("teacher", override, "data.cache_dir=/nonexistent"))


def test_a_truncated_oof_file_is_named(tmp_path):
    from src.ensemble import load_oof

    make_fake_run(tmp_path / "runs", "effnet", 0)
    oof = tmp_path / "runs" / "effnet" / "fold0" / "oof.parquet"
    (oof.parent / "best.pt").write_bytes(b"")  # a finished fold
    oof.write_bytes(oof.read_bytes()[:200])
    with pytest.raises(TableError, match=f"{oof}.*truncated or corrupt.*exp=effnet"):
        load_oof(tmp_path / "runs", ["effnet"], fake_classes(8))


def test_a_taxonomy_that_differs_from_the_sample_submission_is_reported(tmp_path, caplog):
    root = make_tiny_competition(tmp_path / "comp")
    taxonomy = pl.read_csv(root / "taxonomy.csv")
    taxonomy.with_columns(pl.col("primary_label").str.replace("bird1", "bird9")).write_csv(root / "taxonomy.csv")
    with caplog.at_level(logging.WARNING):
        comp = load_competition(root, "birdclef2025")
    assert any("taxonomy.csv: its labels differ" in p and "['bird1']" in p and "['bird9']" in p
               for p in comp.problems)


# ---- 9. folds of another data root, push ---------------------------------------------------------------------

def test_folds_of_another_data_root_are_not_overwritten(tmp_path, capsys):
    one = make_tiny_competition(tmp_path / "one")
    other = make_tiny_competition(tmp_path / "other", n_classes=4)
    common = [f"folds.dir={tmp_path / 'folds'}", "data.name=shared", "folds.n=2", "folds.group=filename"]
    path = write_folds(prepare_config(one, tmp_path / "c1", *common), report=False)
    before = path.read_text()
    with pytest.raises(FoldsError, match=f"{path}.*other recordings.*data.name=.*folds.force=true"):
        write_folds(prepare_config(other, tmp_path / "c2", *common), report=False)
    assert path.read_text() == before
    write_folds(prepare_config(one, tmp_path / "c1", *common, "folds.seed=1"), report=False)
    assert f"replacing {path}" in capsys.readouterr().out
    write_folds(prepare_config(other, tmp_path / "c2", *common, "folds.force=true"), report=False)


def test_push_credentials_message_names_where_kaggle_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(PushError, match=r"\.config/kaggle .*KAGGLE_CONFIG_DIR, else ~/\.kaggle when that folder "
                                        r"exists, else ~/\.config/kaggle"):
        credentials()
    kernel_yaml = (REPO / "configs" / "kernel.yaml").read_text()
    assert "~/.config/kaggle" in kernel_yaml and "KAGGLE_CONFIG_DIR" in kernel_yaml


def test_push_refuses_a_user_the_kernel_was_not_built_for(tmp_path):
    from src.kernel import check_push_user

    kernel = tmp_path / "kernels" / "demo" / "kernel"
    kernel.mkdir(parents=True)
    (kernel / "kernel-metadata.json").write_text(json.dumps({"id": "alice/birdclef-demo"}))
    check_push_user(kernel.parent, None)
    check_push_user(kernel.parent, "alice")
    with pytest.raises(SystemExit, match="built for Kaggle user 'alice', not 'bob'.*build name=demo user=bob"):
        check_push_user(kernel.parent, "bob")
    check_push_user(kernel.parent, "bob", dry_run=True)  # a dry run only warns
