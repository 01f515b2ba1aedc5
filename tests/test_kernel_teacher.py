"""The kernel with teacher members (the tiny Perch-signature teacher's zero-shot and probe runs beside a CNN
run): the teacher model file and the probe's plain arrays ship in the weights dataset, and the generated
script, run offline without `src`, reproduces the ensemble's submission within 1e-4."""
from __future__ import annotations

import json
from importlib.metadata import version

import numpy as np
import pytest

from src import ensemble, kernel
from src.submission import validate_file
from tests.pipeline import compose_named
from tests.test_kernel import SLUG, assert_same_submission, copy_competition, run_script_alone

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
    run_script_alone(root, comp, tmp_path)
    out = tmp_path / "working" / "submission.csv"
    validate_file(out, comp / "sample_submission.csv")
    assert_same_submission(out, ens_dir / "submission.csv")
