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


def load_runtime(kind: str, model_dir: str | Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A predict function for the exported model in `model_dir` (`kind` = torchscript | onnx | openvino)."""
    if kind not in RUNTIME_FILES:
        raise ValueError(f"runtime {kind!r}: use one of {sorted(RUNTIME_FILES)} (or eager inside src)")
    model_dir = Path(model_dir)
    paths = [model_dir / name for name in RUNTIME_FILES[kind]]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: export the model first (python -m src.kernel build ... "
                                    f"runtime={kind})")
    import torch

    if threads:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():  # TorchScript's loader is deprecated in favour of torch.export, still supported
        warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated")
        torch_module = torch.jit.load(str(paths[0]), map_location="cpu").eval()

    def run_torch(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch_module(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()

    if kind == "torchscript":
        return run_torch
    if kind == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(paths[1]), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: run_torch(batch)})[0]
    import openvino as ov

    core = ov.Core()
    properties = {"PERFORMANCE_HINT": "LATENCY"}  # one request at a time: the kernel batches across files
    if threads:
        properties["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(paths[1])), "CPU", properties)
    return lambda batch: np.asarray(compiled(run_torch(batch))[0])
