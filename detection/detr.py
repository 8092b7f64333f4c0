"""DETR (Carion et al. 2020) over a ``detection.backbones`` backbone, and its post-processing."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MLP, box_convert

from detection.backbones import Backbone, build_backbone
from detection.position_encoding import PositionEmbeddingSine
from detection.transformer import Transformer


class DETR(nn.Module):
    """``forward(images (B, 3, H, W) normalised, zero-padded; mask (B, H, W) True = padding)`` →
    ``{"pred_logits": (B, Q, K+1) (last = no object), "pred_boxes": (B, Q, 4) normalised cxcywh
    in [0, 1] relative to each image's unpadded size, "aux_outputs": [same, per earlier decoder layer]}``."""

    def __init__(self, backbone: Backbone, transformer: Transformer, num_classes: int, num_queries: int = 100,
                 aux_loss: bool = True) -> None:
        super().__init__()
        hidden = transformer.d_model
        self.backbone, self.transformer, self.num_classes = backbone, transformer, num_classes
        self.position_embedding = PositionEmbeddingSine(hidden // 2, normalize=True)
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], hidden, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, hidden)
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.bbox_embed = MLP(hidden, [hidden, hidden, 4], activation_layer=nn.ReLU, inplace=False)
        self.aux_loss = aux_loss

    def forward(self, images: Tensor, mask: Tensor) -> dict:
        feature, feature_mask = self.backbone(images, mask)[-1]
        src = self.input_proj(feature)
        pos = self.position_embedding(feature_mask).to(src.dtype)
        states = self.transformer(src, feature_mask, self.query_embed.weight, pos)
        logits, boxes = self.class_embed(states), self.bbox_embed(states).sigmoid()
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": l, "pred_boxes": b} for l, b in zip(logits[:-1], boxes[:-1])]
        return out


class PostProcess(nn.Module):
    """DETR outputs → per-image COCO detections.

    ``forward(outputs, target_sizes (B, 2) = (height, width) of the original images)`` → list of
    ``{"scores": (Q,), "labels": (Q,) contiguous 0..K-1, "boxes": (Q, 4) absolute xywh pixels}``
    (the best non-"no object" class of every query).
    """

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(logits) != len(target_sizes):
            raise ValueError(f"{len(logits)} predictions but {len(target_sizes)} target sizes")
        scores, labels = F.softmax(logits.float(), -1)[..., :-1].max(-1)
        height, width = target_sizes.to(torch.float32).unbind(1)
        scale = torch.stack([width, height, width, height], 1)[:, None]
        xywh = box_convert(boxes.float() * scale, "cxcywh", "xywh")
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, xywh)]


def build_detr(*, backbone: str, num_classes: int, backbone_weights: str | None = None, freeze_patch_embed: bool = False,
               hidden_dim: int = 256, nheads: int = 8, enc_layers: int = 6, dec_layers: int = 6,
               dim_feedforward: int = 2048, dropout: float = 0.1, pre_norm: bool = False, num_queries: int = 100,
               aux_loss: bool = True, **backbone_kw) -> DETR:
    """DETR with the official DETR defaults (docs/detection.md); every size is a keyword so tests can build tiny models."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
    if hidden_dim % 2 or hidden_dim % nheads:
        raise ValueError(f"hidden_dim ({hidden_dim}) must be even and divisible by nheads ({nheads})")
    net = build_backbone(backbone, weights=backbone_weights, freeze_patch_embed=freeze_patch_embed, **backbone_kw)
    transformer = Transformer(hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward, dropout, pre_norm)
    return DETR(net, transformer, num_classes, num_queries, aux_loss)
