"""BirdNET's TFLite model on the CPU: milliseconds per 3 s window by teacher batch size and thread count.

`python bench/teacher_batch.py --windows 192 --batches 1,2,8 --threads 1,2`. Prints one line per setting, all
measured in one run, and each batch size's time relative to batch 8 (the teacher config's default), which is
what `configs/kernel.yaml: teacher_batch_size` is chosen from.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from src.infer.runtimes import TeacherModel
from src.teacher import birdnet_files


def ms_per_window(windows: np.ndarray, batch: int, threads: int) -> float:
    """Milliseconds per window through TeacherModel (one warm-up call first)."""
    spec = {"sample_rate": 48000, "window_s": 3.0, "offsets_s": [0.0], "outputs": {"scores": 0,
            "embedding": "before_scores"}, "activation": "sigmoid", "batch_size": batch}
    model = TeacherModel(spec, birdnet_files()[0], threads)
    model(windows[:batch] + 1e-3)  # warm-up: XNNPACK builds its kernels on the first call
    t0 = time.perf_counter()
    model(windows)
    return (time.perf_counter() - t0) / len(windows) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--windows", type=int, default=192)
    ap.add_argument("--batches", default="1,2,8")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    windows = np.random.default_rng(0).standard_normal((args.windows, 144000)).astype(np.float32) * 0.1
    for threads in map(int, args.threads.split(",")):
        times = {b: ms_per_window(windows, b, threads) for b in map(int, args.batches.split(","))}
        for b, ms in times.items():
            ratio = f"  x{ms / times[8]:.2f} of batch 8" if 8 in times else ""
            print(f"threads {threads}  batch {b:3d}  {ms:6.1f} ms/window{ratio}")


if __name__ == "__main__":
    main()
