"""src.data.augment: wave chain, noise bank SNR, SpecAugment, albumentations masking, mixup/cutmix, aug=none."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from src.data.augment import (
    BatchAugment,
    NoiseBank,
    SpecAlbu,
    SpecAugment,
    build_spec_augment_albu,
    build_wave_augment,
    cutmix_time,
    mixup,
)
from src.infer.audio import to_int16

SR = 32000
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# Local helpers, not `from conftest import ...`: that import depends on how pytest puts tests/ on sys.path.
def compose_config(*overrides: str) -> DictConfig:
    """`configs/train.yaml` with command-line style overrides."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


def tone(seconds: float, freq: float, seed: int = 0) -> np.ndarray:
    """A 0.3-amplitude sine plus a little white noise, float32 at SR."""
    t = np.arange(int(seconds * SR)) / SR
    noise = 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.fixture
def noise_bank(tmp_path: Path) -> NoiseBank:
    """Two int16 soundscapes: one longer than a 5 s chunk, one shorter (tiled)."""
    rng = np.random.default_rng(0)
    paths = []
    for name, seconds in (("long", 12.0), ("short", 3.0)):
        path = tmp_path / f"{name}.npy"
        np.save(path, to_int16(0.1 * rng.standard_normal(int(seconds * SR)).astype(np.float32)))
        paths.append(path)
    return NoiseBank(paths)


def all_on_wave_cfg(**skip: bool) -> dict:
    """Every wave block at p=1 with small parameters."""
    cfg = OmegaConf.to_container(compose_config().aug.wave)
    for name, block in cfg.items():
        block["p"] = 0.0 if skip.get(name) else 1.0
    return cfg


def test_wave_augment_all_on_keeps_length_dtype_and_is_finite(noise_bank: NoiseBank) -> None:
    random.seed(0)
    np.random.seed(0)
    aug = build_wave_augment(all_on_wave_cfg(), SR, noise_bank)
    y = tone(5.0, 2000.0)
    for _ in range(3):
        out = aug(y)
        assert out.shape == y.shape and out.dtype == np.float32
        assert np.isfinite(out).all()
        assert not np.allclose(out, y)
    assert "librosa_phase_vocoder" not in repr(aug)  # signalsmith stretch: no librosa/numba on the hot path


def test_wave_augment_without_bank_skips_background_noise() -> None:
    cfg = {"background_noise": {"p": 1.0, "min_snr_db": 0.0, "max_snr_db": 10.0}}
    with pytest.warns(UserWarning, match="no noise bank"):
        assert build_wave_augment(cfg, SR, None) is None


@pytest.mark.parametrize("snr_db", [0.0, 7.5, 20.0])
def test_noise_bank_mix_reaches_requested_snr(noise_bank: NoiseBank, snr_db: float) -> None:
    rng = np.random.default_rng(1)
    y = tone(5.0, 1000.0)
    for _ in range(5):  # both soundscapes get drawn, including the tiled short one
        out = noise_bank.mix(y, rng, snr_db, snr_db)
        assert out.shape == y.shape and out.dtype == np.float32
        assert abs((db(y) - db(out - y)) - snr_db) < 0.5


def test_noise_bank_leaves_silence_alone(noise_bank: NoiseBank) -> None:
    y = np.zeros(SR, np.float32)
    assert np.array_equal(noise_bank.mix(y, np.random.default_rng(0), 0.0, 10.0), y)


def test_spec_augment_masks_in_train_and_is_identity_in_eval() -> None:
    torch.manual_seed(0)
    m = torch.randn(4, 1, 64, 100) + 3.0
    sa = SpecAugment(p=1.0, freq_masks=2, freq_width=16, time_masks=2, time_width=20, seed=0)
    out = sa(m)
    changed = out != m
    assert changed.any()
    assert changed.flatten(1).any(dim=1).all()  # p=1: every example is masked
    fill = m.mean(dim=(-2, -1), keepdim=True).expand_as(m)
    assert torch.equal(out[changed], fill[changed])
    assert torch.equal(sa.eval()(m), m)


def test_spec_albu_runs_and_masks_only_in_train() -> None:
    cfg = OmegaConf.to_container(compose_config().aug.spec)
    for block in cfg.values():
        block["p"] = 1.0
    albu = build_spec_augment_albu(cfg, seed=0)
    assert albu is not None
    m = torch.randn(3, 1, 64, 100) + 5.0
    layer = SpecAlbu(albu)
    out = layer(m)
    assert out.shape == m.shape and out.dtype == m.dtype
    changed = out != m
    assert changed.flatten(1).any(dim=1).all()
    fill = m.mean(dim=(-2, -1), keepdim=True).expand_as(m)
    assert torch.allclose(out[changed], fill[changed], atol=1e-5)
    assert torch.equal(layer.eval()(m), m)


