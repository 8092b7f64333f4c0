"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021), pure PyTorch.

Each query attends to ``n_points`` sampled locations on each of ``n_levels`` feature maps per
head, at offsets predicted from the query around its reference point; the sampled values are
bilinearly interpolated (``F.grid_sample``, zero padding, ``align_corners=False``) and summed
with softmax weights that are also predicted from the query. No custom CUDA build is needed,
so it runs on any device, CPU included.

``ms_deform_attn_pytorch`` (used by ``MSDeformAttn``) keeps only its inputs for backward and recomputes
the samples there, one level at a time, like the official CUDA kernel: plain autograd
(``ms_deform_attn_reference``) would keep every sampled value, (B·H, D, Q, L·P) in fp32 per
layer — about 0.36 GB per image per encoder layer at 800×1333.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

LevelShapes = tuple[tuple[int, int], ...]
_GRID_SAMPLE = dict(mode="bilinear", padding_mode="zeros", align_corners=False)


def level_shapes_of(spatial_shapes: Tensor | Sequence[Sequence[int]]) -> LevelShapes:
    """(L, 2) (h, w) per level as a tuple of Python ints (one host sync if given a device tensor)."""
    rows = spatial_shapes.tolist() if isinstance(spatial_shapes, Tensor) else spatial_shapes
    return tuple((int(h), int(w)) for h, w in rows)


def _check_inputs(value: Tensor, level_shapes: LevelShapes, sampling_locations: Tensor, attention_weights: Tensor) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be (B, S, H, D), got {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be (B, Q, H, L, P, 2), got {tuple(sampling_locations.shape)}")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f"attention_weights {tuple(attention_weights.shape)} must be sampling_locations' "
                         f"{tuple(sampling_locations.shape[:-1])}")
    if sampling_locations.shape[3] != len(level_shapes):
        raise ValueError(f"sampling_locations has {sampling_locations.shape[3]} levels, level_shapes {len(level_shapes)}")
    if sum(h * w for h, w in level_shapes) != value.shape[1]:
        raise ValueError(f"level_shapes {level_shapes} cover {sum(h * w for h, w in level_shapes)} positions, "
                         f"value has {value.shape[1]}")


