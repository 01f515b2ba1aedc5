"""BirdNET's TFLite model on the CPU: milliseconds per 3 s window by teacher batch size, thread count and workers
(copies of the network run side by side, `threads // workers` threads each).

`python bench/teacher_batch.py --windows 192 --batches 1,8 --threads 2 --workers 1,2`. Prints one line per
setting, all measured in one run, with each time relative to one worker at the same threads and batch, which
is what `configs/kernel.yaml: teacher_batch_size` and `teacher_workers` are chosen from.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from src.infer.runtimes import TeacherModel
from src.teacher import birdnet_files


def ms_per_window(windows: np.ndarray, batch: int, threads: int, workers: int = 1) -> float:
    """Milliseconds per window through TeacherModel (one warm-up call first)."""
    spec = {"sample_rate": 48000, "window_s": 3.0, "offsets_s": [0.0], "outputs": {"scores": 0,
            "embedding": "before_scores"}, "activation": "sigmoid", "batch_size": batch, "workers": workers}
    model = TeacherModel(spec, birdnet_files()[0], threads)
    model(windows[:batch * workers] + 1e-3)  # warm-up: XNNPACK builds its kernels on the first call
    t0 = time.perf_counter()
    model(windows)
    return (time.perf_counter() - t0) / len(windows) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--windows", type=int, default=192)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    windows = np.random.default_rng(0).standard_normal((args.windows, 144000)).astype(np.float32) * 0.1
    for threads in map(int, args.threads.split(",")):
        for batch in map(int, args.batches.split(",")):
            times = {w: ms_per_window(windows, batch, threads, w) for w in map(int, args.workers.split(","))
                     if w <= threads}
            for w, ms in times.items():
                ratio = f"  x{ms / times[1]:.2f} of 1 worker" if 1 in times else ""
                print(f"threads {threads}  batch {batch:3d}  workers {w}  {ms:6.1f} ms/window{ratio}", flush=True)


if __name__ == "__main__":
    main()
