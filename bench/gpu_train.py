"""GPU training throughput of the model side alone: in-graph mel + batch augs + backbone, fwd+bwd+AdamW.

Run on a machine with a GPU: `python bench/gpu_train.py --models effnet_b0,regnety_008 --batch 64`.
Prints samples/s per model (bf16 autocast, channels_last); the input pipeline must deliver at least
this many chunks/s (see bench/loader.py for the loader's rate per worker).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from src.data.augment import BatchAugment
from src.models.model import build_model

REPO = Path(__file__).resolve().parents[1]


def rate(name: str, batch: int, steps: int, device: torch.device, dtype: torch.dtype | None) -> float:
    audio = OmegaConf.load(REPO / "configs/audio/default.yaml")
    model = build_model(OmegaConf.load(REPO / f"configs/model/{name}.yaml"), audio, 206).to(device)
    model = model.to(memory_format=torch.channels_last)
    aug = BatchAugment(OmegaConf.load(REPO / "configs/aug/default.yaml"), seed=0).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    wave = torch.randn(batch, int(audio.sample_rate * audio.window_s), device=device) * 0.1
    target = (torch.rand(batch, 206, device=device) < 0.01).float()
    mask = torch.ones_like(target)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            w, y, m = aug.wave(wave, target, mask)
            mel = aug.spec(model.frontend(w), y, m)[0].contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model.forward_mel(mel).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="effnet_b0,regnety_008,effnetv2_s,nfnet_l0,convnext_tiny")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"])
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[a.amp]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{name}, batch {a.batch}, amp {a.amp}, 1x128x313 mel in-graph, default batch augs")
    for m in a.models.split(","):
        print(f"  {m:18s} {rate(m, a.batch, a.steps, device, dtype):8.0f} samples/s (fwd+bwd+AdamW)")


if __name__ == "__main__":
    main()
