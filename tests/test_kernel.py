"""`src.kernel`: build (script + metadata + weights dataset), run offline against a /kaggle/input-like
folder, the script run alone (no `src`, no network) with a corrupt test soundscape, and `push dry_run=true`.

The kernel is built once per module from an ensemble of the tiny pipeline's two runs, with the default
runtime (onnx: frontend.ts + backbone.onnx) and its TorchScript fallback. The onnxruntime wheel it ships
is a stand-in file (no network here; the venv's onnxruntime is importable, so the script never installs
it: test_runtimes checks the offline install with a real, built-in-the-test wheel).
"""
from __future__ import annotations

import ast
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from src import ensemble, kernel
from src.config import compose
from src.infer.submission import read_sample_submission, validate_file
from tests.pipeline import compose_named

NAME = "tiny_kernel"
SLUG = "birdclef-tiny-kernel"
COMPETITION = "birdclef-2025"


@pytest.fixture(scope="module")
def built(tiny_pipeline, tmp_path_factory):
    """(kernels/<name>/, the ensemble's folder): a weighted ensemble and its kernel, built with the CLI."""
    root = tmp_path_factory.mktemp("kernel_build")
    data = [o for o in tiny_pipeline.overrides if o.startswith("data.")]
    # a weighted blend: continuous in the members' outputs, so the exported models reproduce it to ~1e-7
    ensemble.run(compose_named("ensemble", *data, f"runs_dir={tiny_pipeline.runs_dir}",
                               f"ensembles_dir={root / 'ensembles'}", "runs=[tiny_a,tiny_b]", f"name={NAME}",
                               "ensemble.blend=weighted", "ensemble.fit.restarts=1"))
    wheels = root / "wheels"
    wheels.mkdir()
    for tag in ("cp312", "cp311"):  # Kaggle's current Python and the previous one (kernel.yaml kaggle_pythons)
        (wheels / f"onnxruntime-{version('onnxruntime')}-{tag}-{tag}-manylinux_2_28_x86_64.whl").write_bytes(b"stand-in")
    kernel.main(["build", f"name={NAME}", f"ensembles_dir={root / 'ensembles'}", f"kernels_dir={root / 'kernels'}",
                 "runtime=onnx", "fallback_runtime=torchscript", f"wheels_dir={wheels}", "user=tester",
                 "check_windows=4"])
    return root / "kernels" / NAME, root / "ensembles" / NAME


def read_submission(path) -> tuple[list[str], np.ndarray]:
    sub = pl.read_csv(path)
    return sub["row_id"].to_list(), sub.drop("row_id").to_numpy()


def assert_same_submission(path, reference) -> None:
    ids, values = read_submission(path)
    ref_ids, ref_values = read_submission(reference)
    assert ids == ref_ids and pl.read_csv(path).columns == pl.read_csv(reference).columns
    assert np.abs(values - ref_values).max() <= 1e-4


def copy_competition(tiny_pipeline, dest):
    return shutil.copytree(tiny_pipeline.data_root, dest)


# --- build ------------------------------------------------------------------------------------------------

