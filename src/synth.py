"""A deterministic synthetic bird-audio competition in the BirdCLEF 2025 Kaggle layout (or 2026's).

`python -m src.synth` writes `synth.out` (default `data/demo/`):

    train.csv, taxonomy.csv, sample_submission.csv, solution.csv
    train_audio/<label>/<XC|iNat><id>.ogg      5-30 s recordings (plus very short ones)
    train_soundscapes/train_soundscape_XXX.ogg  unlabelled 60 s soundscapes, most with calls of 1-3 species
    train_soundscapes_truth.csv                 their per-window truth (solution layout), for measuring
                                                pseudo-labels only: nothing trains on it
    test_soundscapes/soundscape_XXX.ogg         60 s, 1-3 species; truth in solution.csv

With `synth.layout=birdclef2026` it is laid out as BirdCLEF+ 2026 ships its data: soundscape names carry a site,
a date and a time (`BC2026_Train_0001_S03_20250312_061500.ogg`), non-bird species are added (an insect sonotype's
pulse train, a frog's croaks; `class_name` Insecta / Amphibia, calling at night), the last `birdclef2026.no_clip`
species have no clip in train_audio/ (they call only in soundscapes), and the first `birdclef2026.n_labelled`
train soundscapes get expert labels in `train_soundscapes_labels.csv` (hh:mm:ss, `;`-joined, every row twice).

Every species has its own call shape in its own frequency band, so a small log-mel CNN can learn them.
Planning (metadata, SNRs, which species where) uses one seeded generator in the main process; every audio
file is rendered from its own seed, so the output is the same for any number of worker processes.

It stays in the package (not under tests/ or bench/) because it is a stage users run: `make demo`
starts with it, the test pipeline and the benchmarks generate their competitions with it, and it is the
only competition a fresh clone has without a Kaggle download.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import polars as pl
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from src.data.noise import noise_bed, shaped_noise
from src.infer.audio import write_ogg
from src.infer.submission import row_ids

log = logging.getLogger(__name__)

TRAIN_COLUMNS = (
    "primary_label", "secondary_labels", "type", "latitude", "longitude", "scientific_name", "common_name",
    "class_name", "author", "license", "rating", "url", "filename", "collection",
)
TRAIN_COLUMNS_2026 = (
    "primary_label", "secondary_labels", "type", "latitude", "longitude", "scientific_name", "common_name",
    "class_name", "inat_taxon_id", "author", "license", "rating", "url", "filename", "collection",
)
TAXONOMY_COLUMNS = ("primary_label", "inat_taxon_id", "scientific_name", "common_name", "class_name")
LABELS_CSV = "train_soundscapes_labels.csv"  # birdclef2026: the labelled train soundscapes' windows

# Independent random streams: adding a file of one kind never reshuffles the others.
_PLAN, _REC, _AMBIENT, _TEST, _NAMES = 0, 1, 2, 3, 4
TRUTH_CSV = "train_soundscapes_truth.csv"  # the unlabelled soundscapes' truth, beside solution.csv


@dataclass(frozen=True)
class Species:
    """One synthetic species: a call shape (`kind`) in the band f_lo..f_hi Hz."""

    label: str
    common_name: str
    scientific_name: str
    call_type: str               # train.csv `type`
    kind: str                    # synthesis routine in synth_call
    f_lo: float
    f_hi: float
    dur: tuple[float, float]     # call duration range, s
    rate: float = 0.0            # Hz: AM (trill, buzz), pulse (chirp_train) or FM (warble) rate
    harmonics: int = 1
    pulse_s: float = 0.0         # chirp_train: length of one chirp
    class_name: str = "Aves"     # taxonomy.csv `class_name` (birdclef2026: Insecta, Amphibia too)


# The call-shape table, one species a line. Bands are staggered so that the species differ in pitch as well as
# in shape.
CALL_SHAPES: tuple[Species, ...] = (
    Species("rising_whistler", "Rising Whistler", "Synthavis ascendens", "call", "upsweep", 2000, 3400, (0.25, 0.45), harmonics=2),
    Species("falling_seedeater", "Falling Seedeater", "Synthavis descendens", "call", "downsweep", 6800, 8800, (0.3, 0.5), harmonics=2),
    Species("reeling_trillbird", "Reeling Trillbird", "Synthavis tremulus", "song", "trill", 6000, 6400, (0.8, 1.6), rate=28),
    Species("harmonic_crowlet", "Harmonic Crowlet", "Synthavis harmonicus", "call", "stack", 520, 600, (0.3, 0.6), harmonics=6),
    Species("ticking_chirper", "Ticking Chirper", "Synthavis tictac", "call", "chirp_train", 8500, 10500, (0.5, 0.9), rate=11, pulse_s=0.035),
    Species("buzzy_bunting", "Buzzy Bunting", "Synthavis bombus", "song", "buzz", 4600, 5600, (0.4, 0.8), rate=85),
    Species("feebee_tit", "Fee-bee Tit", "Synthavis duplex", "song", "two_note", 3700, 4300, (0.5, 0.75), harmonics=2),
    Species("wobbling_warbler", "Wobbling Warbler", "Synthavis vibrans", "song", "warble", 1100, 1700, (0.6, 1.0), rate=9),
)
# birdclef2026's non-bird species: an insect sonotype (a fast pulse train, continuous) and a frog (slow croaks)
NON_BIRD_SHAPES: tuple[Species, ...] = (
    Species("47158son16", "Sonotype 16", "Insecta sonotypus", "call", "chirp_train", 11000, 11800, (1.5, 2.5),
            rate=40, pulse_s=0.012, class_name="Insecta"),
    Species("croaking_frog", "Croaking Frog", "Synthrana raucus", "call", "croak", 350, 700, (0.6, 1.1), rate=14,
            harmonics=4, class_name="Amphibia"),
)
_MAX_F = 0.45        # highest synthesised frequency, fraction of the sample rate (no aliasing)
_TWO_NOTE = (0.4, 0.55)  # two_note: first note ends, second note starts (fractions of the call)

_FIRST = ("Ana", "Bruno", "Carla", "Diego", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Kofi",
          "Lena", "Mateo", "Nadia", "Oscar", "Paula")
_LAST = ("Alves", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito", "Jensen",
         "Kowalski", "Lopez", "Moreau", "Novak", "Okafor", "Petrov")
_LICENSES = ("CC BY-NC-SA 4.0", "CC BY-NC-ND 4.0", "CC BY-SA 4.0", "CC BY 4.0", "CC0")


# ----------------------------------------------------------------------------------------------- species

def _variants(cfg: Any, n: int) -> list[dict]:
    """`cfg.variants`, then as many generated ones (pitches spread over `cfg.variant_pitch`) as `n` species need."""
    variants = list(cfg.variants)
    missing = -(-n // len(CALL_SHAPES)) - 1 - len(variants)
    pitch_range = cfg.get("variant_pitch")
    if missing <= 0 or pitch_range is None:
        return variants
    grid = np.geomspace(float(pitch_range[0]), float(pitch_range[1]), missing)
    return variants + [{"prefix": f"v{k + 1}", "latin": f"var{k + 1}", "pitch": float(p)} for k, p in enumerate(grid)]


def build_species(cfg: Any) -> list[Species]:
    """The first `cfg.n_species` species: the call-shape table, then its pitch-shifted variants
    (`cfg.variants`, then generated ones when `cfg.variant_pitch` is set)."""
    n = int(cfg.n_species)
    variants = _variants(cfg, n)
    if not 1 <= n <= len(CALL_SHAPES) * (1 + len(variants)):
        raise ValueError(f"n_species={n}: between 1 and {len(CALL_SHAPES) * (1 + len(variants))} "
                         f"(add synth.variants or set synth.variant_pitch for more)")
    out = []
    for i in range(n):
        base = CALL_SHAPES[i % len(CALL_SHAPES)]
        k = i // len(CALL_SHAPES)
        if k == 0:
            out.append(base)
            continue
        v = variants[k - 1]
        p = float(v["pitch"])
        out.append(Species(
            label=f"{v['prefix']}_{base.label}",
            common_name=f"{str(v['prefix']).capitalize()} {base.common_name}",
            scientific_name=f"{base.scientific_name} {v['latin']}",
            call_type=base.call_type, kind=base.kind, f_lo=base.f_lo * p, f_hi=base.f_hi * p, dur=base.dur,
            rate=base.rate, harmonics=base.harmonics, pulse_s=base.pulse_s,
        ))
    if cfg.get("layout", "birdclef2025") == "birdclef2026":
        out += list(NON_BIRD_SHAPES[:int(cfg.birdclef2026.non_bird)])
    return out


def no_clip_species(cfg: Any, n_species: int) -> list[int]:
    """Indices of the species without a clip in train_audio/ (birdclef2026: the last `birdclef2026.no_clip`)."""
    if cfg.get("layout", "birdclef2025") != "birdclef2026":
        return []
    k = int(cfg["birdclef2026"]["no_clip"])
    if not 0 <= k < n_species:
        raise ValueError(f"synth.birdclef2026.no_clip={k}: between 0 and {n_species - 1} (some species need clips)")
    return list(range(n_species - k, n_species))


# --------------------------------------------------------------------------------------------- synthesis

def _fade(n: int, frac: float) -> np.ndarray:
    """Raised-cosine fade in/out: hard call edges would smear clicks over every frequency."""
    m = min(max(1, int(n * frac)), n // 2)
    env = np.ones(n)
    if m > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(m) / m)
        env[:m] = ramp
        env[n - m:] = ramp[::-1]
    return env


def _osc(freq: np.ndarray, sr: int, phase: float, n_harm: int = 1) -> np.ndarray:
    """Sum of harmonics 1..n_harm (amplitude 1/h) of the instantaneous frequency `freq`, below _MAX_F."""
    ph = phase + 2 * np.pi * np.cumsum(freq) / sr
    top = float(freq.max()) if freq.size else 0.0
    y = np.zeros_like(ph)
    for h in range(1, n_harm + 1):
        if h == 1 or h * top < _MAX_F * sr:
            y += np.sin(h * ph) / h
    return y


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    return shaped_noise(rng, n, sr, lambda f: (f >= lo) & (f <= hi))[0]


def synth_call(rng: np.random.Generator, sp: Species, pitch: float, sr: int, fade: float) -> np.ndarray:
    """One call of species `sp` at pitch factor `pitch`, peak 1."""
    dur = rng.uniform(*sp.dur)
    n = max(int(dur * sr), 2)
    t = np.arange(n) / sr
    u = t / dur
    lo, hi = min(sp.f_lo * pitch, _MAX_F * sr), min(sp.f_hi * pitch, _MAX_F * sr)
    phase = rng.uniform(0, 2 * np.pi)
    env = _fade(n, fade)
    if sp.kind == "upsweep":
        y = _osc(lo * (hi / lo) ** u, sr, phase, sp.harmonics)
    elif sp.kind == "downsweep":
        y = _osc(hi * (lo / hi) ** u, sr, phase, sp.harmonics)
    elif sp.kind == "trill":
        y = _osc(lo + (hi - lo) * u, sr, phase) * (0.5 - 0.5 * np.cos(2 * np.pi * sp.rate * t)) ** 2
    elif sp.kind == "stack":
        # a slightly falling fundamental under a stack of harmonics: a nasal, crow-like call
        y = _osc(hi - (hi - lo) * u, sr, phase, sp.harmonics)
    elif sp.kind == "chirp_train":
        tl = t % (1.0 / sp.rate)
        v = np.clip(tl / sp.pulse_s, 0.0, 1.0)
        y = _osc(hi - (hi - lo) * v, sr, phase) * np.where(tl < sp.pulse_s, np.sin(np.pi * v), 0.0)
    elif sp.kind == "buzz":
        y = _band_noise(rng, n, sr, lo, hi) * (0.5 + 0.5 * np.sin(2 * np.pi * sp.rate * t))
    elif sp.kind == "two_note":
        end1, start2 = _TWO_NOTE
        note2 = u >= start2
        y = _osc(np.where(note2, lo, hi), sr, phase, sp.harmonics)
        # each note gets its own smooth envelope; the gap between them is silent
        y *= np.where(u < end1, np.sin(np.pi * np.clip(u / end1, 0, 1)), 0.0) + np.where(
            note2, np.sin(np.pi * np.clip((u - start2) / (1 - start2), 0, 1)), 0.0)
    elif sp.kind == "croak":
        # pulsed harmonic croaks: a low rasping call
        y = _osc(hi - (hi - lo) * u, sr, phase, sp.harmonics) * (0.5 - 0.5 * np.cos(2 * np.pi * sp.rate * t)) ** 3
    elif sp.kind == "warble":
        mid, dev = (lo + hi) / 2, (hi - lo) / 2
        y = _osc(mid + dev * np.sin(2 * np.pi * sp.rate * t + phase), sr, phase)
    else:
        raise ValueError(f"unknown call kind {sp.kind!r}")
    y = y * env
    peak = np.abs(y).max()
    return y / peak if peak > 0 else y


def _place_calls(rng: np.random.Generator, sp: Species, pitch: float, sig: np.ndarray, sr: int,
                 t0: float, t_end: float, ccfg: Any, max_bouts: int | None, gap_scale: float = 1.0,
                 ) -> list[tuple[float, float]]:
    """Add bouts of calls to `sig` from t0 until t_end (or max_bouts); returns the calls' (start, end) s."""
    # the first call always fits, so every recording / track holds at least one call
    t = min(t0, max(0.0, t_end - sp.dur[1]))
    end_i = min(int(t_end * sr), sig.size)
    calls: list[tuple[float, float]] = []
    bouts = 0
    while t < t_end and (max_bouts is None or bouts < max_bouts):
        for _ in range(int(rng.integers(ccfg["calls_per_bout"][0], ccfg["calls_per_bout"][1] + 1))):
            y = synth_call(rng, sp, pitch * float(np.exp(ccfg["pitch_jitter"] * rng.standard_normal())), sr,
                           float(ccfg["fade"]))
            gain = 10 ** (rng.uniform(-ccfg["gain_jitter_db"], ccfg["gain_jitter_db"]) / 20)
            i0 = round(t * sr)
            if i0 + y.size > end_i:
                return calls
            sig[i0:i0 + y.size] += gain * y
            calls.append((i0 / sr, (i0 + y.size) / sr))
            t = (i0 + y.size) / sr + rng.uniform(*ccfg["call_gap_s"])
        bouts += 1
        t += rng.uniform(*ccfg["bout_gap_s"]) * gap_scale
    return calls


