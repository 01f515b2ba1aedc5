"""CPU runtimes for exported models: TorchScript (frozen), onnxruntime and OpenVINO.

Kernel-safe (torch / onnxruntime / openvino only, imported lazily): `src.kernel` inlines this file.
Every runtime maps a (B, samples) float32 waveform batch to (B, classes) probabilities.

- torchscript: `model.ts`, the whole model (mel front end + backbone) traced and frozen.
- onnx / openvino: `frontend.ts` (the mel front end, TorchScript) + `backbone.onnx` (mel ->
  probabilities). The split keeps the STFT in torch: onnxruntime's STFT node was half of its
  time and OpenVINO cannot read the STFT node of a dynamic-batch ONNX graph (bench/inference.py).
"""
from __future__ import annotations

import hashlib
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


def ensure_module(module: str, wheels_dir: str | Path, target: str | Path, names: list[str] | None = None) -> None:
    """Make `module` importable: if `import` fails, pip-install the wheels `names` of `wheels_dir` (None:
    every wheel there) offline (`--no-index --no-deps`) into `target` and put `target` on sys.path."""
    try:
        importlib.import_module(module)
        return
    except ImportError:
        pass
    wheels = sorted(Path(wheels_dir).glob("*.whl")) if names is None else [Path(wheels_dir) / n for n in names]
    missing = [w for w in wheels if not w.is_file()]
    if missing:
        raise ImportError(f"`{module}` is not installed and {', '.join(map(str, missing))} is missing: rebuild the "
                          "kernel (python -m src.kernel build ...) or use runtime=torchscript, which needs none")
    if not wheels:
        raise ImportError(f"`{module}` is not installed and {wheels_dir} has no wheels: rebuild the kernel "
                          "(python -m src.kernel build ...) or use runtime=torchscript, which needs none")
    log.info("installing %s offline from %s: %s", module, wheels_dir, ", ".join(w.name for w in wheels))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target",
                    str(target), *map(str, wheels)], check=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    importlib.import_module(module)


def ensure_runtime(kind: str, wheels_dir: str | Path, target: str | Path, names: list[str] | None = None) -> None:
    """The runtime's package importable; Kaggle's image has torch but neither onnxruntime nor
    openvino, so `src.kernel build` ships their wheels (`names`, see `ensure_module`) in the weights dataset."""
    if kind not in RUNTIME_MODULES:
        raise ValueError(f"runtime {kind!r}: use one of {sorted(RUNTIME_MODULES)}")
    ensure_module(RUNTIME_MODULES[kind], wheels_dir, target, names)


def file_digest(path: str | Path) -> str:
    """sha256 of a file (read in blocks): `src.kernel build` records it per export file in model.json."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_problem(kind: str, model_dir: str | Path, digests: dict[str, str] | None) -> str | None:
    """Why the `kind` export in `model_dir` cannot run (a file missing, or truncated / corrupt: its sha256
    differs from `digests`, the build's), naming the file; None when it is intact."""
    for name in RUNTIME_FILES[kind]:
        path = Path(model_dir) / name
        if not path.is_file():
            return f"{path}: missing"
        if (digests or {}).get(name) and file_digest(path) != digests[name]:
            return f"{path}: truncated or corrupt ({path.stat().st_size} bytes, sha256 differs from the build's)"
    return None


def load_models(kind: str | list[str], model_dirs: list[Path], frontend_ids: list[str] | None = None,
                threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """One predict function for several exported models on the same windows: (B, samples) ->
    (B, sum of the models' classes), the models' columns side by side in `model_dirs` order.

    `kind` is the runtime of all models or a list, one per model (a model whose export is corrupt runs
    its fallback export). With a split runtime (onnx / openvino), models whose `frontend_ids` are equal
    (same audio config, see `src.kernel`) share one front-end pass: an ensemble computes each mel once."""
    if not isinstance(kind, str):
        return _load_mixed(kind, model_dirs, frontend_ids, threads)
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


def _load_mixed(kinds: list[str], model_dirs: list[Path], frontend_ids: list[str] | None,
                threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """`load_models` once per runtime of `kinds`, the models' columns put back in `model_dirs` order."""
    groups: dict[str, list[int]] = {}
    for j, kind in enumerate(kinds):
        groups.setdefault(kind, []).append(j)
    parts = [load_models(kind, [model_dirs[j] for j in js], None if frontend_ids is None else
                         [frontend_ids[j] for j in js], threads) for kind, js in groups.items()]
    order = np.argsort([j for js in groups.values() for j in js])

    def predict(batch: np.ndarray) -> np.ndarray:
        out = np.concatenate([p(batch) for p in parts], axis=1)
        return out.reshape(len(out), len(kinds), -1)[:, order].reshape(len(out), -1)

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
        try:
            module = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as exc:  # torch's message does not name the file
            raise RuntimeError(f"{path}: cannot load ({exc}); rebuild the kernel") from exc

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
