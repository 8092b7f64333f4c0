"""Deformable DETR detector (Zhu et al. 2021) over a multi-scale backbone.

Backbone levels (strides 8/16/32 for PiT, DeiT, ResNet-50) are projected to the hidden width by
1×1 conv + GroupNorm; extra levels (stride 64, …) come from a 3×3 stride-2 conv on the last
backbone map, as in Deformable DETR. Classification is per-class sigmoid (focal loss), no
no-object class.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detection.deformable.transformer import DeformableTransformer, inverse_sigmoid
from detection.detr import box_mlp
from detection.presets import ARCH_DEFAULT, PRESETS

LOW_LR_PARAMETERS = ("sampling_offsets", "reference_points")  # 0.1× lr in Deformable DETR


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class DeformableDETR(nn.Module):
    """Deformable DETR.

    Args:
        backbone: a ``detection.backbones`` backbone returning a list of (map (B, C_l, h, w),
            mask (B, h, w)) and declaring ``num_channels``; ``forward`` takes normalised images.
        position_embedding: module mapping a mask (B, h, w) to a (B, hidden, h, w) embedding.
        transformer: the deformable encoder–decoder.
        num_classes: K (sigmoid logits, category indices 0..K-1).
        num_queries: object queries (300 in the paper).
        num_feature_levels: levels fed to the transformer; the last ones of the backbone, plus
            stride-2 convs on the last map for levels beyond the backbone's.
        aux_loss: return per-decoder-layer predictions in ``aux_outputs``.
        with_box_refine: iterative box refinement (per-layer heads, references refined).
        two_stage: queries from the encoder's top proposals (``enc_outputs`` returned).
    """

    def __init__(
        self, backbone: nn.Module, position_embedding: nn.Module, transformer: DeformableTransformer,
        num_classes: int, num_queries: int = 300, num_feature_levels: int = 4, aux_loss: bool = True,
        with_box_refine: bool = False, two_stage: bool = False, lr_linear_proj_mult: float = 0.1,
    ) -> None:
        super().__init__()
        self.lr_linear_proj_mult = lr_linear_proj_mult
        if two_stage != transformer.two_stage:
            raise ValueError("two_stage must match the transformer's two_stage")
        hidden = transformer.d_model
        self.backbone, self.position_embedding, self.transformer = backbone, position_embedding, transformer
        self.num_queries, self.num_feature_levels = num_queries, num_feature_levels
        self.aux_loss, self.with_box_refine, self.two_stage = aux_loss, with_box_refine, two_stage
        in_channels = list(backbone.num_channels)[-num_feature_levels:]
        projections = [nn.Sequential(nn.Conv2d(c, hidden, 1), _group_norm(hidden)) for c in in_channels]
        last = in_channels[-1]
        for _ in range(num_feature_levels - len(in_channels)):
            projections.append(nn.Sequential(nn.Conv2d(last, hidden, 3, stride=2, padding=1), _group_norm(hidden)))
            last = hidden
        self.input_proj = nn.ModuleList(projections)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, 2 * hidden)

        class_head = nn.Linear(hidden, num_classes)
        nn.init.constant_(class_head.bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01
        box_head = box_mlp(hidden)
        nn.init.zeros_(box_head[-2].weight)
        nn.init.zeros_(box_head[-2].bias)
        num_pred = len(transformer.decoder.layers) + (1 if two_stage else 0)
        if with_box_refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_pred))
            nn.init.constant_(self.bbox_embed[0][-2].bias[2:], -2.0)
        else:
            nn.init.constant_(box_head[-2].bias[2:], -2.0)
            self.class_embed = nn.ModuleList([class_head] * num_pred)
            self.bbox_embed = nn.ModuleList([box_head] * num_pred)
        if two_stage:
            for head in self.bbox_embed:
                nn.init.zeros_(head[-2].bias[2:])

    @property
    def gradless_in_forward(self) -> bool:
        """Whether ``forward`` runs parameters that never get a gradient: with box refinement but without the
        aux loss, the earlier layers' heads only refine (detached) reference points. DDP must then be told
        (``find_unused_parameters``); every other configuration trains all it runs."""
        return self.with_box_refine and not self.aux_loss

    def _multi_scale_inputs(self, images: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        features = self.backbone(images, mask)
        features = features[-min(self.num_feature_levels, len(features)):]
        srcs, masks = [], []
        for proj, (feature, feature_mask) in zip(self.input_proj, features):
            srcs.append(proj(feature))
            masks.append(feature_mask)
        source = features[-1][0]
        for proj in self.input_proj[len(features):]:
            source = proj(source)
            srcs.append(source)
            masks.append(F.interpolate(mask[None].float(), size=source.shape[-2:])[0].to(torch.bool))
        pos = [self.position_embedding(m).to(s.dtype) for s, m in zip(srcs, masks)]
        return srcs, masks, pos

    def forward(self, images: Tensor, mask: Tensor) -> dict:
        """Detect objects.

        Args:
            images: (B, 3, H, W) in [0, 1], zero-padded to a common size (normalised by the backbone).
            mask: (B, H, W) bool, True at padding.

        Returns:
            ``pred_logits`` (B, Q, K) sigmoid logits, ``pred_boxes`` (B, Q, 4) normalised cxcywh of
            the unpadded image, ``aux_outputs`` (list of the same per earlier decoder layer) and,
            two-stage, ``enc_outputs`` (encoder proposals: logits (B, S, K), boxes (B, S, 4)).
        """
        srcs, masks, pos = self._multi_scale_inputs(images, mask)
        query_embed = None if self.two_stage else self.query_embed.weight
        out = self.transformer(
            srcs, masks, pos, query_embed,
            box_heads=self.bbox_embed if self.with_box_refine else None,
            proposal_heads=(self.class_embed[-1], self.bbox_embed[-1]) if self.two_stage else None,
        )
        logits, boxes = [], []
        for lvl in range(out.hs.shape[0]):
            reference = inverse_sigmoid(out.init_reference if lvl == 0 else out.inter_references[lvl - 1])
            delta = self.bbox_embed[lvl](out.hs[lvl])
            if reference.shape[-1] == 4:
                coords = delta + reference
            else:
                coords = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            logits.append(self.class_embed[lvl](out.hs[lvl]))
            boxes.append(coords.sigmoid())
        result = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            result["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        if self.two_stage:
            result["enc_outputs"] = {"pred_logits": out.enc_logits, "pred_boxes": out.enc_boxes_unact.sigmoid()}
        return result

    def param_groups(self, lr: float, lr_backbone: float, weight_decay: float = 1e-4) -> list[dict]:
        """AdamW groups as Deformable DETR: backbone at ``lr_backbone``, sampling offsets and
        reference-point projections at ``lr_linear_proj_mult``·``lr`` (0.1), everything else at ``lr``. Frozen
        parameters are left out."""
        groups = {"backbone": [], "low": [], "main": []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("backbone."):
                groups["backbone"].append(param)
            elif any(key in name for key in LOW_LR_PARAMETERS):
                groups["low"].append(param)
            else:
                groups["main"].append(param)
        return [
            {"params": groups["main"], "lr": lr, "weight_decay": weight_decay, "name": "main"},
            {"params": groups["backbone"], "lr": lr_backbone, "weight_decay": weight_decay, "name": "backbone"},
            {"params": groups["low"], "lr": lr * self.lr_linear_proj_mult, "weight_decay": weight_decay, "name": "sampling_offsets_reference_points"},
        ]


_OFFICIAL = PRESETS[ARCH_DEFAULT["deformable"]].model_kwargs  # the defaults below are the official recipe's


def build_deformable_detector(
    *, backbone: str, num_classes: int, backbone_weights: str | None = None, freeze_patch_embed: bool = False,
    hidden_dim: int = _OFFICIAL["hidden_dim"], nheads: int = _OFFICIAL["nheads"], enc_layers: int = _OFFICIAL["enc_layers"],
    dec_layers: int = _OFFICIAL["dec_layers"], dim_feedforward: int = _OFFICIAL["dim_feedforward"],
    dropout: float = _OFFICIAL["dropout"], num_feature_levels: int = _OFFICIAL["num_feature_levels"],
    enc_n_points: int = _OFFICIAL["enc_n_points"], dec_n_points: int = _OFFICIAL["dec_n_points"],
    num_queries: int = _OFFICIAL["num_queries"], aux_loss: bool = True,
    with_box_refine: bool = _OFFICIAL["with_box_refine"], two_stage: bool = _OFFICIAL["two_stage"],
    dilation: bool = False, lr_linear_proj_mult: float = _OFFICIAL["lr_linear_proj_mult"],
    backbone_kwargs: dict[str, Any] | None = None,
) -> DeformableDETR:
    """Deformable DETR over a named multi-scale backbone (``detection.backbones``: PiT, DeiT/ViT,
    ResNet-50 give strides 8/16/32; extra levels up to ``num_feature_levels`` are added by
    stride-2 convs). Defaults are the paper's, read from the ``deformable`` preset (hidden 256, 8 heads,
    6+6 layers, FFN 1024, 4 levels × 4 points, 300 queries); every size is a keyword so tests can build
    tiny models; ``backbone_kwargs`` go to ``pit.create_model`` (e.g. ``{"depth": 6}``)."""
    from detection.backbones import build_backbone
    from detection.build import check_detector_args
    from detection.position_encoding import deformable_position_embedding

    check_detector_args(num_classes, hidden_dim, nheads, num_queries)
    net = build_backbone(backbone, weights=backbone_weights, multi_scale=num_feature_levels > 1,
                         freeze_patch_embed=freeze_patch_embed, dilation=dilation, **(backbone_kwargs or {}))
    transformer = DeformableTransformer(
        d_model=hidden_dim, nhead=nheads, num_encoder_layers=enc_layers, num_decoder_layers=dec_layers,
        dim_feedforward=dim_feedforward, dropout=dropout, num_feature_levels=num_feature_levels,
        enc_n_points=enc_n_points, dec_n_points=dec_n_points, two_stage=two_stage, two_stage_num_proposals=num_queries,
    )
    return DeformableDETR(
        net, deformable_position_embedding(hidden_dim), transformer, num_classes=num_classes,
        num_queries=num_queries, num_feature_levels=num_feature_levels, aux_loss=aux_loss,
        with_box_refine=with_box_refine, two_stage=two_stage, lr_linear_proj_mult=lr_linear_proj_mult,
    )
