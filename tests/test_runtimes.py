"""Runtime packages for the kernel: offline install from shipped wheels, and the build's wheel collection."""
from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from src import kernel
from src.config import compose
from src.infer.runtimes import RUNTIME_FILES, RUNTIME_MODULES, ensure_module, ensure_runtime, load_runtime


def make_wheel(folder: Path, name: str, ver: str, body: str) -> Path:
    """A minimal pure-Python wheel (what pip needs: the package, METADATA, WHEEL, RECORD)."""
    dist = f"{name}-{ver}.dist-info"
    path = folder / f"{name}-{ver}-py3-none-any.whl"
    files = {f"{name}/__init__.py": body,
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, text in files.items():
            zf.writestr(arcname, text)
    return path


def test_ensure_module_installs_the_shipped_wheel_offline(tmp_path, monkeypatch):
    name = "birdclef_probe_runtime"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, name, "0.1", "ANSWER = 42\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ImportError):
        __import__(name)
    ensure_module(name, wheels, tmp_path / "site")  # pip --no-index: no network involved
    assert sys.modules[name].ANSWER == 42 and (tmp_path / "site" / name / "__init__.py").is_file()
    sys.modules.pop(name)


def test_only_the_wheels_ensemble_json_names_are_installed(tmp_path, monkeypatch):
    """The kernel installs the pinned wheels ensemble.json names, not every *.whl in the folder (issue 10,
    item 8); a named wheel that is missing says so."""
    from src.infer import kernel_main

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wanted = make_wheel(wheels, "birdclef_probe_wanted", "0.1", "")
    make_wheel(wheels, "birdclef_probe_stray", "0.1", "")
    monkeypatch.setattr(sys, "path", list(sys.path))
    ensure_module("birdclef_probe_wanted", wheels, tmp_path / "site", names=[wanted.name])
    assert (tmp_path / "site" / "birdclef_probe_wanted").is_dir() and not (tmp_path / "site" / "birdclef_probe_stray").exists()
    sys.modules.pop("birdclef_probe_wanted")
    with pytest.raises(ImportError, match=r"other-1\.0-py3-none-any\.whl is missing"):
        ensure_module("birdclef_probe_other", wheels, tmp_path / "site2", names=["other-1.0-py3-none-any.whl"])
    seen = {}
    monkeypatch.setattr(kernel_main, "ensure_runtime", lambda kind, folder, target, names=None: seen.update(names=names))
    kernel_main.choose_runtime({"runtime": "onnx", "wheels": [wanted.name]}, tmp_path)
    assert seen["names"] == [wanted.name]


def test_ensure_module_without_wheels_says_how_to_fix(tmp_path):
    with pytest.raises(ImportError, match="runtime=torchscript"):
        ensure_module("birdclef_missing_module", tmp_path, tmp_path / "site")


def test_ensure_runtime_is_a_no_op_when_installed(tmp_path):
    for kind in RUNTIME_FILES:
        if importlib.util.find_spec(RUNTIME_MODULES[kind]):  # openvino is an optional extra
            ensure_runtime(kind, tmp_path / "no-wheels", tmp_path / "site")
    assert not (tmp_path / "site").exists()
    with pytest.raises(ValueError, match="tflite"):
        ensure_runtime("tflite", tmp_path, tmp_path)
    assert set(RUNTIME_MODULES) == set(RUNTIME_FILES)


def test_load_runtime_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="frontend.ts"):
        load_runtime("onnx", tmp_path)


def kernel_cfg(tmp_path, **overrides):
    cfg = compose("kernel", [])
    cfg.wheel_cache = str(tmp_path / "cache")
    cfg.update(overrides)
    return cfg


