"""Reading a weights file a user hands us, and saying what it looks like when it does not fit.

Files are read with ``timm.models.load_state_dict`` (``torch.load(weights_only=True)`` or
safetensors; ``{"model": sd}`` / ``{"state_dict": sd}`` containers unwrapped; DDP / ``torch.compile``
prefixes removed by ``timm.models.clean_state_dict``). This module adds only what timm leaves out:
EMA-only containers, one-line errors that name the file (missing, folder, empty, truncated, not a
checkpoint, a pickle that would run code, NaN/inf values), and :func:`guess_architecture`, which
names the registered model a state dict belongs to from its keys and shapes alone (no model is built).
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import timm
import torch

from pit import pit as _pit
from pit.names import PIT_NAMES

__all__ = ["Fingerprint", "describe", "fingerprint", "guess_architecture", "key_examples", "read_state_dict"]

_EMA_KEYS = ("model_ema", "state_dict_ema", "module")  # containers timm's reader leaves wrapped (use_ema=False)
_RESAVE = "re-save the weights with torch.save(model.state_dict(), FILE) or safetensors"


def _check_path(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"weights {path} is a folder, expected a checkpoint file (.pth/.pt/.bin/.safetensors)")
    if path.stat().st_size == 0:
        raise ValueError(f"weights {path} is empty (0 bytes): an interrupted download or copy? get the file again")


def _unreadable(path: Path, err: Exception) -> ValueError | PermissionError:
    """One line for an exception raised while timm read ``path``."""
    if isinstance(err, PermissionError):
        return PermissionError(f"weights {path} cannot be read: permission denied")
    cause = str(err.__cause__ or "")
    unsafe = re.search(r"GLOBAL (\S+)", cause) or re.search(r"Unsupported globals: (.+?)\. ", str(err))
    if unsafe:
        return ValueError(f"weights {path} hold {unsafe.group(1)}, which could run code when loaded: refused "
                          f"(the suite reads only tensors; {_RESAVE})")
    if path.suffix == ".safetensors":
        return ValueError(f"weights {path} are not a readable safetensors file ({str(err).splitlines()[0]})")
    if "Unsupported operand" in cause:
        return ValueError(f"weights {path} are not a PyTorch checkpoint (neither a torch.save archive nor a "
                          "tensor pickle): check the path, or get the file again")
    first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
    return ValueError(f"weights {path} are not a readable PyTorch checkpoint (truncated or another format? {first})")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _check_finite(path: Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"weights {path} hold NaN or inf values in {len(bad)} of {len(state_dict)} tensors "
                         f"({key_examples(bad)}): a diverged training run or a corrupt file; refused, since every "
                         "score would be at chance")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict, safely.

    Accepts ``.safetensors``, a raw state dict, or a container with the weights under
    ``state_dict``/``model`` (else ``model_ema``/``state_dict_ema``/``module``); strips DDP and
    ``torch.compile`` prefixes. No file can run code (``weights_only=True``). Raises
    ``FileNotFoundError`` / ``IsADirectoryError`` / ``ValueError`` with one line naming the file,
    also when any floating-point tensor holds NaN or inf.
    """
    path = Path(path)
    _check_path(path)
    try:
        obj: Any = timm.models.load_state_dict(str(path), use_ema=False)
    except Exception as err:  # timm re-raises torch / safetensors / zip errors of every kind
        raise _unreadable(path, err) from None
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _EMA_KEYS if _is_state_dict(obj.get(k))), None)
        if inner is None:
            raise ValueError(f"weights {path} hold a dict with keys {sorted(map(str, obj))[:8]} but no state dict "
                             "of tensors (looked at the top level and under state_dict, model, "
                             f"{', '.join(_EMA_KEYS)})")
        obj = timm.models.clean_state_dict(inner)
    if not _is_state_dict(obj):
        raise ValueError(f"weights {path} do not contain a state dict (got {type(obj).__name__})")
    _check_finite(path, obj)
    return dict(obj)


def key_examples(keys: list[str], n: int = 4) -> str:
    """The first ``n`` of ``keys``, comma-separated, with ``...`` when there are more."""
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


class Fingerprint(NamedTuple):
    """What a state dict is, read from its keys and shapes.

    ``family``: ``"pit"``, ``"vit"`` (ViT/DeiT), ``"resnet"`` or ``"unknown"``; ``widths``: channels
    per stage (one entry for ViT); ``depths``: blocks per stage; ``patch``: patch-embedding kernel
    (ResNet: 0 for basic blocks, 1 for bottlenecks); ``tokens``: class tokens (2 = distilled).
    """

    family: str
    widths: tuple[int, ...] = ()
    depths: tuple[int, ...] = ()
    patch: int = 0
    tokens: int = 0


