"""One factory for every model the suite evaluates: our PiT names or any timm name, plus weights.

``create_model(name, weights=PATH)`` reads official PiT ``.pth`` files, timm-format state
dicts, DeiT-style ``{"model": ...}`` / ``{"state_dict": ...}`` checkpoints and
``.safetensors``; runs the model family's own ``checkpoint_filter_fn`` (key remapping and
positional-embedding resampling); drops a classifier head of another size with a warning;
and refuses a file that does not fit with one ``ValueError`` that names the differing keys
and what the file looks like. Reading (safe, timm-based) is ``pit.checkpoint``; published
weights (hub cache, offline switch) are ``pit.hub``.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from torch import nn

from pit.checkpoint import describe, guess_architecture, key_examples, read_state_dict
from pit.hub import cached_pretrained_file, hub_offline, hub_reachable, hub_source
from pit.names import PIT_NAMES, check_name

__all__ = ["PIT_NAMES", "create_model", "load_weights", "read_state_dict", "guess_architecture"]

_WEIGHTS_HINT = "download the weights on a machine with network access and pass weights=PATH (CLI: --weights PATH)"


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier", "head")
    return (names,) if isinstance(names, str) else tuple(names)


def _filter_for(model: nn.Module):
    """The model family's ``checkpoint_filter_fn`` (timm's convention), or None."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


# What a family filter raises on a file of another architecture (a key it expects is absent, a tensor of
# another shape cannot be reshaped or resampled): reported as a mismatch by ``load_weights``.
_FOREIGN_FILE_ERRORS = (KeyError, IndexError, ValueError, RuntimeError)


