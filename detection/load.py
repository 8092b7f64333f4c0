"""``load_detector``: one entry point for every detector checkpoint the suite reads, and ``detection convert``.

Formats (recognised from the file, never from its name):

* a checkpoint written by this suite (``detection.engine``: ``model``, ``arch``, ``backbone``,
  ``num_classes``, ``cat_ids``, ``model_kwargs``, ``args``);
* an official DETR / Deformable DETR ``.pth`` or a Hugging Face ``save_pretrained`` folder
  (``detection.official``): their heads keep rows indexed by COCO category id, so the label map is
  ``row → row``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from common.checkpoint import safe_load
from detection.backbones import without_pruned
from detection.build import build_detector, build_postprocessor
from detection.data import resolve_sizes
from detection.official import hugging_face_state, load_strict, official_model
from detection.presets import ARCH_DEFAULT, ImageSizes, get_preset

LEGACY_PREFIXES = ("transformer.decoder_norm.", "transformer.encoder_layers.", "transformer.decoder.0.")


@dataclass
class LoadedDetector:
    """A ready detector (eval mode) with what evaluating it needs.

    ``cat_ids[row]`` is the category id of head row ``row``; ``sizes`` the image sizes it expects
    (test short side / max size); ``config`` the build recipe (``arch``, ``backbone``,
    ``num_classes``, ``model_kwargs``) a suite checkpoint stores; ``source`` the format read."""

    model: nn.Module
    postprocessor: nn.Module
    cat_ids: list[int]
    category_names: list[str]
    sizes: ImageSizes
    config: dict
    source: str
    args: dict = field(default_factory=dict)


def _official(state: dict, args: dict, path: str, source: str) -> LoadedDetector:
    model, config, described = official_model(state, args, path, source)
    rows = list(range(config["num_classes"]))  # official heads: row = COCO category id
    preset = get_preset(ARCH_DEFAULT[config["arch"]])
    return LoadedDetector(model.eval(), build_postprocessor(config["arch"], preset.num_select), rows,
                          [str(i) for i in rows], preset.sizes, config, described)


def _hugging_face(folder: Path) -> LoadedDetector:
    state, args, labels = hugging_face_state(folder)
    loaded = _official(state, args, str(folder), "Hugging Face")
    loaded.category_names = [labels.get(str(i), str(i)) for i in loaded.cat_ids]
    return loaded


def _suite(ckpt: dict, path: str) -> LoadedDetector:
    arch = ckpt.get("arch", "detr")
    config = {"arch": arch, "backbone": ckpt["backbone"], "num_classes": ckpt["num_classes"],
              "model_kwargs": dict(ckpt.get("model_kwargs") or {})}
    if any(k.startswith(LEGACY_PREFIXES) for k in ckpt["model"]):
        raise ValueError(f"{path} is a suite checkpoint from before the detectors took the official module names "
                         "(and DETR the official positional encoding): its weights would not give the same outputs; "
                         "train it again")
    model = build_detector(arch, backbone=config["backbone"], num_classes=config["num_classes"], **config["model_kwargs"])
    load_strict(model, without_pruned(model, ckpt["model"]), f"{path} (suite checkpoint, {arch} over {config['backbone']})")
    args = dict(ckpt.get("args") or {})
    preset = get_preset(args.get("preset") or ARCH_DEFAULT[arch])
    sizes = resolve_sizes(preset.sizes, scales=args.get("scales"), max_size=args.get("max_size"),
                          test_size=args.get("test_size"), img_scale=args.get("img_scale") or 1.0)
    cat_ids = list(ckpt["cat_ids"])
    names = list(ckpt.get("category_names") or [str(c) for c in cat_ids])
    num_select = args.get("num_select") or preset.num_select
    return LoadedDetector(model.eval(), build_postprocessor(arch, num_select), cat_ids, names, sizes, config,
                          "suite checkpoint", args)


def load_detector(path: str, device: str = "cpu") -> LoadedDetector:
    """Any supported detector file or folder → :class:`LoadedDetector` on ``device`` in eval mode.

    The detector takes ``(images (B, 3, H, W) in [0, 1], mask (B, H, W) True = padding)``.
    Raises FileNotFoundError for a missing path and ValueError (one line naming what the file looks
    like) for a file that fits no known layout."""
    source = Path(path)
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise FileNotFoundError(f"{source} is a folder without config.json (not a Hugging Face save_pretrained folder)")
        loaded = _hugging_face(source)
    else:
        ckpt = safe_load(source, what="detector checkpoint", allow=[argparse.Namespace])
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
            raise ValueError(f"{source} is not a detector checkpoint (expected a dict with a 'model' state dict)")
        if "backbone" in ckpt and "num_classes" in ckpt:
            loaded = _suite(ckpt, str(source))
        else:
            args = ckpt.get("args")
            args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
            kind = "official Deformable DETR" if "transformer.level_embed" in ckpt["model"] else "official DETR"
            loaded = _official(ckpt["model"], args, str(source), kind)
    loaded.model.to(device)
    return loaded


def suite_checkpoint(loaded: LoadedDetector) -> dict:
    """The suite's checkpoint layout (``detection.engine``) of a loaded detector, for ``detection convert``."""
    config = loaded.config
    sizes = loaded.sizes
    args = {**loaded.args, "preset": loaded.args.get("preset") or ARCH_DEFAULT[config["arch"]],
            "scales": list(sizes.train_scales), "max_size": sizes.max_size, "test_size": sizes.test_size, "img_scale": 1.0}
    return {"model": loaded.model.state_dict(), "arch": config["arch"], "backbone": config["backbone"],
            "num_classes": config["num_classes"], "cat_ids": loaded.cat_ids, "category_names": loaded.category_names,
            "model_kwargs": config["model_kwargs"], "args": args, "converted_from": loaded.source}


def convert_detector(src: str, dst: str) -> str:
    """``detection convert``: write ``src`` (any :func:`load_detector` format) as a suite checkpoint at ``dst``;
    returns a one-line summary."""
    from common.io import atomic_torch_save

    loaded = load_detector(src)
    atomic_torch_save(suite_checkpoint(loaded), dst)
    return f"{dst}: {loaded.source} → suite checkpoint ({len(loaded.cat_ids)} head rows)"