def _blocks(state_dict: Mapping[str, torch.Tensor], pattern: str) -> dict[str, int]:
    """Number of distinct blocks per stage for keys matching ``pattern`` (groups: stage, block)."""
    seen = {m.groups() for k in state_dict if (m := re.match(pattern, k))}
    return dict(sorted(Counter(stage for stage, _ in seen).items(), key=lambda kv: int(kv[0])))


def fingerprint(state_dict: Mapping[str, torch.Tensor]) -> Fingerprint:
    """The family and sizes of a state dict (official or timm key layout), without building a model."""
    sd = state_dict
    if "patch_embed.conv.weight" in sd and "cls_token" in sd:
        stages = _blocks(sd, r"transformers\.(\d+)\.blocks\.(\d+)\.")
        widths = tuple(sd[f"transformers.{s}.blocks.0.norm1.weight"].shape[0] for s in stages
                       if f"transformers.{s}.blocks.0.norm1.weight" in sd)
        return Fingerprint("pit", widths, tuple(stages.values()), sd["patch_embed.conv.weight"].shape[-1],
                           sd["cls_token"].shape[1])
    if "patch_embed.proj.weight" in sd and "cls_token" in sd:
        depth = len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
        return Fingerprint("vit", (sd["cls_token"].shape[-1],), (depth,), sd["patch_embed.proj.weight"].shape[-1],
                           1 + ("dist_token" in sd))
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        stages = _blocks(sd, r"layer(\d+)\.(\d+)\.")
        widths = tuple(sd[f"layer{s}.0.conv1.weight"].shape[0] for s in stages)
        return Fingerprint("resnet", widths, tuple(stages.values()), int("layer1.0.conv3.weight" in sd))
    return Fingerprint("unknown")


def _pit_candidates() -> dict[str, Fingerprint]:
    out = {}
    for name in PIT_NAMES:
        cfg = _pit.CONFIGS[name.removesuffix("_distilled")]
        widths = tuple(d * h for d, h in zip(cfg["base_dims"], cfg["heads"]))
        out[name] = Fingerprint("pit", widths, tuple(cfg["depth"]), cfg["patch_size"], 1 + name.endswith("_distilled"))
    return out


# DeiT (= ViT tiny/small/base, patch 16) and torchvision/timm ResNet depths, by their registered names.
_OTHERS = {
    **{f"deit_{size}{'_distilled' if dist else ''}_patch16_224": Fingerprint("vit", (width,), (12,), 16, 1 + dist)
       for size, width in (("tiny", 192), ("small", 384), ("base", 768)) for dist in (False, True)},
    **{name: Fingerprint("resnet", (64, 128, 256, 512), depths, bottleneck)
       for name, depths, bottleneck in (("resnet18", (2, 2, 2, 2), 0), ("resnet34", (3, 4, 6, 3), 0),
                                        ("resnet50", (3, 4, 6, 3), 1), ("resnet101", (3, 4, 23, 3), 1),
                                        ("resnet152", (3, 8, 36, 3), 1))},
}


def guess_architecture(state_dict: Mapping[str, torch.Tensor]) -> tuple[str | None, float]:
    """The registered model ``state_dict`` looks like, and the share of its fingerprint that matches, in [0, 1].

    Compares :func:`fingerprint` against our eight PiT configs, DeiT tiny/small/base (plain and
    distilled) and ResNet-18/34/50/101/152. A name is returned only when family, widths and depths
    all agree (patch size and class-token count may differ); otherwise ``(None, 0.0)``.
    """
    found = fingerprint(state_dict)
    best, best_score = None, 0.0
    for name, known in {**_pit_candidates(), **_OTHERS}.items():
        if known[:3] != found[:3]:
            continue
        score = sum(a == b for a, b in zip(known, found)) / len(found)
        if score > best_score:
            best, best_score = name, score
    return best, best_score


def _slash(values: tuple[int, ...]) -> str:
    return "/".join(map(str, values))


def describe(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A short phrase for what ``state_dict`` holds, e.g. ``a PiT state dict (widths 64/128/256, ...)``."""
    fp = fingerprint(state_dict)
    if fp.family == "pit":
        return (f"a PiT state dict (stage widths {_slash(fp.widths)}, depths {_slash(fp.depths)}, patch {fp.patch}, "
                f"{fp.tokens} class token{'s' if fp.tokens > 1 else ''})")
    if fp.family == "vit":
        return (f"a ViT/DeiT state dict (width {fp.widths[0]}, {fp.depths[0]} blocks, patch {fp.patch}"
                f"{', distilled' if fp.tokens == 2 else ''})")
    if fp.family == "resnet":
        return (f"a ResNet state dict (blocks {_slash(fp.depths)}, "
                f"{'bottleneck' if fp.patch else 'basic'} blocks)")
    return f"a state dict of {len(state_dict)} tensors that matches no family the suite knows (keys {key_examples(list(state_dict))})"