def _scale_to_snr(sig: np.ndarray, calls: list[tuple[float, float]], sr: int, snr_db: float) -> np.ndarray:
    """Scale a species track so its RMS while calling is snr_db above the unit noise reference."""
    if not calls:
        return sig
    active = np.zeros(sig.size, dtype=bool)
    for a, b in calls:
        active[int(a * sr):int(b * sr)] = True
    rms = np.sqrt(np.mean(np.square(sig[active])))
    return sig * (10 ** (snr_db / 20) / rms) if rms > 0 else sig


def _render(job: dict, root: str, species: list[Species], cfg: Any) -> dict:
    """Render one planned audio file into `root`; returns its calls (species index, start s, end s)."""
    rng = np.random.default_rng(np.random.SeedSequence(job["seed"]))
    sr = int(cfg["sample_rate"])
    n = int(job["n"])
    ccfg = cfg["calls"]
    y = noise_bed(rng, n, sr, cfg["noise"])
    events = []
    for tr in job["tracks"]:
        sp = species[tr["species"]]
        pitch = float(np.exp(ccfg["individual_pitch_jitter"] * rng.standard_normal()))
        sig = np.zeros(n)
        calls: list[tuple[float, float]] = []
        if tr["mode"] == "fill":
            calls = _place_calls(rng, sp, pitch, sig, sr, tr["t0"], n / sr, ccfg, None, tr["gap_scale"])
        else:  # "bouts": separate bouts at random times
            for _ in range(tr["n_bouts"]):
                start = rng.uniform(0, n / sr - cfg["edge_s"])
                calls += _place_calls(rng, sp, pitch, sig, sr, start, n / sr, ccfg, 1)
        y += _scale_to_snr(sig, calls, sr, tr["snr_db"])
        events += [(tr["species"], a, b) for a, b in calls]
    y *= 10 ** (job["peak_dbfs"] / 20) / (np.abs(y).max() + 1e-12)
    write_ogg(Path(root) / job["path"], y, sr, float(cfg["block_s"]))
    return {"id": job["id"], "events": events}


