"""One factory for every model the suite evaluates: our PiT names or any timm name, plus weights.

``create_model(name, weights=PATH)`` reads official PiT ``.pth`` files, timm-format state
dicts, DeiT-style ``{"model": ...}`` / ``{"state_dict": ...}`` checkpoints and
``.safetensors``; runs the model family's own ``checkpoint_filter_fn`` (key remapping and
positional-embedding resampling); drops a classifier head of another size with a warning;
and refuses a file that does not fit with one ``ValueError`` that names the differing keys
and the registered model the file looks like.
"""
from __future__ import annotations

import difflib
import os
import socket
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from torch import nn

from pit import pit as _pit  # noqa: F401  (registers our PiT names with timm)

__all__ = ["create_model", "load_weights", "read_state_dict", "guess_architecture"]

PIT_NAMES = (
    "pit_ti", "pit_xs", "pit_s", "pit_b",
    "pit_ti_distilled", "pit_xs_distilled", "pit_s_distilled", "pit_b_distilled",
)
# Families a stray checkpoint is compared against when it does not fit the requested model.
_LOOKALIKES = PIT_NAMES + (
    "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
    "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224",
    "resnet50",
)
_CONTAINER_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema", "module")
_WEIGHTS_HINT = "download the weights on a machine with network access and pass weights=PATH (CLI: --weights PATH)"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict.

    Accepts ``.safetensors``, a raw state dict, or a container with the weights under
    ``model``/``state_dict``/``model_ema``/``state_dict_ema``; strips a DDP ``module.`` prefix.
    Loads with ``weights_only=True`` (no arbitrary pickles).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a readable .safetensors file: {err}") from err
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError, RuntimeError (not a zip/pickle), EOFError...
            raise ValueError(
                f"{path} is not a checkpoint torch.load(weights_only=True) can read "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from err
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping) and _is_state_dict(obj[k])),
                     None)
        if inner is None:
            raise ValueError(
                f"{path} holds a dict with keys {sorted(obj)[:8]} but no state dict of tensors "
                f"(looked at the top level and under {', '.join(_CONTAINER_KEYS)})"
            )
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path} does not contain a state dict (got {type(obj).__name__})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier", "head")
    return (names,) if isinstance(names, str) else tuple(names)


