"""Scale benchmark: does every stage grow linearly with the data, and does BirdCLEF 2025 fit?

    python bench/scale.py [--sizes 500 2000 8000] [--work /tmp/scale] [--workers 2] [--batches 100]
    python bench/scale.py --loader-memory --sizes 2000 [--loader-workers 8] [--batches 300]

For each size N a synthetic competition is written with `src.synth` (206 classes, N recordings with
BirdCLEF 2025's long tail `synth.long_tail=500`, log-normal lengths like xc45's, median 23 s, capped at
`--max-s` to keep disk and time small; unlabelled 60 s soundscapes in BirdCLEF 2025's proportion, 9,726 per
28,564 recordings, the first `--soundscape-pool` synthesised and the rest hard links to them), then each stage
runs in its own subprocess, which reports its wall time and peak RSS (`ru_maxrss`, itself and its pool workers)
above the RSS it had after its imports:

    folds      src.folds.write_folds (StratifiedGroupKFold by author + the repair)  size: recordings
    prepare    src.prepare.prepare (decode, int16 cache, chunk index, all soundscapes)  size: audio seconds
               decoded (recordings + soundscapes)
    loader     src.train's set-up (chunk index, fold split, ChunkDataset with wave augs + NoiseBank, sampler,
               DataLoader, `--workers` workers) and `--batches` batches of loading; model excluded  size: chunks
    oof        two runs x 5 folds of oof.parquet, written as src.train.finish does  size: chunks
    ensemble   src.ensemble's fit on that OOF: load_oof, nested_score of every blend, fit_weights  size: chunks
    pseudo     src.infer.soundscape.predict_soundscapes over every unlabelled soundscape with a dummy predict
               function (pseudo-labelling minus the model) and the labels' parquet  size: soundscapes
    kernel     the kernel's test side per file: predict_soundscapes + combine_members + write_submission
               over the soundscapes, as test files  size: soundscapes (projected to ~700 hidden test files)

`--report` reprints the table from `<work>/results.json`. It prints the table, the log-log slope of time and of memory (above the import baseline) against each
stage's size, and projects each stage to BirdCLEF 2025 with the larger of the slope and 1 (constant costs
make small runs look sublinear). `--loader-memory` instead measures the private memory of `--loader-workers`
DataLoader workers (from /proc/<pid>/smaps_rollup) while they load `--batches` batches.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np

N_CLASSES = 206
BIRDCLEF_2025 = {"recordings": 28564, "soundscapes": 9726, "ogg_bytes": 12e9, "test_soundscapes": 700}
XC45_OGG_BYTES_PER_S = 7869  # mean OGG bitrate of xc45's 66 real BirdCLEF 2025 recordings
XC45_LOG_SIGMA = 0.92  # spread of xc45's log durations
STAGES = ("folds", "prepare", "loader", "oof", "ensemble", "pseudo", "kernel")
SIZE_OF = {"folds": "recordings", "prepare": "audio_s", "loader": "chunks", "oof": "chunks", "ensemble": "chunks",
           "pseudo": "soundscapes", "kernel": "soundscapes"}
RUNS = ("scale_a", "scale_b")


# ------------------------------------------------------------------------------------------------ config

def train_config(root: Path, workers: int, *extra: str):
    """configs/train.yaml for the synthetic competition at `root` (cache, folds and runs beside it)."""
    from hydra import compose, initialize_config_dir

    from src import config as cfglib
    overrides = [f"data.root={root}", f"data.cache_dir={root.parent / 'cache'}", "data.name=scale",
                 f"folds.dir={root.parent / 'folds'}", f"runs_dir={root.parent / 'runs'}",
                 f"prepare.workers={workers}", "prepare.soundscapes=null", "model.pretrained=false", *extra]
    with initialize_config_dir(config_dir=cfglib.CONFIG_DIR, version_base=None):
        return compose(config_name="train", overrides=overrides)


def synth_config(n: int, max_s: float, pool: int, workers: int):
    """`synth:` for N recordings of 206 long-tailed classes (plus a pool of soundscapes)."""
    from hydra import compose, initialize_config_dir

    from src import config as cfglib
    overrides = [f"synth.n_species={N_CLASSES}", f"synth.n_recordings={n}", "synth.long_tail=500",
                 "synth.duration_lognormal=[23,0.92]", "synth.min_duration_s=2", f"synth.max_duration_s={max_s}",
                 "synth.n_short_recordings=0", f"synth.n_train_soundscapes={pool}", "synth.n_test_soundscapes=2",
                 f"synth.meta.n_authors={max(16, n // 4)}", f"synth.workers={workers}", "synth.progress=false"]
    with initialize_config_dir(config_dir=cfglib.CONFIG_DIR, version_base=None):
        return compose(config_name="synth", overrides=overrides).synth


def make_data(work: Path, n: int, args) -> Path:
    """Write (once) the size-N competition under work/n<N>/comp; soundscapes beyond the pool are hard links."""
    from src.synth import make_competition

    root = work / f"n{n}" / "comp"
    n_sc = max(1, round(n * BIRDCLEF_2025["soundscapes"] / BIRDCLEF_2025["recordings"]))
    if not (root / "train.csv").exists():
        t0 = time.perf_counter()
        make_competition(root, synth_config(n, args.max_s, min(args.soundscape_pool, n_sc), args.workers))
        print(f"  synth N={n}: {time.perf_counter() - t0:.0f} s", flush=True)
    sc = root / "train_soundscapes"
    pool = sorted(sc.glob("*.ogg"))
    for i in range(len(pool), n_sc):
        target = sc / f"train_soundscape_{i:05d}.ogg"
        if not target.exists():
            os.link(pool[i % len(pool)], target)
    return root


# ---------------------------------------------------------------------------------------------- stages

def _stage_folds(root: Path, args) -> dict:
    import contextlib
    import io

    from src.folds import write_folds
    cfg = train_config(root, args.workers)
    with contextlib.redirect_stdout(io.StringIO()):
        path = write_folds(cfg)
    import polars as pl
    return {"recordings": pl.read_csv(path).height}


def _stage_prepare(root: Path, args) -> dict:
    import contextlib
    import io
    import shutil

    from src.prepare import prepare
    cfg = train_config(root, args.workers)
    shutil.rmtree(cfg.data.cache_dir, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = prepare(cfg)
    import polars as pl
    rec = pl.read_parquet(Path(cfg.data.cache_dir) / "recordings.parquet")
    n_sc = len(list((Path(cfg.data.cache_dir) / "soundscapes").glob("*.npy")))
    return {"audio_s": float(rec["n_samples"].sum()) / int(cfg.audio.sample_rate), "chunks": manifest["chunks"],
            "soundscapes": n_sc, "silent_fraction": manifest["silent_fraction"]}


def build_loader(root: Path, workers: int, batches: int):
    """What src.train.train builds before the model: the fold-0 DataLoader (wave augs, NoiseBank) and its size."""
    import torch
    from torch.utils.data import DataLoader

    from src.data.audio_cache import load_chunk_index
    from src.data.augment import NoiseBank, build_wave_augment
    from src.data.dataset import ChunkDataset, rating_weights
    from src.data.samplers import build_sampler
    from src.data.splits import split_fold
    cfg = train_config(root, workers, f"train.num_workers={workers}")
    chunks, classes = load_chunk_index(cfg)
    train_df, val_df = split_fold(chunks, cfg)
    cache = Path(cfg.data.cache_dir)
    sr, window = int(cfg.audio.sample_rate), float(cfg.audio.window_s)
    noise = NoiseBank(sorted((cache / "soundscapes").glob("*.npy")))
    wave_aug = build_wave_augment(cfg.aug.wave, sr, noise)
    jitter = (cfg.prepare.chunk_s - cfg.prepare.overlap_s) / 2
    train_ds = ChunkDataset(train_df, cache, classes, sr, window, cfg.labels.secondary, jitter, wave_aug,
                            rating_weights(cfg.labels))
    ChunkDataset(val_df, cache, classes, sr, window, cfg.labels.secondary)
    sampler = build_sampler(cfg.sampler, train_df["primary_label"].to_numpy(), cfg.seed)
    torch.manual_seed(0)
    loader = DataLoader(train_ds, batch_size=int(cfg.train.batch_size), sampler=sampler, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0)
    return loader, chunks.filter(~chunks["silent"]).height, min(batches, len(loader))


def _stage_loader(root: Path, args) -> dict:
    t0 = time.perf_counter()
    loader, n_chunks, batches = build_loader(root, args.workers, args.batches)
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    for i, _ in enumerate(loader):
        if i + 1 >= batches:
            break
    load = time.perf_counter() - t1
    return {"chunks": n_chunks, "setup_s": setup, "batches": batches,
            "samples_per_s": batches * loader.batch_size / load}


def _dummy_probs(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Probabilities that rank the truth above chance (so the blend fit has something to find)."""
    return (1 / (1 + np.exp(-(rng.standard_normal(y.shape, np.float32) + 2 * y - 3)))).astype(np.float32)