# -------------------------------------------------------------------------------------------------- plan

def _irange(rng: np.random.Generator, lo_hi: Any) -> int:
    return int(rng.integers(int(lo_hi[0]), int(lo_hi[1]) + 1))


def species_counts(n_species: int, n_recordings: int, long_tail: float | None) -> np.ndarray:
    """Recordings per species summing to `n_recordings`, each >= 1: even, or (long_tail = r) falling
    exponentially with the species' index so the first has r times the share of the last (BirdCLEF 2025:
    ~990 recordings for the commonest class, 2 for the rarest, r ~ 500)."""
    if n_recordings < n_species:
        raise ValueError(f"n_recordings={n_recordings} is fewer than n_species={n_species}: every species "
                         "needs a recording")
    share = np.ones(n_species) if not long_tail else float(long_tail) ** -(np.arange(n_species) / max(n_species - 1, 1))
    extra = share / share.sum() * (n_recordings - n_species)
    counts = 1 + np.floor(extra).astype(np.int64)
    # largest remainders get the recordings that flooring left over
    counts[np.argsort(-(extra - np.floor(extra)), kind="stable")[:n_recordings - int(counts.sum())]] += 1
    return counts


def _plan_durations(rng: np.random.Generator, n_sp: int, cfg: Any) -> list[tuple[int, float]]:
    """(species, duration s) of every regular recording: `recordings_per_species` with uniform lengths, or
    `n_recordings` spread by `long_tail` with log-normal lengths (`duration_lognormal`: [median s, sigma])."""
    lo, hi = float(cfg["min_duration_s"]), float(cfg["max_duration_s"])
    if cfg.get("n_recordings") is None:
        durations: list[tuple[int, float]] = []
        for s in range(n_sp):
            durations += [(s, rng.uniform(lo, hi)) for _ in range(_irange(rng, cfg["recordings_per_species"]))]
        return durations
    counts = species_counts(n_sp, int(cfg["n_recordings"]), cfg.get("long_tail"))
    species = np.repeat(np.arange(n_sp), counts)
    logn = cfg.get("duration_lognormal")
    secs = (rng.uniform(lo, hi, species.size) if logn is None
            else np.clip(float(logn[0]) * np.exp(float(logn[1]) * rng.standard_normal(species.size)), lo, hi))
    return [(int(s), float(d)) for s, d in zip(species, secs)]