def _filter_for(model: nn.Module):
    """The model family's ``checkpoint_filter_fn`` (timm's convention), or None."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


@lru_cache(maxsize=None)
def _signature(name: str) -> frozenset[tuple[str, tuple[int, ...]]]:
    with torch.device("meta"):
        model = timm.create_model(name)
    return frozenset((k, tuple(v.shape)) for k, v in model.state_dict().items())


def guess_architecture(state_dict: Mapping[str, torch.Tensor]) -> tuple[str | None, float]:
    """The registered model whose (key, shape) set best matches ``state_dict``, and the match in [0, 1].

    Compares against our eight PiT variants (timm-format PiT keys are remapped first),
    DeiT tiny/small/base (plain and distilled) and ResNet-50; built on the meta device, so cheap.
    """
    renamed = {_pit._TIMM_POOL.sub(lambda m: f"pools.{int(m.group(1)) - 1}.", k): v for k, v in state_dict.items()}
    found = frozenset((k, tuple(v.shape)) for k, v in renamed.items())
    best, best_score = None, 0.0
    for name in _LOOKALIKES:
        sig = _signature(name)
        score = len(found & sig) / max(len(found | sig), 1)
        if score > best_score:
            best, best_score = name, score
    return best, best_score


def _examples(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    name: str | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Load ``path`` into ``model`` in place (see module docstring for formats) and return it.

    ``state_dict``: the file's contents when already read (``read_state_dict(path)``).
    A classifier head whose shape differs from the model's is dropped with a warning and
    keeps its fresh initialisation; any other mismatch raises ``ValueError``.
    """
    name = name or getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    raw = dict(state_dict) if state_dict is not None else read_state_dict(path)
    state_dict = dict(raw)
    filter_fn = _filter_for(model)
    if filter_fn is not None:
        try:
            state_dict = dict(filter_fn(state_dict, model))
        except Exception:  # a foreign file can trip a family filter: report it as a mismatch below
            pass
    own = model.state_dict()
    head_keys = {f"{h}.{p}" for h in _classifier_names(model) for p in ("weight", "bias")}
    # A head fits or is dropped only if its input width matches: otherwise the file is a wrong one.
    heads_to_drop = [k for k in head_keys & state_dict.keys()
                     if k not in own or own[k].shape != state_dict[k].shape]
    foreign_head = [k for k in heads_to_drop if k in own and own[k].shape[1:] != state_dict[k].shape[1:]]
    missing = [k for k in own if k not in state_dict and k not in head_keys and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own and k not in head_keys]
    wrong_shape = [k for k in state_dict if k in own and state_dict[k].shape != own[k].shape
                   and (k not in head_keys or k in foreign_head)]
    if missing or unexpected or wrong_shape:
        guess, score = guess_architecture(raw)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatches (" + ", ".join(
                f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong_shape[:3]
            ) + (", ..." if len(wrong_shape) > 3 else "") + ")")
        hint = (f" The file looks like '{guess}' ({score:.0%} of keys/shapes match): build that model instead."
                if guess and score >= 0.5 and guess != name else " It does not look like any model the suite knows.")
        raise ValueError(f"weights {path} do not fit model '{name}': " + "; ".join(parts) + "." + hint)
    if heads_to_drop:
        shapes = ", ".join(
            f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape) if k in own else 'none'}"
            for k in sorted(heads_to_drop)
        )
        fate = ("the model has no classifier" if getattr(model, "num_classes", None) == 0
                else "the model's classifier stays randomly initialised")
        warnings.warn(
            f"{path}: dropping the classifier of another size ({shapes}); {fate} "
            f"(num_classes={getattr(model, 'num_classes', '?')})",
            stacklevel=3,
        )
        for k in heads_to_drop:
            del state_dict[k]
    absent_heads = [k for k in head_keys & own.keys() if k not in state_dict and k not in heads_to_drop]
    if absent_heads:
        warnings.warn(f"{path} has no classifier ({', '.join(sorted(absent_heads))}): it stays randomly initialised",
                      stacklevel=3)
    model.load_state_dict(state_dict, strict=False)
    return model


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models() for names."
    raise ValueError(f"unknown model '{name}': not a PiT name ({', '.join(PIT_NAMES)}) nor a timm model.{hint}")


def _network_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_pretrained_file(name: str) -> Path | None:
    """The pretrained weights of ``name`` if already in the local HF hub cache."""
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def create_model(
    name: str,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build ``name`` (a PiT name such as ``pit_s`` or any timm name) and optionally load weights.

    Args:
        weights: checkpoint file (official PiT .pth, timm state dict, ``{"model": sd}``, .safetensors).
        num_classes: classifier size; when None and ``weights`` is given, taken from the file's head.
        img_size: native input size (PiT/ViT positional grid); positional embeddings are resampled.
        pretrained: fetch timm's published weights (needs network or the HF cache).
        kwargs: passed to the model constructor (``drop_path_rate``, ...).

    Returns the model in eval mode, expecting normalised input (mean/std in ``model.pretrained_cfg``).
    """
    _check_name(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    state_dict = None
    if weights is not None:
        if num_classes is None:
            state_dict = read_state_dict(weights)
            cfg = timm.models.get_pretrained_cfg(name)
            head = getattr(cfg, "classifier", None) or "head"
            head = head if isinstance(head, str) else head[0]
            if f"{head}.weight" in state_dict:
                kwargs["num_classes"] = state_dict[f"{head}.weight"].shape[0]
    elif pretrained:
        cached = _cached_pretrained_file(name)
        if cached is not None:
            weights = cached
        elif not _network_reachable():
            raise RuntimeError(f"pretrained weights for '{name}' are not cached and there is no network: {_WEIGHTS_HINT}")
    try:
        model = timm.create_model(name, pretrained=pretrained and weights is None, **kwargs)
    except TypeError as err:
        raise ValueError(f"model '{name}' does not accept these arguments ({err})") from err
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        raise RuntimeError(f"could not fetch pretrained weights for '{name}' ({type(err).__name__}): {_WEIGHTS_HINT}") from err
    if weights is not None:
        load_weights(model, weights, name, state_dict)
    return model.eval()
