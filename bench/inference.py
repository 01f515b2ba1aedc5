"""Benchmark of CPU soundscape inference: our runtimes against the usual notebook loop, same audio.

    python bench/inference.py [--root DIR] [--files 3] [--models effnet_b0,mobilenetv3_small]
                              [--batch 16] [--threads 0] [--repeats 3] [--classes 206]

Audio: the first `--files` test soundscapes of `--root` (default ../shared/xc45 if present, else
data/demo, written by `python -m src.synth` if absent), decoded and cut into 5 s windows once.
Models: `configs/model/<name>.yaml` with random weights (model.pretrained=false: speed does not
depend on the weights), `configs/audio/default.yaml` (32 kHz, mel 128 x 313 in the graph).
Per model, windows/second and real-time factor (audio seconds per wall second) of:
- naive: eager PyTorch in NCHW, batch 1, a Python loop over windows under torch.no_grad, the
  mel front end then `forward_mel` (what a typical public notebook does);
- eager: channels_last + inference_mode, batched (`src.export.eager_runtime`'s predict);
- torchscript / onnx: `src.export`'s exporters, run by `src.runtimes.load_runtime`, batched;
- openvino: only if `import openvino` works (not a dependency: skipped with a note).
Each export is checked against the eager model on the bench windows (max abs probability diff
<= 1e-4). The default runtime (`configs/kernel.yaml: runtime`) also gets an end-to-end line:
`predict_soundscapes` (decode + windows + model) with its predict function. Warm-up (not timed):
every batch shape once per runtime. The runtimes take turns on each batch of `--batch` windows
(naive: the same windows one at a time), `--repeats` rounds; a runtime's time is the sum over
batches of its best time for each batch (the machine may be shared: short samples catch its quiet
moments, and load hits every runtime alike).
Kaggle projection: 700 one-minute soundscapes (12 windows each) on 4 cores, assuming the model's
throughput scales linearly with threads (x 4 / threads used); decoding is serial in
`predict_soundscapes`, so its time is added unscaled.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import torch
from omegaconf import OmegaConf

from bench.timing import best_of
from src.audio import load_audio
from src.export import _export_onnx, _export_torchscript
from src.models import ProbabilityModel, build_model
from src.runtimes import RUNTIME_FILES, load_runtime
from src.soundscape import cut_windows, n_windows, predict_soundscapes

warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated")  # src.runtimes' TorchScript loader

AUDIO_SUFFIXES = (".ogg", ".mp3", ".wav", ".flac")
TOL = 1e-4  # SPEC: an export may differ from the eager model by at most this (probabilities)


def default_root() -> Path:
    xc45 = REPO.parent / "shared" / "xc45"
    return xc45 if (xc45 / "test_soundscapes").is_dir() else REPO / "data" / "demo"


def find_soundscapes(root: Path, limit: int) -> list[Path]:
    """The first `limit` test soundscapes of a competition folder (writes the demo data if it is missing)."""
    folder = root / "test_soundscapes"
    if not folder.is_dir() and root == REPO / "data" / "demo":
        subprocess.run([sys.executable, "-m", "src.synth"], cwd=REPO, check=True)
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in AUDIO_SUFFIXES)[:limit]
    if not files:
        sys.exit(f"no test soundscapes under {folder}: pass --root (a competition folder)")
    return files


def decode_windows(files: list[Path], sample_rate: int, window: int) -> np.ndarray:
    """Every file decoded and cut into 5 s windows, as predict_soundscapes does: (windows, samples)."""
    out = []
    for path in files:
        y = load_audio(path, sample_rate)
        out.append(cut_windows(y, window, count=n_windows(len(y), window)))
    return np.concatenate(out)


def batched(predict: Callable[[np.ndarray], np.ndarray], batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """All windows through `predict`, `batch` at a time (the kernel batches across files the same way)."""
    return lambda waves: np.concatenate([predict(waves[i:i + batch]) for i in range(0, len(waves), batch)])


def naive_runtime(model: ProbabilityModel) -> Callable[[np.ndarray], np.ndarray]:
    """The notebook loop: NCHW weights and mel, one window at a time, torch.no_grad."""
    bird = model.model  # BirdModel.forward would switch the mel to channels_last: call its parts

    def predict(waves: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for w in waves:
                mel = bird.frontend(torch.from_numpy(w)[None])
                out.append(torch.sigmoid(bird.forward_mel(mel)).numpy())
        return np.concatenate(out)

    return predict


def eager_runtime(model: ProbabilityModel) -> Callable[[np.ndarray], np.ndarray]:
    """src.export.eager_runtime's predict on an in-memory model: channels_last, inference_mode."""
    model = model.to(memory_format=torch.channels_last)

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()

    return predict


