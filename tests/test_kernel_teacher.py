"""The kernel with teacher members (the tiny Perch-signature teacher's zero-shot and probe runs beside a CNN
run): the teacher model file and the probe's plain arrays ship in the weights dataset, and the generated
script, run offline without `src`, reproduces the ensemble's submission within 1e-4."""
from __future__ import annotations

import json
import shutil
from importlib.metadata import version

import numpy as np
import pytest

from src import ensemble, kernel
from src.infer.submission import validate_file
from tests.pipeline import compose_named
from tests.test_kernel import (
    SLUG,
    assert_same_submission,
    copy_competition,
    copy_kernel,
    fallback_of,
    read_submission,
    run_script_alone,
)

NAME = "tiny_teacher_kernel"


@pytest.fixture(scope="module")
def built_teacher(tiny_pipeline, tiny_teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("kernel_teacher")
    data = [o for o in tiny_pipeline.overrides if o.startswith("data.")]
    ensemble.run(compose_named("ensemble", *data, f"runs_dir={tiny_pipeline.runs_dir}",
                               f"ensembles_dir={root / 'ensembles'}", "runs=[tiny_a,tinyperch,tinyperch_probe]",
                               f"name={NAME}", "ensemble.blend=weighted", "ensemble.fit.restarts=1"))
    wheels = root / "wheels"
    wheels.mkdir()
    (wheels / f"onnxruntime-{version('onnxruntime')}-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"stand-in")
    kernel.main(["build", f"name={NAME}", f"ensembles_dir={root / 'ensembles'}", f"kernels_dir={root / 'kernels'}",
                 "runtime=onnx", "fallback_runtime=torchscript", f"wheels_dir={wheels}", "user=tester",
                 f"slug={SLUG}", "check_windows=4"])
    return root / "kernels" / NAME, root / "ensembles" / NAME


def test_dataset_ships_the_teacher_and_the_probe(built_teacher):
    root, _ = built_teacher
    dataset = root / "dataset"
    assert (dataset / "teachers" / "tinyperch" / "perch_tiny.onnx").is_file()
    for run, files in (("tinyperch", {"teacher.json", "model.json"}),
                       ("tinyperch_probe", {"teacher.json", "model.json", "probe.npz"})):
        model_dir = dataset / "models" / run / "fold0"
        assert {p.name for p in model_dir.iterdir()} == files  # no torch export for a teacher run
        spec = json.loads((model_dir / "teacher.json").read_text())
        assert (model_dir / spec["model_file"]).resolve() == (dataset / "teachers" / "tinyperch" /
                                                              "perch_tiny.onnx").resolve()
        assert not spec["model_file"].startswith("/")
    probe = np.load(dataset / "models" / "tinyperch_probe" / "fold0" / "probe.npz")
    assert set(probe.files) == {"mean", "std", "w0", "b0", "w1", "b1"}  # one hidden layer (probe.hidden)
    config = json.loads((dataset / "ensemble.json").read_text())
    for diffs in config["export_max_abs_diff"].values():
        assert set(diffs) == {"tiny_a/fold0", "tinyperch/fold0", "tinyperch_probe/fold0"}
        assert all(v <= 1e-4 for v in diffs.values())


def test_teacher_kernel_offline_matches_the_ensemble(built_teacher, tiny_pipeline, tmp_path):
    root, ens_dir = built_teacher
    comp = copy_competition(tiny_pipeline, tmp_path / "comp")
    proc = run_script_alone(root, comp, tmp_path)
    out = tmp_path / "working" / "submission.csv"
    validate_file(out, comp / "sample_submission.csv")
    assert_same_submission(out, ens_dir / "submission.csv")
    # the zero-shot and probe runs of the one teacher model share one pass: one teacher forward per window
    assert "tinyperch, tinyperch_probe: 2 model(s) in one pass" in proc.stderr


def test_a_teacher_only_kernel_never_installs_the_cnn_runtime(built_teacher, tiny_pipeline, tmp_path):
    """With teacher members only, the CNN runtime is never asked for: here it is one this machine cannot run
    (openvino, no wheel, no fallback), and the kernel still runs both teacher members in one pass."""
    root, _ = built_teacher
    config = json.loads((root / "dataset" / "ensemble.json").read_text())
    only = copy_kernel(root, tmp_path / "only", runtime="openvino", fallback_runtime=None, wheels={},
                       members=[m for m in config["members"] if m["run"] in TEACHER_RUNS])
    proc = run_script_alone(only, copy_competition(tiny_pipeline, tmp_path / "comp"), tmp_path)
    assert "tinyperch, tinyperch_probe: 2 model(s) in one pass" in proc.stderr
    assert "2 of 2 member(s) blended" in proc.stderr
    validate_file(tmp_path / "working" / "submission.csv", tmp_path / "comp" / "sample_submission.csv")


# --- a broken teacher model file (issue 22, item 1) -----------------------------------------------------------

TEACHER_FILE = "teachers/tinyperch/perch_tiny.onnx"
TEACHER_RUNS = ("tinyperch", "tinyperch_probe")


def cnn_alone(root, tiny_pipeline, tmp_path):
    """The submission of the kernel with its CNN member alone (the teacher members taken out of ensemble.json)."""
    config = json.loads((root / "dataset" / "ensemble.json").read_text())
    alone = copy_kernel(root, tmp_path / "alone", members=[m for m in config["members"] if m["run"] not in TEACHER_RUNS])
    (tmp_path / "a").mkdir()
    run_script_alone(alone, copy_competition(tiny_pipeline, tmp_path / "comp_a"), tmp_path / "a")
    return tmp_path / "a" / "working" / "submission.csv"


def break_teacher(kernel_root, how: str):
    path = kernel_root / "dataset" / TEACHER_FILE
    if how == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_a_broken_teacher_file_drops_its_members_and_the_cnn_blends(built_teacher, tiny_pipeline, tmp_path, how):
    """The teacher model file truncated (or gone): its digest (recorded at build) fails, the two members on it
    are dropped, the log names the file, and the submission is the CNN member's alone, not the class prior."""
    root, _ = built_teacher
    spec = json.loads((root / "dataset" / "models" / "tinyperch" / "fold0" / "model.json").read_text())
    assert any(name.endswith("perch_tiny.onnx") for name in spec["files"])  # the teacher's digest is recorded
    kernel_root = copy_kernel(root, tmp_path / "kernel")
    break_teacher(kernel_root, how)
    (tmp_path / "b").mkdir()
    proc = run_script_alone(kernel_root, copy_competition(tiny_pipeline, tmp_path / "comp"), tmp_path / "b")
    problem = "missing" if how == "missing" else "truncated or corrupt"
    assert f"{TEACHER_FILE}: {problem}" in proc.stderr
    assert all(f"member {run} dropped" in proc.stderr for run in TEACHER_RUNS)
    assert "1 of 3 member(s) blended" in proc.stderr
    out = tmp_path / "b" / "working" / "submission.csv"
    assert_same_submission(out, cnn_alone(root, tiny_pipeline, tmp_path))
    _, values = read_submission(out)
    assert np.abs(values - fallback_of(root)).max() > 0.01


def test_a_teacher_that_fails_to_load_drops_only_its_members(built_teacher, tiny_pipeline, tmp_path):
    """A teacher model file that passes the digest check (here: a kernel built without its digest) yet cannot be
    loaded: its members are dropped at run time (one log line: they share one pass), the CNN member blends alone."""
    root, _ = built_teacher
    kernel_root = copy_kernel(root, tmp_path / "kernel")
    for run in TEACHER_RUNS:
        path = kernel_root / "dataset" / "models" / run / "fold0" / "model.json"
        spec = json.loads(path.read_text())
        spec["files"] = {k: v for k, v in spec["files"].items() if not k.endswith("perch_tiny.onnx")}
        path.write_text(json.dumps(spec))
    break_teacher(kernel_root, "truncated")
    (tmp_path / "b").mkdir()
    proc = run_script_alone(kernel_root, copy_competition(tiny_pipeline, tmp_path / "comp"), tmp_path / "b")
    assert "truncated or corrupt" not in proc.stderr  # the digest could not tell
    lines = [ln for ln in proc.stderr.splitlines() if "dropped" in ln and "tinyperch" in ln]
    assert len(lines) == 1  # both members share one pass: the model is loaded once and fails once
    assert lines[0].startswith("ERROR") and f"member(s) {', '.join(TEACHER_RUNS)} dropped" in lines[0]
    assert TEACHER_FILE in lines[0] and "TeacherError" in lines[0]
    assert "1 of 3 member(s) blended" in proc.stderr
    assert_same_submission(tmp_path / "b" / "working" / "submission.csv", cnn_alone(root, tiny_pipeline, tmp_path))


def test_every_member_lost_writes_the_class_prior_and_says_so(built_teacher, tiny_pipeline, tmp_path):
    """A kernel of teacher members only, its teacher file truncated: every member is lost, an ERROR line says
    so and why (naming the teacher file), and every row is the class prior."""
    root, ens_dir = built_teacher
    config = json.loads((root / "dataset" / "ensemble.json").read_text())
    kernel_root = copy_kernel(root, tmp_path / "kernel",
                              members=[m for m in config["members"] if m["run"] in TEACHER_RUNS])
    break_teacher(kernel_root, "truncated")
    proc = run_script_alone(kernel_root, copy_competition(tiny_pipeline, tmp_path / "comp"), tmp_path, crashed=True)
    line = next(ln for ln in proc.stderr.splitlines() if "every member lost" in ln)
    assert line.startswith("ERROR") and TEACHER_FILE in line and "submission is the class prior" in line
    ids, values = read_submission(tmp_path / "working" / "submission.csv")
    assert ids == read_submission(ens_dir / "submission.csv")[0]
    np.testing.assert_allclose(values, np.tile(fallback_of(root), (len(ids), 1)), atol=1e-5)


def test_a_savedmodel_teacher_folder_is_digested_and_checked(tmp_path):
    """A teacher that is a folder (Perch's TF SavedModel): its digest covers every file in a fixed order, and
    export_problem names the folder when a file in it changes or it is gone."""
    from src.infer.runtimes import export_files, export_problem, file_digest

    saved = tmp_path / "teachers" / "perch" / "perch_saved"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"graph" * 100)
    (saved / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights" * 1000)
    run = tmp_path / "models" / "perch" / "fold0"
    run.mkdir(parents=True)
    (run / "teacher.json").write_text(json.dumps({"model_file": "../../../teachers/perch/perch_saved"}))
    names = export_files("onnx", run)
    assert names == ("teacher.json", "../../../teachers/perch/perch_saved")
    digests = {n: file_digest(run / n) for n in names}
    assert digests[names[1]] == file_digest(saved) and export_problem("onnx", run, digests) is None
    (saved / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights" * 500)
    assert file_digest(saved) != digests[names[1]]
    assert export_problem("onnx", run, digests).startswith(f"{saved}: truncated or corrupt")
    shutil.rmtree(saved)
    assert export_problem("onnx", run, digests) == f"{saved}: missing"


def test_plan_times_the_shared_teacher_pass_once(built_teacher, tmp_path, capsys):
    """`src.kernel plan` on the teacher + CNN ensemble (the Perch-signature stand-in as the teacher): one row per
    member, the teacher's zero-shot and probe runs timed as one pass."""
    _, ens_dir = built_teacher
    rows = kernel.plan(compose_named("kernel", f"name={NAME}", f"ensembles_dir={ens_dir.parent}", "plan_files=1",
                                     "plan_threads=1", "runtime=torchscript", "fallback_runtime=torchscript"))
    by_run = {r["member"]: r for r in rows}
    assert set(by_run) == {"tiny_a", "tinyperch", "tinyperch_probe"}
    assert by_run["tinyperch"]["s_per_file"] > 0 and by_run["tinyperch_probe"]["s_per_file"] == 0.0
    assert by_run["tinyperch_probe"]["shared_with"] == "tinyperch"
    assert "one teacher pass with tinyperch" in capsys.readouterr().out
