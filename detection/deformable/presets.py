"""Training recipes for the Deformable DETR head, selectable as ``--preset NAME``.

``paper`` is the PiT paper's detection protocol (Heo et al. 2021, Sec. 4.2, and the authors'
answer in naver-ai/pit issue #6): Deformable DETR's own default recipe (Zhu et al. 2021,
Sec. 5 "Implementation details" and the defaults of its ``main.py``) with only the image
scales changed — every scale halved, for training and test and for every backbone. Where each
value comes from is given next to it in ``PAPER_SOURCES``.
"""
from __future__ import annotations

import copy

PAPER = {
    # optimiser and schedule
    "lr": 2e-4,
    "lr_backbone": 2e-5,
    "lr_linear_proj_mult": 0.1,  # sampling_offsets and reference_points (DeformableDETR.param_groups)
    "weight_decay": 1e-4,
    "clip_max_norm": 0.1,
    "epochs": 50,
    "lr_drop": 40,
    "batch_size": 2,  # per GPU; 8 GPUs → total 16 (Deformable DETR's default launch)
    # image scales (halved Deformable DETR scales)
    "train_scales": [400 - 16 * i for i in range(11)],  # 400, 384, ..., 240 (was 480..800 step 32)
    "train_max_size": 667,  # was 1333
    "random_resize_scales": [200, 250, 300],  # random-select branch resize before the crop (was 400/500/600)
    "random_crop_size": (192, 300),  # random size crop min/max (was 384..600)
    "test_scale": 400,  # was 800
    "test_max_size": 667,
    # model (Deformable DETR defaults)
    "model_kwargs": {
        "hidden_dim": 256,
        "nheads": 8,
        "enc_layers": 6,
        "dec_layers": 6,
        "dim_feedforward": 1024,
        "dropout": 0.1,
        "num_feature_levels": 4,
        "enc_n_points": 4,
        "dec_n_points": 4,
        "num_queries": 300,
        "with_box_refine": False,
        "two_stage": False,
    },
    # loss and matcher
    "criterion_kwargs": {
        "set_cost_class": 2.0,
        "set_cost_bbox": 5.0,
        "set_cost_giou": 2.0,
        "cls_loss_coef": 2.0,
        "bbox_loss_coef": 5.0,
        "giou_loss_coef": 2.0,
        "focal_alpha": 0.25,
    },
    "num_select": 100,  # detections kept per image by PostProcessDeformable
}

PAPER_SOURCES = {
    "lr, lr_backbone, lr_linear_proj_mult, weight_decay, clip_max_norm, epochs, lr_drop, batch_size":
        "Deformable DETR paper Sec. 5 (Adam lr 2e-4, decayed ×0.1 at epoch 40, 50 epochs; backbone, "
        "sampling offsets and reference-point projections at 0.1×; weight decay 1e-4) and the "
        "defaults of its main.py (clip_max_norm 0.1, batch_size 2 per GPU on 8 GPUs)",
    "train_scales, train_max_size, random_resize_scales, random_crop_size, test_scale, test_max_size":
        "PiT paper Sec. 4.2 + naver-ai/pit issue #6: Deformable DETR's transforms (flip; random "
        "select of multi-scale resize or resize→random-size crop→multi-scale resize) with every "
        "size halved: 480..800 step 32 → 400-16i (i=0..10), max 1333 → 667, 400/500/600 → "
        "200/250/300, crop 384..600 → 192..300, test 800 → 400",
    "model_kwargs":
        "Deformable DETR paper Sec. 5 / main.py defaults: M=8 heads, K=4 points, 4 levels, "
        "6+6 layers, hidden 256, FFN 1024, dropout 0.1, 300 queries; the PiT paper's table used "
        "the plain variant (no box refinement, single stage)",
    "criterion_kwargs":
        "Deformable DETR main.py defaults: matcher costs class 2 / L1 5 / GIoU 2, loss weights "
        "focal 2 / L1 5 / GIoU 2, focal alpha 0.25 (gamma 2)",
    "num_select": "Deformable DETR PostProcess: top 100 over queries × classes",
}

PRESETS = {"paper": PAPER}


def get_preset(name: str) -> dict:
    """A deep copy of the named recipe (``paper``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown deformable preset {name!r}; choose from {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
