"""Key maps between checkpoint layouts: Hugging Face transformers → official (facebookresearch/detr,
fundamentalvision/Deformable-DETR) → ours.

Our modules carry the official names, so official → ours is a prefix map plus the box head's
``torchvision.ops.MLP`` indices (official ``bbox_embed.layers.i`` = ours ``bbox_embed.{3i}``).
Hugging Face splits attention projections (``q_proj``/``k_proj``/``v_proj``) that the official
``nn.MultiheadAttention`` keeps stacked (``in_proj_weight`` = [q; k; v]) and renames the norms
by role (``self_attn_layer_norm``, ``encoder_attn_layer_norm``, ``final_layer_norm``); those roles
map to the official ``norm1/2/3`` per architecture (Deformable DETR's decoder numbers them
cross-attention 1, self-attention 2).
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

StateDict = dict[str, Tensor]

HF_BACKBONE_PREFIXES = ("model.backbone.conv_encoder.model.", "model.backbone.model.")
# role of each Hugging Face layer norm → the official name, per (architecture, encoder|decoder)
_HF_NORMS = {
    ("detr", "encoder"): {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"},
    ("detr", "decoder"): {"self_attn_layer_norm": "norm1", "encoder_attn_layer_norm": "norm2", "final_layer_norm": "norm3"},
    ("deformable", "encoder"): {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"},
    ("deformable", "decoder"): {"encoder_attn_layer_norm": "norm1", "self_attn_layer_norm": "norm2", "final_layer_norm": "norm3"},
}
_HF_CROSS = {"detr": "multihead_attn", "deformable": "cross_attn"}
_HF_TOP = {  # Hugging Face top-level prefix → official prefix
    "model.input_projection.": "input_proj.", "model.input_proj.": "input_proj.",
    "model.query_position_embeddings.": "query_embed.", "model.level_embed": "transformer.level_embed",
    "model.reference_points.": "transformer.reference_points.", "model.enc_output.": "transformer.enc_output.",
    "model.enc_output_norm.": "transformer.enc_output_norm.", "model.pos_trans.": "transformer.pos_trans.",
    "model.pos_trans_norm.": "transformer.pos_trans_norm.", "model.decoder.layernorm.": "transformer.decoder.norm.",
    "model.decoder.bbox_embed.": "transformer.decoder.bbox_embed.",
    "model.decoder.class_embed.": "transformer.decoder.class_embed.",
    "class_labels_classifier.": "class_embed.", "bbox_predictor.": "bbox_embed.",
    "class_embed.": "class_embed.", "bbox_embed.": "bbox_embed.",
}
_LAYER = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")


def _hf_layer_key(arch: str, part: str, rest: str) -> str:
    """One Hugging Face encoder/decoder layer key (after ``layers.N.``) → the official one."""
    head, _, tail = rest.partition(".")
    norms = _HF_NORMS[(arch, part)]
    if head in norms:
        return f"{norms[head]}.{tail}"
    if head == "mlp":
        head, _, tail = tail.partition(".")
    if head in ("fc1", "fc2"):
        return f"linear{head[-1]}.{tail}"
    if head == "encoder_attn":
        head = _HF_CROSS[arch]
    return f"{head}.{tail}".replace(".o_proj.", ".out_proj.")


def _stack_qkv(state: StateDict) -> StateDict:
    """``X.q_proj.w``, ``X.k_proj.w``, ``X.v_proj.w`` → ``X.in_proj_weight`` (and biases)."""
    out: StateDict = {}
    for key, value in state.items():
        match = re.match(r"^(.*)\.([qkv])_proj\.(weight|bias)$", key)
        if not match:
            out[key] = value
        elif match.group(2) == "q":
            base, kind = match.group(1), match.group(3)
            out[f"{base}.in_proj_{kind}"] = torch.cat([state[f"{base}.{p}_proj.{kind}"] for p in "qkv"])
    return out


def hf_to_official(state: StateDict, arch: str) -> StateDict:
    """A ``DetrForObjectDetection`` / ``DeformableDetrForObjectDetection`` state dict → the official layout.

    Raises ValueError naming the first key no rule covers."""
    out: StateDict = {}
    for key, value in state.items():
        backbone = next((p for p in HF_BACKBONE_PREFIXES if key.startswith(p)), None)
        layer = _LAYER.match(key)
        if backbone:
            out["backbone.0.body." + key[len(backbone):]] = value
        elif layer:
            part, index, rest = layer.groups()
            out[f"transformer.{part}.layers.{index}.{_hf_layer_key(arch, part, rest)}"] = value
        else:
            prefix = next((p for p in _HF_TOP if key.startswith(p)), None)
            if prefix is None:
                raise ValueError(f"Hugging Face key {key!r} has no official counterpart (not a DETR / Deformable DETR "
                                 "object-detection model?)")
            out[_HF_TOP[prefix] + key[len(prefix):]] = value
    return _fill_shared_heads(_stack_qkv(out))


def _fill_shared_heads(state: StateDict) -> StateDict:
    """Deformable DETR without box refinement shares one class/box head across decoder layers; the
    official file stores every alias (``class_embed.0`` … ``class_embed.N``), ``save_pretrained``
    only the first: restore the aliases."""
    for key in [k for k in state if k.startswith(SHARED_COPIES)]:
        state.setdefault(key[len("transformer.decoder."):], state[key])
    if "class_embed.0.weight" not in state:
        return state
    layers = {k.split(".")[3] for k in state if k.startswith("transformer.decoder.layers.")}
    num_pred = len(layers) + ("transformer.enc_output.weight" in state)
    for head in ("class_embed", "bbox_embed"):
        first = {k[len(head) + 3:]: v for k, v in state.items() if k.startswith(f"{head}.0.")}
        for i in range(1, num_pred):
            for rest, value in first.items():
                state.setdefault(f"{head}.{i}.{rest}", value)
    return state


_MLP = re.compile(r"^(.*bbox_embed(?:\.\d+)?)\.layers\.(\d+)\.(weight|bias)$")
SHARED_COPIES = ("transformer.decoder.bbox_embed.", "transformer.decoder.class_embed.")


def official_to_ours(state: StateDict) -> StateDict:
    """Official layout → ours: ``backbone.0.body.`` → ``backbone.body.``, box-head MLP indices, and the
    decoder's references to the heads (``transformer.decoder.{bbox,class}_embed``, the top-level
    heads again in box refinement / two-stage) dropped after checking they are copies (or used as the
    heads where only they were saved)."""
    out: StateDict = {}
    for key, value in state.items():
        if key.startswith(SHARED_COPIES):
            top = key[len("transformer.decoder."):]
            if top in state:
                if not torch.equal(state[top], value):
                    raise ValueError(f"{key} differs from {top}: in the official model they are one module")
                continue
            key = top  # save_pretrained keeps one name of a tied module
        if key.startswith("backbone.0.body."):
            key = "backbone.body." + key[len("backbone.0.body."):]
        match = _MLP.match(key)
        if match:
            key = f"{match.group(1)}.{3 * int(match.group(2))}.{match.group(3)}"
        out[key] = value
    return out
