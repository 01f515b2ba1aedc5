"""Runtime packages for the kernel: offline install from shipped wheels, and the build's wheel collection."""
from __future__ import annotations

import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src import kernel
from src.runtimes import RUNTIME_FILES, RUNTIME_MODULES, ensure_module, ensure_runtime, load_runtime


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
    from src import kernel_main

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
        ensure_runtime(kind, tmp_path / "no-wheels", tmp_path / "site")
    assert not (tmp_path / "site").exists()
    with pytest.raises(ValueError, match="tflite"):
        ensure_runtime("tflite", tmp_path, tmp_path)
    assert set(RUNTIME_MODULES) == set(RUNTIME_FILES)


def test_load_runtime_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="frontend.ts"):
        load_runtime("onnx", tmp_path)


def kernel_cfg(tmp_path, **overrides):
    cfg = kernel._config([])
    cfg.wheel_cache = str(tmp_path / "cache")
    cfg.update(overrides)
    return cfg


def test_collect_wheels_takes_the_installed_versions_from_wheels_dir(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    ort = version("onnxruntime")
    make_wheel(local, "onnxruntime", "0.0.1", "")  # another version: must not be taken
    wanted = local / f"onnxruntime-{ort}-cp311-cp311-manylinux_2_28_x86_64.whl"
    wanted.write_bytes(b"wheel")
    cfg = kernel_cfg(tmp_path, runtime="onnx", wheels_dir=str(local))
    names = kernel.collect_wheels(cfg, tmp_path / "dataset" / "wheels")
    assert names == [wanted.name] and (tmp_path / "dataset" / "wheels" / wanted.name).read_bytes() == b"wheel"
    assert kernel.collect_wheels(kernel_cfg(tmp_path, runtime="torchscript"), tmp_path / "ts") == []
    assert not (tmp_path / "ts").exists()


def test_collect_wheels_failure_names_the_fix(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))  # as if offline
    cfg = kernel_cfg(tmp_path, runtime="openvino", wheels_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match=r"wheels_dir=FOLDER.*runtime=torchscript"):
        kernel.collect_wheels(cfg, tmp_path / "wheels")


def test_kernel_yaml_names_a_wheel_list_for_every_runtime():
    cfg = OmegaConf.load(Path(kernel.CONFIG_DIR) / "kernel.yaml")
    assert set(cfg.wheels) == set(RUNTIME_FILES) and cfg.runtime in RUNTIME_FILES


def test_kernel_falls_back_when_the_runtime_does_not_install(tmp_path, monkeypatch, caplog):
    import subprocess

    from src import kernel_main

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
