"""Coloured noise beds with gusty wind rumble: the ambience of the synthetic competition (`src.synth`) and the
fallback bed of the validation soundscapes when a competition has no unlabelled soundscape."""
from __future__ import annotations

from typing import Any

import numpy as np


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFTs of awkward (e.g. prime) lengths are several times slower."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            q = p35
            while q < n:
                q *= 2
            best = min(best, q)
            p35 *= 3
        p5 *= 5
    return best


def shaped_noise(rng: np.random.Generator, n: int, sr: float, gain_fn: Any) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise of length n with amplitude spectrum gain_fn(freqs), and that spectrum (length m).

    Single precision: the FFTs dominate the run time and audio ends up as float32 anyway.
    """
    m = _fast_len(n)
    f = np.fft.rfftfreq(m, 1 / sr).astype(np.float32)
    g = np.asarray(gain_fn(f), dtype=np.float32)
    spec = np.empty(f.size, dtype=np.complex64)
    spec.real = rng.standard_normal(f.size, dtype=np.float32) * g
    spec.imag = rng.standard_normal(f.size, dtype=np.float32) * g
    return np.fft.irfft(spec, m)[:n], spec


def _rfft_rms(spec: np.ndarray, n: int) -> float:
    """RMS of irfft(spec, n) by Parseval, without the inverse transform."""
    w = np.full(spec.size, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return float(np.sqrt((w * np.abs(spec) ** 2).sum()) / n)


def noise_bed(rng: np.random.Generator, n: int, sr: int, ncfg: Any) -> np.ndarray:
    """Pink-to-brown noise plus gusty low wind rumble, scaled so its RMS above `snr_ref_hz` is 1."""
    hp = float(ncfg["highpass_hz"])
    expo = rng.uniform(*ncfg["colour_exponent"])
    colour, spec = shaped_noise(rng, n, sr, lambda f: (f >= hp) * (np.maximum(f, hp) / hp) ** (-expo / 2))
    # SNRs are defined against the noise in the birds' range, not against the (much louder) rumble
    m = _fast_len(n)
    ref = _rfft_rms(spec * (np.fft.rfftfreq(m, 1 / sr) >= float(ncfg["snr_ref_hz"])), m)

    # wind has nothing above ~1 kHz: synthesise it at a low rate and interpolate up (far cheaper)
    wsr = float(ncfg["wind_rate_hz"])
    nw = int(np.ceil(n * wsr / sr)) + 2
    cut = float(ncfg["wind_cutoff_hz"])
    wind = shaped_noise(rng, nw, wsr, lambda f: (f >= hp) / (1 + (f / cut) ** 4))[0]
    tw = np.arange(nw) / wsr
    knot_t = np.cumsum(rng.uniform(*ncfg["gust_s"], size=int(tw[-1] / ncfg["gust_s"][0]) + 2))
    knot_t -= knot_t[0]
    wind = wind * np.interp(tw, knot_t, np.exp(float(ncfg["gust_sigma"]) * rng.standard_normal(knot_t.size)))
    wind = np.interp(np.arange(n) / sr, tw, wind).astype(np.float32)
    wind *= np.std(colour) / (np.std(wind) + 1e-12) * 10 ** (rng.uniform(*ncfg["wind_db"]) / 20)
    return (colour + wind) / (ref + 1e-12)
