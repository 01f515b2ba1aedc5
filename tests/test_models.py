"""The mel front end: its faster power spectrum gives torchaudio's MelSpectrogram numbers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.config import CONFIG_DIR
from src.models.model import MelFrontend


def audio_cfg(**overrides):
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "audio" / "default.yaml")
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize("n_fft,hop", [(2048, 512), (1024, 320)])
def test_power_mel_equals_torchaudio(n_fft, hop):
    front = MelFrontend(audio_cfg(n_fft=n_fft, win_length=n_fft, hop_length=hop))
    torch.manual_seed(0)
    wave = torch.randn(3, 32000) * torch.tensor([[0.3], [1e-4], [0.0]])  # loud, quiet, silent
    ours, reference = front.power_mel(wave), front.mel(wave)
    assert ours.shape == reference.shape
    scale = reference.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
    assert ((ours - reference).abs() / scale).max() < 1e-5
    assert torch.equal(ours[2], reference[2])  # silence stays exactly zero


def test_other_powers_use_torchaudio():
    front = MelFrontend(audio_cfg(power=1.0))
    wave = torch.randn(2, 16000)
    assert torch.equal(front.power_mel(wave), front.mel(wave))


def test_unknown_backbone_names_the_closest_timm_models():
    """`model.backbone=efficientnet_b99` (issue 10, item 7): not timm's bare `Unknown model`, but the key,
    and the closest names timm has."""
    from src.models.model import build_model

    model_cfg = OmegaConf.load(Path(CONFIG_DIR) / "model" / "effnet_b0.yaml")
    model_cfg.backbone = "efficientnet_b99"
    with pytest.raises(ValueError, match=r"model\.backbone='efficientnet_b99' is not a timm model; closest: "
                                         r"efficientnet_b\d"):
        build_model(model_cfg, audio_cfg(), 3)
