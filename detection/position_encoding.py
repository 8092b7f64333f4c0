"""Sine positional encodings of DETR (Carion et al. 2020) and Deformable DETR (Zhu et al. 2021),
both respecting the padding mask."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """``forward(mask)``: mask (B, h, w) bool True = padding → embedding (B, 2·num_pos_feats, h, w).

    Positions are cumulative counts of valid (non-padded) pixels, so a padded image gets the
    same encoding as the unpadded one. With ``normalize`` a position ``y`` becomes
    ``(y + offset) / (y_last + 1e-6) · scale``: DETR uses ``offset=0`` (positions in (0, 2π]),
    Deformable DETR ``offset=-0.5`` (pixel centres).
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float | None = None, offset: float = 0.0) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale needs normalize=True")
        self.num_pos_feats, self.temperature, self.normalize = num_pos_feats, temperature, normalize
        self.scale, self.offset = (2 * math.pi if scale is None else scale), offset

    def forward(self, mask: Tensor) -> Tensor:
        not_mask = (~mask).to(torch.float32)
        y_embed, x_embed = not_mask.cumsum(1), not_mask.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x, pos_y = x_embed[..., None] / dim_t, y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def detr_position_embedding(hidden_dim: int) -> PositionEmbeddingSine:
    """DETR's encoding: ``y / (y_last + eps) · 2π``."""
    return PositionEmbeddingSine(hidden_dim // 2, normalize=True)


def deformable_position_embedding(hidden_dim: int) -> PositionEmbeddingSine:
    """Deformable DETR's encoding: ``(y − 0.5) / (y_last + eps) · 2π``."""
    return PositionEmbeddingSine(hidden_dim // 2, normalize=True, offset=-0.5)