@pytest.mark.parametrize("shape", [(6, 800), (6, 1, 8, 20)])
def test_mixup_max_and_weighted_labels(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape)
    y = torch.zeros(6, 5)
    y[torch.arange(6), torch.arange(6) % 5] = 1.0
    mask = torch.ones(6, 5)
    mask[0, 4] = 0.0

    xm, ym, mm = mixup(x, y, 0.5, "max", np.random.default_rng(3), mask)
    perm = torch.from_numpy(np.random.default_rng(3).permutation(6))
    assert torch.equal(ym, torch.maximum(y, y[perm]))
    assert torch.equal(mm, mask * mask[perm])
    # each mixed example is lam*x + (1-lam)*partner, with one batch-wide lam (least-squares fit per example)
    d, e = (x - x[perm]).flatten(1), (xm - x[perm]).flatten(1)
    mixed = perm != torch.arange(6)
    lams = (d * e).sum(1)[mixed] / (d * d).sum(1)[mixed]
    assert torch.allclose(lams, lams[0].expand_as(lams), atol=1e-4) and 0 <= lams[0] <= 1
    lam = lams[0]
    assert torch.allclose(xm, lam * x + (1 - lam) * x[perm], atol=1e-5)

    xw, yw, none = mixup(x, y, 0.5, "weighted", np.random.default_rng(3))
    assert none is None
    assert torch.allclose(xw, xm)  # same draws, same x
    assert torch.allclose(yw, lam * y + (1 - lam) * y[perm], atol=1e-4)
    assert torch.allclose(yw.sum(dim=1), torch.ones(6), atol=1e-5)  # one-hot rows stay sums of 1


def test_mixup_per_example_and_p0() -> None:
    x, y = torch.randn(8, 100), torch.eye(8)
    x0, y0, _ = mixup(x, y, 0.5, "weighted", np.random.default_rng(0), p=0.0)
    assert torch.equal(x0, x) and torch.equal(y0, y)
    _, yw, _ = mixup(x, y, 0.5, "weighted", np.random.default_rng(0), per_example=True)
    own = yw.diagonal()
    assert own.unique().numel() > 1  # lam differs between examples


def test_cutmix_time_replaces_one_span() -> None:
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 8, 50).clone()
    y = torch.eye(4)
    mask = torch.ones(4, 4)
    xc, yc, mc = cutmix_time(x, y, 1.0, np.random.default_rng(5), mask)
    perm = torch.from_numpy(np.random.default_rng(5).permutation(4))
    changed_any = False
    for i in range(4):
        cols = (xc[i] != x[i]).any(dim=0).any(dim=0)  # (T,) frames that changed
        idx = cols.nonzero().flatten()
        if perm[i] == i or idx.numel() == 0:
            continue
        changed_any = True
        assert idx.numel() == idx[-1] - idx[0] + 1  # one contiguous span
        assert torch.equal(xc[i][..., idx], x[perm[i]][..., idx])
        assert torch.equal(yc[i], torch.maximum(y[i], y[perm[i]]))
    assert changed_any
    assert torch.equal(mc, mask)


def test_batch_augment_default_changes_train_and_is_identity_in_eval() -> None:
    cfg = compose_config("aug.mixup.p=1.0", "aug.cutmix.p=1.0", "aug.spec_augment.p=1.0").aug
    aug = BatchAugment(cfg, seed=0)
    x, y = torch.randn(4, 1600), torch.eye(4)
    xw, _, _ = aug.wave(x, y)
    assert not torch.equal(xw, x)
    m = torch.randn(4, 1, 32, 40)
    ms, _, _ = aug.spec(m, y)
    assert not torch.equal(ms, m)
    aug.eval()
    assert aug.wave(x, y)[0] is x and aug.spec(m, y)[0] is m


def test_batch_augment_is_reproducible_from_seed() -> None:
    cfg = compose_config("aug.mixup.mode=spec", "aug.cutmix.p=1.0").aug
    m, y = torch.randn(8, 1, 32, 40), torch.eye(8)
    outs = []
    for _ in range(2):
        torch.manual_seed(0)  # torchaudio's mask positions use the global RNG
        outs.append(BatchAugment(cfg, seed=7).spec(m, y))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_aug_none_is_identity(noise_bank: NoiseBank) -> None:
    cfg = compose_config("aug=none").aug
    assert build_wave_augment(cfg.wave, SR, noise_bank) is None
    assert build_spec_augment_albu(cfg.spec) is None
    aug = BatchAugment(cfg, seed=0)  # training mode
    x, y, mask = torch.randn(4, 1600), torch.eye(4), torch.ones(4, 4)
    assert aug.wave(x, y, mask) == (x, y, mask)
    m = torch.randn(4, 1, 32, 40)
    out = aug.spec(m, y, mask)
    assert out[0] is m and out[1] is y and out[2] is mask


def test_batch_noise_reaches_the_snr_and_follows_the_seed():
    from src.data.augment import BatchAugment, BatchNoise

    x = (torch.sin(torch.arange(32000) / 7.0) * 0.2).repeat(6, 1)
    noise = BatchNoise(p=1.0, min_snr_db=5.0, max_snr_db=5.0, min_f_decay=-6.0, max_f_decay=6.0).train()
    added = noise(x) - x
    snr = 20 * torch.log10(x.pow(2).mean(1).sqrt() / added.pow(2).mean(1).sqrt())
    assert torch.allclose(snr, torch.full_like(snr, 5.0), atol=1e-3)
    assert torch.equal(noise.eval()(x), x)

    cfg = {"batch_noise": {"p": 0.5, "min_snr_db": 10.0, "max_snr_db": 20.0}}
    a, b = BatchAugment(cfg, seed=3).train(), BatchAugment(cfg, seed=3).train()
    y = torch.zeros(6, 2)
    a.set_epoch(2)
    b.set_epoch(2)
    assert torch.equal(a.wave(x, y)[0], b.wave(x, y)[0])  # same seed and epoch, same noise
