"""Deformable DETR head (Zhu et al. 2021) in pure PyTorch, plugged into ``detection.build``
as ``arch="deformable"``."""
from detection.deformable.criterion import DeformableSetCriterion, build_deformable_criterion
from detection.deformable.model import DeformableDETR, build_deformable_detector
from detection.deformable.ms_deform_attn import MSDeformAttn, ms_deform_attn_pytorch
from detection.deformable.postprocess import PostProcessDeformable
from detection.deformable.presets import get_preset

__all__ = [
    "DeformableDETR", "DeformableSetCriterion", "MSDeformAttn", "PostProcessDeformable",
    "build_deformable_criterion", "build_deformable_detector", "get_preset", "ms_deform_attn_pytorch",
]
