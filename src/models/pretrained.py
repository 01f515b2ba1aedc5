"""Pretrained backbone weights from local files: read them, map them onto a timm backbone, convert them.

`load_pretrained(backbone, path)` loads what competitors actually have into a timm backbone built with
`num_classes=0`: a timm / Hugging Face model folder (`model.safetensors` or `pytorch_model.bin` beside
`config.json`), or a plain state dict file (.safetensors / .pth / .bin / .pt, possibly nested under
'state_dict' or 'model'). Tensors are matched by name, or by order when another library named them
(`efficientnet_pytorch`'s `_conv_stem`, `_blocks.N`); every shape is checked, the first conv is adapted
to the model's `in_chans` as timm does, the checkpoint's classifier is dropped (we train our own head).

`python -m src.weights` converts such a checkpoint to a timm safetensors file once.
"""
from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

log = logging.getLogger(__name__)

FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")  # what a timm / Hugging Face model folder holds
KEY_MAPS = ("auto", "names", "order")
COUNTER = "num_batches_tracked"  # BatchNorm step counters: nothing learnt, missing from some checkpoints
SHOWN = 3  # mismatching keys named in an error


def checkpoint_file(path: str | Path) -> Path:
    """The weights file behind `path`: the file itself, or the model file of a timm / Hugging Face folder."""
    path = Path(path)
    if path.is_dir():
        for name in FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        found = sorted(p.name for p in path.iterdir())[:10]
        raise FileNotFoundError(f"{path}: a model folder needs one of {list(FOLDER_FILES)} beside its config.json "
                                f"(found {found}); or point model.weights at the weights file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: model.weights must be a local checkpoint file or model folder "
                                "(nothing is downloaded at run time)")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors by name, read safely (safetensors, or torch.load weights_only) and unwrapped
    from 'state_dict' / 'model' / DDP prefixes by timm's loader (its EMA weights when it has them)."""
    file = checkpoint_file(path)
    try:
        state = timm.models.load_state_dict(str(file), weights_only=True)
    except Exception as exc:  # any unreadable file gets the same message, with its name
        raise ValueError(f"{file}: cannot be read as a safetensors or torch weights file ({exc}); "
                         "is it complete, and a state dict rather than a pickled model?") from exc
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{file}: holds no tensors (keys: {list(state)[:SHOWN]})")
    return tensors


def _learnt(keys) -> list[str]:
    return [k for k in keys if not k.endswith(COUNTER)]


def _by_names(source: dict, target: dict, drop: tuple[str, ...]) -> tuple[dict | None, str]:
    """Source tensors under the target's names, or (None, why not)."""
    kept = [k for k in _learnt(source) if not k.startswith(drop)]
    missing = [k for k in _learnt(target) if k not in source]
    unexpected = [k for k in kept if k not in target]
    if missing or unexpected:
        return None, (f"by name: {len(missing)} of the model's tensors missing (first: {missing[:SHOWN]}), "
                      f"{len(unexpected)} unexpected in the file (first: {unexpected[:SHOWN]})")
    return {k: source[k] for k in _learnt(target)}, "names"


def _by_order(source: dict, target: dict, tail: int, file: Path) -> tuple[dict | None, str]:
    """Source tensors renamed in order onto the target's (the file may end with `tail` more: its classifier)."""
    if file.suffix == ".safetensors":
        return None, "by order: a .safetensors file keeps no tensor order (it sorts them): map the original torch file"
    src, tgt = _learnt(source), _learnt(target)
    if len(src) not in (len(tgt), len(tgt) + tail):
        expected = f"{len(tgt)}" + (f" or {len(tgt) + tail} with a classifier" if tail else "")
        return None, f"by order: the file has {len(src)} tensors, the model needs {expected}"
    return {t: source[s] for s, t in zip(src, tgt)}, "order"


def adapt_first_conv(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], first_conv) -> None:
    """Sum / repeat the first conv's input channels to the model's, as timm does for pretrained weights."""
    for name in (first_conv,) if isinstance(first_conv, str) else first_conv or ():
        key = f"{name}.weight"
        if key in state and key in target and state[key].ndim == 4 and state[key].shape[1] != target[key].shape[1]:
            state[key] = adapt_input_conv(target[key].shape[1], state[key], base_chans=state[key].shape[1])


def _shape_errors(state: dict, target: dict) -> list[str]:
    return [f"{k} {tuple(v.shape)} in the file vs {tuple(target[k].shape)} in the model"
            for k, v in state.items() if v.shape != target[k].shape]


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], *, file: str | Path,
                   arch: str, key_map: str = "auto", classifier=(), first_conv=None) -> dict[str, torch.Tensor]:
    """The checkpoint `source` as a state dict for `target` (a model's state_dict), every shape verified.

    key_map: 'names' (same names; the file's `classifier` tensors dropped), 'order' (another library's
    names, same tensors in the same order, the file's trailing classifier weight + bias dropped when the model
    has no classifier), 'auto' (names, else order). BatchNorm counters are taken from the model. Raises a
    ValueError naming the file, the first mismatching keys and the fix.
    """
    if key_map not in KEY_MAPS:
        raise ValueError(f"model.weights_key_map={key_map!r}: use one of {list(KEY_MAPS)}")
    drop = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier or ()))
    has_head = any(k.startswith(drop) for k in target) if drop else True
    tries = {"names": lambda: _by_names(source, target, () if has_head else drop),
             "order": lambda: _by_order(source, target, 0 if has_head else 2 * len(drop), Path(file))}
    state, reasons = None, []
    for how in (("names", "order") if key_map == "auto" else (key_map,)):
        state, why = tries[how]()
        if state is not None:
            adapt_first_conv(state, target, first_conv)
            bad = _shape_errors(state, target)
            if not bad:
                break
            state, why = None, f"by {how}: {len(bad)} shapes differ (first: {'; '.join(bad[:SHOWN])})"
        reasons.append(why)
    if state is None:
        raise ValueError(f"{file}: its tensors do not fit timm's {arch} ({' | '.join(reasons)}). Fix: set "
                         "model.backbone to the architecture the checkpoint was trained as, or model.weights_key_map"
                         "=order for another library's names in timm's order, or convert it with "
                         "`python -m src.weights src=... backbone=...`")
    log.info("%s: %d tensors mapped onto %s by %s (+ BatchNorm counters)", file, len(state), arch, how)
    return {k: state.get(k, v) for k, v in target.items()}  # in the model's order, counters from the model


def load_pretrained(backbone: nn.Module, path: str | Path, key_map: str = "auto") -> nn.Module:
    """Load local pretrained weights into a timm backbone built with num_classes=0 (strictly: every
    tensor found and of the right shape); the first conv is adapted to the backbone's in_chans."""
    cfg = backbone.pretrained_cfg
    target = backbone.state_dict()
    state = map_state_dict(read_state_dict(path), target, file=checkpoint_file(path), arch=cfg["architecture"],
                           key_map=key_map, classifier=cfg.get("classifier"), first_conv=cfg.get("first_conv"))
    backbone.load_state_dict(state)
    return backbone

