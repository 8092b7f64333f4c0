"""Training recipes selectable as ``--preset NAME``; each is the single source of its numbers.

``detr-r50`` is the official DETR recipe (facebookresearch/detr ``main.py`` defaults and README:
300 epochs, lr drop at 200); ``deformable``, ``deformable-refine`` and ``deformable-two-stage``
the official Deformable DETR ones (fundamentalvision/Deformable-DETR ``main.py`` defaults and
``configs/*.sh``: 50 epochs, lr drop at 40, 0.1× lr for sampling offsets and reference points);
``paper`` is the PiT paper's detection protocol (Heo et al. 2021, Sec. 4.2, and naver-ai/pit
issue #6): Deformable DETR's recipe with every image size halved.
Without ``--preset`` each ``--arch`` trains with its official recipe (:data:`ARCH_DEFAULT`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageSizes:
    """DETR's data recipe: train = flip, then either resize the short side to one of
    ``train_scales`` (long side ≤ ``max_size``) or resize to one of ``resize_scales``, crop a
    random size in ``crop_size`` and resize to ``train_scales``; test = short side ``test_size``."""

    train_scales: tuple[int, ...] = tuple(range(480, 801, 32))
    max_size: int = 1333
    resize_scales: tuple[int, ...] = (400, 500, 600)
    crop_size: tuple[int, int] = (384, 600)
    test_size: int = 800

    def scaled(self, factor: float) -> "ImageSizes":
        """Every size × ``factor``, rounded half up (1333 · 0.5 → 667), at least 8."""
        def s(v: int) -> int:
            return max(int(v * factor + 0.5), 8)
        return ImageSizes(tuple(s(v) for v in self.train_scales), s(self.max_size), tuple(s(v) for v in self.resize_scales),
                          (s(self.crop_size[0]), s(self.crop_size[1])), s(self.test_size))


@dataclass(frozen=True)
class Preset:
    """One training recipe: optimiser/schedule, image sizes, model, loss/matcher, post-processing, label space."""

    arch: str
    epochs: int
    lr_drop: int
    lr: float
    lr_backbone: float
    batch_size: int  # per GPU (the official launches use 8 GPUs)
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    sizes: ImageSizes = ImageSizes()
    model_kwargs: dict = field(default_factory=dict)
    criterion_kwargs: dict = field(default_factory=dict)
    num_select: int = 100  # detections kept per image
    label_space: str = "coco-ids"  # head rows = COCO category ids (91 rows), or "contiguous"


_DEFORMABLE_MODEL = {"hidden_dim": 256, "nheads": 8, "enc_layers": 6, "dec_layers": 6, "dim_feedforward": 1024,
                     "dropout": 0.1, "num_feature_levels": 4, "enc_n_points": 4, "dec_n_points": 4, "num_queries": 300,
                     "with_box_refine": False, "two_stage": False, "lr_linear_proj_mult": 0.1}
_DEFORMABLE_LOSS = {"set_cost_class": 2.0, "set_cost_bbox": 5.0, "set_cost_giou": 2.0, "cls_loss_coef": 2.0,
                    "bbox_loss_coef": 5.0, "giou_loss_coef": 2.0, "focal_alpha": 0.25}
DEFORMABLE = Preset("deformable", epochs=50, lr_drop=40, lr=2e-4, lr_backbone=2e-5, batch_size=2,
                    model_kwargs=_DEFORMABLE_MODEL, criterion_kwargs=_DEFORMABLE_LOSS)

PRESETS: dict[str, Preset] = {
    "detr-r50": Preset(
        "detr", epochs=300, lr_drop=200, lr=1e-4, lr_backbone=1e-5, batch_size=2,
        model_kwargs={"hidden_dim": 256, "nheads": 8, "enc_layers": 6, "dec_layers": 6, "dim_feedforward": 2048,
                      "dropout": 0.1, "num_queries": 100, "pre_norm": False},
        criterion_kwargs={"set_cost_class": 1.0, "set_cost_bbox": 5.0, "set_cost_giou": 2.0, "cls_loss_coef": 1.0,
                          "bbox_loss_coef": 5.0, "giou_loss_coef": 2.0, "eos_coef": 0.1},
        num_select=100),
    "deformable": DEFORMABLE,
    "deformable-refine": dataclasses.replace(DEFORMABLE, model_kwargs={**_DEFORMABLE_MODEL, "with_box_refine": True}),
    "deformable-two-stage": dataclasses.replace(
        DEFORMABLE, model_kwargs={**_DEFORMABLE_MODEL, "with_box_refine": True, "two_stage": True}),
    "paper": dataclasses.replace(DEFORMABLE, sizes=ImageSizes().scaled(0.5), label_space="contiguous"),
}
ARCH_DEFAULT = {"detr": "detr-r50", "deformable": "deformable"}  # the recipe of an --arch given without --preset
LABEL_SPACES = ("coco-ids", "contiguous")


def get_preset(name: str) -> Preset:
    """The named recipe (a frozen record; its dicts are copies)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    preset = PRESETS[name]
    return dataclasses.replace(preset, model_kwargs=dict(preset.model_kwargs), criterion_kwargs=dict(preset.criterion_kwargs))
