"""CPU runtimes for exported models: TorchScript (frozen), onnxruntime and OpenVINO.

Kernel-safe (torch / onnxruntime / openvino only, imported lazily): `src.kernel` inlines this file.
Every runtime maps a (B, samples) float32 waveform batch to (B, classes) probabilities.

- torchscript: `model.ts`, the whole model (mel front end + backbone) traced and frozen.
- onnx / openvino: `frontend.ts` (the mel front end, TorchScript) + `backbone.onnx` (mel ->
  probabilities). The split keeps the STFT in torch: onnxruntime's STFT node was half of its
  time and OpenVINO cannot read the STFT node of a dynamic-batch ONNX graph (bench/inference.py).
"""
from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RUNTIME_FILES: dict[str, tuple[str, ...]] = {"torchscript": ("model.ts",),
                                             "onnx": ("frontend.ts", "backbone.onnx"),
                                             "openvino": ("frontend.ts", "backbone.onnx")}
RUNTIME_MODULES = {"torchscript": "torch", "onnx": "onnxruntime", "openvino": "openvino"}


def ensure_module(module: str, wheels_dir: str | Path, target: str | Path) -> None:
    """Make `module` importable: if `import` fails, pip-install the wheels of `wheels_dir` offline
    (`--no-index --no-deps`) into `target` and put `target` on sys.path."""
    try:
        importlib.import_module(module)
        return
    except ImportError:
        pass
    wheels = sorted(Path(wheels_dir).glob("*.whl"))
    if not wheels:
        raise ImportError(f"`{module}` is not installed and {wheels_dir} has no wheels: rebuild the kernel "
                          "(python -m src.kernel build ...) or use runtime=torchscript, which needs none")
    log.info("installing %s offline from %s: %s", module, wheels_dir, ", ".join(w.name for w in wheels))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target",
                    str(target), *map(str, wheels)], check=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    importlib.import_module(module)


def ensure_runtime(kind: str, wheels_dir: str | Path, target: str | Path) -> None:
    """The runtime's package importable; Kaggle's image has torch but neither onnxruntime nor
    openvino, so `src.kernel build` ships their wheels in the weights dataset."""
    if kind not in RUNTIME_MODULES:
        raise ValueError(f"runtime {kind!r}: use one of {sorted(RUNTIME_MODULES)}")
    ensure_module(RUNTIME_MODULES[kind], wheels_dir, target)


def load_models(kind: str, model_dirs: list[Path], frontend_ids: list[str] | None = None,
                threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """One predict function for several exported models on the same windows: (B, samples) ->
    (B, sum of the models' classes), the models' columns side by side in `model_dirs` order.

    With a split runtime (onnx / openvino), models whose `frontend_ids` are equal (same audio config,
    see `src.kernel`) share one front-end pass: an ensemble computes each mel once, not once a model."""
    if kind == "torchscript" or frontend_ids is None:
        predicts = [load_runtime(kind, d, threads) for d in model_dirs]
        return lambda batch: np.concatenate([p(batch) for p in predicts], axis=1)
    paths = [_runtime_paths(kind, d) for d in model_dirs]
    fronts: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for fid, p in zip(frontend_ids, paths, strict=True):
        if fid not in fronts:
            fronts[fid] = load_torchscript(p[0], threads)
    backbones = [load_backbone(kind, p[1], threads) for p in paths]

    def predict(batch: np.ndarray) -> np.ndarray:
        mels = {fid: front(batch) for fid, front in fronts.items()}
        return np.concatenate([b(mels[fid]) for fid, b in zip(frontend_ids, backbones, strict=True)], axis=1)

    return predict


def _runtime_paths(kind: str, model_dir: str | Path) -> list[Path]:
    """The runtime's files in `model_dir`, which must all exist."""
    if kind not in RUNTIME_FILES:
        raise ValueError(f"runtime {kind!r}: use one of {sorted(RUNTIME_FILES)} (or eager inside src)")
    paths = [Path(model_dir) / name for name in RUNTIME_FILES[kind]]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: export the model first (python -m src.kernel build ... "
                                    f"runtime={kind})")
    return paths


def load_torchscript(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():  # TorchScript's loader is deprecated in favour of torch.export, still supported
        warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated")
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()

    return run


def load_backbone(kind: str, path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """mel batch -> probabilities with `backbone.onnx` in onnxruntime or OpenVINO."""
    if kind == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda mel: session.run(None, {name: mel})[0]
    import openvino as ov

    properties = {"PERFORMANCE_HINT": "LATENCY"}  # one request at a time: the kernel batches across files
    if threads:
        properties["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", properties)
    return lambda mel: np.asarray(compiled(mel)[0])


def load_runtime(kind: str, model_dir: str | Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A predict function for the exported model in `model_dir` (`kind` = torchscript | onnx | openvino)."""
    paths = _runtime_paths(kind, model_dir)
    run_torch = load_torchscript(paths[0], threads)
    if kind == "torchscript":
        return run_torch
    backbone = load_backbone(kind, paths[1], threads)
    return lambda batch: backbone(run_torch(batch))
