"""Multi-scale deformable attention: the batched grid_sample implementations against a
per-point reference written out by hand (bilinear interpolation, zero padding,
align_corners=False: pixel centres at (i + 0.5) / size); the memory-lean default
(``ms_deform_attn_pytorch``, samples recomputed in backward) against plain autograd
(``ms_deform_attn_reference``) and finite differences, alone, in the layer and in a whole
Deformable DETR; what its backward keeps; no host sync for the level shapes."""
from __future__ import annotations

import math

import pytest
import torch

from detection.deformable import (
    MSDeformAttn, build_deformable_detector, ms_deform_attn_pytorch, ms_deform_attn_reference,
)
from detection.deformable import ms_deform_attn as msda_module


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


@pytest.mark.parametrize("attention", [ms_deform_attn_pytorch, ms_deform_attn_reference])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_per_point_reference(seed, attention):
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
    got = attention(value, shapes, locations, weights)
    want = _reference_attention(value, shapes, locations, weights)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    got32 = attention(value.float(), shapes, locations.float(), weights.float())
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


def _random_inputs(seed: int, shapes: list[tuple[int, int]], batch: int = 2, queries: int = 5, heads: int = 3,
                   dim: int = 4, points: int = 3, dtype: torch.dtype = torch.float32):
    """Inputs with locations spread to [-0.25, 1.25] (every border's zero padding) and softmax weights."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in shapes)
    value = torch.randn(batch, total, heads, dim, generator=gen, dtype=dtype)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=gen, dtype=dtype) * 1.5 - 0.25
    logits = torch.randn(batch, queries, heads, len(shapes) * points, generator=gen, dtype=dtype)
    weights = logits.softmax(-1).view(batch, queries, heads, len(shapes), points)
    return value, locations, weights


def _output_and_grads(attention, shapes, value, locations, weights, seed: int = 7):
    """attention's output and the gradients of <output, random cotangent> w.r.t. its three inputs."""
    inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
    out = attention(inputs[0], shapes, inputs[1], inputs[2])
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, inputs, cotangent)
    return out.detach(), grads


@pytest.mark.parametrize("seed,shapes", [
    (0, [(7, 5), (4, 3), (2, 2), (1, 1)]),
    (1, [(3, 9), (5, 2)]),
    (2, [(6, 6)]),
])
def test_lean_matches_plain_autograd_fp32(seed, shapes):
    """Output and all three gradients of the recomputing path equal plain autograd's within 1e-5 (fp32)."""
    value, locations, weights = _random_inputs(seed, shapes)
    got, got_grads = _output_and_grads(ms_deform_attn_pytorch, shapes, value, locations, weights)
    want, want_grads = _output_and_grads(ms_deform_attn_reference, shapes, value, locations, weights)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for name, g, w in zip(("value", "sampling_locations", "attention_weights"), got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_lean_gradcheck_float64():
    """Finite differences (float64) agree with the recomputed gradients of all three inputs."""
    shapes = [(3, 4), (2, 1)]
    value, locations, weights = _random_inputs(3, shapes, batch=1, queries=2, heads=2, dim=2, points=2,
                                               dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn_pytorch(v, shapes, loc, w), inputs)


def test_lean_backward_keeps_only_its_inputs():
    """What autograd saves for the lean path is at most its inputs' size; plain autograd also keeps the
    (B·H, D, Q, L·P) samples, which is what the lean path exists to avoid."""
    shapes = [(8, 6), (4, 3)]
    value, locations, weights = _random_inputs(0, shapes, queries=40, dim=8, points=4)
    inputs = [t.requires_grad_() for t in (value, locations, weights)]
    input_bytes = sum(t.numel() * t.element_size() for t in inputs)
    samples_bytes = 2 * 3 * 8 * 40 * 2 * 4 * 4  # B·H · D · Q · L·P floats

    def saved_bytes(attention) -> int:
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            attention(inputs[0], shapes, inputs[1], inputs[2])
        return sum(storages.values())

    assert saved_bytes(ms_deform_attn_pytorch) <= input_bytes
    assert saved_bytes(ms_deform_attn_reference) >= samples_bytes


def test_lean_only_computes_requested_gradients():
    """Gradients flow to whichever inputs require them (here only the sampling locations)."""
    shapes = [(4, 5), (2, 3)]
    value, locations, weights = _random_inputs(4, shapes)
    locations.requires_grad_()
    ms_deform_attn_pytorch(value, shapes, locations, weights).square().sum().backward()
    reference_locations = locations.detach().clone().requires_grad_()
    ms_deform_attn_reference(value, shapes, reference_locations, weights).square().sum().backward()
    torch.testing.assert_close(locations.grad, reference_locations.grad, atol=1e-5, rtol=1e-5)


def test_rejects_level_shapes_not_covering_value():
    value, locations, weights = _random_inputs(0, [(4, 5), (2, 3)])
    with pytest.raises(ValueError, match="cover 21 positions"):
        ms_deform_attn_pytorch(value, [(4, 5), (1, 1)], locations, weights)


def _module_outputs_and_grads(attn, inputs):
    query, ref, source, shapes, mask = inputs
    query, source = query.clone().requires_grad_(), source.clone().requires_grad_()
    out = attn(query, ref, source, shapes, mask)
    out.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in attn.named_parameters()}
    attn.zero_grad(set_to_none=True)
    return out.detach(), grads, query.grad, source.grad


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_layer_with_padding_mask_matches_plain_autograd(monkeypatch, ref_dim):
    """MSDeformAttn with a padding mask: outputs and every parameter's / input's gradient equal
    under the lean and the plain-autograd attention (fp32, 1e-5)."""
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.3)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.3)
    shapes = torch.tensor([[5, 7], [3, 4], [1, 2]])
    total = 35 + 12 + 2
    mask = torch.zeros(2, total, dtype=torch.bool)
    mask[1, 20:35] = True
    mask[1, 44:47] = True
    inputs = (torch.randn(2, 9, 16), torch.rand(2, 9, 3, ref_dim) * 1.2 - 0.1, torch.randn(2, total, 16), shapes, mask)
    got = _module_outputs_and_grads(attn, inputs)
    monkeypatch.setattr(msda_module, "ms_deform_attn_pytorch", ms_deform_attn_reference)
    want = _module_outputs_and_grads(attn, inputs)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(got[2], want[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[3], want[3], atol=1e-5, rtol=1e-5)
    assert torch.all(got[3][1][mask[1]] == 0), "padded values must not contribute"


TINY = dict(hidden_dim=32, nheads=4, enc_layers=2, dec_layers=2, dim_feedforward=48, num_queries=6, dropout=0.0)


def _padded_batch():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 72, 104, generator=gen)
    mask = torch.zeros(2, 72, 104, dtype=torch.bool)
    mask[1, 48:, :] = True
    mask[1, :, 88:] = True
    images[mask[:, None].expand_as(images)] = 0
    return images, mask