def test_build_writes_kernel_and_dataset(built, tiny_pipeline):
    root, _ = built
    assert sorted(p.name for p in root.parent.iterdir()) == [NAME]  # the staging folder was renamed away
    meta = json.loads((root / "kernel" / "kernel-metadata.json").read_text())
    assert meta["code_file"] == f"{SLUG}.py" and (root / "kernel" / f"{SLUG}.py").is_file()
    assert meta["id"] == f"tester/{SLUG}" and meta["language"] == "python" and meta["kernel_type"] == "script"
    assert meta["enable_internet"] is False and meta["enable_gpu"] is False and meta["enable_tpu"] is False
    assert meta["competition_sources"] == [COMPETITION]
    assert meta["dataset_sources"] == [f"tester/{SLUG}-weights"]

    dataset = root / "dataset"
    assert json.loads((dataset / "dataset-metadata.json").read_text())["id"] == f"tester/{SLUG}-weights"
    config = json.loads((dataset / "ensemble.json").read_text())
    assert config["runtime"] == "onnx" and config["fallback_runtime"] == "torchscript"
    assert config["blend"] == "weighted"
    assert sorted(config["wheels"]) == ["3.11", "3.12"]
    for python, names in config["wheels"].items():  # one onnxruntime wheel per Python, tagged for it
        assert len(names) == 1 and names[0].startswith("onnxruntime-") and f"-cp{python.replace('.', '')}-" in names[0]
    assert sorted(n for names in config["wheels"].values() for n in names) == sorted(
        p.name for p in (dataset / "wheels").iterdir())
    assert config["budget_min"] == 90 and config["margin"] == 0.25
    assert [p["member"] for p in config["plan"]] == ["tiny_a", "tiny_b"] and all(p["s_per_file"] > 0 for p in config["plan"])
    assert [m["run"] for m in config["members"]] == ["tiny_a", "tiny_b"]
    assert sum(m["weight"] for m in config["members"]) == pytest.approx(1.0)
    _, classes = read_sample_submission(tiny_pipeline.data_root / "sample_submission.csv")
    assert config["classes"] == classes and len(config["fallback"]) == len(classes)
    assert list(config["export_max_abs_diff"]) == ["onnx", "torchscript"]
    for diffs in config["export_max_abs_diff"].values():
        assert set(diffs) == {"tiny_a/fold0", "tiny_b/fold0"} and all(v <= 1e-4 for v in diffs.values())
    frontend_ids = set()
    for run in ("tiny_a", "tiny_b"):
        model_dir = dataset / "models" / run / "fold0"
        for name in ("frontend.ts", "backbone.onnx", "model.ts"):
            assert (model_dir / name).stat().st_size > 0
        spec = json.loads((model_dir / "model.json").read_text())
        assert spec["sample_rate"] == 32000 and spec["window_s"] == 5.0
        frontend_ids.add(spec["frontend_id"])
    assert len(frontend_ids) == 1  # same audio config: the kernel computes their mel once


def test_script_is_self_contained(built):
    root, _ = built
    script = (root / "kernel" / f"{SLUG}.py").read_text()
    assert not re.search(r"^\s*(from src[. ]|import src\b)", script, re.MULTILINE)
    tree = ast.parse(script)
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported and not [m for m in imported if m == "src" or m.startswith("src.")]
    assert f"COMPETITION_SLUG = {COMPETITION!r}" in script and f"DATASET_SLUG = '{SLUG}-weights'" in script
    assert script.count('if __name__ == "__main__":') == 1
    assert script == kernel.generate_script(COMPETITION, f"{SLUG}-weights")


# --- run -------------------------------------------------------------------------------------------------

def test_run_matches_the_ensemble_submission(built, tiny_pipeline, tmp_path):
    root, ens_dir = built
    comp = copy_competition(tiny_pipeline, tmp_path / "comp")
    cfg = compose("kernel", [f"input={tmp_path / 'input'}", f"competition_root={comp}"])
    out = kernel.run(cfg, root)
    validate_file(out, comp / "sample_submission.csv")
    assert_same_submission(out, ens_dir / "submission.csv")
    assert (tmp_path / "input" / COMPETITION).resolve() == comp.resolve()
    assert (tmp_path / "input" / f"{SLUG}-weights").resolve() == (root / "dataset").resolve()


def offline_command(script) -> tuple[list[str], str]:
    """Run `script` with `src` unimportable and no network: in a fresh network namespace (`unshare -rn`)
    where that works, else with the socket functions replaced by ones that raise."""
    block_src = ("import runpy, socket, sys\n"
                 "sys.modules['src'] = None  # the editable install would otherwise make `src` importable\n"
                 "try:\n    import src\nexcept ImportError:\n    pass\nelse:\n    sys.exit('src is importable')\n")
    patch_net = ("def _no_network(*a, **k):\n    raise OSError('network disabled by the test')\n"
                 "socket.socket.connect = socket.socket.connect_ex = _no_network\n"
                 "socket.create_connection = socket.getaddrinfo = _no_network\n")
    check_net = ("try:\n    socket.create_connection(('192.0.2.1', 80), timeout=2).close()\n"
                 "except OSError:\n    pass\nelse:\n    sys.exit('network reachable')\n")
    run = "runpy.run_path(sys.argv[1], run_name='__main__')\n"
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True, check=False).returncode == 0:
        return [unshare, "-rn", sys.executable, "-I", "-c", block_src + check_net + run, str(script)], "unshare"
    return [sys.executable, "-I", "-c", block_src + patch_net + check_net + run, str(script)], "patched sockets"