def _author_name(first: np.ndarray, last: np.ndarray, i: int) -> str:
    """Distinct recordist names: first x last name pairs, then numbered once those run out."""
    name = f"{_FIRST[first[i % len(first)]]} {_LAST[last[(i + i // len(last)) % len(last)]]}"
    cycle = len(first) * len(last)
    return name if i < cycle else f"{name} {i // cycle + 1}"


def _plan_recordings(rng: np.random.Generator, species: list[Species], cfg: Any) -> tuple[list[dict], list[dict]]:
    """train.csv rows and their render jobs."""
    m = cfg["meta"]
    sr = int(cfg["sample_rate"])
    n_sp = len(species)
    first = rng.permutation(len(_FIRST))
    last = rng.permutation(len(_LAST))
    authors = [_author_name(first, last, i) for i in range(int(m["n_authors"]))]
    author_p = 1.0 / np.arange(1, len(authors) + 1) ** float(m["author_zipf"])
    author_p /= author_p.sum()
    centres = np.stack([rng.uniform(*m["latitude"], n_sp), rng.uniform(*m["longitude"], n_sp)], axis=1)

    durations = _plan_durations(rng, n_sp, cfg)
    n_short = int(cfg["n_short_recordings"])
    short_sp = rng.choice(n_sp, size=n_short, replace=n_short > n_sp)
    durations += [(int(s), float(cfg["short_duration_s"])) for s in short_sp]
    without = set(no_clip_species(cfg, n_sp))
    durations = [(s, d) for s, d in durations if s not in without]

    n = len(durations)
    is_inat = rng.random(n) < float(m["inat_fraction"])
    ids = {c: np.cumsum(rng.integers(m["id_step"][0], m["id_step"][1] + 1, n)) for c in ("XC", "iNat")}
    rows, jobs = [], []
    for i, (s, dur) in enumerate(durations):
        sp = species[s]
        coll = "iNat" if is_inat[i] else "XC"
        rid = int(m[f"{'inat' if is_inat[i] else 'xc'}_id_start"]) + int(ids[coll][i])
        stem = f"{coll}{rid}"
        snr = rng.uniform(*cfg["snr_db"])
        tracks, secondary = _recording_tracks(rng, s, snr, species, cfg)
        rating = _rating(rng, snr, bool(is_inat[i]), cfg)
        lat, lon = centres[s] + float(m["geo_jitter_deg"]) * rng.standard_normal(2)
        path = f"train_audio/{sp.label}/{stem}.ogg"
        rows.append({
            "primary_label": sp.label,
            "secondary_labels": str(secondary),
            "type": str([""] if is_inat[i] else [sp.call_type]),
            "latitude": round(float(lat), 4),
            "longitude": round(float(lon), 4),
            "scientific_name": sp.scientific_name,
            "common_name": sp.common_name,
            "class_name": sp.class_name,
            "inat_taxon_id": int(m["inat_taxon_start"]) + s,
            "author": authors[int(rng.choice(len(authors), p=author_p))],
            "license": _LICENSES[int(rng.integers(len(_LICENSES)))],
            "rating": rating,
            "url": (f"https://static.inaturalist.org/sounds/{rid}.ogg" if is_inat[i]
                    else f"https://xeno-canto.org/{rid}"),
            "filename": f"{sp.label}/{stem}.ogg",
            "collection": coll,
        })
        jobs.append({"path": path, "n": round(dur * sr), "seed": [int(cfg["seed"]), _REC, i],
                     "peak_dbfs": rng.uniform(*cfg["peak_dbfs"]), "tracks": tracks})
    return rows, jobs


