"""Backbone adapters: any ``pit.create_model`` name (PiT or any timm model with
``forward_intermediates`` + ``feature_info``) → feature maps + padding masks for a detector.

Every backbone takes a batch of images in [0, 1] (B, 3, H, W) and a padding mask (B, H, W)
bool, True = padding. It normalises with the model's ``pretrained_cfg`` mean/std (buffers
``pixel_mean``/``pixel_std``) and then zeroes the padding, as the official DETR pipeline does
(normalise each image, pad with zeros), so what lies in the padding cannot change the output.
It returns a list of ``(feature (B, C, h, w), mask (B, h, w))``:

* single scale (DETR): the last map only;
* ``multi_scale=True``: the last three levels of ``feature_info`` (strides 8/16/32 for PiT,
  ResNet C3–C5, ConvNeXt, …); DeiT/ViT: the token maps (stride 16, positional embedding
  resampled to every input size by timm's ``dynamic_img_size``) of blocks at 1/3, 2/3 and 3/3
  of the depth, resampled parameter-free: bilinear 2× up-sampling for stride 8, identity for
  16, 2×2 max pooling for 32 (ViTDet-like simple pyramid without learned layers).

ResNets are set up as in the official DETR / Deformable DETR: every BatchNorm frozen
(``torchvision.ops.FrozenBatchNorm2d``), stem and ``layer1`` not trained, ``dilation=True``
dilates the last stage (DC5).

What ``forward_intermediates`` never runs is removed when the backbone is built (:func:`prune_unused`: the
classifier's final norm and head, stages after the last map taken), so every trainable parameter gets a
gradient and DDP runs without ``find_unused_parameters``; :func:`without_pruned` drops those keys from a
checkpoint written before.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

import pit
from pit.pit import PoolingTransformer

FeatureList = list[tuple[Tensor, Tensor]]
TRAINED_RESNET_STAGES = ("layer2", "layer3", "layer4")  # official: stem and layer1 stay frozen


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "patch_embed") and not hasattr(model, "transformers")


def _is_resnet(model: nn.Module) -> bool:
    return all(hasattr(model, name) for name in ("conv1", "layer1", *TRAINED_RESNET_STAGES))


class Backbone(nn.Module):
    """Wraps a timm-contract model as ``body`` (``forward_intermediates``, ``feature_info``).

    Attributes: ``num_channels`` (list[int]) and ``strides`` (list[int]) of the returned maps.
    """

    def __init__(self, model: nn.Module, name: str, multi_scale: bool = False) -> None:
        super().__init__()
        self.body, self.name, self.multi_scale = model, name, multi_scale
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.register_buffer("pixel_mean", torch.tensor(cfg.get("mean", IMAGENET_DEFAULT_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.get("std", IMAGENET_DEFAULT_STD)).view(1, 3, 1, 1), persistent=False)
        self.is_vit = _is_vit(model)
        info = model.feature_info
        if self.is_vit:
            depth = len(model.blocks)
            self.indices = [depth // 3 - 1, 2 * depth // 3 - 1, depth - 1]
            channels, strides = [model.embed_dim] * 3, [8, 16, 32]
        else:
            self.indices = list(range(len(info)))[-3:]
            channels = [info[i]["num_chs"] for i in self.indices]
            strides = [info[i]["reduction"] for i in self.indices]
        keep = slice(None) if multi_scale else slice(-1, None)
        self.num_channels, self.strides = channels[keep], strides[keep]
        if not multi_scale and self.is_vit:
            self.indices, self.strides = [depth - 1], [16]
        elif not multi_scale:
            self.indices = self.indices[-1:]
        self.pruned_keys = [f"body.{k}" for k in prune_unused(model, self.indices)]

    def forward(self, images: Tensor, mask: Tensor) -> FeatureList:
        """images (B, 3, H, W) in [0, 1], mask (B, H, W) bool True = padding → [(map, mask)]."""
        images = ((images - self.pixel_mean) / self.pixel_std).masked_fill(mask[:, None], 0.0)
        maps = self.body.forward_intermediates(images, indices=self.indices, intermediates_only=True)
        if self.is_vit and self.multi_scale:
            maps = [F.interpolate(maps[0], scale_factor=2.0, mode="bilinear", align_corners=False),
                    maps[1], F.max_pool2d(maps[2], kernel_size=2, stride=2, ceil_mode=True)]
        return [(m, F.interpolate(mask[None].float(), size=m.shape[-2:])[0].to(torch.bool)) for m in maps]


def prune_unused(model: nn.Module, indices: list[int]) -> list[str]:
    """Remove from ``model`` what ``forward_intermediates(indices, intermediates_only=True)`` never runs (timm's
    ``prune_intermediate_layers`` with the final norm and head; PiT's final norm, which normalises the class
    tokens only); returns the state-dict keys that went."""
    before = set(model.state_dict())
    if hasattr(model, "prune_intermediate_layers"):
        model.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
    elif isinstance(model, PoolingTransformer):
        model.norm = nn.Identity()
    return sorted(before - set(model.state_dict()))


def without_pruned(detector: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without the backbone keys :func:`prune_unused` removed from ``detector`` (a checkpoint written
    before the pruning holds them; they never changed an output)."""
    prefix = next((name + "." for name, module in detector.named_modules() if isinstance(module, Backbone)), None)
    if prefix is None:
        return state
    pruned = {prefix + key for key in detector.get_submodule(prefix[:-1]).pruned_keys}
    return {k: v for k, v in state.items() if k not in pruned}