def _per_level(value: Tensor, level_shapes: LevelShapes, sampling_locations: Tensor, attention_weights: Tensor
               ) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per level: value (B·H, D, h, w), grid (B·H, Q, P, 2) in grid_sample's [-1, 1], weights (B·H, 1, Q, P)."""
    value_levels = value.split([h * w for h, w in level_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    return [
        (rearrange(value_levels[level], "b (h w) m d -> (b m) d h w", h=h, w=w),
         rearrange(grids[:, :, :, level], "b q m p xy -> (b m) q p xy"),
         rearrange(attention_weights[:, :, :, level], "b q m p -> (b m) 1 q p"))
        for level, (h, w) in enumerate(level_shapes)
    ]


def _level_output(value_l: Tensor, grid_l: Tensor, weights_l: Tensor) -> Tensor:
    """Σ_p weight · bilinear sample on one level → (B·H, D, Q)."""
    return (F.grid_sample(value_l, grid_l, **_GRID_SAMPLE) * weights_l).sum(-1)


def ms_deform_attn_reference(
    value: Tensor, level_shapes: Tensor | Sequence[Sequence[int]], sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """``ms_deform_attn_pytorch`` by plain autograd, all levels sampled then summed at once: autograd keeps
    the (B·H, D, Q, L·P) samples for backward. The reference the lean path is tested against."""
    level_shapes = level_shapes_of(level_shapes)
    _check_inputs(value, level_shapes, sampling_locations, attention_weights)
    batch, _, heads, dim = value.shape
    levels = _per_level(value, level_shapes, sampling_locations, attention_weights)
    samples = torch.cat([F.grid_sample(v, g, **_GRID_SAMPLE) for v, g, _ in levels], dim=-1)  # (B·H, D, Q, L·P)
    weights = rearrange(attention_weights, "b q m l p -> (b m) 1 q (l p)")
    output = (samples * weights).sum(-1)
    return rearrange(output, "(b m) d q -> b q (m d)", b=batch, m=heads, d=dim)


class _MSDeformAttnFunction(torch.autograd.Function):
    """Forward without keeping the samples; backward recomputes one level's samples at a time (for
    the weights' gradient) and runs ``grid_sample``'s own backward kernel for the value's and the
    locations' gradients, so at most one level's (B·H, D, Q, P) samples live."""

    @staticmethod
    def forward(ctx, value: Tensor, sampling_locations: Tensor, attention_weights: Tensor,
                level_shapes: LevelShapes) -> Tensor:
        ctx.level_shapes = level_shapes
        ctx.save_for_backward(value, sampling_locations, attention_weights)
        output = None
        for value_l, grid_l, weights_l in _per_level(value, level_shapes, sampling_locations, attention_weights):
            part = _level_output(value_l, grid_l, weights_l)
            output = part if output is None else output.add_(part)
        batch, _, heads, dim = value.shape
        return rearrange(output, "(b m) d q -> b q (m d)", b=batch, m=heads, d=dim)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        value, locations, weights = ctx.saved_tensors
        batch, _, heads, _ = value.shape
        need_value, need_locations, need_weights = ctx.needs_input_grad[:3]
        grad_out = rearrange(grad_output, "b q (m d) -> (b m) d q", m=heads)[..., None]  # (B·H, D, Q, 1)
        grad_values, grad_grids, grad_weights = [], [], []
        for value_l, grid_l, weights_l in _per_level(value, ctx.level_shapes, locations, weights):
            if need_weights:  # Σ_d grad · sample, from this level's samples recomputed
                sampled = F.grid_sample(value_l, grid_l, **_GRID_SAMPLE)
                grad_weights.append((sampled * grad_out).sum(1))  # (B·H, Q, P)
                del sampled
            if need_value or need_locations:
                grad_value_l, grad_grid_l = torch.ops.aten.grid_sampler_2d_backward(
                    grad_out * weights_l, value_l, grid_l, 0, 0, False, [need_value, need_locations]
                )  # bilinear, zeros, align_corners=False
                grad_values.append(grad_value_l)
                grad_grids.append(grad_grid_l)
        grad_value = grad_locations = grad_weight = None
        if need_value:
            grad_value = torch.cat([rearrange(g, "(b m) d h w -> b (h w) m d", b=batch) for g in grad_values], 1)
        if need_locations:  # d grid / d location = 2
            grad_locations = 2 * rearrange(torch.stack(grad_grids, 1), "(b m) l q p xy -> b q m l p xy", b=batch)
        if need_weights:
            grad_weight = rearrange(torch.stack(grad_weights, 1), "(b m) l q p -> b q m l p", b=batch)
        return grad_value, grad_locations, grad_weight, None


def ms_deform_attn_pytorch(
    value: Tensor, level_shapes: Tensor | Sequence[Sequence[int]], sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Weighted sum of bilinear samples over levels and points, batched over heads and points;
    backward recomputes the samples instead of storing them.

    Args:
        value: (B, S, H, D) per-head values of all levels flattened level after level, row-major
            (S = Σ_l h_l·w_l).
        level_shapes: (h_l, w_l) of each level in the order of ``value``: Python ints (no host
            sync) or an (L, 2) long tensor (read once with ``tolist``).
        sampling_locations: (B, Q, H, L, P, 2) in [0, 1] as (x, y) fractions of each level's
            width/height; (0, 0) is the top-left corner of the top-left pixel (pixel centres at
            (i + 0.5)/w). Outside [0, 1] samples zeros.
        attention_weights: (B, Q, H, L, P), normalised over L·P by the caller.

    Returns:
        (B, Q, H·D), in float32 under autocast (``grid_sample`` runs in float32 there, as autocast
        would run it), else in ``value``'s dtype.
    """
    level_shapes = level_shapes_of(level_shapes)
    _check_inputs(value, level_shapes, sampling_locations, attention_weights)
    dtype = torch.float32 if torch.is_autocast_enabled(value.device.type) else value.dtype
    return _MSDeformAttnFunction.apply(
        value.to(dtype), sampling_locations.to(dtype), attention_weights.to(dtype), level_shapes
    )


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
        level_shapes: Sequence[Sequence[int]] | None = None,
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
            level_shapes: ``spatial_shapes`` as Python ints; callers that know them (the
                transformer, once per forward) pass them so no layer syncs the host with the device.
                None: read from ``spatial_shapes``.

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
        shapes = level_shapes_of(spatial_shapes if level_shapes is None else level_shapes)
        output = ms_deform_attn_pytorch(value, shapes, locations, weights)
        return self.output_proj(output)