def _stage_oof(root: Path, args) -> dict:
    import polars as pl
    from omegaconf import OmegaConf

    from src.data.audio_cache import load_chunk_index
    from src.data.splits import split_fold
    from src.evaluation.metrics import primary_one_hot
    from src.infer.io import atomic_write
    cfg = train_config(root, args.workers)
    chunks, classes = load_chunk_index(cfg)
    rows = 0
    for k, run in enumerate(RUNS):
        rng = np.random.default_rng(k)
        for fold in range(int(cfg.folds.n)):
            _, val_df = split_fold(chunks, train_config(root, args.workers, f"fold={fold}"))
            probs = _dummy_probs(primary_one_hot(val_df["primary_label"].to_list(), classes), rng)
            run_dir = Path(cfg.runs_dir) / run / f"fold{fold}"
            run_dir.mkdir(parents=True, exist_ok=True)
            oof = val_df.select("filename", "chunk", "start_s", "end_s", "primary_label",
                                "secondary_labels").with_columns(
                [pl.Series(c, probs[:, i], dtype=pl.Float32) for i, c in enumerate(classes)])
            with atomic_write(run_dir / "oof.parquet") as tmp:
                oof.write_parquet(tmp)
            OmegaConf.save(OmegaConf.create({"classes": classes}), run_dir / "config.yaml")
            (run_dir / "best.pt").touch()
            rows += val_df.height
    return {"chunks": rows // len(RUNS)}


def _stage_ensemble(root: Path, args) -> dict:
    from hydra import compose, initialize_config_dir

    from src import config as cfglib
    from src.ensemble import fit_weights, load_oof, nested_score
    from src.evaluation.metrics import primary_one_hot
    from src.infer.blend import BLENDS
    with initialize_config_dir(config_dir=cfglib.CONFIG_DIR, version_base=None):
        ens = compose(config_name="ensemble").ensemble
    base, oof, classes = load_oof(root.parent / "runs", list(RUNS))
    y = primary_one_hot(base["primary_label"].to_list(), classes)
    groups = base["fold"].to_numpy()
    fit = ens.fit
    # BirdCLEF 2025's ~266k OOF rows are far above ensemble.fit.max_rows: --fit-rows puts every bench size in
    # that regime too (the weights fitted on a fixed-size subset, the nested blends scored on all rows)
    max_rows = args.fit_rows or fit.get("max_rows")
    table = {m: nested_score(oof, y, groups, m, "auc", float(ens.power), int(fit.restarts), max_rows)
             for m in BLENDS}
    method = max(table, key=table.get)
    fit_weights(oof, y, method, "auc", float(ens.power), int(fit.restarts), max_rows=max_rows)
    return {"chunks": base.height, "nested_auc": table, "fit_rows": max_rows,
            "scored_classes": int((y.sum(axis=0) > 0).sum())}


def _dummy_predict(batch: np.ndarray) -> np.ndarray:
    """(B, samples) -> (B, 206): a fixed function of each window's loudness (the model's cost excluded)."""
    rms = np.sqrt(np.mean(np.square(batch), axis=1, keepdims=True))
    return (1 / (1 + np.exp(-(np.log(rms + 1e-6) + np.linspace(-3, 3, N_CLASSES))))).astype(np.float32)


def _stage_pseudo(root: Path, args) -> dict:
    import polars as pl

    from src.data.competition import load_competition
    from src.infer.io import atomic_write
    from src.infer.soundscape import predict_soundscapes
    comp = load_competition(root, "birdclef2025")
    files = comp.soundscape_files()
    ids, probs, _ = predict_soundscapes(files, _dummy_predict, N_CLASSES, 32000, 5.0, batch_size=64)
    stem, end = zip(*(r.rsplit("_", 1) for r in ids))
    end_s = np.array(end, np.float64)
    frame = pl.DataFrame({"filename": [f"{s}.ogg" for s in stem], "window": (end_s // 5 - 1).astype(np.int32),
                          "start_s": end_s - 5, "end_s": end_s}).with_columns(
        [pl.Series(c, probs[:, i]) for i, c in enumerate(comp.classes)])
    with atomic_write(root.parent / "pseudo.parquet") as tmp:
        frame.write_parquet(tmp)
    return {"soundscapes": len(files), "rows": len(ids)}


def _stage_kernel(root: Path, args) -> dict:
    from src.data.competition import load_competition
    from src.infer.blend import combine_members
    from src.infer.soundscape import predict_soundscapes
    from src.infer.submission import write_submission
    comp = load_competition(root, "birdclef2025")
    files = comp.soundscape_files()
    ids, probs, _ = predict_soundscapes(files, _dummy_predict, N_CLASSES, 32000, 5.0, batch_size=16)
    post = {"smoothing": [0.1, 0.8, 0.1], "file_prior": {"mode": "max", "power": 0.5, "weight": 0.5}}
    out = combine_members([probs, probs[::-1].copy()], [0.5, 0.5], "weighted", 2.0, ids, post,
                          np.zeros(N_CLASSES, np.float32))
    write_submission(root.parent / "submission.csv", ids, comp.classes, out)
    return {"soundscapes": len(files), "rows": len(ids)}


def _rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def run_stage(stage: str, root: Path, args) -> dict:
    """In this (fresh) process: the stage's wall time and peak RSS above the post-import baseline."""
    import polars  # noqa: F401  (the imports every stage shares count as baseline)
    import torch  # noqa: F401

    import src.train  # noqa: F401
    base = _rss_mb(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = globals()[f"_stage_{stage}"](root, args)
    out["time_s"] = time.perf_counter() - t0
    out["rss_mb"] = _rss_mb(resource.RUSAGE_SELF)
    out["base_mb"] = base
    out["child_rss_mb"] = _rss_mb(resource.RUSAGE_CHILDREN)
    return out


# ---------------------------------------------------------------------------------------- loader memory

def _smaps(pid: int) -> dict[str, int]:
    """/proc/<pid>/smaps_rollup in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0])
    return out


def loader_memory(root: Path, workers: int, batches: int) -> dict:
    """Private memory of the DataLoader workers (sum over workers, MB) before and after loading `batches`."""
    loader, n_chunks, batches = build_loader(root, workers, batches)
    it = iter(loader)
    next(it)
    pids = [w.pid for w in it._workers]  # the only handle on the worker processes
    first = {p: _smaps(p) for p in pids}
    peak: dict[int, dict[str, int]] = dict(first)
    for i in range(1, batches):
        next(it)
        if i % 20 == 0:
            for p in pids:
                now = _smaps(p)
                peak[p] = {k: max(v, now.get(k, 0)) for k, v in peak[p].items()}

    def total(snap: dict[int, dict[str, int]], *keys: str) -> float:
        return sum(s[k] for s in snap.values() for k in keys) / 1024

    main = _smaps(os.getpid())
    return {"workers": workers, "batches": batches, "chunks": n_chunks,
            "cache_mb": sum(p.stat().st_size for p in (root.parent / "cache").rglob("*.npy")) / 1e6,
            "main_rss_mb": main["Rss"] / 1024,
            "workers_rss_mb": total(peak, "Rss"), "workers_pss_mb": total(peak, "Pss"),
            "workers_private_mb": total(peak, "Private_Clean", "Private_Dirty"),
            "workers_private_dirty_mb": total(peak, "Private_Dirty"),
            "workers_anonymous_mb": total(peak, "Anonymous"),
            "workers_anonymous_first_mb": total(first, "Anonymous")}


# ----------------------------------------------------------------------------------------- projection

def birdclef_2025_sizes(max_duration_s: float | None, seed: int = 0) -> dict[str, float]:
    """BirdCLEF 2025's stage sizes: durations log-normal with xc45's spread, scaled so that their total is
    12 GB of OGG at xc45's bitrate; chunks as src.data.chunks cuts them (5 s every 4 s); the decoded audio
    includes the 60 s soundscapes."""
    mean_s = BIRDCLEF_2025["ogg_bytes"] / XC45_OGG_BYTES_PER_S / BIRDCLEF_2025["recordings"]
    rng = np.random.default_rng(seed)
    d = np.exp(XC45_LOG_SIGMA * rng.standard_normal(BIRDCLEF_2025["recordings"]))
    d *= mean_s / d.mean()
    if max_duration_s is not None:
        d = np.minimum(d, max_duration_s)
    chunks = 1 + np.ceil(np.maximum(d - 5, 0) / 4)
    return {"recordings": BIRDCLEF_2025["recordings"], "audio_s": float(d.sum()), "chunks": float(chunks.sum()),
            "soundscapes": BIRDCLEF_2025["soundscapes"], "decoded_s": float(d.sum()) + 60 * BIRDCLEF_2025["soundscapes"],
            "test_soundscapes": BIRDCLEF_2025["test_soundscapes"]}


def slope(x: list[float], y: list[float]) -> float:
    """Log-log least-squares slope of y against x."""
    if len(x) < 2 or min(y) <= 0:
        return float("nan")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def _size(stage: str, stage_results: dict[str, dict]) -> float:
    """The stage's size at one N; prepare's is all audio it decoded (recordings + 60 s soundscapes)."""
    if stage == "prepare":
        return stage_results["prepare"]["audio_s"] + 60 * stage_results["pseudo"]["soundscapes"]
    return float(stage_results[stage][SIZE_OF[stage]])


def _target(stage: str, target: dict[str, float], silent: float) -> float:
    key = SIZE_OF[stage]
    if stage == "prepare":
        return target["decoded_s"]
    if stage == "kernel":
        return target["test_soundscapes"]
    return target[key] * (1 - silent) if key == "chunks" else target[key]


def report(results: dict[int, dict[str, dict]], cap: float | None) -> None:
    """The table, the slopes and the BirdCLEF 2025 projection (non-silent chunks for the chunk stages)."""
    sizes = sorted(n for n in results if all(s in results[n] for s in STAGES))
    silent = float(np.mean([results[n]["prepare"]["silent_fraction"] for n in sizes]))
    target = birdclef_2025_sizes(cap)
    print(f"\n{'stage':9s} {'size':>12s}" + "".join(f" {'N=' + str(n):>17s}" for n in sizes)
          + f" {'slope t':>8s} {'slope m':>8s}   BirdCLEF 2025: size, time, peak RSS")
    for stage in STAGES:
        rows = [results[n][stage] for n in sizes]
        x = [_size(stage, results[n]) for n in sizes]
        t = [r["time_s"] for r in rows]
        m = [max(r["rss_mb"] - r["base_mb"], 1.0) for r in rows]
        st, sm = slope(x, t), slope(x, m)
        goal = _target(stage, target, silent)
        grow = goal / x[-1]
        t_proj = t[-1] * grow ** max(st, 1.0)
        m_proj = rows[-1]["base_mb"] + m[-1] * grow ** max(sm, 1.0)
        cells = "".join(f" {r['time_s']:7.1f}s {r['rss_mb']:5.0f}MB" for r in rows)
        print(f"{stage:9s} {SIZE_OF[stage]:>12s}{cells} {st:8.2f} {sm:8.2f}   {goal:10.0f} "
              f"{t_proj / 60:8.1f} min {m_proj / 1024:6.1f} GB")
    for n in sizes:
        print(f"N={n}: " + ", ".join(f"{_size(s, results[n]):.0f} {SIZE_OF[s]}" for s in ("folds", "prepare", "loader",
                                                                                          "pseudo"))
              + f"; prepare's pool workers peak {results[n]['prepare']['child_rss_mb']:.0f} MB; loader "
              f"{results[n]['loader']['samples_per_s']:.0f} samples/s, set-up {results[n]['loader']['setup_s']:.1f} s")
    print(f"BirdCLEF 2025 at {'max_duration_s=' + str(cap) if cap else 'no cap'}: {target['recordings']} recordings, "
          f"{target['audio_s'] / 3600:.0f} h (+ {target['soundscapes']} soundscapes, {target['soundscapes'] / 60:.0f} h), "
          f"{target['chunks'] * (1 - silent):.0f} non-silent chunks (silent fraction {silent:.0%} as measured here); "
          f"kernel: {target['test_soundscapes']} test soundscapes")
    for cap_s in (None, 60.0, 30.0):
        t2025 = birdclef_2025_sizes(cap_s)
        soundscape_bytes = BIRDCLEF_2025["soundscapes"] * 60 * 32000 * 2
        print(f"  cache {'uncapped' if cap_s is None else f'max_duration_s={cap_s:.0f}'}: recordings "
              f"{t2025['audio_s'] * 32000 * 2 / 1e9:.0f} GB ({t2025['audio_s'] / 3600:.0f} h) + all unlabelled "
              f"soundscapes {soundscape_bytes / 1e9:.0f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/scale"))
    ap.add_argument("--workers", type=int, default=2, help="synth/prepare processes and loader workers")
    ap.add_argument("--max-s", type=float, default=20.0, help="synthetic recordings are at most this long")
    ap.add_argument("--soundscape-pool", type=int, default=20, help="distinct 60 s soundscapes synthesised")
    ap.add_argument("--batches", type=int, default=100, help="batches loaded by the loader stage")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--fit-rows", type=int, default=None,
                    help="ensemble.fit.max_rows for the ensemble stage (default: the config's)")
    ap.add_argument("--cap", type=float, default=60.0, help="BirdCLEF 2025 projection at this max_duration_s")
    ap.add_argument("--loader-memory", action="store_true")
    ap.add_argument("--report", action="store_true", help="reprint the table of <work>/results.json")
    ap.add_argument("--loader-workers", type=int, default=8)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:  # child process: one stage, JSON on the last line
        print(json.dumps(run_stage(args.stage, args.root, args)))
        return
    if args.loader_memory:
        root = make_data(args.work, args.sizes[0], args)
        print(json.dumps(loader_memory(root, args.loader_workers, args.batches), indent=1))
        return
    out = args.work / "results.json"
    if args.report:
        report({int(k): v for k, v in json.loads(out.read_text()).items()}, args.cap)
        return
    results: dict[int, dict[str, dict]] = {}
    for n in args.sizes:
        root = make_data(args.work, n, args)
        results[n] = {}
        for stage in args.stages:
            cmd = [sys.executable, __file__, "--stage", stage, "--root", str(root), "--workers", str(args.workers),
                   "--batches", str(args.batches), *(["--fit-rows", str(args.fit_rows)] if args.fit_rows else [])]
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO)
            if proc.returncode:
                print(f"  N={n} {stage} failed:\n{proc.stderr[-3000:]}", flush=True)
                break
            results[n][stage] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = results[n][stage]
            print(f"  N={n} {stage:9s} {r['time_s']:8.1f} s  peak {r['rss_mb']:6.0f} MB (base {r['base_mb']:.0f})"
                  f"  {SIZE_OF[stage]}={r.get(SIZE_OF[stage])}", flush=True)
        out.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    report(results, args.cap)


if __name__ == "__main__":
    main()