def _recording_tracks(rng: np.random.Generator, s: int, snr: float, species: list[Species], cfg: Any
                      ) -> tuple[list[dict], list[str]]:
    """A recording's render tracks (its species `s` calling throughout, sometimes a second species fainter)
    and its secondary labels."""
    n_sp = len(species)
    tracks = [{"species": s, "mode": "fill", "t0": rng.uniform(*cfg["calls"]["first_call_s"]),
               "gap_scale": 1.0, "snr_db": snr}]
    if n_sp > 1 and rng.random() < float(cfg["secondary_prob"]):
        s2 = int((s + rng.integers(1, n_sp)) % n_sp)
        gap = float(cfg["secondary_gap_scale"])
        tracks.append({"species": s2, "mode": "fill", "gap_scale": gap,
                       "t0": rng.uniform(0, cfg["calls"]["bout_gap_s"][1] * gap),
                       "snr_db": snr + rng.uniform(*cfg["secondary_rel_db"])})
        return tracks, [species[s2].label]
    return tracks, []


def _rating(rng: np.random.Generator, snr: float, inat: bool, cfg: Any) -> float:
    """1-5 stars in halves: better SNR reads as a better recording; 0 (unrated) for iNat recordings, as on
    Kaggle, and for a share of the others."""
    m = cfg["meta"]
    lo, hi = cfg["snr_db"]
    rating = 1 + 4 * (snr - lo) / max(hi - lo, 1e-9) + float(m["rating_noise"]) * rng.standard_normal()
    rating = float(np.clip(np.round(rating * 2) / 2, 1.0, 5.0))
    return 0.0 if inat or rng.random() < float(m["unrated_prob"]) else rating


