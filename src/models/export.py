"""Export a trained fold to the fast CPU runtimes and check it against the PyTorch model.

`export_fold(run_fold_dir, out_dir, formats, check_waves)` writes the files of each runtime in
`src.infer.runtimes.RUNTIME_FILES` (torchscript: `model.ts`, traced and frozen; onnx / openvino:
`frontend.ts` + `backbone.onnx`) and fails if their probabilities differ from the eager model's by
more than `tol` on the given audio (configs/kernel.yaml `tol`, 1e-4).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from src.config import load_run_config
from src.infer.runtimes import RUNTIME_FILES, file_digest, is_teacher_dir, load_runtime, load_teacher_run
from src.models.model import MelProbabilityModel, ProbabilityModel, build_model, load_weights

log = logging.getLogger(__name__)


def load_fold_model(run_fold_dir: str | Path) -> tuple[ProbabilityModel, dict]:
    """The fold's best.pt as an eval-mode waveform -> probability model, and its saved config."""
    run_fold_dir = Path(run_fold_dir)
    cfg = load_run_config(run_fold_dir)
    model = build_model(cfg.model, cfg.audio, len(cfg.classes), init_weights=False)
    load_weights(model, run_fold_dir / "best.pt")
    return ProbabilityModel(model).eval(), cfg


