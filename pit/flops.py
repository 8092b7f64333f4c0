"""Multiply-accumulate counts (GMACs, the paper's "FLOPs") including attention matmuls.

``torch.utils.flop_counter.FlopCounterMode`` counts convs, linears and explicit matmuls, but
has no formula for the CPU fused attention kernel, so ``scaled_dot_product_attention`` would
silently count as zero on CPU; the formulas for the CPU kernels are added here (Q·Kᵀ and A·V:
2·N²·C MACs per attention layer for N tokens of width C).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["count_macs"]

_aten = torch.ops.aten


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FORMULAS = {
    op: _sdpa_cpu_flop
    for op in (getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None),
               getattr(_aten, "_scaled_dot_product_fused_attention_overrideable", None))
    if op is not None
}


def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> int:
    """MACs of one forward pass of ``model`` on one image of ``input_size = (C, H, W)``.

    Runs the model once on zeros (on the model's device, in eval mode; its mode is restored after;
    autograd stays on because FlopCounterMode's module tracker needs it).
    Counts every matmul/conv/linear/attention product; element-wise ops (norms, GELU, softmax)
    are not counted, as in the paper.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
        with counter:
            model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