def _deal(rng: np.random.Generator, pool: list[int], k: int, n_species: int) -> list[int]:
    """k different species dealt from reshuffled decks (`pool`), so every species comes up in turn."""
    chosen: list[int] = []
    while len(chosen) < min(k, n_species):
        j = next((j for j, s in enumerate(pool) if s not in chosen), None)
        if j is None:
            pool += [int(x) for x in rng.permutation(n_species)]
            continue
        chosen.append(pool.pop(j))
    return chosen


def _plan_train_soundscapes(n_species: int, cfg: Any) -> list[dict]:
    """Render jobs for the unlabelled train soundscapes: most hold calls of a few species, the rest ambience only.

    Planned from their own random stream, so their number never reshuffles the rest of the competition.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), _PLAN, _AMBIENT]))
    n_amb = int(cfg["n_train_soundscapes"])
    pool: list[int] = no_clip_species(cfg, n_species)  # dealt first: the labelled soundscapes hold them
    labelled = n_labelled(cfg)
    jobs = []
    for i in range(n_amb):
        chosen = []
        if rng.random() < float(cfg["train_soundscape_call_prob"]) or i < labelled:
            chosen = _deal(rng, pool, _irange(rng, cfg["train_soundscape_species"]), n_species)
        jobs.append(_soundscape_job(rng, cfg, f"train_soundscapes/train_soundscape_{i:0{_width(n_amb)}d}.ogg",
                                    [int(cfg["seed"]), _AMBIENT, i], chosen, cfg["train_soundscape_bouts"],
                                    cfg["train_soundscape_snr_db"]))
    return jobs


def n_labelled(cfg: Any) -> int:
    """How many train soundscapes get expert labels (birdclef2026's `n_labelled`; 0 in the 2025 layout)."""
    if cfg.get("layout", "birdclef2025") != "birdclef2026":
        return 0
    return min(int(cfg["birdclef2026"]["n_labelled"]), int(cfg["n_train_soundscapes"]))


def _name_2026(jobs: list[dict], split: str, species: list[Species], cfg: Any) -> None:
    """Rename soundscape jobs as BirdCLEF+ 2026 does (`<prefix>_<Split>_<id>_<site>_<yyyymmdd>_<hhmmss>.ogg`): a
    site and a date drawn per file, the hour at night when a non-bird species calls in it, else by day."""
    y = cfg["birdclef2026"]
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), _NAMES, 0 if split == "Train" else 1]))
    for i, job in enumerate(jobs):
        night = any(species[t["species"]].class_name != "Aves" for t in job["tracks"])
        hours = y["night_hours"] if night else y["day_hours"]
        hour = int(hours[int(rng.integers(len(hours)))])
        day = np.datetime64(str(y["first_date"])) + int(rng.integers(int(y["days"])))
        stamp = f"{str(day).replace('-', '')}_{hour:02d}{int(rng.integers(0, 12)) * 5:02d}00"
        site = f"S{int(rng.integers(1, int(y['sites']) + 1)):02d}"
        folder = Path(job["path"]).parent
        job["path"] = str(folder / f"{y['prefix']}_{split}_{i + 1:04d}_{site}_{stamp}.ogg")


def _plan_test_soundscapes(rng: np.random.Generator, n_species: int, cfg: Any) -> list[dict]:
    """Render jobs for the test soundscapes (1-3 species each; truth in solution.csv)."""
    n_test = int(cfg["n_test_soundscapes"])
    pool: list[int] = []
    test = []
    for i in range(n_test):
        # species are dealt from reshuffled decks, so as many species as possible get test positives
        chosen = _deal(rng, pool, _irange(rng, cfg["test_species"]), n_species)
        test.append(_soundscape_job(rng, cfg, f"test_soundscapes/soundscape_{i:0{_width(n_test)}d}.ogg",
                                    [int(cfg["seed"]), _TEST, i], chosen, cfg["test_bouts_per_species"],
                                    cfg["test_snr_db"]))
    return test


