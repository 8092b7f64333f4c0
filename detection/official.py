"""Official DETR / Deformable DETR checkpoints: their build recipe read from the weights themselves.

* an official DETR ``.pth`` (facebookresearch/detr: ``{"model": state_dict, "args": Namespace}``;
  R50 / R101, DC5 from ``args.dilation``);
* an official Deformable DETR ``.pth`` (fundamentalvision/Deformable-DETR; plain, ``with_box_refine``
  and ``two_stage``, recognised from the keys);
* a Hugging Face ``save_pretrained`` folder (``config.json`` + ``model.safetensors``) of
  ``DetrForObjectDetection`` or ``DeformableDetrForObjectDetection``, mapped to the official layout.

Official and Hugging Face heads keep their rows indexed by COCO category id (91 rows, + the
no-object row in DETR). ``detection.load.load_detector`` reads every format through this module.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor, nn

from common.checkpoint import safe_load
from detection.build import build_detector
from detection.official_keys import hf_to_official, official_to_ours

StateDict = dict[str, Tensor]
RESNET_BY_LAYER3_BLOCKS = {6: "resnet50", 23: "resnet101"}


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


def load_strict(model: nn.Module, state: StateDict, what: str) -> None:
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


def official_model(state: StateDict, args: dict, path: str, source: str) -> tuple[nn.Module, dict, str]:
    """(detector with ``state`` loaded strictly, its build recipe ``{"arch", "backbone", "num_classes",
    "model_kwargs"}``, a description such as ``"official DETR: DETR-resnet50"``) of an official-layout state dict."""
    try:
        config = _official_config(state, args)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{path} looks like an official-layout detector but {exc}") from None
    model = build_detector(config["arch"], backbone=config["backbone"], num_classes=config["num_classes"],
                           **config["model_kwargs"])
    load_strict(model, official_to_ours(state), f"{path} ({source}, {_variant(config)})")
    return model, config, f"{source}: {_variant(config)}"


def hugging_face_state(folder: Path) -> tuple[StateDict, dict, dict[str, str]]:
    """(official-layout state dict, the args shapes cannot tell, ``id2label``) of a Hugging Face folder."""
    config = json.loads((folder / "config.json").read_text())
    arch = {"detr": "detr", "deformable_detr": "deformable"}.get(config.get("model_type"))
    if arch is None:
        raise ValueError(f"{folder}/config.json is a {config.get('model_type')!r} model, not detr or deformable_detr")
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} has config.json but no model.safetensors")
    state = hf_to_official(safe_load(weights, what="Hugging Face weights"), arch)
    return state, _hf_args(config), config.get("id2label") or {}


def __getattr__(name: str):
    """``load_detector`` moved to ``detection.load``; this alias keeps older imports working."""
    if name == "load_detector":
        from detection.load import load_detector

        return load_detector
    raise AttributeError(f"module 'detection.official' has no attribute {name!r}")