def test_collect_wheels_takes_the_installed_version_for_each_kaggle_python(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    ort = version("onnxruntime")
    make_wheel(local, "onnxruntime", "0.0.1", "")  # another version: must not be taken
    wanted = {py: local / f"onnxruntime-{ort}-cp{py.replace('.', '')}-cp{py.replace('.', '')}-manylinux_2_28_x86_64.whl"
              for py in ("3.12", "3.11")}
    (local / f"onnxruntime-{ort}-cp310-cp310-manylinux_2_28_x86_64.whl").write_bytes(b"other python")
    for py, path in wanted.items():
        path.write_bytes(py.encode())
    cfg = kernel_cfg(tmp_path, runtime="onnx", wheels_dir=str(local), kaggle_pythons=["3.12", "3.11"])
    names = kernel.collect_wheels(cfg, tmp_path / "dataset" / "wheels")
    assert names == {py: [path.name] for py, path in wanted.items()}
    assert sorted(p.name for p in (tmp_path / "dataset" / "wheels").iterdir()) == sorted(p.name for p in wanted.values())
    assert (tmp_path / "dataset" / "wheels" / wanted["3.12"].name).read_bytes() == b"3.12"
    assert kernel.collect_wheels(kernel_cfg(tmp_path, runtime="torchscript"), tmp_path / "ts") == {}
    assert not (tmp_path / "ts").exists()


def test_the_kernel_installs_only_the_wheels_of_its_python(tmp_path, monkeypatch):
    from src.infer import kernel_main

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheels = {"3.12": ["onnxruntime-1-cp312-cp312-x.whl"], "3.11": ["onnxruntime-1-cp311-cp311-x.whl"]}
    assert kernel_main.python_wheels(wheels) == wheels[here]
    assert kernel_main.python_wheels({"3.9": ["a-cp39.whl"]}) == []  # none for this Python: the fallback runs
    assert kernel_main.python_wheels(["old.whl"]) == ["old.whl"]  # kernels built before: one list
    seen = []
    monkeypatch.setattr(kernel_main, "ensure_runtime", lambda kind, d, target, names=None: seen.append(names))
    kernel_main.choose_runtime({"runtime": "onnx", "fallback_runtime": "torchscript", "wheels": wheels}, tmp_path)
    assert seen == [wheels[here]]


def test_a_teacher_runtime_installs_only_its_wheel_for_this_python(tmp_path, monkeypatch):
    """The dataset ships the teacher runtime for each Kaggle Python beside the CNN runtime: a teacher that loads
    first (a teacher-only kernel) installs its package's wheel for this interpreter only (pip refuses a call with a
    wheel of another Python); a module with no such wheel falls through to the next TFLite runtime."""
    from src.infer.runtimes import ensure_teacher_module, module_wheels

    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    other = "cp39" if here != "cp39" else "cp38"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    names = [f"ai_edge_litert-2.3.0-{t}-{t}-manylinux_2_27_x86_64.whl" for t in (here, other)] + \
        [f"onnxruntime-1.31.1-{here}-{here}-manylinux_2_28_x86_64.whl"]
    for n in names:
        (wheels / n).write_bytes(b"stand-in")
    assert module_wheels(wheels, "ai_edge_litert.interpreter") == [names[0]]
    assert module_wheels(wheels, "onnxruntime") == [names[2]]
    pure = make_wheel(wheels, "birdclef_probe_teacher", "0.1", "ANSWER = 3\n")
    assert module_wheels(wheels, "birdclef_probe_teacher") == [pure.name]
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "birdclef_probe_teacher", raising=False)
    monkeypatch.setattr("src.infer.runtimes._site_target", lambda: tmp_path / "site")
    assert ensure_teacher_module("birdclef_probe_teacher", wheels)  # the stand-in wheels are never touched
    assert sys.modules.pop("birdclef_probe_teacher").ANSWER == 3
    assert not ensure_teacher_module("birdclef_probe_absent", wheels)


def test_ensure_module_installs_only_the_named_wheels(tmp_path, monkeypatch):
    name = "birdclef_probe_named"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, name, "0.1", "ANSWER = 7\n")
    (wheels / "broken-0.1-py3-none-any.whl").write_bytes(b"not a zip: pip would fail on it")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    ensure_module(name, wheels, tmp_path / "site", [f"{name}-0.1-py3-none-any.whl"])
    assert sys.modules.pop(name).ANSWER == 7
    with pytest.raises(ImportError, match="has no wheels"):
        ensure_module("birdclef_missing_module", wheels, tmp_path / "site", [])


def test_collect_wheels_failure_names_the_fix(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))  # as if offline
    cfg = kernel_cfg(tmp_path, runtime="onnx", wheels_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match=r"wheels_dir=FOLDER.*runtime=torchscript"):
        kernel.collect_wheels(cfg, tmp_path / "wheels")


def test_kernel_yaml_names_a_wheel_list_for_every_runtime():
    cfg = compose("kernel")
    runtimes = {k for k in cfg.wheels if not k.startswith("teacher_")}  # teacher_<suffix>: a teacher model's runtime
    assert runtimes == set(RUNTIME_FILES) and cfg.runtime in RUNTIME_FILES


def test_kernel_falls_back_when_the_runtime_does_not_install(tmp_path, monkeypatch, caplog):
    import subprocess

    from src.infer import kernel_main

    def broken(kind, wheels_dir, target, names=None):
        raise subprocess.CalledProcessError(1, ["pip", "install"])  # e.g. a wheel for another Python

    monkeypatch.setattr(kernel_main, "ensure_runtime", broken)
    cfg = {"runtime": "onnx", "fallback_runtime": "torchscript"}
    assert kernel_main.choose_runtime(cfg, tmp_path) == "torchscript"
    assert any("runtime onnx unavailable" in r.getMessage() for r in caplog.records)
    with pytest.raises(subprocess.CalledProcessError):
        kernel_main.choose_runtime({"runtime": "onnx", "fallback_runtime": None}, tmp_path)
    monkeypatch.setattr(kernel_main, "ensure_runtime", lambda *a, **k: None)
    assert kernel_main.choose_runtime(cfg, tmp_path) == "onnx"


def test_check_install_under_a_second_python(tmp_path, capsys):
    """`src.kernel run`'s install check: the wheels shipped for a Python install and import under such an
    interpreter found here (3.11 is; a fake `onnxruntime` wheel stands in), and a missing one is skipped, said so."""
    root = tmp_path / "kernel"
    (root / "dataset" / "wheels").mkdir(parents=True)
    wheel = make_wheel(root / "dataset" / "wheels", "onnxruntime", "9.9", "STAND_IN = True\n")
    (root / "dataset" / "ensemble.json").write_text(
        json.dumps({"runtime": "onnx", "wheels": {"3.11": [wheel.name], "2.1": [wheel.name]}}))
    assert kernel.check_install(root, "3.11")
    assert kernel.check_install(root, "2.1") is False
    out = capsys.readouterr().out
    assert f"install check, Python 3.11 ({kernel.find_python('3.11')}): {wheel.name}: installed and imported" in out
    assert "install check, Python 2.1: SKIPPED, no such interpreter here" in out
