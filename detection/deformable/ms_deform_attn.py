"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021), pure PyTorch.

Each query attends to ``n_points`` sampled locations on each of ``n_levels`` feature maps per
head, at offsets predicted from the query around its reference point; the sampled values are
bilinearly interpolated (``F.grid_sample``, zero padding, ``align_corners=False``) and summed
with softmax weights that are also predicted from the query. No custom CUDA build is needed,
so it runs on any device, CPU included.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def ms_deform_attn_pytorch(
    value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Weighted sum of bilinear samples over levels and points, batched over heads and points.

    Args:
        value: (B, S, H, D) per-head values of all levels flattened level after level, row-major
            (S = Σ_l h_l·w_l).
        spatial_shapes: (L, 2) long, (h_l, w_l) of each level in the order of ``value``.
        sampling_locations: (B, Q, H, L, P, 2) in [0, 1] as (x, y) fractions of each level's
            width/height; (0, 0) is the top-left corner of the top-left pixel (pixel centres at
            (i + 0.5)/w). Outside [0, 1] samples zeros.
        attention_weights: (B, Q, H, L, P), normalised over L·P by the caller.

    Returns:
        (B, Q, H·D).
    """
    batch, _, heads, dim = value.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] convention
    sampled = []
    for level, (h, w) in enumerate(shapes):
        value_l = rearrange(value_levels[level], "b (h w) m d -> (b m) d h w", h=h, w=w)
        grid_l = rearrange(grids[:, :, :, level], "b q m p xy -> (b m) q p xy")
        sampled.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B·H, D, Q, P)
    samples = torch.stack(sampled, dim=-2).flatten(-2)  # (B·H, D, Q, L·P)
    weights = rearrange(attention_weights, "b q m l p -> (b m) 1 q (l p)")
    output = (samples * weights).sum(-1)  # (B·H, D, Q)
    return rearrange(output, "(b m) d q -> b q (m d)", b=batch, m=heads, d=dim)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention layer.

    Args:
        d_model: channel width C (divisible by ``n_heads``).
        n_levels: number of feature levels L.
        n_heads: attention heads H.
        n_points: sampling points per head per level P.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on a ring of directions, one per head, at
        distances 1..P (in pixels of each level); uniform attention weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Tensor,
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``query`` to the flattened multi-scale maps.

        Args:
            query: (B, Q, C) queries (with positional embedding added).
            reference_points: (B, Q, L, 2) normalised (x, y) in [0, 1] of each level's valid
                (unpadded) area, or (B, Q, L, 4) normalised (cx, cy, w, h) boxes, in which case
                offsets are scaled by half the box size.
            input_flatten: (B, S, C) all levels flattened (S = Σ_l h_l·w_l).
            spatial_shapes: (L, 2) long, (h_l, w_l) per level.
            input_padding_mask: (B, S) bool, True at padding (those values are zeroed).

        Returns:
            (B, Q, C).
        """
        batch, num_queries, _ = query.shape
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = rearrange(value, "b s (m d) -> b s m d", m=self.n_heads)
        offsets = rearrange(
            self.sampling_offsets(query), "b q (m l p xy) -> b q m l p xy",
            m=self.n_heads, l=self.n_levels, p=self.n_points,
        )
        weights = rearrange(self.attention_weights(query), "b q (m lp) -> b q m lp", m=self.n_heads)
        weights = rearrange(
            weights.softmax(-1), "b q m (l p) -> b q m l p", l=self.n_levels, p=self.n_points
        )
        if reference_points.shape[-1] == 2:
            normaliser = spatial_shapes.flip(-1).to(offsets.dtype)  # (w, h) per level
            locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            centres, sizes = reference_points[..., :2], reference_points[..., 2:]
            locations = centres[:, :, None, :, None, :] + offsets / self.n_points * sizes[:, :, None, :, None, :] * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {tuple(reference_points.shape)}")
        output = ms_deform_attn_pytorch(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