def _filtered(model: nn.Module, path: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` through the model family's ``checkpoint_filter_fn``; unchanged when there is none, or when
    the filter trips over a foreign file (the key comparison that follows names the mismatch). Any other
    exception is a fault of the filter itself and raises, naming the filter and the file."""
    filter_fn = _filter_for(model)
    if filter_fn is None:
        return state_dict
    try:
        return dict(filter_fn(state_dict, model))
    except _FOREIGN_FILE_ERRORS:
        return state_dict
    except Exception as err:
        raise RuntimeError(f"{type(model).__module__}.checkpoint_filter_fn failed on {path} "
                           f"({type(err).__name__}: {err}): a fault in that filter, not in the file") from err


def _misfit(path: str | os.PathLike, name: str, raw: Mapping[str, torch.Tensor], missing: list[str],
            unexpected: list[str], wrong_shape: list[str], state_dict: Mapping[str, torch.Tensor],
            own: Mapping[str, torch.Tensor]) -> ValueError:
    """One line: which keys do not fit, and what the file looks like (a registered name, or its sizes)."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({key_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({key_examples(unexpected)})")
    if wrong_shape:
        parts.append(f"{len(wrong_shape)} shape mismatches (" + ", ".join(
            f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong_shape[:3]
        ) + (", ..." if len(wrong_shape) > 3 else "") + ")")
    guess, score = guess_architecture(raw)
    if guess and guess != name:
        hint = f" The file looks like '{guess}' ({score:.0%} of its fingerprint matches): build that model instead."
    else:
        hint = f" The file holds {describe(raw)}."
    return ValueError(f"weights {path} do not fit model '{name}': " + "; ".join(parts) + "." + hint)


def _drop_foreign_heads(model: nn.Module, path: str | os.PathLike, state_dict: dict[str, torch.Tensor],
                        heads: list[str]) -> None:
    """Remove classifier tensors of another class count from ``state_dict``, with one warning."""
    own = model.state_dict()
    if heads:
        shapes = ", ".join(f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape) if k in own else 'none'}"
                           for k in sorted(heads))
        fate = ("the model has no classifier" if getattr(model, "num_classes", None) == 0
                else "the model's classifier stays randomly initialised")
        warnings.warn(f"{path}: dropping the classifier of another size ({shapes}); {fate} "
                      f"(num_classes={getattr(model, 'num_classes', '?')})", stacklevel=4)
        for k in heads:
            del state_dict[k]
    absent = [k for k in _head_keys(model) & own.keys() if k not in state_dict and k not in heads]
    if absent:
        warnings.warn(f"{path} has no classifier ({', '.join(sorted(absent))}): it stays randomly initialised",
                      stacklevel=4)


def _head_keys(model: nn.Module) -> set[str]:
    return {f"{h}.{p}" for h in _classifier_names(model) for p in ("weight", "bias")}


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    name: str | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Load ``path`` into ``model`` in place (see module docstring for formats) and return it.

    ``state_dict``: the file's contents when already read (``read_state_dict(path)``). The model
    family's ``checkpoint_filter_fn`` runs first (timm's ``load_checkpoint(filter_fn=...)`` step).
    A classifier head whose shape differs from the model's is dropped with a warning and keeps its
    fresh initialisation; any other mismatch raises one ``ValueError`` naming the file and what it
    looks like.
    """
    name = name or getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    raw = dict(state_dict) if state_dict is not None else read_state_dict(path)
    state_dict = dict(raw)
    state_dict = _filtered(model, path, state_dict)
    own = model.state_dict()
    head_keys = _head_keys(model)
    # A head fits or is dropped only if its input width matches: otherwise the file is a wrong one.
    heads_to_drop = [k for k in head_keys & state_dict.keys() if k not in own or own[k].shape != state_dict[k].shape]
    foreign_head = [k for k in heads_to_drop if k in own and own[k].shape[1:] != state_dict[k].shape[1:]]
    missing = [k for k in own if k not in state_dict and k not in head_keys and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own and k not in head_keys]
    wrong_shape = [k for k in state_dict if k in own and state_dict[k].shape != own[k].shape
                   and (k not in head_keys or k in foreign_head)]
    if missing or unexpected or wrong_shape:
        raise _misfit(path, name, raw, missing, unexpected, wrong_shape, state_dict, own)
    _drop_foreign_heads(model, path, state_dict, heads_to_drop)
    model.load_state_dict(state_dict, strict=False)
    return model


def _num_classes_of(name: str, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The class count of the file's classifier (the head named by ``name``'s pretrained config)."""
    head = getattr(timm.models.get_pretrained_cfg(name), "classifier", None) or "head"
    head = head if isinstance(head, str) else head[0]
    weight = state_dict.get(f"{head}.weight")
    return None if weight is None else weight.shape[0]


def _published_file(name: str) -> Path | None:
    """The cached published weights of ``name``; None when they must be downloaded (reachable hub).

    Raises ``RuntimeError`` at once when they are neither cached nor reachable (offline switch on,
    no route to the hub, or no published weights at all).
    """
    cached = cached_pretrained_file(name)
    if cached is not None:
        return cached
    if hub_source(name) is None:
        raise RuntimeError(f"'{name}' has no published weights on the Hugging Face hub: pass weights=PATH "
                           "(CLI: --weights PATH)")
    if not hub_reachable(name):
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face hub cannot be reached"
        raise RuntimeError(f"pretrained weights for '{name}' are not in the local hub cache and {why}: {_WEIGHTS_HINT}")
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
        pretrained: timm's published weights, from the local hub cache (works offline) or downloaded;
            fails at once with ``RuntimeError`` when neither is possible (see ``pit.default_weights``).
        kwargs: passed to the model constructor (``drop_path_rate``, ...).

    Returns the model in eval mode, expecting normalised input (mean/std in ``model.pretrained_cfg``).
    """
    check_name(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    if weights is None and pretrained:
        weights = _published_file(name)
    state_dict = None
    if weights is not None and num_classes is None:
        state_dict = read_state_dict(weights)
        found = _num_classes_of(name, state_dict)
        if found is not None:
            kwargs["num_classes"] = found
    try:
        model = timm.create_model(name, pretrained=pretrained and weights is None, **kwargs)
    except TypeError as err:
        raise ValueError(f"model '{name}' does not accept these arguments ({err})") from err
    except Exception as err:  # the hub's / timm's download errors (HTTP, connection, missing entry)
        if not pretrained:
            raise
        raise RuntimeError(f"could not fetch pretrained weights for '{name}' ({type(err).__name__}): "
                           f"{_WEIGHTS_HINT}") from err
    if weights is not None:
        load_weights(model, weights, name, state_dict)
    return model.eval()
