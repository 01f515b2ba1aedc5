"""Training augmentation, configured by `configs/aug/*.yaml` (every block has `p`, 0 = off).

Two places, two costs:
- waveform augs (`build_wave_augment`): audiomentations + background noise from cached soundscapes,
  per example on the CPU in the DataLoader workers;
- batch augs (`BatchAugment`): mixup, time cutmix, SpecAugment and albumentations masking, on the
  model's device around the mel front end:

      x, y, mask = aug.wave(x, y, mask); mel = model.frontend(x)
      mel, y, mask = aug.spec(mel, y, mask); logits = model.forward_mel(mel)

`BatchAugment` is not part of the model: the loop calls `aug.train()` / `aug.eval()` with it
(identity in eval mode).

Heavy imports (audiomentations pulls scipy.signal, albumentations pulls OpenCV: seconds each) happen
inside the builders, so importing this module for the batch augs stays cheap. audiomentations imports
the `librosa` package shell at import time, but none of the transforms used here calls into librosa
(TimeStretch/PitchShift use the signalsmith method), so numba never compiles.
"""
from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torchaudio.transforms as T
from torch import nn

from src.infer.audio import from_int16

if TYPE_CHECKING:
    import albumentations


def _block(cfg: Mapping | None, name: str) -> Mapping | None:
    """The config block `name` if it is switched on (p > 0), else None (missing blocks are off)."""
    block = (cfg or {}).get(name)
    return block if block and float(block.get("p", 0.0)) > 0 else None


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


# ---------------------------------------------------------------------------------------------
# Waveform (CPU, DataLoader workers)


