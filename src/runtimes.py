"""CPU runtimes for exported models: TorchScript (frozen) and onnxruntime.

Kernel-safe (torch / onnxruntime only, imported lazily): `src.kernel` inlines this file.
Every runtime maps a (B, samples) float32 waveform batch to (B, classes) probabilities.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

RUNTIME_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}


def load_runtime(kind: str, path: str | Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A predict function for an exported model file (`kind` = torchscript | onnx)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: export the model first (python -m src.kernel build ...)")
    if kind == "torchscript":
        import torch

        if threads:
            torch.set_num_threads(threads)
        module = torch.jit.load(str(path), map_location="cpu").eval()

        def predict_ts(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()

        return predict_ts
    if kind == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def predict_onnx(batch: np.ndarray) -> np.ndarray:
            return session.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0]

        return predict_onnx
    raise ValueError(f"runtime {kind!r}: use one of {sorted(RUNTIME_FILES)} (or eager inside src)")
