"""Benchmark of CPU soundscape inference: our runtimes against the usual notebook loop, same audio.

    python bench/inference.py [--root DIR] [--files 3] [--models effnet_b0,mobilenetv3_small]
                              [--batch 16] [--threads 0] [--repeats 3] [--classes 206]

Audio: the first `--files` test soundscapes of `--root` (default ../shared/xc45 if present, else
data/demo, written by `python -m src.synth` if absent), decoded and cut into 5 s windows once.
Models: `configs/model/<name>.yaml` with random weights (model.pretrained=false: speed does not
depend on the weights), `configs/audio/default.yaml` (32 kHz, mel 128 x 313 in the graph).
Per model, windows/second and real-time factor (audio seconds per wall second) of:
- naive: eager PyTorch in NCHW, batch 1, a Python loop over windows under torch.no_grad, the
  mel front end with torchaudio's stock MelSpectrogram then `forward_mel` (what a typical public
  notebook does);
- eager: channels_last + inference_mode, batched (`src.models.export.eager_predict`);
- torchscript (`model.ts`, whole model), onnx and openvino (`frontend.ts` mel front end in torch +
  `backbone.onnx` in onnxruntime / OpenVINO): `src.models.export`'s exporters, run by
  `src.infer.runtimes.load_runtime`, batched; openvino is skipped with a note if it does not import;
- parts (not runtimes): the front end alone and the backbone alone (on precomputed mels), which
  bound what any split runtime can reach on this machine.
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
import importlib.util
import io
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import torch
from omegaconf import OmegaConf

from bench.timing import best_of
from src.infer.audio import load_audio
from src.infer.runtimes import (
    RUNTIME_FILES,
    RUNTIME_MODULES,
    load_backbone,
    load_models,
    load_runtime,
    load_torchscript,
)
from src.infer.soundscape import cut_windows, n_windows, predict_soundscapes
from src.models.export import EXPORTERS, eager_predict
from src.models.model import ProbabilityModel, build_model

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
    """The notebook loop: torchaudio's stock MelSpectrogram, NCHW weights and mel, one window at a time,
    torch.no_grad."""
    bird = model.model  # BirdModel.forward would switch the mel to channels_last: call its parts
    bird.frontend.power_mel = bird.frontend.mel  # torchaudio's |X|^2 (complex abs), not our re^2 + im^2

    def predict(waves: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for w in waves:
                mel = bird.frontend(torch.from_numpy(w)[None])
                out.append(torch.sigmoid(bird.forward_mel(mel)).numpy())
        return np.concatenate(out)

    return predict


def export_quietly(exporter: Callable, model: torch.nn.Module, example: torch.Tensor, out_dir: Path) -> float:
    """Run one of src.models.export's exporters with its progress prints swallowed; returns seconds taken."""
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):
        exporter(model, example, out_dir, int(OmegaConf.load(REPO / "configs" / "kernel.yaml").export_max_batch))
    return time.perf_counter() - t0