def run_script_alone(root, comp, tmp_path, crashed: bool = False, competition: str = COMPETITION,
                     slug: str = SLUG) -> subprocess.CompletedProcess:
    """The kernel script as Kaggle runs it: its own folder as cwd, /kaggle/input and /kaggle/working via env.
    It must exit 0, and have fallen back to the crash submission exactly when `crashed`."""
    input_dir, working = tmp_path / "input", tmp_path / "working"
    input_dir.mkdir()
    working.mkdir()
    (input_dir / competition).symlink_to(comp, target_is_directory=True)
    (input_dir / f"{slug}-weights").symlink_to(root / "dataset", target_is_directory=True)
    script = shutil.copy(root / "kernel" / f"{slug}.py", working)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "KAGGLE_"))}
    env |= {"KAGGLE_INPUT_DIR": str(input_dir), "KAGGLE_WORKING_DIR": str(working)}
    cmd, how = offline_command(script)
    proc = subprocess.run(cmd, cwd=working, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"({how}) {proc.stderr[-3000:]}"
    assert ("kernel failed" in proc.stderr) == crashed, proc.stderr[-3000:]
    assert "unavailable" not in proc.stderr and "installing" not in proc.stderr  # the onnx runtime itself ran
    return proc


def test_script_alone_offline_without_src_writes_every_row(built, tiny_pipeline, tmp_path):
    """The script as Kaggle runs it, offline and without `src`, on a competition whose second test
    soundscape is corrupt: a complete valid submission, the readable file as the ensemble predicted it,
    the corrupt one with the fallback (the class prior, as it is), and the problem logged."""
    root, ens_dir = built
    comp = copy_competition(tiny_pipeline, tmp_path / "comp")
    (comp / "test_soundscapes" / "soundscape_001.ogg").write_bytes(b"OggS" + bytes(range(256)) * 16)
    proc = run_script_alone(root, comp, tmp_path)
    assert "soundscape_001.ogg" in proc.stderr and "cannot decode" in proc.stderr
    out = tmp_path / "working" / "submission.csv"
    validate_file(out, comp / "sample_submission.csv")
    ids, values = read_submission(out)
    ref_ids, ref_values = read_submission(ens_dir / "submission.csv")
    assert ids == ref_ids == read_sample_submission(comp / "sample_submission.csv")[0]
    good = np.array([r.startswith("soundscape_000_") for r in ids])
    assert np.abs(values[good] - ref_values[good]).max() <= 1e-4  # the readable file is unaffected
    config = json.loads((root / "dataset" / "ensemble.json").read_text())
    fallback = np.tile(np.asarray(config["fallback"], np.float32), (12, 1))  # 60 s of fallback rows
    np.testing.assert_allclose(values[~good], fallback, atol=1e-5)


def copy_kernel(root, dest, **ensemble_changes):
    """A copy of the built kernel to break, with `ensemble.json` keys replaced."""
    dest = shutil.copytree(root, dest)
    path = dest / "dataset" / "ensemble.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | ensemble_changes))
    return dest


def fallback_of(root) -> np.ndarray:
    return np.asarray(json.loads((root / "dataset" / "ensemble.json").read_text())["fallback"], np.float32)


@pytest.mark.parametrize("state", ["empty", "missing"])
def test_no_test_soundscapes_gives_the_sample_rows_with_the_fallback(built, tiny_pipeline, tmp_path, state):
    """Kaggle's state when a notebook is saved (issue 10, item 1): no test file, yet a valid submission with
    the sample's rows, at the ensemble's fallback, and exit 0 without the crash path."""
    root, _ = built
    comp = copy_competition(tiny_pipeline, tmp_path / "comp")
    shutil.rmtree(comp / "test_soundscapes")
    if state == "empty":
        (comp / "test_soundscapes").mkdir()
    proc = run_script_alone(root, comp, tmp_path)
    assert "test_soundscapes" in proc.stderr and ("no audio files" if state == "empty" else "not found") in proc.stderr
    out = tmp_path / "working" / "submission.csv"
    validate_file(out, comp / "sample_submission.csv")
    ids, values = read_submission(out)
    assert ids == read_sample_submission(comp / "sample_submission.csv")[0]
    np.testing.assert_allclose(values, np.tile(fallback_of(root), (len(ids), 1)), atol=1e-5)


@pytest.mark.parametrize("broken", ["backbone.onnx", "frontend.ts"])
def test_a_truncated_export_runs_the_torchscript_fallback_of_that_model(built, tiny_pipeline, tmp_path, broken):
    """Half of one member's onnx-runtime file (issue 10, item 2): that model runs its TorchScript export, the
    log names the file, and the submission is the ensemble's as if nothing had happened."""
    root, ens_dir = built
    kernel_root = copy_kernel(root, tmp_path / "kernel")
    path = kernel_root / "dataset" / "models" / "tiny_b" / "fold0" / broken
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    comp = copy_competition(tiny_pipeline, tmp_path / "comp")
    proc = run_script_alone(kernel_root, comp, tmp_path)
    assert f"{path.relative_to(kernel_root / 'dataset')}: truncated or corrupt" in proc.stderr
    assert "trying its torchscript export" in proc.stderr and "dropped" not in proc.stderr
    assert_same_submission(tmp_path / "working" / "submission.csv", ens_dir / "submission.csv")


def test_a_member_without_an_intact_export_is_dropped_and_the_rest_blends(built, tiny_pipeline, tmp_path):
    """Every export of tiny_b truncated: tiny_b leaves the blend (its weight renormalised away) and the
    submission is that of a kernel whose ensemble is tiny_a alone, not the fallback."""
    root, _ = built
    config = json.loads((root / "dataset" / "ensemble.json").read_text())
    alone = copy_kernel(root, tmp_path / "alone", members=[m for m in config["members"] if m["run"] == "tiny_a"])
    comp = copy_competition(tiny_pipeline, tmp_path / "comp")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_script_alone(alone, comp, tmp_path / "a")
    kernel_root = copy_kernel(root, tmp_path / "kernel")
    for name in ("frontend.ts", "backbone.onnx", "model.ts"):
        path = kernel_root / "dataset" / "models" / "tiny_b" / "fold0" / name
        path.write_bytes(path.read_bytes()[:100])
    proc = run_script_alone(kernel_root, comp, tmp_path / "b")
    assert "model.ts: truncated or corrupt" in proc.stderr and "member tiny_b dropped" in proc.stderr
    assert_same_submission(tmp_path / "b" / "working" / "submission.csv", tmp_path / "a" / "working" / "submission.csv")
    _, values = read_submission(tmp_path / "b" / "working" / "submission.csv")
    assert np.abs(values - fallback_of(root)).max() > 0.01


def test_two_files_of_one_stem_give_one_set_of_rows(built, tiny_pipeline, tmp_path):
    """soundscape_000.ogg and soundscape_000.flac (issue 10, item 5): the .ogg is predicted, the .flac logged."""
    import soundfile as sf

    root, ens_dir = built
    comp = copy_competition(tiny_pipeline, tmp_path / "comp")
    y, sr = sf.read(comp / "test_soundscapes" / "soundscape_000.ogg", dtype="float32")
    sf.write(comp / "test_soundscapes" / "soundscape_000.flac", y[::-1].copy(), sr)
    proc = run_script_alone(root, comp, tmp_path)
    assert "soundscape_000.flac: same stem as soundscape_000.ogg" in proc.stderr
    validate_file(tmp_path / "working" / "submission.csv", comp / "sample_submission.csv")
    assert_same_submission(tmp_path / "working" / "submission.csv", ens_dir / "submission.csv")


def hidden_test_sample(comp) -> list[str]:
    """Make the sample submission an example row of another soundscape (as on Kaggle's hidden test set)."""
    _, classes = read_sample_submission(comp / "sample_submission.csv")
    (comp / "sample_submission.csv").write_text("row_id," + ",".join(classes) + "\nexample_5," +
                                                ",".join(["0"] * len(classes)) + "\n")
    return ["example_5"]


def test_crash_fallback_uses_the_ensemble_window_duration_and_prior(built, tiny_pipeline, tmp_path):
    """The crash fallback (issue 14, item 4): each test file's rows at the models' window length for the
    ensemble's fallback_duration_s, valued at its class prior, not 12 x 5 s at 0.5."""
    root, _ = built
    config = json.loads((root / "dataset" / "ensemble.json").read_text())
    kernel_root = copy_kernel(root, tmp_path / "kernel", runtime="tflite",  # an unknown runtime: the kernel crashes
                              inference=config["inference"] | {"fallback_duration_s": 30.0})
    for spec_path in (kernel_root / "dataset" / "models").rglob("model.json"):
        spec_path.write_text(json.dumps(json.loads(spec_path.read_text()) | {"window_s": 10.0}))
    comp = copy_competition(tiny_pipeline, tmp_path / "comp")
    hidden_test_sample(comp)
    run_script_alone(kernel_root, comp, tmp_path, crashed=True)
    ids, values = read_submission(tmp_path / "working" / "submission.csv")
    assert ids == [f"soundscape_00{i}_{end}" for i in (0, 1) for end in (10, 20, 30)]
    np.testing.assert_allclose(values, np.tile(fallback_of(root), (6, 1)), atol=1e-5)


def test_crash_fallback_without_a_readable_ensemble_json(built, tiny_pipeline, tmp_path):
    """ensemble.json itself unreadable: the crash fallback still writes the sample's rows, at 0.5."""
    root, _ = built
    kernel_root = copy_kernel(root, tmp_path / "kernel")
    (kernel_root / "dataset" / "ensemble.json").write_text('{"classes": [')
    comp = copy_competition(tiny_pipeline, tmp_path / "comp")
    rows = hidden_test_sample(comp)
    proc = run_script_alone(kernel_root, comp, tmp_path, crashed=True)
    assert "ensemble.json unreadable" in proc.stderr
    ids, values = read_submission(tmp_path / "working" / "submission.csv")
    assert ids == rows and values.shape == (1, len(read_sample_submission(comp / "sample_submission.csv")[1]))
    np.testing.assert_allclose(values, 0.5)


def test_run_without_input_says_what_to_pass(built):
    root, _ = built
    with pytest.raises(ValueError, match="input=DIR"):
        kernel.run(compose("kernel", []), root)


# --- push dry_run=true ------------------------------------------------------------------------------------

def test_push_dry_run_prints_the_dataset_and_kernel_calls(built, tmp_path, monkeypatch, capsys, caplog):
    import src.push as push_module

    root, _ = built
    monkeypatch.setenv("HOME", str(tmp_path))  # no credentials: the dry run needs none
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)

    def forbidden(cmd, echo=True):
        raise AssertionError(f"the dry run started {cmd}")

    monkeypatch.setattr(push_module, "_run", forbidden)
    with caplog.at_level(logging.WARNING, logger="src.push"):
        kernel.main(["push", f"name={root.name}", f"kernels_dir={root.parent}", "dry_run=true"])
    lines = capsys.readouterr().out.splitlines()
    assert f"kaggle datasets create -p {root / 'dataset'} --dir-mode zip" in lines
    assert f"kaggle kernels push -p {root / 'kernel'}" in lines
    # the metadata passes our checks and kaggle's own; the only warning is about the missing credentials
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no Kaggle credentials" in warnings[0], warnings


