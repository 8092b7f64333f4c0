"""``load_detector``: one entry point for every detector checkpoint the suite reads.

Formats (recognised from the file, never from its name):

* a checkpoint written by this suite (``detection.engine``: ``model``, ``arch``, ``backbone``,
  ``num_classes``, ``cat_ids``, ``model_kwargs``, ``args``);
* an official DETR ``.pth`` (facebookresearch/detr: ``{"model": state_dict, "args": Namespace}``;
  R50 / R101, DC5 from ``args.dilation``);
* an official Deformable DETR ``.pth`` (fundamentalvision/Deformable-DETR; plain, ``with_box_refine``
  and ``two_stage``, recognised from the keys);
* a Hugging Face ``save_pretrained`` folder (``config.json`` + ``model.safetensors``) of
  ``DetrForObjectDetection`` or ``DeformableDetrForObjectDetection``.

Official and Hugging Face heads keep their rows indexed by COCO category id (91 rows, + the
no-object row in DETR): the label map is then ``row → row``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from common.checkpoint import safe_load
from detection.build import build_detector, build_postprocessor
from detection.data import resolve_sizes
from detection.official_keys import hf_to_official, official_to_ours
from detection.presets import ARCH_DEFAULT, ImageSizes, get_preset

StateDict = dict[str, Tensor]
RESNET_BY_LAYER3_BLOCKS = {6: "resnet50", 23: "resnet101"}
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


def _count(state: StateDict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def _official_config(state: StateDict, args: dict) -> dict:
    """Build recipe of an official-layout state dict: structure from the keys and shapes, what shapes
    cannot tell (heads, backbone depth when absent from the keys, dilation) from ``args``."""
    deformable = "transformer.level_embed" in state
    if not deformable and "transformer.decoder.layers.0.multihead_attn.in_proj_weight" not in state:
        raise ValueError("fits neither DETR nor Deformable DETR (no transformer.level_embed, no "
                         "transformer.decoder.layers.0.multihead_attn)")
    layer3 = _count(state, "backbone.0.body.layer3.")
    backbone = args.get("backbone") or RESNET_BY_LAYER3_BLOCKS.get(layer3)
    if backbone is None:
        raise ValueError(f"backbone with {layer3} layer3 blocks is not a ResNet-50/101")
    kw = {"hidden_dim": state["transformer.encoder.layers.0.linear1.weight"].shape[1],
          "enc_layers": _count(state, "transformer.encoder.layers."),
          "dec_layers": _count(state, "transformer.decoder.layers."),
          "dim_feedforward": state["transformer.encoder.layers.0.linear1.weight"].shape[0],
          "nheads": int(args.get("nheads", 8)), "dilation": bool(args.get("dilation", False))}
    if deformable:
        two_stage = "transformer.enc_output.weight" in state
        kw.update(num_feature_levels=state["transformer.level_embed"].shape[0],
                  enc_n_points=int(args.get("enc_n_points", 4)), dec_n_points=int(args.get("dec_n_points", 4)),
                  with_box_refine="transformer.decoder.bbox_embed.0.layers.0.weight" in state, two_stage=two_stage,
                  num_queries=int(args.get("num_queries", 300)) if two_stage else state["query_embed.weight"].shape[0])
        num_classes = state["class_embed.0.weight"].shape[0]
    else:
        kw.update(num_queries=state["query_embed.weight"].shape[0], pre_norm="transformer.encoder.norm.weight" in state)
        num_classes = state["class_embed.weight"].shape[0] - 1
    return {"arch": "deformable" if deformable else "detr", "backbone": backbone, "num_classes": num_classes,
            "model_kwargs": kw}


def _hf_args(config: dict) -> dict:
    """What a Hugging Face config says that shapes cannot."""
    backbone_cfg = config.get("backbone_config") or {}
    backbone = backbone_cfg.get("backbone") or config.get("backbone")
    dilation = bool(config.get("dilation")) or backbone_cfg.get("output_stride") == 16
    args = {"nheads": config.get("encoder_attention_heads", 8), "dilation": dilation,
            "enc_n_points": config.get("encoder_n_points", 4), "dec_n_points": config.get("decoder_n_points", 4),
            "num_queries": config.get("two_stage_num_proposals", config.get("num_queries", 300))}
    return {**args, "backbone": backbone} if backbone else args


def _variant(config: dict) -> str:
    kw = config["model_kwargs"]
    if config["arch"] == "detr":
        return f"DETR-{config['backbone']}" + ("-DC5" if kw["dilation"] else "")
    extras = [n for n, on in (("with_box_refine", kw["with_box_refine"]), ("two_stage", kw["two_stage"])) if on]
    return "Deformable DETR " + (" + ".join(extras) or "(plain)")


def _load_into(model: nn.Module, state: StateDict, what: str) -> None:
    """Strict, shape-checked load; a mismatch is one line naming the first offending keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state
              and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{what} does not fit the model it describes: {len(missing)} missing {missing[:3]}, "
                         f"{len(unexpected)} unexpected {unexpected[:3]}, {len(shapes)} shape mismatches {shapes[:2]}")
    model.load_state_dict(state)


def _official(state: StateDict, args: dict, path: str, source: str) -> LoadedDetector:
    try:
        config = _official_config(state, args)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{path} looks like an official-layout detector but {exc}") from None
    model = build_detector(config["arch"], backbone=config["backbone"], num_classes=config["num_classes"],
                           **config["model_kwargs"])
    _load_into(model, official_to_ours(state), f"{path} ({source}, {_variant(config)})")
    rows = list(range(config["num_classes"]))  # official heads: row = COCO category id
    preset = get_preset(ARCH_DEFAULT[config["arch"]])
    return LoadedDetector(model.eval(), build_postprocessor(config["arch"], preset.num_select), rows,
                          [str(i) for i in rows], preset.sizes, config, f"{source}: {_variant(config)}")


def _hugging_face(folder: Path) -> LoadedDetector:
    config = json.loads((folder / "config.json").read_text())
    arch = {"detr": "detr", "deformable_detr": "deformable"}.get(config.get("model_type"))
    if arch is None:
        raise ValueError(f"{folder}/config.json is a {config.get('model_type')!r} model, not detr or deformable_detr")
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} has config.json but no model.safetensors")
    state = hf_to_official(safe_load(weights, what="Hugging Face weights"), arch)
    loaded = _official(state, _hf_args(config), str(folder), "Hugging Face")
    labels = config.get("id2label") or {}
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
    _load_into(model, ckpt["model"], f"{path} (suite checkpoint, {arch} over {config['backbone']})")
    args = dict(ckpt.get("args") or {})
    preset = get_preset(args.get("preset") or ARCH_DEFAULT[arch])
    sizes = resolve_sizes(preset.sizes, scales=args.get("scales"), max_size=args.get("max_size"),
                          test_size=args.get("test_size"), img_scale=args.get("img_scale") or 1.0)
    cat_ids = list(ckpt["cat_ids"])
    names = list(ckpt.get("category_names") or [str(c) for c in cat_ids])
    return LoadedDetector(model.eval(), build_postprocessor(arch, preset.num_select), cat_ids, names, sizes, config,
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