def _detector_outputs_and_grads(model, images, mask):
    out = model(images, mask)
    loss = out["pred_logits"].sigmoid().square().sum() + out["pred_boxes"].square().sum()
    if "enc_outputs" in out:
        loss = loss + out["enc_outputs"]["pred_logits"].sigmoid().mean() + out["enc_outputs"]["pred_boxes"].mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out["pred_logits"].detach(), out["pred_boxes"].detach(), grads


@pytest.mark.parametrize("variant", [dict(), dict(with_box_refine=True, two_stage=True)])
def test_deformable_detr_unchanged_by_lean_attention(monkeypatch, variant):
    """A whole tiny Deformable DETR (padded non-square batch): predictions and every parameter's
    gradient equal under the lean and the plain-autograd attention."""
    torch.manual_seed(0)
    model = build_deformable_detector(backbone="pit_ti", num_classes=3, num_feature_levels=4, **TINY, **variant)
    for module in model.modules():
        if isinstance(module, MSDeformAttn):
            torch.nn.init.normal_(module.sampling_offsets.weight, std=0.2)
            torch.nn.init.normal_(module.attention_weights.weight, std=0.2)
    images, mask = _padded_batch()
    got = _detector_outputs_and_grads(model, images, mask)
    monkeypatch.setattr(msda_module, "ms_deform_attn_pytorch", ms_deform_attn_reference)
    want = _detector_outputs_and_grads(model, images, mask)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    assert got[2].keys() == want[2].keys() and any("self_attn.sampling_offsets" in k for k in got[2])
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_transformer_reads_level_shapes_without_host_sync(monkeypatch):
    """The level sizes are known from the maps' shapes: the transformer (encoder, decoder, two-stage
    proposals) never reads a tensor back to the host for them (``tolist`` / ``item``)."""
    torch.manual_seed(0)
    model = build_deformable_detector(backbone="pit_ti", num_classes=3, num_feature_levels=4, **TINY,
                                      with_box_refine=True, two_stage=True)
    images, mask = _padded_batch()
    srcs, masks, pos = model._multi_scale_inputs(images, mask)
    reads = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            reads.append(name)
            return original(self, *args, **kwargs)
        return wrapper

    for name in ("tolist", "item"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    out = model.transformer(srcs, masks, pos, None, box_heads=model.bbox_embed,
                            proposal_heads=(model.class_embed[-1], model.bbox_embed[-1]))
    out.hs.sum().backward()
    assert reads == []


def test_encoder_recompute_in_backward_changes_no_number(monkeypatch):
    """Training with dropout: the encoder layers that recompute their post-sampling activations in backward
    give the predictions and every gradient of layers that keep them (the dropout masks are replayed)."""
    from detection.deformable.transformer import DeformableEncoderLayer

    torch.manual_seed(0)
    model = build_deformable_detector(backbone="pit_ti", num_classes=3, num_feature_levels=4,
                                      **{**TINY, "dropout": 0.1}).train()
    images, mask = _padded_batch()
    results = []
    monkeypatch.setattr(DeformableEncoderLayer, "recompute_min_elements", 0)  # the tiny layers recompute too
    for recompute in (True, False):
        monkeypatch.setattr(DeformableEncoderLayer, "recompute_in_backward", recompute)
        torch.manual_seed(1)
        results.append(_detector_outputs_and_grads(model, images, mask))
    got, want = results
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-6)
    assert got[2].keys() == want[2].keys()
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], atol=1e-6, rtol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