def openvino_runtime(onnx_path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """OpenVINO on the ONNX export (only called when `import openvino` works)."""
    import openvino as ov

    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU")
    return lambda batch: np.asarray(compiled(np.ascontiguousarray(batch, np.float32))[0])


def export_quietly(exporter: Callable, model: torch.nn.Module, example: torch.Tensor, path: Path) -> float:
    """Run one of src.export's exporters with its progress prints swallowed; returns seconds taken."""
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        exporter(model, example, path)
    return time.perf_counter() - t0


def bench_model(name: str, args, waves: np.ndarray, audio_cfg, default_rt: str, threads: int,
                decode_s: float, files: list[Path], tmp: Path) -> list[tuple]:
    """Rows (runtime, windows/s, max abs diff, note) for one model; prints its table."""
    model_cfg = OmegaConf.load(REPO / "configs" / "model" / f"{name}.yaml")
    model_cfg.pretrained = False
    torch.manual_seed(0)
    model = ProbabilityModel(build_model(model_cfg, audio_cfg, args.classes)).eval()
    naive_model = copy.deepcopy(model)  # stays NCHW: the exporters switch `model` to channels_last
    example = torch.from_numpy(waves[:2])

    runtimes: dict[str, Callable] = {"naive (NCHW, batch 1, no_grad)": naive_runtime(naive_model),
                                     f"eager (channels_last, batch {args.batch})": eager_runtime(model)}
    notes = {}
    for kind, exporter in (("torchscript", _export_torchscript), ("onnx", _export_onnx)):
        path = tmp / f"{name}.{RUNTIME_FILES[kind]}"
        seconds = export_quietly(exporter, model, example, path)
        runtimes[kind] = load_runtime(kind, path, threads)
        notes[kind] = f"export {seconds:.0f} s"
    try:
        import openvino  # noqa: F401
        runtimes["openvino"] = openvino_runtime(tmp / f"{name}.model.onnx", threads)
    except ImportError:
        notes["openvino"] = "skipped: `import openvino` fails (not installed)"

    # Each runtime predicts the same batches in turn, and its time is the sum over batches of its best
    # time for that batch across `--repeats` rounds: on a shared machine short samples catch quiet moments,
    # and load hits every runtime alike. A pause between runtimes lets the previous one's threads sleep.
    starts = range(0, len(waves), args.batch)
    for label, predict in runtimes.items():  # warm-up: every batch shape once (ORT / TorchScript specialise)
        for i in starts[:1] if label.startswith("naive") else starts:
            predict(waves[i:i + 1] if label.startswith("naive") else waves[i:i + args.batch])
    best = {label: [math.inf] * len(starts) for label in runtimes}
    probs = {label: [None] * len(starts) for label in runtimes}
    for _ in range(args.repeats):
        for k, i in enumerate(starts):
            for label, predict in runtimes.items():
                time.sleep(0.1)
                seconds, probs[label][k] = best_of(1, lambda predict=predict, i=i: predict(waves[i:i + args.batch]))
                best[label][k] = min(best[label][k], seconds)
    times = {label: sum(b) for label, b in best.items()}
    probs = {label: np.concatenate(p) for label, p in probs.items()}
    reference = probs[f"eager (channels_last, batch {args.batch})"]
    rows = [(label, len(waves) / times[label], float(np.abs(probs[label] - reference).max()), notes.get(label, ""))
            for label in runtimes]
    if "openvino" not in runtimes:
        rows.append(("openvino", float("nan"), float("nan"), notes["openvino"]))

    window_s = float(audio_cfg.window_s)
    kaggle_windows = 700 * 12
    scale = 4 / threads
    naive_rate = rows[0][1]
    print(f"\n{name} ({model_cfg.backbone}, random weights, {args.classes} classes): {len(waves)} windows, "
          f"probabilities in [{reference.min():.3f}, {reference.max():.3f}] (std {reference.std():.3f})")
    head = (f"{'runtime':<34}{'win/s':>8}{'x real time':>12}{'vs naive':>10}{'max|diff|':>11}"
            f"{'Kaggle min':>12}  note")
    print(head + "\n" + "-" * len(head))
    for label, rate, diff, note in rows:
        mark = " <- default (kernel.yaml)" if label == default_rt else ""
        if math.isnan(rate):
            print(f"{label:<34}{'-':>8}{'-':>12}{'-':>10}{'-':>11}{'-':>12}  {note}")
            continue
        kaggle_min = kaggle_windows / (rate * scale) / 60
        diff_txt = "ref" if label.startswith("eager") else f"{diff:.1e}"
        print(f"{label:<34}{rate:>8.1f}{rate * window_s:>12.1f}{rate / naive_rate:>9.2f}x{diff_txt:>11}"
              f"{kaggle_min:>12.1f}  {note}{mark}")
    exports = [(label, diff) for label, _, diff, _ in rows if label in ("torchscript", "onnx", "openvino")
               and not math.isnan(diff)]
    bad = [label for label, diff in exports if diff > TOL]
    print(f"export check (max abs diff vs eager <= {TOL:g}): {'ok' if not bad else 'FAILED for ' + ', '.join(bad)}")

    # end to end with the default runtime: decode + windows + model, as the kernel runs it
    default_predict = runtimes[default_rt]
    seconds, _ = best_of(min(args.repeats, 2), lambda: predict_soundscapes(
        files, default_predict, args.classes, int(audio_cfg.sample_rate), window_s, batch_size=args.batch))
    audio_s = len(waves) * window_s
    model_s = len(waves) / {r[0]: r[1] for r in rows}[default_rt]
    per_file_decode = decode_s / len(files)
    kaggle_e2e = (700 * per_file_decode + kaggle_windows / (len(waves) / model_s * scale)) / 60
    print(f"end to end, default runtime {default_rt} (predict_soundscapes, batch {args.batch}): {seconds:.2f} s for "
          f"{len(files)} files = {audio_s / seconds:.1f}x real time (decode + windows {decode_s:.2f} s, "
          f"model alone {model_s:.2f} s)")
    print(f"projected on Kaggle: 700 x 1 min soundscapes ({kaggle_windows} windows), 4 cores: {kaggle_e2e:.1f} min "
          f"(model scaled linearly x {scale:g} from {threads} threads, decode serial and unscaled) against the "
          f"90 min limit: {'fits' if kaggle_e2e < 90 else 'DOES NOT FIT'} "
          f"({90 / kaggle_e2e:.1f} models of this kind fit)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=default_root(), help="competition folder with test_soundscapes/")
    parser.add_argument("--files", type=int, default=3, help="use the first N test soundscapes")
    parser.add_argument("--models", default="effnet_b0,mobilenetv3_small", help="configs/model names, comma-separated")
    parser.add_argument("--batch", type=int, default=16,
                        help="windows per forward pass of the batched runtimes")
    parser.add_argument("--threads", type=int, default=0, help="torch / onnxruntime threads (0 = all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many runs")
    parser.add_argument("--classes", type=int, default=206, help="output classes (BirdCLEF 2025: 206)")
    args = parser.parse_args()
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    audio_cfg = OmegaConf.load(REPO / "configs" / "audio" / "default.yaml")
    default_rt = str(OmegaConf.load(REPO / "configs" / "kernel.yaml").runtime)
    files = find_soundscapes(args.root, args.files)
    sr, window = int(audio_cfg.sample_rate), round(audio_cfg.window_s * audio_cfg.sample_rate)

    decode_windows(files[:1], sr, window)  # warm: first decode (library loading)
    decode_s, waves = best_of(args.repeats, lambda: decode_windows(files, sr, window))
    audio_s = len(waves) * float(audio_cfg.window_s)
    print(f"{len(files)} soundscapes from {args.root / 'test_soundscapes'}: {len(waves)} windows "
          f"({audio_s:.0f} s of audio); {os.cpu_count()} cores, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, onnxruntime intra-op threads {threads}; best of {args.repeats}")
    print(f"decode + windowing (serial, soundfile + cut_windows): {decode_s:.2f} s = "
          f"{audio_s / decode_s:.0f}x real time")
    print(f"Kaggle min: 700 one-minute soundscapes x 12 windows at the measured rate x 4 Kaggle cores / {threads} "
          "threads used (a linear-scaling assumption), model only; vs naive: ratio of windows/s measured in this run")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results[name] = bench_model(name.strip(), args, waves, audio_cfg, default_rt, threads, decode_s, files,
                                        Path(tmp))
    if "effnet_b0" in results:
        rates = {label: rate for label, rate, _, _ in results["effnet_b0"]}
        ratio = rates[default_rt] / rates["naive (NCHW, batch 1, no_grad)"]
        print(f"target: effnet_b0 default runtime ({default_rt}) >= 5x naive: "
              f"{'met' if ratio >= 5 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