class NoiseBank:
    """Background noise from cached unlabelled soundscapes (int16 `.npy`, memory-mapped)."""

    def __init__(self, paths: list[Path]):
        if not paths:
            raise ValueError("NoiseBank needs at least one soundscape .npy: run `python -m src.prepare` "
                             "with prepare.soundscapes > 0 on a competition that has unlabelled soundscapes")
        self.paths = [Path(p) for p in paths]
        self._open()

    def _open(self) -> None:
        self._arrays = [np.load(p, mmap_mode="r") for p in self.paths]

    # Pickle the paths, not the arrays: a spawned worker re-maps the files instead of receiving a copy.
    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.paths = state["paths"]
        self._open()

    def __len__(self) -> int:
        return len(self.paths)

    def crop(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """A random `n`-sample float32 crop of a random soundscape (tiled if the soundscape is shorter)."""
        noise = self._arrays[rng.integers(len(self._arrays))]
        if len(noise) >= n:
            start = int(rng.integers(0, len(noise) - n + 1))
            return from_int16(noise[start:start + n])
        return from_int16(np.resize(noise, n))

    def mix(self, y: np.ndarray, rng: np.random.Generator, min_snr_db: float,
            max_snr_db: float) -> np.ndarray:
        """`y` plus a random soundscape crop at an SNR drawn uniformly from [min_snr_db, max_snr_db].

        SNR is the ratio of RMS levels. A silent `y` or a silent crop is returned unchanged
        (the SNR is undefined). float32 in, float32 out, same length.
        """
        noise = self.crop(len(y), rng)
        snr_db = rng.uniform(min_snr_db, max_snr_db)
        signal_rms, noise_rms = _rms(y), _rms(noise)
        if signal_rms == 0.0 or noise_rms == 0.0:
            return y
        scale = signal_rms / (noise_rms * 10.0 ** (snr_db / 20.0))
        return (y + scale * noise).astype(np.float32)


class WaveAugment:
    """Background noise (with probability `background_p`), then the audiomentations chain.

    Randomness comes from Python's `random` (as audiomentations' own does), which the DataLoader
    reseeds in every worker: workers differ from each other and the whole chain follows the seed.
    """

    def __init__(self, compose: Callable | None, sample_rate: int, noise_bank: NoiseBank | None = None,
                 background_p: float = 0.0, min_snr_db: float = 0.0, max_snr_db: float = 0.0):
        self.compose = compose
        self.sample_rate = sample_rate
        self.noise_bank = noise_bank
        self.background_p = background_p
        self.min_snr_db = min_snr_db
        self.max_snr_db = max_snr_db

    def __call__(self, y: np.ndarray) -> np.ndarray:
        if self.noise_bank is not None and random.random() < self.background_p:
            rng = np.random.default_rng(random.getrandbits(64))
            y = self.noise_bank.mix(y, rng, self.min_snr_db, self.max_snr_db)
        if self.compose is not None:
            y = self.compose(y, self.sample_rate)
        return np.asarray(y, dtype=np.float32)

    def __repr__(self) -> str:
        bank = f"NoiseBank({len(self.noise_bank)} soundscapes)" if self.noise_bank is not None else None
        return (f"WaveAugment(background_noise={bank}, p={self.background_p}, "
                f"snr_db=[{self.min_snr_db}, {self.max_snr_db}], compose={self.compose!r})")


def build_wave_augment(cfg_wave: Mapping | None, sample_rate: int,
                       noise_bank: NoiseBank | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """The waveform augmentation of `cfg.aug.wave`: float32 mono (n,) -> float32 mono (n,).

    Order: background noise (the scene), time stretch and pitch shift, high/band-pass (the
    microphone), gaussian and coloured noise (the sensor), gain, clipping. Returns None if every
    block is off. A background_noise block without a noise bank is skipped with a warning.
    """
    import audiomentations as AM  # here, not at the top: its import costs seconds (scipy.signal)

    transforms = []
    if b := _block(cfg_wave, "time_stretch"):
        transforms.append(AM.TimeStretch(min_rate=b["min_rate"], max_rate=b["max_rate"],
                                         leave_length_unchanged=True, p=b["p"]))
    if b := _block(cfg_wave, "pitch_shift"):
        transforms.append(AM.PitchShift(min_semitones=b["min_semitones"], max_semitones=b["max_semitones"],
                                        p=b["p"]))
    if b := _block(cfg_wave, "high_pass"):
        transforms.append(AM.HighPassFilter(min_cutoff_freq=b["min_cutoff_hz"],
                                            max_cutoff_freq=b["max_cutoff_hz"], p=b["p"]))
    if b := _block(cfg_wave, "band_pass"):
        transforms.append(AM.BandPassFilter(min_center_freq=b["min_center_hz"],
                                            max_center_freq=b["max_center_hz"], p=b["p"]))
    if b := _block(cfg_wave, "gaussian_noise"):
        transforms.append(AM.AddGaussianSNR(min_snr_db=b["min_snr_db"], max_snr_db=b["max_snr_db"], p=b["p"]))
    if b := _block(cfg_wave, "colored_noise"):
        transforms.append(AM.AddColorNoise(min_snr_db=b["min_snr_db"], max_snr_db=b["max_snr_db"],
                                           min_f_decay=b["min_f_decay"], max_f_decay=b["max_f_decay"],
                                           p=b["p"]))
    if b := _block(cfg_wave, "gain"):
        transforms.append(AM.Gain(min_gain_db=b["min_db"], max_gain_db=b["max_db"], p=b["p"]))
    if b := _block(cfg_wave, "clipping"):
        transforms.append(AM.ClippingDistortion(min_percentile_threshold=b["min_percentile"],
                                                max_percentile_threshold=b["max_percentile"], p=b["p"]))
    compose = AM.Compose(transforms) if transforms else None

    bg = _block(cfg_wave, "background_noise")
    if bg and noise_bank is None:
        warnings.warn("aug.wave.background_noise is on but there is no noise bank (no cached soundscapes): "
                      "skipping it", stacklevel=2)
        bg = None
    if compose is None and bg is None:
        return None
    if bg is None:
        return WaveAugment(compose, sample_rate)
    return WaveAugment(compose, sample_rate, noise_bank, float(bg["p"]), float(bg["min_snr_db"]),
                       float(bg["max_snr_db"]))


# ---------------------------------------------------------------------------------------------
# Mel batch (model device)


def _per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against `like`."""
    return v.view(-1, *[1] * (like.dim() - 1))


class SpecAugment(nn.Module):
    """torchaudio frequency/time masking of a mel batch (B, C, F, T), each example with probability p.

    Masks are shared across channels and filled with the example's mean (0 for the normalised mel,
    and still neutral if the front end does not normalise). Which examples are masked follows
    `seed`; mask positions come from torch's global RNG (torchaudio takes no generator), which the
    training seed fixes. Identity in eval mode.
    """

    def __init__(self, p: float, freq_masks: int, freq_width: int, time_masks: int, time_width: int,
                 seed: int | np.random.SeedSequence = 0):
        super().__init__()
        self.p = float(p)
        self.freq_masks, self.time_masks = int(freq_masks), int(time_masks)
        self.freq = T.FrequencyMasking(int(freq_width), iid_masks=True)
        self.time = T.TimeMasking(int(time_width), iid_masks=True)
        self.rng = np.random.default_rng(seed)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return m
        b, _, f, t = m.shape
        chosen = torch.from_numpy(self.rng.random(b) < self.p).to(m.device)
        # Mask a (B,1,F,1) and a (B,1,1,T) tensor of ones instead of the mel: same masks for every
        # channel, and far less memory than masking the full batch once per mask.
        keep_f = torch.ones(b, 1, f, 1, device=m.device)
        for _ in range(self.freq_masks):
            keep_f = self.freq(keep_f)
        keep_t = torch.ones(b, 1, 1, t, device=m.device)
        for _ in range(self.time_masks):
            keep_t = self.time(keep_t)
        keep = (keep_f * keep_t).bool() | ~_per_example(chosen, m)
        return torch.where(keep, m, m.mean(dim=(-2, -1), keepdim=True))


def build_spec_augment_albu(cfg_spec: Mapping | None,
                            seed: int | None = None) -> albumentations.Compose | None:
    """albumentations.Compose of `cfg.aug.spec` (XYMasking, CoarseDropout) for one (F, T[, C]) float32
    mel image, or None if every block is off. x = time frames, y = mel bins; holes are filled with 0."""
    xy, coarse = _block(cfg_spec, "xy_masking"), _block(cfg_spec, "coarse_dropout")
    if not (xy or coarse):
        return None
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network version check at import
    import albumentations as A  # here, not at the top: its import (OpenCV) costs seconds

    transforms = []
    if xy:
        transforms.append(A.XYMasking(num_masks_x=tuple(xy["num_masks_x"]),
                                      num_masks_y=tuple(xy["num_masks_y"]),
                                      mask_x_length=tuple(xy["mask_x_length"]),
                                      mask_y_length=tuple(xy["mask_y_length"]), fill=0.0, p=float(xy["p"])))
    if coarse:
        transforms.append(A.CoarseDropout(num_holes_range=tuple(coarse["num_holes_range"]),
                                          hole_height_range=tuple(coarse["hole_height_range"]),
                                          hole_width_range=tuple(coarse["hole_width_range"]), fill=0.0,
                                          p=float(coarse["p"])))
    return A.Compose(transforms, seed=seed)


class SpecAlbu(nn.Module):
    """Applies an albumentations Compose to each example of a mel batch (B, C, F, T) in training mode.

    CPU work: the batch is copied to host memory, transformed one example at a time and copied back
    (about 0.3 ms per 128x313 example), which is why it is off by default. Holes are filled with the
    example's per-channel mean (the Compose fills 0 on the mean-subtracted image). The output carries
    no gradient to the input (the mel front end has no trainable parameters).
    """

    def __init__(self, compose: Callable):
        super().__init__()
        self.compose = compose

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return m
        x = m.detach().float().cpu().numpy()
        mean = x.mean(axis=(2, 3), keepdims=True)
        # albumentations wants (H, W, C) = (F, T, C) images
        out = np.stack([self.compose(image=np.ascontiguousarray(e.transpose(1, 2, 0)))["image"]
                        for e in x - mean]).transpose(0, 3, 1, 2)
        return torch.from_numpy(out + mean).to(device=m.device, dtype=m.dtype)


def _mix_targets(y: torch.Tensor, partner: torch.Tensor, chosen: torch.Tensor, lam: torch.Tensor | None,
                 label_mode: str) -> torch.Tensor:
    """Targets of mixed examples: 'max' = union of both; 'weighted' = lam*y + (1-lam)*partner."""
    if label_mode == "max":
        return torch.where(_per_example(chosen, y), torch.maximum(y, partner), y)
    if label_mode == "weighted":
        w = _per_example(lam.to(y.dtype), y)
        return w * y + (1 - w) * partner
    raise ValueError(f"label_mode must be 'max' or 'weighted', got {label_mode!r}")


def _mix_mask(mask: torch.Tensor | None, perm: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor | None:
    """Loss mask of mixed examples: the product of both masks (= elementwise min for 0/1 masks), so a
    class unknown in either source stays out of the loss."""
    if mask is None:
        return None
    return torch.where(_per_example(chosen, mask), mask * mask[perm], mask)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, label_mode: str = "max",
          rng: np.random.Generator | None = None, mask: torch.Tensor | None = None, p: float = 1.0,
          per_example: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Mixup of a batch (waveform (B, T) or mel (B, C, F, T)) with a permuted partner.

    Each example is mixed with probability `p` as lam*x + (1-lam)*x[perm], lam ~ Beta(alpha, alpha)
    drawn once per batch (or per example if `per_example`). Targets y (B, K): `label_mode` 'max'
    (elementwise max: both birds are in the clip) or 'weighted' (lam*y1 + (1-lam)*y2). The loss mask
    (B, K), if given, becomes the product of both masks. Returns (x, y, mask); mask is None if not given.
    """
    rng = np.random.default_rng() if rng is None else rng
    b = x.shape[0]
    perm = rng.permutation(b)
    lam = rng.beta(alpha, alpha, size=b if per_example else 1) * np.ones(b)
    chosen_np = rng.random(b) < p
    lam = np.where(chosen_np, lam, 1.0)
    perm_t = torch.from_numpy(perm).to(x.device)
    chosen = torch.from_numpy(chosen_np).to(x.device)
    lam_t = torch.from_numpy(lam).to(x.device)
    w = _per_example(lam_t.to(x.dtype), x)
    x_mixed = w * x + (1 - w) * x[perm_t]
    return x_mixed, _mix_targets(y, y[perm_t], chosen, lam_t, label_mode), _mix_mask(mask, perm_t, chosen)


def cutmix_time(x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator | None = None,
                mask: torch.Tensor | None = None,
                p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Horizontal cutmix: each example (with probability `p`) gets a span of its permuted partner's
    last (time) axis, of length round((1 - lam) * T), lam ~ Beta(alpha, alpha), at a random start.

    Targets are the elementwise max of both: BirdCLEF labels are per recording, so we cannot tell
    whether the pasted span holds the partner's bird; the union is the safe guess. The loss mask, if
    given, becomes the product of both. Returns (x, y, mask); mask is None if not given.
    """
    rng = np.random.default_rng() if rng is None else rng
    b, t = x.shape[0], x.shape[-1]
    perm = rng.permutation(b)
    width = np.round((1.0 - rng.beta(alpha, alpha, size=b)) * t).astype(np.int64)
    start = rng.integers(0, t - width + 1)
    chosen_np = (rng.random(b) < p) & (width > 0)
    frames = np.arange(t)
    span = (frames >= start[:, None]) & (frames < (start + width)[:, None]) & chosen_np[:, None]
    perm_t = torch.from_numpy(perm).to(x.device)
    chosen = torch.from_numpy(chosen_np).to(x.device)
    span_t = torch.from_numpy(span).to(x.device).view(b, *[1] * (x.dim() - 2), t)
    x_mixed = torch.where(span_t, x[perm_t], x)
    return x_mixed, _mix_targets(y, y[perm_t], chosen, None, "max"), _mix_mask(mask, perm_t, chosen)


class BatchNoise(nn.Module):
    """Coloured noise (power ~ f^decay: 0 white, -3 pink-ish, -6 brown-ish) added on the model's device,
    per example with probability p, at an SNR drawn in [min_snr_db, max_snr_db] against that example's RMS.

    The same augmentation as audiomentations' AddGaussianNoise / AddColorNoise, but on the whole batch
    on the GPU: on the CPU workers those two cost 12-28 ms per chunk and starved a GPU (bench/loader.py).
    Draws come from `rng` (numpy, reseeded per epoch by BatchAugment) so runs are reproducible.
    """

    def __init__(self, p: float, min_snr_db: float, max_snr_db: float, min_f_decay: float = 0.0,
                 max_f_decay: float = 0.0):
        super().__init__()
        self.p, self.snr = float(p), (float(min_snr_db), float(max_snr_db))
        self.decay = (float(min_f_decay), float(max_f_decay))
        self.rng = np.random.default_rng(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        b, n = x.shape
        chosen = self.rng.random(b) < self.p
        if not chosen.any():
            return x
        idx = torch.from_numpy(np.flatnonzero(chosen)).to(x.device)
        k = len(idx)
        seed = int(self.rng.integers(0, 2**31 - 1))
        gen = torch.Generator(device=x.device).manual_seed(seed)
        white = torch.randn(k, n, generator=gen, device=x.device, dtype=torch.float32)
        decay = torch.from_numpy(self.rng.uniform(*self.decay, size=(k, 1)).astype(np.float32)).to(x.device)
        freqs = torch.arange(n // 2 + 1, device=x.device, dtype=torch.float32).clamp(min=1.0)
        # amplitude ~ f^(decay/2) makes the power spectrum ~ f^decay
        noise = torch.fft.irfft(torch.fft.rfft(white) * freqs.pow(decay / 2), n=n)
        snr_db = torch.from_numpy(self.rng.uniform(*self.snr, size=(k, 1)).astype(np.float32)).to(x.device)
        sig = x[idx].float()
        sig_rms = sig.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=1e-8)
        noise_rms = noise.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=1e-12)
        noise = noise * (sig_rms / noise_rms) * torch.pow(10.0, -snr_db / 20)
        out = x.clone()
        out[idx] = (sig + noise).to(x.dtype)
        return out


class BatchAugment(nn.Module):
    """The on-device augmentations of the whole `cfg.aug`: mixup (wave or spec), time cutmix,
    SpecAugment and albumentations masking. Identity in eval mode; all draws follow `seed`.
    """

    def __init__(self, cfg_aug: Mapping, seed: int = 0):
        super().__init__()
        mix = cfg_aug.get("mixup") or {}
        self.mixup_p = float(mix.get("p", 0.0))
        self.mixup_alpha = float(mix.get("alpha", 0.0))
        self.mixup_mode = str(mix.get("mode", "wave"))
        self.mixup_label = str(mix.get("label", "max"))
        self.mixup_per_example = bool(mix.get("per_example", False))
        if self.mixup_mode not in ("wave", "spec"):
            raise ValueError(f"aug.mixup.mode must be 'wave' or 'spec', got {self.mixup_mode!r}")
        if self.mixup_label not in ("max", "weighted"):
            raise ValueError(f"aug.mixup.label must be 'max' or 'weighted', got {self.mixup_label!r}")
        cut = cfg_aug.get("cutmix") or {}
        self.cutmix_p = float(cut.get("p", 0.0))
        self.cutmix_alpha = float(cut.get("alpha", 0.0))
        for name, p, alpha in (("mixup", self.mixup_p, self.mixup_alpha),
                               ("cutmix", self.cutmix_p, self.cutmix_alpha)):
            if p > 0 and alpha <= 0:
                raise ValueError(f"aug.{name}.alpha must be > 0 (Beta(alpha, alpha)) when aug.{name}.p > 0")

        self.seed = int(seed)
        bn = _block(cfg_aug, "batch_noise")
        self.batch_noise = BatchNoise(**bn) if bn else None
        sa = _block(cfg_aug, "spec_augment")
        self.spec_augment = SpecAugment(**sa) if sa else None
        self.spec_albu = None
        self._albu_cfg = cfg_aug.get("spec")
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Reseed every draw from (seed, epoch), so a resumed run repeats an epoch exactly."""
        mix_seed, spec_seed, albu_seed, noise_seed = np.random.SeedSequence([self.seed, int(epoch)]).spawn(4)
        self.rng = np.random.default_rng(mix_seed)
        if self.batch_noise is not None:
            self.batch_noise.rng = np.random.default_rng(noise_seed)
        if self.spec_augment is not None:
            self.spec_augment.rng = np.random.default_rng(spec_seed)
        albu = build_spec_augment_albu(self._albu_cfg, seed=int(albu_seed.generate_state(1)[0]))
        self.spec_albu = SpecAlbu(albu) if albu is not None else None

    def wave(self, x: torch.Tensor, y: torch.Tensor,
             mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Waveform batch (B, T) before the mel front end: mixup when `mixup.mode` is 'wave', then noise."""
        if self.training and self.mixup_p > 0 and self.mixup_mode == "wave":
            x, y, mask = mixup(x, y, self.mixup_alpha, self.mixup_label, self.rng, mask, self.mixup_p,
                               self.mixup_per_example)
        if self.batch_noise is not None:
            x = self.batch_noise(x)
        return x, y, mask

    def spec(self, m: torch.Tensor, y: torch.Tensor,
             mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Mel batch (B, C, F, T): mixup (mode 'spec'), time cutmix, then SpecAugment and albumentations."""
        if not self.training:
            return m, y, mask
        if self.mixup_p > 0 and self.mixup_mode == "spec":
            m, y, mask = mixup(m, y, self.mixup_alpha, self.mixup_label, self.rng, mask, self.mixup_p,
                               self.mixup_per_example)
        if self.cutmix_p > 0:
            m, y, mask = cutmix_time(m, y, self.cutmix_alpha, self.rng, mask, self.cutmix_p)
        if self.spec_augment is not None:
            m = self.spec_augment(m)
        if self.spec_albu is not None:
            m = self.spec_albu(m)
        return m, y, mask
