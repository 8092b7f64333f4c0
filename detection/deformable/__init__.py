"""Deformable DETR head (Zhu et al. 2021) in pure PyTorch, plugged into ``detection.build``
as ``arch="deformable"``; its loss is ``detection.criterion.SetCriterion(focal=True)``."""
from detection.criterion import build_deformable_criterion
from detection.deformable.model import DeformableDETR, build_deformable_detector
from detection.deformable.ms_deform_attn import MSDeformAttn, ms_deform_attn_pytorch, ms_deform_attn_reference
from detection.postprocess import PostProcessTopK

__all__ = [
    "DeformableDETR", "MSDeformAttn", "PostProcessTopK", "build_deformable_criterion", "build_deformable_detector",
    "ms_deform_attn_pytorch", "ms_deform_attn_reference",
]