def _soundscape_job(rng: np.random.Generator, cfg: Any, path: str, seed: list[int], species: list[int],
                    bouts: list[int], snr_db: list[float]) -> dict:
    """Render job of one soundscape: each of `species` calls in a number of bouts drawn from `bouts`, at an SNR
    drawn from `snr_db` (dB); then its peak level."""
    tracks = [{"species": s, "mode": "bouts", "n_bouts": _irange(rng, bouts), "snr_db": rng.uniform(*snr_db)}
              for s in species]
    return {"path": path, "n": round(float(cfg["soundscape_s"]) * int(cfg["sample_rate"])), "seed": seed,
            "peak_dbfs": rng.uniform(*cfg["peak_dbfs"]), "tracks": tracks}


def _width(n: int) -> int:
    return max(3, len(str(max(n - 1, 0))))


# ------------------------------------------------------------------------------------------------ output

def _as_config(cfg: Any) -> DictConfig:
    if isinstance(cfg, DictConfig):
        return cfg
    return OmegaConf.create(dict(cfg) if isinstance(cfg, Mapping) else vars(cfg))


def _check_replaceable(out: Path) -> None:
    """Refuse to delete a folder that does not look like an earlier synthetic competition."""
    if out.exists() and any(out.iterdir()) and not (out / "train.csv").is_file():
        raise FileExistsError(f"{out} exists and is not a competition folder (no train.csv); not replacing it")


def _solution(test_jobs: list[dict], results: dict[int, dict], species: list[Species], cfg: Any
              ) -> tuple[list[str], np.ndarray]:
    """row_ids and 0/1 labels: a window is positive if one call of the species overlaps it enough."""
    win, total = float(cfg["window_s"]), float(cfg["soundscape_s"])
    n_win = round(total / win)
    if abs(n_win * win - total) > 1e-9:
        raise ValueError(f"soundscape_s={total} is not a multiple of window_s={win}")
    starts = np.arange(n_win) * win
    ids, blocks = [], []
    for job in test_jobs:
        ids += row_ids(Path(job["path"]).stem, n_win, win)
        y = np.zeros((n_win, len(species)), dtype=np.int64)
        for s, a, b in results[job["id"]]["events"]:
            overlap = np.clip(np.minimum(b, starts + win) - np.maximum(a, starts), 0.0, None)
            need = min(float(cfg["solution_min_overlap_s"]), float(cfg["solution_min_overlap_frac"]) * (b - a))
            y[overlap >= need - 1e-9, s] = 1
        blocks.append(y)
    return ids, (np.concatenate(blocks) if blocks else np.zeros((0, len(species)), dtype=np.int64))