def test_cli_usage_errors(tmp_path):
    with pytest.raises(SystemExit, match="usage"):
        kernel.main(["deploy"])
    with pytest.raises(SystemExit, match="not a built kernel"):
        kernel.main(["run", f"name={tmp_path.name}", f"kernels_dir={tmp_path.parent}", "input=x"])
    with pytest.raises(FileNotFoundError, match="ensemble.yaml not found"):
        kernel.main(["build", "name=nothing_here", f"ensembles_dir={tmp_path}"])


# --- time guard --------------------------------------------------------------------------------------------

def test_time_guard_drops_the_last_member_and_still_writes_every_row(built, tiny_pipeline, tmp_path, capsys):
    """`run ... budget_min=X` with X so small that only the first member fits (the first always runs): the second
    is dropped and logged, every row is written, and the rows are the first member's alone (weights renormalised),
    as `src.ensemble` predicts them with that member only."""
    root, _ = built
    comp = copy_competition(tiny_pipeline, tmp_path / "comp")
    out = kernel.run(compose("kernel", [f"input={tmp_path / 'input'}", f"competition_root={comp}", "budget_min=0.002",
                                     "margin=0.0"]), root)
    log = capsys.readouterr().err
    assert "time guard" in log and "dropped tiny_b" in log and "1 of 2 member(s)" in log
    validate_file(out, comp / "sample_submission.csv")
    data = [o for o in tiny_pipeline.overrides if o.startswith("data.")]
    # the same post-processing as the built ensemble (whatever its fit chose), not one refitted for tiny_a
    post = json.loads((root / "dataset" / "ensemble.json").read_text())["inference"]["postprocess"]
    alone = ensemble.run(compose_named("ensemble", *data, f"runs_dir={tiny_pipeline.runs_dir}",
                                       f"ensembles_dir={tmp_path / 'ensembles'}", "runs=[tiny_a]", "name=alone",
                                       "ensemble.blend=weighted", "ensemble.fit.restarts=1", "ensemble.fit.oof=clip",
                                       f"ensemble.postprocess={_hydra_literal(post)}"))
    assert alone["members"][0]["run"] == "tiny_a"
    assert_same_submission(out, tmp_path / "ensembles" / "alone" / "submission.csv")


