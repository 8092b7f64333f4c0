"""Multi-scale deformable attention: the batched grid_sample implementation against a
per-point reference written out by hand (bilinear interpolation, zero padding,
align_corners=False: pixel centres at (i + 0.5) / size)."""
from __future__ import annotations

import math

import pytest
import torch

from detection.deformable import MSDeformAttn, ms_deform_attn_pytorch


def _bilinear_reference(value_l: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """value_l (h, w, D); (x, y) in [0, 1] fractions of the map → (D,), zeros outside."""
    h, w, dim = value_l.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(dim, dtype=value_l.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * value_l[yy, xx]
    return out


def _reference_attention(value, shapes, locations, weights):
    batch, _, heads, dim = value.shape
    num_queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    starts = [0]
    for h, w in shapes.tolist():
        starts.append(starts[-1] + h * w)
    out = torch.zeros(batch, num_queries, heads, dim, dtype=value.dtype)
    for b in range(batch):
        for q in range(num_queries):
            for m in range(heads):
                for lvl in range(levels):
                    h, w = shapes[lvl].tolist()
                    value_l = value[b, starts[lvl]:starts[lvl + 1], m].reshape(h, w, dim)
                    for p in range(points):
                        x, y = locations[b, q, m, lvl, p].tolist()
                        out[b, q, m] += weights[b, q, m, lvl, p] * _bilinear_reference(value_l, x, y)
    return out.reshape(batch, num_queries, heads * dim)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_per_point_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 5], [3, 4], [2, 1]])
    batch, queries, heads, dim, points = 2, 3, 2, 4, 3
    levels = len(shapes)
    total = int((shapes[:, 0] * shapes[:, 1]).sum())
    value = torch.randn(batch, total, heads, dim, generator=gen, dtype=torch.float64)
    # locations spread beyond [0, 1] so that the zero padding at every border is exercised
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=gen, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, levels, points, generator=gen, dtype=torch.float64)
    weights = weights / weights.flatten(-2).sum(-1)[..., None, None]
    got = ms_deform_attn_pytorch(value, shapes, locations, weights)
    want = _reference_attention(value, shapes, locations, weights)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    got32 = ms_deform_attn_pytorch(value.float(), shapes, locations.float(), weights.float())
    torch.testing.assert_close(got32, want.float(), atol=1e-5, rtol=1e-5)


def test_exact_pixel_centres_return_values():
    """A sample at a pixel centre returns that pixel exactly (align_corners=False semantics)."""
    shapes = torch.tensor([[3, 4]])
    value = torch.arange(12, dtype=torch.float64).reshape(1, 12, 1, 1)
    centre = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3], dtype=torch.float64)  # x=2, y=1 → index 6
    out = ms_deform_attn_pytorch(value, shapes, centre.view(1, 1, 1, 1, 1, 2), torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    assert out.item() == pytest.approx(6.0)


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_gradients_flow(ref_dim):
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    # non-zero offset/weight projections so every parameter receives a gradient
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.1)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.1)
    shapes = torch.tensor([[4, 5], [2, 3]])
    total = 26
    query = torch.randn(2, 7, 16, requires_grad=True)
    source = torch.randn(2, total, 16, requires_grad=True)
    ref = torch.rand(2, 7, 2, ref_dim)
    mask = torch.zeros(2, total, dtype=torch.bool)
    mask[1, -3:] = True
    out = attn(query, ref, source, shapes, mask)
    assert out.shape == (2, 7, 16)
    out.square().sum().backward()
    for name, param in list(attn.named_parameters()) + [("query", query), ("source", source)]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert torch.all(source.grad[1, -3:] == 0), "padded values must not contribute"


def test_initial_offsets_ring():
    """Deformable DETR's init: head m samples along direction 2πm/H at distances 1..P."""
    attn = MSDeformAttn(d_model=16, n_levels=1, n_heads=4, n_points=2)
    bias = attn.sampling_offsets.bias.view(4, 1, 2, 2)
    torch.testing.assert_close(bias[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    torch.testing.assert_close(bias[1, 0], torch.tensor([[0.0, 1.0], [0.0, 2.0]]), atol=1e-6, rtol=0)
