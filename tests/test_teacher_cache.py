"""Regression tests of the teacher cache's reliability (issue 22): `src.teacher`'s workers end with it (also where
prctl cannot tell them), the command itself outlives the shell that started it, a consolidation cut short leaves no
table over the arrays of another build, and every message that sends the user to a command names one that
composes and reaches the same data and cache."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import make_tiny_competition

from src.config import compose
from src.data.teacher_cache import _read_cache, cache_dir, load_cache
from src.folds import write_folds
from src.prepare import prepare
from src.probe import train_probe
from src.teacher import build_cache, consolidate, make_jobs, valset_jobs
from src.training.distill import teacher_targets
from tests.fake_teacher import write_fake_perch
from tests.pipeline import compose_named

REPO = Path(__file__).resolve().parents[1]
COMMAND_CONFIG = {"teacher": "teacher", "prepare": "train", "folds": "train"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, list[str]]:
    """A prepared 2-class competition with folds and the tiny Perch stand-in: (folder, src.teacher overrides).
    The data set is named `xc45` over `data=birdclef2025` (a name without a config file, as in the docs)."""
    tmp = tmp_path_factory.mktemp("teacher_cache")
    root = make_tiny_competition(tmp / "comp", n_classes=2, per_class=2, seconds=9.0)
    model, labels = write_fake_perch(tmp / "perch", ["bird0", "bird1"])
    overrides = ["data=birdclef2025", f"data.root={root}", "data.name=xc45", f"data.cache_dir={tmp / 'cache'}",
                 f"folds.dir={tmp / 'folds'}", "folds.n=2", "prepare.workers=1", "teacher=perch",
                 f"teacher.path={model}", f"teacher.labels={labels}", "teacher_cache.workers=1",
                 "teacher_cache.mix.copies=0", "teacher_cache.sources=[chunks]", "train.soundscape_cv=false"]
    cfg = compose_named("teacher", *overrides)
    write_folds(cfg, report=False)
    prepare(cfg)
    return tmp, overrides


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait(condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.2)
    return condition()


# ---- 6. killing src.teacher stops its workers, and only its workers ----------------------------------------------

SLOW_TEACHER = textwrap.dedent("""
    import ctypes, os, sys, time
    from pathlib import Path
    import numpy as np
    from src import teacher

    class SlowTeacher:  # every call takes a minute: the workers are mid-job when their parent is killed
        sample_rate = 32000

        def __init__(self, spec, model, threads):
            Path(sys.argv[1], f"{os.getpid()}.worker").write_text("")

        def __call__(self, waves):
            time.sleep(60)

    def no_prctl(*args, **kwargs):  # a C library without prctl, as on macOS
        raise OSError("no prctl here")

    teacher.TeacherModel = SlowTeacher
    if sys.argv[2] == "no-prctl":
        ctypes.CDLL = no_prctl
    folder = Path(sys.argv[1])
    np.save(folder / "rec.npy", np.zeros(5 * 32000, np.int16))
    jobs = [teacher.Job("chunks", str(folder / "rec.npy"), f"rec{k}.ogg", str(folder / f"part{k}.npz"), [0], [0])
            for k in range(2)]
    teacher.run_jobs(jobs, {"name": "slow", "model_file": "none", "mapping": []}, workers=2, threads=1)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("libc", ["prctl", "no-prctl"])
def test_killed_teacher_leaves_no_worker_running_mid_job(tmp_path, libc):
    parent = subprocess.Popen([sys.executable, "-c", SLOW_TEACHER, str(tmp_path), libc], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        assert _wait(lambda: len(list(tmp_path.glob("*.worker"))) == 2, 60), "the pool never started"
        workers = [int(p.stem) for p in tmp_path.glob("*.worker")]
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait(lambda: not any(map(_alive, workers)), 5), f"workers {workers} outlived src.teacher"
        assert not list(tmp_path.glob("part*.npz"))
    finally:
        parent.kill()
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_single_process_teacher_outlives_the_shell_that_started_it(prepared, tmp_path):
    folder, overrides = prepared
    command = shlex.join([sys.executable, "-m", "src.teacher", *overrides, "teacher.name=nohup"])
    log = tmp_path / "teacher.log"
    # the shell exits at once, as after `nohup python -m src.teacher ... &` and a logout: src.teacher is orphaned
    shell = subprocess.run(["sh", "-c", f"{command} > {shlex.quote(str(log))} 2>&1 & echo $!"], cwd=REPO,
                           capture_output=True, text=True, check=True)
    pid = int(shell.stdout)
    try:
        _wait(lambda: not _alive(pid), 120)
        cache = folder / "cache" / "teacher" / "nohup" / "windows.parquet"
        assert cache.exists(), f"src.teacher died with its shell:\n{log.read_text()[-2000:]}"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


# ---- a consolidation cut short (a kill, a full disk) ----------------------------------------------------------

def test_a_consolidation_cut_short_leaves_no_table_over_other_arrays(prepared, monkeypatch):
    _, overrides = prepared
    cfg = compose_named("teacher", *overrides, "teacher.name=cut")
    build_cache(cfg)
    full = load_cache(cfg)[0].height
    from src.data.competition import load_competition

    jobs = make_jobs(cfg, load_competition(cfg.data.root, cfg.data.layout), cache_dir(cfg))
    save, calls = np.save, []

    def save_then_fail(*args, **kwargs):  # the second array (scores.npy) is never written
        calls.append(1)
        if len(calls) > 1:
            raise OSError("No space left on device")
        return save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_fail)
    with pytest.raises(OSError, match="No space"):
        consolidate(jobs[:1], cache_dir(cfg))  # a build of other windows than the cache on disk
    monkeypatch.setattr(np, "save", save)
    with pytest.raises(FileNotFoundError, match="build it first with `python -m src.teacher"):
        load_cache(cfg)
    build_cache(cfg)  # the rerun finishes the cache from its parts
    windows, emb, scores, _ = load_cache(cfg)
    assert windows.height == full == len(emb) == len(scores)