def _hydra_literal(value) -> str:
    """A dict/list/scalar as a Hydra override value (unquoted keys)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_literal(v) for v in value) + "]"
    return "null" if value is None else str(value)


def test_time_guard_projects_a_member_from_the_plan_scaled_by_the_finished_ones():
    from src.infer import kernel_main

    # planned 1, 2, 4 s per file; the first member took 3 s (3x its plan): the second is projected at 6 s
    assert kernel_main._projected_s([1], [0], 3.0, [1.0, 2.0, 4.0], [1, 1, 1]) == pytest.approx(6.0)
    assert kernel_main._projected_s([2], [0, 1], 9.0, [1.0, 2.0, 4.0], [1, 1, 1]) == pytest.approx(12.0)
    # a pass shared by two members (one teacher model): their plans add up
    assert kernel_main._projected_s([1, 2], [0], 3.0, [1.0, 2.0, 4.0], [1, 1, 1]) == pytest.approx(18.0)
    # no plan (an older kernel): the seconds per model so far times the pass's models
    assert kernel_main._projected_s([1], [0], 3.0, [], [1, 2]) == pytest.approx(6.0)
    assert kernel_main.time_budget({"budget_min": 90, "margin": 0.25}) == (90.0, 0.25)
    assert kernel_main.time_budget({}) == (float("inf"), 0.0)  # no budget built in: no guard
    members = [{"run": "a", "folds": [0, 1]}, {"run": "b", "folds": [0], "models": ["foldall", "foldall_seed7"]}]
    assert kernel_main.member_dirs({"members": members}, Path("w")) == [  # full-data fits replace the folds
        [Path("w/models/a/fold0"), Path("w/models/a/fold1")],
        [Path("w/models/b/foldall"), Path("w/models/b/foldall_seed7")]]


def test_plan_prints_the_projected_table(built, capsys):
    """`plan`: one row per member with its seconds per file here, the projected Kaggle minutes and the cumulative;
    the projection is s/file x 700 files / (4 Kaggle cores / threads timed) + model loading."""
    _, ens_dir = built
    rows = kernel.plan(compose("kernel", [f"name={NAME}", f"ensembles_dir={ens_dir.parent}", "plan_files=1",
                                       "check_windows=2", "budget_min=90", "margin=0.25", "plan_threads=1"]))
    out = capsys.readouterr().out
    assert "member" in out and "Kaggle min" in out and "cumulative" in out
    assert "of 2 member(s) fit in 90 min minus the 25% margin (67.5 min)" in out
    assert [r["member"] for r in rows] == ["tiny_a", "tiny_b"] and all(r["s_per_file"] > 0 for r in rows)
    for r in rows:
        assert r["projected_min"] == pytest.approx((r["s_per_file"] * 700 / 4 + r["load_s"]) / 60)
    assert rows[1]["cumulative_min"] == pytest.approx(rows[0]["projected_min"] + rows[1]["projected_min"])
    assert [r["fits"] for r in rows] == [r["cumulative_min"] <= 67.5 for r in rows]