def _check_serves(name: str, kw: dict) -> None:
    """A detector needs ``forward_intermediates`` + ``feature_info`` working at arbitrary sizes: check on
    a meta-device copy (no weights, no compute) with one odd input size; refuse in one line."""
    try:
        with torch.device("meta"):
            model = pit.create_model(name, num_classes=0, **kw)
            if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
                raise ValueError("it lacks timm's forward_intermediates/feature_info")
            model.forward_intermediates(torch.empty(1, 3, 200, 264), intermediates_only=True)
    except Exception as exc:  # any failure means the model cannot serve: say so in one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"backbone {name!r} cannot serve a detector at arbitrary input sizes ({reason}); pick a "
                         "model with forward_intermediates that accepts any size, e.g. resnet50, convnext_tiny, pit_s") from None


def freeze_resnet_stem(model: nn.Module) -> None:
    """Official DETR: only ``layer2``–``layer4`` train; the stem and ``layer1`` stay fixed."""
    for name, param in model.named_parameters():
        if not name.startswith(TRAINED_RESNET_STAGES):
            param.requires_grad_(False)


def build_backbone(name: str, weights: str | None = None, multi_scale: bool = False,
                   freeze_patch_embed: bool = False, dilation: bool = False, **kw) -> Backbone:
    """Build a detector backbone from any ``pit.create_model`` name (``pit_s``, ``deit_small_patch16_224``,
    ``resnet50``, ``convnext_tiny``, …); ``weights`` a local checkpoint (classification head dropped).
    BatchNorm is frozen everywhere; ResNets train only ``layer2``–``layer4`` (official recipe);
    ``dilation`` = DC5 (last stage dilated, stride 16); ``freeze_patch_embed`` stops gradients
    into the patch embedding/stem."""
    with torch.device("meta"):  # shapes only: is it a ViT?
        is_vit = _is_vit(pit.create_model(name, num_classes=0, **kw))
    if is_vit and not kw.get("dynamic_img_size"):
        # timm resamples a ViT's positional embedding at run time only when built with dynamic_img_size
        kw = {**kw, "dynamic_img_size": True, "dynamic_img_pad": True}
    if dilation:
        kw = {**kw, "output_stride": 16}
    _check_serves(name, kw)
    with warnings.catch_warnings():  # a classifier checkpoint's head is expected to go: no warning for it
        warnings.filterwarnings("ignore", message=r".*dropping the classifier", category=UserWarning)
        model = pit.create_model(name, weights=weights, num_classes=0, **kw)
    model = freeze_batch_norm_2d(model)  # torchvision.ops.FrozenBatchNorm2d in place of every BatchNorm2d
    if _is_resnet(model):
        freeze_resnet_stem(model)
    if freeze_patch_embed:
        stem = getattr(model, "patch_embed", None) or getattr(model, "conv1", None)
        if stem is None:
            raise ValueError(f"backbone {name!r} has no patch embedding/stem to freeze")
        for p in stem.parameters():
            p.requires_grad_(False)
    return Backbone(model, name, multi_scale=multi_scale)