# ---- 8. the commands the messages name -------------------------------------------------------------------------

def suggested(message: str) -> tuple[str, list[str]]:
    """(command module, overrides) of the `python -m src.<x> ...` in `message`; a `<a | b>` placeholder takes a."""
    found = re.search(r"`python -m src\.(\w+)((?: [^`]*)?)`", message)
    assert found, f"no command in: {message}"
    return found.group(1), shlex.split(re.sub(r"<\s*([\w.-]+)[^<>]*>", r"\1", found.group(2)))


def assert_reaches(message: str, cfg, teacher: str | None = None) -> None:
    """The message's command composes and reaches cfg's data set and cache (and the teacher cache `teacher`)."""
    module, overrides = suggested(message)
    composed = compose(COMMAND_CONFIG[module], overrides)
    for key in ("name", "root", "cache_dir", "layout"):
        assert str(composed.data[key]) == str(cfg.data[key]), f"data.{key} differs: {message}"
    if teacher is not None:
        assert str(composed.teacher.name) == teacher and composed.teacher.path, message


def test_a_missing_cache_names_the_command_that_builds_it(prepared):
    _, overrides = prepared
    cfg = compose_named("teacher", *overrides, "teacher.name=perch")
    with pytest.raises(FileNotFoundError) as err:
        load_cache(cfg)
    assert_reaches(str(err.value), cfg, "perch")
    train = compose_named("train", *overrides[:5], "distill.teacher=perch")
    with pytest.raises(FileNotFoundError) as err:
        teacher_targets(train, pl.DataFrame(), [])
    assert_reaches(str(err.value), train)
    custom = compose_named("teacher", *overrides, "teacher.name=my_perch")  # a cache named after no config file
    with pytest.raises(FileNotFoundError, match="teacher.name=my_perch") as err:
        load_cache(custom)
    assert_reaches(str(err.value), custom, "my_perch")


def test_a_re_prepared_chunk_index_names_the_command_that_updates_the_cache(prepared, tmp_path):
    folder, overrides = prepared
    cfg = compose_named("teacher", *overrides, f"runs_dir={tmp_path / 'runs'}")
    build_cache(cfg)
    index = folder / "cache" / "chunks.parquet"
    chunks = pl.read_parquet(index)
    try:  # the chunks start elsewhere than when the cache was built (a re-prepare without src.teacher)
        chunks.with_columns(pl.col("start_s") + 0.5).write_parquet(index)
        with pytest.raises(ValueError, match="start elsewhere") as err:
            train_probe(cfg)
        assert_reaches(str(err.value), cfg, "perch")
        settings = cache_dir(cfg) / "settings.json"
        text = settings.read_text()
        settings.write_text(text.replace('"bird0"', '"bird9"'))  # a cache of other classes
        _read_cache.cache_clear()
        with pytest.raises(ValueError, match="other classes") as err:
            train_probe(cfg)
        assert_reaches(str(err.value), cfg, "perch")
        settings.write_text(text)
    finally:
        chunks.write_parquet(index)
        _read_cache.cache_clear()


def test_missing_prepare_and_folds_name_commands_for_this_data(prepared, tmp_path, caplog):
    _, overrides = prepared
    cfg = compose_named("teacher", *overrides, f"data.cache_dir={tmp_path / 'empty'}", f"folds.dir={tmp_path}")
    with pytest.raises(FileNotFoundError, match="chunks.parquet not found") as err:
        build_cache(cfg)
    assert_reaches(str(err.value), cfg)
    assert valset_jobs(cfg, ["bird0", "bird1"], tmp_path) == []
    module, folds = suggested(caplog.text)
    assert module == "folds"
    assert_reaches(caplog.text, cfg)
    assert str(compose("train", folds).folds.dir) == str(tmp_path)