def eager_runtime(run_fold_dir: str | Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Predict function running the fold's PyTorch model itself (channels_last, inference mode); for a
    teacher run (BirdNET zero-shot, a probe: `teacher.json`), its teacher model and head."""
    if is_teacher_dir(run_fold_dir):
        return load_teacher_run(run_fold_dir, threads)
    if threads:
        torch.set_num_threads(threads)
    return eager_predict(load_fold_model(run_fold_dir)[0])


def eager_predict(model: ProbabilityModel) -> Callable[[np.ndarray], np.ndarray]:
    """(B, samples) -> probabilities with an in-memory model, switched to channels_last."""
    model = model.to(memory_format=torch.channels_last)

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()

    return predict


def _trace_frozen(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python-side shape checks
        frozen = torch.jit.freeze(torch.jit.trace(module.eval(), example, check_trace=False))
    frozen.save(str(path))


def _export_torchscript(model: ProbabilityModel, example: torch.Tensor, out_dir: Path, max_batch: int) -> None:
    """model.ts: the whole waveform -> probability model, traced and frozen (any batch size)."""
    _trace_frozen(model.to(memory_format=torch.channels_last), example, out_dir / "model.ts")


def _export_split(model: ProbabilityModel, example: torch.Tensor, out_dir: Path, max_batch: int) -> None:
    """frontend.ts (waveform -> mel, TorchScript) + backbone.onnx (mel -> probabilities, batches of 1 to
    `max_batch`)."""
    bird = model.model
    _trace_frozen(bird.frontend, example, out_dir / "frontend.ts")
    with torch.no_grad():
        mel = bird.frontend(example)
    batch = torch.export.Dim("batch", min=1, max=int(max_batch))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(MelProbabilityModel(bird).eval(), (mel,), str(out_dir / "backbone.onnx"),
                          input_names=["mel"], output_names=["prob"], dynamic_shapes={"mel": {0: batch}},
                          dynamo=True, verbose=False,
                          external_data=False)  # one self-contained file for the Kaggle dataset


# runtime -> exporter(model, example batch, out_dir, max_batch)
EXPORTERS = {"torchscript": _export_torchscript, "onnx": _export_split, "openvino": _export_split}


def export_fold(run_fold_dir: str | Path, out_dir: str | Path, formats: list[str], check_waves: np.ndarray,
                tol: float = 1e-4, max_batch: int | None = None) -> dict[str, float]:
    """Export one fold to each format in `formats` and return each export's max abs difference from
    the eager model on `check_waves` (B, samples). Raises if a difference exceeds `tol`. `max_batch`: the
    largest batch an ONNX backbone takes (default configs/kernel.yaml `export_max_batch`)."""
    if max_batch is None:
        from src.config import compose

        max_batch = int(compose("kernel").export_max_batch)
    model, _ = load_fold_model(run_fold_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    waves = torch.from_numpy(np.ascontiguousarray(check_waves, np.float32))
    with torch.inference_mode():
        reference = model(waves).numpy()
    diffs = {}
    example = waves[:2] if len(waves) >= 2 else waves.repeat(2, 1)
    exported: set[tuple[str, ...]] = set()
    for fmt in formats:
        if fmt not in EXPORTERS:
            raise ValueError(f"export format {fmt!r}: use {sorted(EXPORTERS)}")
        if RUNTIME_FILES[fmt] not in exported:  # onnx and openvino run the same files
            EXPORTERS[fmt](model, example, out_dir, max_batch)
            exported.add(RUNTIME_FILES[fmt])
        got = load_runtime(fmt, out_dir)(check_waves)
        diffs[fmt] = float(np.abs(got - reference).max())
        if diffs[fmt] > tol:
            raise RuntimeError(f"{out_dir}: exported {fmt} differs from the PyTorch model by {diffs[fmt]:.2e} "
                               f"(> {tol}) on real audio; export with another runtime (kernel.runtime)")
        log.info("%s %s: max abs diff %.2e", out_dir, fmt, diffs[fmt])
    return diffs


def tflite_embedding_output(source: Path, target: Path) -> None:
    """`source` (a TFLite teacher whose embedding is the tensor before its output, BirdNET) written to `target` with
    that tensor as a second output: read without keeping every tensor, which runs ~7% faster
    (`src.infer.runtimes.tflite_interpreter`). Same graph, same numbers; the build checks the copy against the run."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(source.read_bytes(), 0))
    graph = model.subgraphs[0]
    graph.outputs = [*graph.outputs, graph.outputs[0] - 1]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    target.write_bytes(builder.Output())


def export_teacher_fold(run_fold_dir: str | Path, out_dir: str | Path, teachers_dir: str | Path,
                        check_waves: np.ndarray, tol: float = 1e-4, batch_size: int | None = None,
                        workers: int | None = None, embedding_output: bool = False) -> float:
    """Copy a teacher run (teacher.json, probe.npz) to `out_dir` and its teacher model file (or SavedModel folder)
    once into `teachers_dir/<teacher name>/` (teacher.json then points there by a relative path; `src.kernel build`
    records its sha256 in model.json, `src.infer.runtimes.export_files`); `batch_size` and `workers` (if given)
    replace the teacher windows per call and the parallel copies of the network (0 = one per core) in the copy;
    with `embedding_output`, a TFLite teacher read by `before_scores` is copied with that tensor as an output
    (`tflite_embedding_output`). Returns the max abs difference between the copy and the run on
    `check_waves` (raises above `tol`)."""
    run_fold_dir, out_dir, teachers_dir = Path(run_fold_dir), Path(out_dir), Path(teachers_dir)
    spec = json.loads((run_fold_dir / "teacher.json").read_text())
    source = Path(spec["model_file"])
    rewrite = embedding_output and source.suffix == ".tflite" and spec["outputs"]["embedding"] == "before_scores"
    target = teachers_dir / spec["name"] / (f"{source.stem}_embedding_output.tflite" if rewrite else source.name)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        if rewrite:
            tflite_embedding_output(source, target)
        else:
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
            if file_digest(target) != file_digest(source):  # the kernel checks the copy against this digest
                raise RuntimeError(f"{target}: the copy of {source} differs from it; build the kernel again")
        for extra in ("LICENSE",):  # BirdNET's licence travels with its model
            if (source.parent / extra).exists():
                shutil.copy2(source.parent / extra, target.parent / extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec["model_file"] = str(Path("..", "..", "..", target.relative_to(teachers_dir.parent)))
    spec["wheels_dir"] = str(Path("..", "..", "..", "wheels"))
    if batch_size:
        spec["batch_size"] = int(batch_size)
    if workers is not None:
        spec["workers"] = int(workers)
    if rewrite:
        spec["outputs"] = spec["outputs"] | {"embedding": 1}  # the second output
    (out_dir / "teacher.json").write_text(json.dumps(spec, indent=1))
    if (run_fold_dir / "probe.npz").exists():
        shutil.copy2(run_fold_dir / "probe.npz", out_dir / "probe.npz")
    reference = load_teacher_run(run_fold_dir)(check_waves)
    diff = float(np.abs(load_teacher_run(out_dir)(check_waves) - reference).max())
    if diff > tol:
        raise RuntimeError(f"{out_dir}: the copied teacher run differs from {run_fold_dir} by {diff:.2e} (> {tol})")
    log.info("%s teacher: max abs diff %.2e", out_dir, diff)
    return diff