def component_runtimes(out_dir: Path, threads: int, waves: np.ndarray, batch: int) -> dict[str, Callable]:
    """The split export's halves alone, to show where the time goes: the front end (frontend.ts) on the
    waveforms, and the backbone (backbone.onnx in onnxruntime / OpenVINO) on mels computed beforehand."""
    front = load_torchscript(out_dir / "frontend.ts", threads)
    mels = {i: front(waves[i:i + batch]) for i in range(0, len(waves), batch)}
    parts = {"  part: front end (frontend.ts)": front}
    for kind, label in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        if importlib.util.find_spec(RUNTIME_MODULES[kind]) is not None:
            backbone = load_backbone(kind, out_dir / "backbone.onnx", threads)
            parts[f"  part: backbone ({label})"] = lambda batch_waves, i, backbone=backbone: backbone(mels[i])
    return parts


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
                                     f"eager (channels_last, batch {args.batch})": eager_predict(model)}
    notes = {}
    out_dir = tmp / name
    done: dict[tuple[str, ...], float] = {}
    for kind in RUNTIME_FILES:
        if kind in ("openvino",) and importlib.util.find_spec("openvino") is None:
            notes[kind] = "skipped: `import openvino` fails (not installed)"
            continue
        if RUNTIME_FILES[kind] not in done:  # onnx and openvino share frontend.ts + backbone.onnx
            done[RUNTIME_FILES[kind]] = export_quietly(EXPORTERS[kind], model, example, out_dir)
        runtimes[kind] = load_runtime(kind, out_dir, threads)
        notes[kind] = " + ".join(RUNTIME_FILES[kind]) + f" (export {done[RUNTIME_FILES[kind]]:.0f} s)"
    parts = component_runtimes(out_dir, threads, waves, args.batch)

    # Each runtime predicts the same batches in turn, and its time is the sum over batches of its best
    # time for that batch across `--repeats` rounds: on a shared machine short samples catch quiet moments,
    # and load hits every runtime alike. A pause between runtimes lets the previous one's threads sleep.
    starts = range(0, len(waves), args.batch)
    calls = {label: (lambda i, predict=predict: predict(waves[i:i + args.batch])) for label, predict in runtimes.items()}
    calls |= {label: (lambda i, part=part: part(waves[i:i + args.batch], i)) if "backbone" in label
              else (lambda i, part=part: part(waves[i:i + args.batch])) for label, part in parts.items()}
    for label, call in calls.items():  # warm-up: every batch shape once (ORT / TorchScript specialise)
        for i in starts[:1] if label.startswith("naive") else starts:
            call(i)
    best = {label: [math.inf] * len(starts) for label in calls}
    probs = {label: [None] * len(starts) for label in runtimes}
    for _ in range(args.repeats):
        for k, i in enumerate(starts):
            for label, call in calls.items():
                time.sleep(0.1)
                seconds, out = best_of(1, lambda call=call, i=i: call(i))
                best[label][k] = min(best[label][k], seconds)
                if label in probs:
                    probs[label][k] = out
    times = {label: sum(b) for label, b in best.items()}
    probs = {label: np.concatenate(p) for label, p in probs.items()}
    reference = probs[f"eager (channels_last, batch {args.batch})"]
    rows = [(label, len(waves) / times[label], float(np.abs(probs[label] - reference).max()), notes.get(label, ""))
            for label in runtimes]
    rows += [(label, len(waves) / times[label], float("nan"), "not a runtime: where the split runtimes' time goes")
             for label in parts]
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
        diff_txt = "ref" if label.startswith("eager") else "-" if math.isnan(diff) else f"{diff:.1e}"
        print(f"{label:<34}{rate:>8.1f}{rate * window_s:>12.1f}{rate / naive_rate:>9.2f}x{diff_txt:>11}"
              f"{kaggle_min:>12.1f}  {note}{mark}")
    exports = [(label, diff) for label, _, diff, _ in rows if label in ("torchscript", "onnx", "openvino")
               and not math.isnan(diff)]
    bad = [label for label, diff in exports if diff > TOL]
    print(f"export check (max abs diff vs eager <= {TOL:g}): {'ok' if not bad else 'FAILED for ' + ', '.join(bad)}")

    rate = {label: r for label, r, _, _ in rows}
    naive_ms = 1e3 / rate["naive (NCHW, batch 1, no_grad)"]
    front_ms = 1e3 / rate["  part: front end (frontend.ts)"]
    backbone_ms = {label.split("(")[1].rstrip(")"): 1e3 / r for label, r in rate.items() if "part: backbone" in label}
    fastest = min(backbone_ms, key=backbone_ms.get)
    print(f"where the time goes (ms/window): naive {naive_ms:.1f}; front end {front_ms:.1f}; backbone "
          + ", ".join(f"{k} {v:.1f}" for k, v in backbone_ms.items())
          + f". Bound for a split runtime: naive / (front end + {fastest} backbone) = "
          f"{naive_ms / (front_ms + backbone_ms[fastest]):.2f}x; with a free front end "
          f"{naive_ms / backbone_ms[fastest]:.2f}x")

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
    bench_grouped(default_rt, out_dir, files, args, audio_cfg, threads)
    return rows


def bench_grouped(kind: str, out_dir: Path, files: list[Path], args, audio_cfg, threads: int) -> None:
    """An ensemble of `--members` models as the kernel runs it (one decoding pass, one mel per front end:
    `load_models`) against one `predict_soundscapes` pass per model, on the same files."""
    k, sr, window_s = args.members, int(audio_cfg.sample_rate), float(audio_cfg.window_s)
    separate = [load_runtime(kind, out_dir, threads) for _ in range(k)]
    grouped = load_models(kind, [out_dir] * k, ["same"] * k, threads)

    def one_pass_per_model() -> np.ndarray:
        return np.concatenate([predict_soundscapes(files, p, args.classes, sr, window_s, batch_size=args.batch)[1]
                               for p in separate], axis=1)

    def kernel_grouped() -> np.ndarray:
        return predict_soundscapes(files, grouped, args.classes * k, sr, window_s, batch_size=args.batch)[1]

    kernel_grouped(), one_pass_per_model()  # warm-up
    best = {"one pass per model": math.inf, "grouped": math.inf}
    for _ in range(args.repeats):
        for label, fn in (("one pass per model", one_pass_per_model), ("grouped", kernel_grouped)):
            time.sleep(0.1)
            best[label] = min(best[label], best_of(1, fn)[0])
    diff = float(np.abs(kernel_grouped() - one_pass_per_model()).max())
    print(f"ensemble of {k} models, {kind}, {len(files)} files end to end: one predict_soundscapes pass per model "
          f"{best['one pass per model']:.2f} s, the kernel's grouped pass (decode once, mel once) "
          f"{best['grouped']:.2f} s = {best['one pass per model'] / best['grouped']:.2f}x (max abs diff {diff:.1e})")


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
    parser.add_argument("--members", type=int, default=3, help="models in the grouped-ensemble comparison")
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