def _write_all(root: Path, cfg: DictConfig) -> str:
    """Plan, render and write the whole competition into `root`; returns a one-line summary."""
    for sub in ("train_audio", "train_soundscapes", "test_soundscapes"):
        (root / sub).mkdir(parents=True)  # the full layout even when a part is configured empty
    species = build_species(cfg)
    plain = OmegaConf.to_container(cfg, resolve=True)
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), _PLAN]))
    rows, rec_jobs = _plan_recordings(rng, species, plain)
    amb_jobs = _plan_train_soundscapes(len(species), plain)
    test_jobs = _plan_test_soundscapes(rng, len(species), plain)
    layout_2026 = cfg.get("layout", "birdclef2025") == "birdclef2026"
    if layout_2026:
        _name_2026(amb_jobs, "Train", species, plain)
        _name_2026(test_jobs, "Test", species, plain)
    jobs = rec_jobs + amb_jobs + test_jobs
    for i, job in enumerate(jobs):
        job["id"] = i

    results = _render_all(jobs, root, species, plain, cfg)
    labels = [sp.label for sp in species]
    cols = sorted(labels)
    col_idx = [labels.index(c) for c in cols]
    rows.sort(key=lambda r: (r["primary_label"], r["filename"]))
    columns = TRAIN_COLUMNS_2026 if layout_2026 else TRAIN_COLUMNS
    pl.DataFrame(rows, schema={c: (pl.Float64 if c in ("latitude", "longitude", "rating") else
                                   pl.Int64 if c == "inat_taxon_id" else pl.Utf8) for c in columns}
                 ).write_csv(root / "train.csv")
    tax = sorted(species, key=lambda sp: sp.label)
    pl.DataFrame({
        "primary_label": [sp.label for sp in tax],
        "inat_taxon_id": [int(cfg.meta.inat_taxon_start) + labels.index(sp.label) for sp in tax],
        "scientific_name": [sp.scientific_name for sp in tax],
        "common_name": [sp.common_name for sp in tax],
        "class_name": [sp.class_name for sp in tax],
    }).write_csv(root / "taxonomy.csv")
    test_ids, sol = _solution(test_jobs, results, species, cfg)
    pl.DataFrame({"row_id": test_ids, **{c: sol[:, j] for c, j in zip(cols, col_idx)}}).write_csv(
        root / "solution.csv")
    # the unlabelled soundscapes' truth, for measuring pseudo-labels only: no stage trains on it
    amb_ids, amb_sol = _solution(amb_jobs, results, species, cfg)
    pl.DataFrame({"row_id": amb_ids, **{c: amb_sol[:, j] for c, j in zip(cols, col_idx)}},
                 schema={"row_id": pl.Utf8, **{c: pl.Int64 for c in cols}}).write_csv(root / TRUTH_CSV)
    if layout_2026:
        _write_labels(root / LABELS_CSV, amb_jobs[:n_labelled(plain)], results, species, cfg)
    pl.DataFrame({"row_id": test_ids, **{c: np.full(len(test_ids), 1.0 / len(cols)) for c in cols}}).write_csv(
        root / "sample_submission.csv")

    sr = int(cfg.sample_rate)
    secs = [sum(j["n"] for j in js) / sr for js in (rec_jobs, amb_jobs, test_jobs)]
    return (f"{len(species)} species, {len(rec_jobs)} train recordings ({secs[0]:.0f} s), "
            f"{len(amb_jobs)} train soundscapes ({secs[1]:.0f} s, {int(amb_sol.sum())} positive labels), {len(test_jobs)} test soundscapes "
            f"({secs[2]:.0f} s, {len(test_ids)} windows, {int(sol.sum())} positive labels)")


def _write_labels(path: Path, jobs: list[dict], results: dict[int, dict], species: list[Species], cfg: Any) -> None:
    """2026's `train_soundscapes_labels.csv` of the labelled soundscapes: one row per window holding a call
    (`filename,start,end,primary_label`, times hh:mm:ss, species `;`-joined), every row twice as in the real file."""
    ids, truth = _solution(jobs, results, species, cfg)
    win = float(cfg.window_s)
    rows = []
    for row_id, y in zip(ids, truth):
        stem, end = row_id.rsplit("_", 1)
        names = [species[k].label for k in np.flatnonzero(y)]
        if names:
            start = round(int(end) - win)
            clock = [f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}" for t in (start, int(end))]
            rows += [{"filename": f"{stem}.ogg", "start": clock[0], "end": clock[1],
                      "primary_label": ";".join(sorted(names))}] * (2 if cfg.birdclef2026.duplicate_rows else 1)
    pl.DataFrame(rows, schema={k: pl.Utf8 for k in ("filename", "start", "end", "primary_label")}).write_csv(path)


def _render_all(jobs: list[dict], root: Path, species: list[Species], plain: dict, cfg: DictConfig
                ) -> dict[int, dict]:
    """Render every job's file into `root` (`cfg.workers` processes, 0 = all cores); returns job id -> result."""
    workers = int(cfg.workers) or len(os.sched_getaffinity(0))
    render = partial(_render, root=str(root), species=species, cfg=plain)
    # longest files first keeps all workers busy until the end
    order = sorted(jobs, key=lambda j: -j["n"])
    results: dict[int, dict] = {}
    with tqdm(total=len(jobs), desc="synth", unit="file", disable=not cfg.progress) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in order:
                res = render(job)
                results[res["id"]] = res
                bar.update()
        else:
            # fork: workers inherit everything, nothing is re-imported
            with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
                for res in pool.imap_unordered(render, order):
                    results[res["id"]] = res
                    bar.update()
    return results


def make_competition(out: Path, cfg: Any) -> Path:
    """Write the synthetic competition described by `cfg` (the `synth` config section) to `out`.

    Everything is written to `<out>.tmp` first and renamed into place at the end, so an interrupted run
    never leaves a half-written competition (and a stale `<out>.tmp` is simply removed). Returns `out`.
    """
    t_start = time.perf_counter()
    cfg = _as_config(cfg)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    _check_replaceable(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        summary = _write_all(tmp, cfg)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    log.info("wrote %s in %.1f s: %s", out, time.perf_counter() - t_start, summary)
    return out


@hydra.main(config_path="../configs", config_name="synth", version_base=None)
def main(cfg: DictConfig) -> None:
    """Write the synthetic competition to `synth.out`."""
    make_competition(Path(cfg.synth.out), cfg.synth)


if __name__ == "__main__":
    main()
