"""Models: mel front end (in the graph) + any timm backbone + a pooled or SED head.

`build_model(cfg.model, cfg.audio, n_classes)` builds any backbone by its timm name, so
`model=effnet_b0` or `model.backbone=<any timm name>` picks it. The mel front end runs inside
the model on its device, so training, the exports and the Kaggle kernel use one module.
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path

import timm
import torch
import torchaudio
from omegaconf import DictConfig
from torch import nn

from src.models.pretrained import load_pretrained

log = logging.getLogger(__name__)


class MelFrontend(nn.Module):
    """waveform (B, T) -> normalised log-mel (B, in_chans, n_mels, frames)."""

    def __init__(self, audio: DictConfig, in_chans: int = 1):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=int(audio.sample_rate), n_fft=int(audio.n_fft), win_length=int(audio.win_length),
            hop_length=int(audio.hop_length), f_min=float(audio.fmin), f_max=float(audio.fmax),
            n_mels=int(audio.n_mels), power=float(audio.power))
        self.db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=float(audio.top_db))
        self.eps = float(audio.norm_eps)
        self.in_chans = in_chans

    def power_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """waveform (B, T) -> mel power (B, n_mels, frames), the same numbers as `self.mel`.

        For power 2 the |X|^2 is taken as re^2 + im^2 of torch.stft's output: torchaudio's
        `abs().pow(2)` goes through a complex abs (hypot) that was 35% of the CPU front end's time
        (bench/inference.py measures the front end); other powers use torchaudio as is.
        """
        spec = self.mel.spectrogram
        if spec.power != 2.0 or spec.pad or spec.normalized:
            return self.mel(wave)
        stft = torch.stft(wave, spec.n_fft, spec.hop_length, spec.win_length, spec.window, center=spec.center,
                          pad_mode=spec.pad_mode, normalized=False, onesided=spec.onesided, return_complex=True)
        re_im = torch.view_as_real(stft)
        return self.mel.mel_scale(re_im[..., 0].square() + re_im[..., 1].square())

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # (B, 1, F, T): AmplitudeToDB clamps top_db per example only on 4-D input, which keeps a
        # window's output independent of what else is in its batch (needed for exports to match).
        m = self.db(self.power_mel(wave.float()).unsqueeze(1))
        mean = m.mean(dim=(2, 3), keepdim=True)
        std = m.std(dim=(2, 3), keepdim=True)
        m = (m - mean) / (std + self.eps)
        return m.expand(-1, self.in_chans, -1, -1) if self.in_chans > 1 else m


class PooledHead(nn.Module):
    """Mean over frequency, then mean + max over time, dropout, linear: clip logits (B, C)."""

    def __init__(self, in_features: int, n_classes: int, drop_rate: float):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, n_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.mean(dim=2)
        return self.fc(self.drop(x.mean(dim=-1) + x.amax(dim=-1)))


class SEDHead(nn.Module):
    """Sound-event-detection head: framewise logits and attention over time -> clip logits."""

    def __init__(self, in_features: int, n_classes: int, drop_rate: float):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.att = nn.Conv1d(in_features, n_classes, kernel_size=1)
        self.cla = nn.Conv1d(in_features, n_classes, kernel_size=1)

    def framewise(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention weights, frame logits), each (B, C, frames)."""
        x = self.drop(feats.mean(dim=2))
        return torch.softmax(torch.tanh(self.att(x)), dim=-1), self.cla(x)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        att, frame_logits = self.framewise(feats)
        return (att * frame_logits).sum(dim=-1)


HEADS: dict[str, type[nn.Module]] = {"pooled": PooledHead, "sed": SEDHead}
HEAD_ALIASES = {"linear": "pooled"}  # the pooled head's name in run configs saved before it was renamed


class BirdModel(nn.Module):
    """waveform (B, samples) at audio.sample_rate -> clip logits (B, n_classes)."""

    def __init__(self, model_cfg: DictConfig, audio_cfg: DictConfig, n_classes: int, init_weights: bool = True):
        super().__init__()
        in_chans = int(model_cfg.in_chans)
        self.frontend = MelFrontend(audio_cfg, in_chans)
        self.backbone = timm.create_model(_timm_name(str(model_cfg.backbone)), pretrained=False, in_chans=in_chans,
                                          num_classes=0, global_pool="",
                                          drop_path_rate=float(model_cfg.drop_path_rate))
        if model_cfg.pretrained and init_weights:
            if not model_cfg.weights:
                raise FileNotFoundError(
                    f"model.pretrained=true needs model.weights=PATH to a local checkpoint of {model_cfg.backbone} "
                    "(`python -m src.weights` converts one); nothing is downloaded at run time")
            load_pretrained(self.backbone, model_cfg.weights, str(model_cfg.get("weights_key_map", "auto")))
        head = HEAD_ALIASES.get(str(model_cfg.head), str(model_cfg.head))
        if head not in HEADS:
            raise ValueError(f"model.head={model_cfg.head!r}: use one of {sorted(HEADS)}")
        self.head = HEADS[head](self.backbone.num_features, n_classes, float(model_cfg.drop_rate))

    def forward_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """Normalised mel batch -> clip logits."""
        return self.head(self.backbone.forward_features(mel))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mel = self.frontend(wave)
        if mel.device.type == "cpu" or next(self.backbone.parameters()).is_contiguous(
                memory_format=torch.channels_last):
            mel = mel.contiguous(memory_format=torch.channels_last)
        return self.forward_mel(mel)


class ProbabilityModel(nn.Module):
    """The exported and kernel form: waveform (B, samples) -> probabilities (B, n_classes)."""

    def __init__(self, model: BirdModel):
        super().__init__()
        self.model = model

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(wave))


class MelProbabilityModel(nn.Module):
    """The back half exported for onnxruntime / OpenVINO: normalised mel (B, C, F, T) -> probabilities.
    The front end (`BirdModel.frontend`) runs separately in torch (see src.infer.runtimes)."""

    def __init__(self, model: BirdModel):
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model.forward_mel(mel))


def _timm_name(name: str) -> str:
    """`name` if timm knows it, else a ValueError listing the closest timm names."""
    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    raise ValueError(f"model.backbone={name!r} is not a timm model"
                     + (f"; closest: {', '.join(close)}" if close else "")
                     + f" (timm.list_models('{name.split('_')[0]}*') lists that family)")


def build_model(model_cfg: DictConfig, audio_cfg: DictConfig, n_classes: int, init_weights: bool = True) -> BirdModel:
    """Any timm backbone by name with the mel front end and the configured head; its pretrained weights
    (model.pretrained, model.weights) are loaded unless `init_weights` is False (a trained checkpoint follows)."""
    return BirdModel(model_cfg, audio_cfg, n_classes, init_weights)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load `best.pt`/`last.pt` (a dict with a 'model' state dict) safely (weights_only)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("model", state))
    return model
