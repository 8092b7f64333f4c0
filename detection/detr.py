"""DETR (Carion et al. 2020) over a ``detection.backbones`` backbone.

Module names mirror the official implementation (``input_proj``, ``query_embed``,
``class_embed``, ``transformer.*``); the box head is ``torchvision.ops.MLP`` (official
``bbox_embed.layers.i`` = our ``bbox_embed.{3i}``)."""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision.ops import MLP

from detection.backbones import Backbone, build_backbone
from detection.build import check_detector_args
from detection.presets import ARCH_DEFAULT, PRESETS
from detection.position_encoding import detr_position_embedding
from detection.transformer import Transformer


def box_mlp(hidden: int) -> MLP:
    """DETR's 3-layer box head (hidden → hidden → hidden → 4, ReLU between); linears at indices 0, 3, 6."""
    return MLP(hidden, [hidden, hidden, 4], activation_layer=nn.ReLU, inplace=False)


class DETR(nn.Module):
    """``forward(images (B, 3, H, W) in [0, 1], zero-padded; mask (B, H, W) True = padding)`` →
    ``{"pred_logits": (B, Q, K+1) (last = no object), "pred_boxes": (B, Q, 4) normalised cxcywh
    in [0, 1] relative to each image's unpadded size, "aux_outputs": [same, per earlier decoder layer]}``."""

    def __init__(self, backbone: Backbone, transformer: Transformer, num_classes: int, num_queries: int = 100,
                 aux_loss: bool = True) -> None:
        super().__init__()
        hidden = transformer.d_model
        self.backbone, self.transformer, self.num_classes = backbone, transformer, num_classes
        self.position_embedding = detr_position_embedding(hidden)
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], hidden, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, hidden)
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.bbox_embed = box_mlp(hidden)
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


_OFFICIAL = PRESETS[ARCH_DEFAULT["detr"]].model_kwargs  # the defaults below are the official recipe's


def build_detr(*, backbone: str, num_classes: int, backbone_weights: str | None = None, freeze_patch_embed: bool = False,
               hidden_dim: int = _OFFICIAL["hidden_dim"], nheads: int = _OFFICIAL["nheads"],
               enc_layers: int = _OFFICIAL["enc_layers"], dec_layers: int = _OFFICIAL["dec_layers"],
               dim_feedforward: int = _OFFICIAL["dim_feedforward"], dropout: float = _OFFICIAL["dropout"],
               pre_norm: bool = _OFFICIAL["pre_norm"], num_queries: int = _OFFICIAL["num_queries"],
               aux_loss: bool = True, dilation: bool = False, backbone_kwargs: dict[str, Any] | None = None) -> DETR:
    """DETR with the official DETR defaults (the ``detr-r50`` preset's model keywords, docs/detection.md); every
    size is a keyword so tests can build tiny models; ``backbone_kwargs`` go to ``pit.create_model``."""
    check_detector_args(num_classes, hidden_dim, nheads, num_queries)
    net = build_backbone(backbone, weights=backbone_weights, freeze_patch_embed=freeze_patch_embed, dilation=dilation,
                         **(backbone_kwargs or {}))
    transformer = Transformer(hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward, dropout, pre_norm)
    return DETR(net, transformer, num_classes, num_queries, aux_loss)
