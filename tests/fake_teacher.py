"""A tiny ONNX model with Perch's signature (5 s at 32 kHz in; `embedding` and `label` out) and its labels
file, built in the test (no real Perch file can be had here): the Perch loader, the teacher cache, the
probe runs and the kernel's teacher member all run on it for real.

The embedding is the mean magnitude of a fixed random filter bank over 100 frames (so it depends on the
call's pitch, as the synthetic species do), squashed; the labels are linear in it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SAMPLES, FRAMES, DIM = 160000, 100, 8


def write_fake_perch(folder: Path, labels: list[str], seed: int = 0) -> tuple[Path, Path]:
    """Write `perch_tiny.onnx` and `labels.csv` (first column, with a header) into `folder`; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frame = SAMPLES // FRAMES
    t = np.arange(frame) / 32000
    bank = np.stack([np.cos(2 * np.pi * f * t) for f in np.linspace(300, 6000, DIM)], axis=1).astype(np.float32)
    weights = {"bank": bank, "shape": np.array([-1, FRAMES, frame], np.int64), "scale": np.array(0.05, np.float32),
               "w_label": rng.normal(0, 1, (DIM, len(labels))).astype(np.float32),
               "b_label": np.full(len(labels), -1.0, np.float32)}
    nodes = [helper.make_node("Reshape", ["inputs", "shape"], ["frames"]),
             helper.make_node("MatMul", ["frames", "bank"], ["filtered"]),
             helper.make_node("Abs", ["filtered"], ["magnitude"]),
             helper.make_node("ReduceMean", ["magnitude"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("Mul", ["pooled", "scale"], ["scaled"]),
             helper.make_node("Tanh", ["scaled"], ["embedding"]),
             helper.make_node("MatMul", ["embedding", "w_label"], ["raw"]),
             helper.make_node("Add", ["raw", "b_label"], ["label"])]
    graph = helper.make_graph(
        nodes, "perch_tiny", [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, ["batch", SAMPLES])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM]),
         helper.make_tensor_value_info("label", TensorProto.FLOAT, ["batch", len(labels)])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / "perch_tiny.onnx"
    onnx.save(model, str(path))
    labels_path = folder / "labels.csv"
    labels_path.write_text("ebird2021\n" + "\n".join(labels) + "\n")
    return path, labels_path
