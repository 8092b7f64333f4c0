"""Backbone adapters: any ``pit.create_model`` name → feature maps + padding masks for a detector.

Every backbone takes a batch of NORMALISED images (B, 3, H, W) (mean/std of the model's
``pretrained_cfg``, exposed as the ``pixel_mean``/``pixel_std`` buffers so the engine can
normalise [0, 1] pixels) and a padding mask (B, H, W) bool, True = padding. Pixels under the
mask are zeroed first, so what lies in the padding cannot change the output of a
transformer backbone. It returns a list of ``(feature (B, C, h, w), mask (B, h, w))``:

* single scale (DETR): the last map only;
* ``multi_scale=True``: three maps at nominal strides 8/16/32 —
  PiT: its three stages (``forward_intermediates``); ResNet: C3–C5 with frozen batch norm
  (as DETR); DeiT/ViT: the token maps (stride 16, positional embedding resampled to every
  input size by timm's ``dynamic_img_size``) of blocks at 1/3, 2/3 and 3/3 of the depth,
  resampled parameter-free: bilinear 2× up-sampling for stride 8, identity for 16, 2×2 max
  pooling for 32 (ViTDet-like simple pyramid without learned layers).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pit

FeatureList = list[tuple[Tensor, Tensor]]


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "patch_embed") and not hasattr(model, "transformers")


class Backbone(nn.Module):
    """Wraps a timm-contract model (``forward_intermediates``, ``feature_info``).

    Attributes: ``num_channels`` (list[int]) and ``strides`` (list[int]) of the returned maps.
    """

    def __init__(self, model: nn.Module, name: str, multi_scale: bool = False) -> None:
        super().__init__()
        self.body, self.name, self.multi_scale = model, name, multi_scale
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.register_buffer("pixel_mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), persistent=False)
        self.is_vit = _is_vit(model)
        info = model.feature_info
        if self.is_vit:
            depth = len(model.blocks)
            self.indices = [depth // 3 - 1, 2 * depth // 3 - 1, depth - 1]
            channels, strides = [model.embed_dim] * 3, [8, 16, 32]
        else:
            # the last three entries of feature_info are the stride 8/16/32 stages (PiT: all three)
            self.indices = list(range(len(info)))[-3:]
            channels = [info[i]["num_chs"] for i in self.indices]
            strides = [info[i]["reduction"] for i in self.indices]
        keep = slice(None) if multi_scale else slice(-1, None)
        self.num_channels, self.strides = channels[keep], strides[keep]
        if not multi_scale and self.is_vit:
            self.indices = [depth - 1]
            self.strides = [16]
        elif not multi_scale:
            self.indices = self.indices[-1:]

    def forward(self, images: Tensor, mask: Tensor) -> FeatureList:
        """images (B, 3, H, W) normalised, mask (B, H, W) bool True = padding → [(map, mask)]."""
        images = images.masked_fill(mask[:, None], 0.0)
        maps = self.body.forward_intermediates(images, indices=self.indices, intermediates_only=True)
        if self.is_vit and self.multi_scale:
            maps = [F.interpolate(maps[0], scale_factor=2.0, mode="bilinear", align_corners=False),
                    maps[1], F.max_pool2d(maps[2], kernel_size=2, stride=2, ceil_mode=True)]
        return [(m, F.interpolate(mask[None].float(), size=m.shape[-2:])[0].to(torch.bool)) for m in maps]


def build_backbone(name: str, weights: str | None = None, multi_scale: bool = False,
                   freeze_patch_embed: bool = False, **kw) -> Backbone:
    """Build a detector backbone from any ``pit.create_model`` name (``pit_s``, ``deit_small_patch16_224``,
    ``resnet50``, …); ``weights`` a local checkpoint (classification head dropped). ResNets get
    frozen batch norm; ``freeze_patch_embed`` stops gradients into the patch embedding/stem."""
    with torch.device("meta"):  # shapes only: is it a ViT?
        is_vit = _is_vit(pit.create_model(name, num_classes=0, **kw))
    if is_vit and not kw.get("dynamic_img_size"):
        # timm resamples a ViT's positional embedding at run time only when built with dynamic_img_size
        kw = {**kw, "dynamic_img_size": True, "dynamic_img_pad": True}
    with warnings.catch_warnings():  # a classifier checkpoint's head is expected to go: no warning for it
        warnings.filterwarnings("ignore", message=r".*dropping the classifier", category=UserWarning)
        model = pit.create_model(name, weights=weights, num_classes=0, **kw)
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
        raise ValueError(f"backbone {name!r} lacks timm's forward_intermediates/feature_info contract")
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        from timm.layers import freeze_batch_norm_2d
        model = freeze_batch_norm_2d(model)
    if freeze_patch_embed:
        stem = getattr(model, "patch_embed", None) or getattr(model, "conv1", None)
        if stem is None:
            raise ValueError(f"backbone {name!r} has no patch embedding/stem to freeze")
        for p in stem.parameters():
            p.requires_grad_(False)
    return Backbone(model, name, multi_scale=multi_scale)
