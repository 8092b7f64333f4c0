"""Pooling-based Vision Transformer (PiT), official-checkpoint compatible, any input size.

"Rethinking Spatial Dimensions of Vision Transformers", Heo et al., ICCV 2021
(https://arxiv.org/abs/2103.16302, https://github.com/naver-ai/pit, Apache-2.0).

The module tree and state-dict keys are the official repository's (``pools.{i}`` between
stages, not timm's ``transformers.{i+1}.pool``), so the official ``pit_*.pth`` files load
with ``strict=True``; timm-format ``pit_*_224`` state dicts are remapped by
:func:`checkpoint_filter_fn`. Blocks are timm's ``Block`` (fused scaled-dot-product
attention). The positional embedding, shape ``(1, C, W, W)``, is resampled bicubically to
the token grid of every input at run time, so any ``(H, W)`` works.

Importing this module registers ``pit_ti``, ``pit_xs``, ``pit_s``, ``pit_b`` and their
``*_distilled`` variants in timm's registry; timm's own ``pit_*_224`` stay untouched.
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block
from torch import nn

__all__ = ["PoolingTransformer", "checkpoint_filter_fn", "resample_pos_embed"]


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resample a ``(1, C, h, w)`` positional embedding to ``grid = (H, W)``.

    Returns the input itself when the grid already matches (no work at the native size).
    """
    if tuple(pos_embed.shape[-2:]) == tuple(grid):
        return pos_embed
    return F.interpolate(pos_embed, size=grid, mode="bicubic", align_corners=False)


class ConvEmbedding(nn.Module):
    """Overlapping patch embedding: ``(B, in_chans, H, W)`` image -> ``(B, C, H', W')`` token map."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Pooling(nn.Module):
    """Between stages: depthwise strided conv on the token map, Linear on the class token(s).

    ``(B, C, H, W), (B, T, C)`` -> ``(B, C', ceil(H/2), ceil(W/2)), (B, T, C')`` for stride 2.
    """

    def __init__(self, in_dim: int, out_dim: int, stride: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_dim, out_dim, kernel_size=stride + 1, padding=stride // 2, stride=stride, groups=in_dim
        )
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, cls_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x), self.fc(cls_tokens)


class Transformer(nn.Module):
    """One PiT stage: timm ``Block``s over ``[class tokens; flattened map]``.

    ``(B, C, H, W), (B, T, C)`` -> same shapes.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path: Sequence[float] = (),
    ) -> None:
        super().__init__()
        drop_path = list(drop_path) or [0.0] * depth
        self.blocks = nn.Sequential(*[
            Block(
                dim=dim,
                num_heads=heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                proj_drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=drop_path[i],
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
            )
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor, cls_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        num_tokens = cls_tokens.shape[1]
        x = torch.cat((cls_tokens, rearrange(x, "b c h w -> b (h w) c")), dim=1)
        x = self.blocks(x)
        cls_tokens, x = x[:, :num_tokens], x[:, num_tokens:]
        return rearrange(x, "b (h w) c -> b c h w", h=h, w=w), cls_tokens


class PoolingTransformer(nn.Module):
    """PiT classifier / backbone.

    Input: normalised images ``(B, in_chans, H, W)``, any H and W >= ``patch_size``.
    ``forward`` returns logits ``(B, num_classes)``; a distilled model returns the mean of its
    two heads in eval mode and the pair ``(cls_logits, dist_logits)`` in training mode, as the
    official code does. ``forward_intermediates`` gives the three stage maps ``(B, C_i, H_i, W_i)``.

    Args use the official names (``image_size``); ``img_size`` (what timm passes) is accepted
    as an alias. ``image_size`` only fixes the native grid of ``pos_embed``.
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        stride: int = 8,
        base_dims: Sequence[int] = (48, 48, 48),
        depth: Sequence[int] = (2, 6, 4),
        heads: Sequence[int] = (3, 6, 12),
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        attn_drop_rate: float = 0.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        distilled: bool = False,
        global_pool: str = "token",
        img_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if global_pool != "token":
            raise ValueError(f"PiT classifies from its class token: global_pool must be 'token', got {global_pool!r}")
        if not (len(base_dims) == len(depth) == len(heads)):
            raise ValueError(f"base_dims, depth and heads need one entry per stage, got {base_dims}, {depth}, {heads}")
        image_size = to_2tuple(img_size if img_size is not None else image_size)
        self.base_dims = list(base_dims)
        self.heads = list(heads)
        self.patch_size = patch_size
        self.stride = stride
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_tokens = 2 if distilled else 1
        embed_dim = base_dims[0] * heads[0]
        grid = tuple(math.floor((s - patch_size) / stride + 1) for s in image_size)

        self.patch_embed = ConvEmbedding(in_chans, embed_dim, patch_size, stride)
        self.pos_embed = nn.Parameter(torch.randn(1, embed_dim, *grid))
        self.cls_token = nn.Parameter(torch.randn(1, self.num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)

        self._build_stages(base_dims, depth, heads, mlp_ratio, drop_rate, attn_drop_rate, drop_path_rate)

        self.num_features = self.head_hidden_size = self.embed_dim = base_dims[-1] * heads[-1]
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._new_head(num_classes)
        if distilled:
            self.head_dist = self._new_head(num_classes)

        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    def _build_stages(self, base_dims: Sequence[int], depth: Sequence[int], heads: Sequence[int], mlp_ratio: float,
                      drop_rate: float, attn_drop_rate: float, drop_path_rate: float) -> None:
        """``self.transformers`` (one per stage), ``self.pools`` (between stages) and ``self.feature_info``."""
        total = sum(depth)
        dpr = [drop_path_rate * i / total for i in range(total)]  # official linear rule over all blocks
        self.transformers = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.feature_info: list[dict] = []
        for i, (dim, d, h) in enumerate(zip(base_dims, depth, heads)):
            width = dim * h
            start = sum(depth[:i])
            self.transformers.append(
                Transformer(width, d, h, mlp_ratio, drop_rate, attn_drop_rate, dpr[start:start + d])
            )
            if i + 1 < len(depth):
                self.pools.append(Pooling(width, base_dims[i + 1] * heads[i + 1], stride=2))
            self.feature_info.append(dict(num_chs=width, reduction=self.stride * 2 ** i, module=f"transformers.{i}"))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    @property
    def distilled(self) -> bool:
        return self.num_tokens == 2

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise ValueError("PiT does not implement gradient checkpointing")

    def get_classifier(self) -> nn.Module | tuple[nn.Module, nn.Module]:
        return (self.head, self.head_dist) if self.distilled else self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "token"):
            raise ValueError(f"PiT classifies from its class token: global_pool must be 'token', got {global_pool!r}")
        self.num_classes = num_classes
        self.head = self._new_head(num_classes).train(self.training)
        if self.distilled:
            self.head_dist = self._new_head(num_classes).train(self.training)

    def _new_head(self, num_classes: int) -> nn.Module:
        ref = self.norm.weight  # the new head follows the model's device and dtype
        if num_classes <= 0:
            return nn.Identity()
        return nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``(B, 3, H, W)`` -> token map with positions ``(B, C, H', W')`` and class tokens ``(B, T, C)``."""
        x = self.patch_embed(x)
        x = self.pos_drop(x + resample_pos_embed(self.pos_embed, x.shape[-2:]))
        return x, self.cls_token.expand(x.shape[0], -1, -1)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (before pooling) as ``(B, C_i, H_i, W_i)`` maps, timm's contract.

        ``indices``: last n stages if int, all if None, else the listed stage indices.
        ``norm`` is accepted for timm compatibility: PiT's final norm applies to the class
        tokens only, never to the maps. Returns the maps, or ``(normed class tokens, maps)``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"PiT intermediates are NCHW maps, got output_fmt={output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.transformers), indices)
        last = max_index if (stop_early or intermediates_only) else len(self.transformers) - 1
        intermediates = []
        x, cls_tokens = self._embed(x)
        for i in range(last + 1):
            if i > 0:
                x, cls_tokens = self.pools[i - 1](x, cls_tokens)
            x, cls_tokens = self.transformers[i](x, cls_tokens)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return self.norm(cls_tokens), intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> normed class token(s) ``(B, num_tokens, num_features)``."""
        x, cls_tokens = self._embed(x)
        for i, stage in enumerate(self.transformers):
            if i > 0:
                x, cls_tokens = self.pools[i - 1](x, cls_tokens)
            x, cls_tokens = stage(x, cls_tokens)
        return self.norm(cls_tokens)

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Class token(s) ``(B, T, C)`` -> logits ``(B, num_classes)`` (or features with ``pre_logits``)."""
        x_cls = self.head_drop(x[:, 0])
        if not self.distilled:
            return x_cls if pre_logits else self.head(x_cls)
        x_dist = self.head_drop(x[:, 1])
        if not pre_logits:
            x_cls, x_dist = self.head(x_cls), self.head_dist(x_dist)
        if self.training and not pre_logits:
            return x_cls, x_dist
        return (x_cls + x_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


_TIMM_POOL = re.compile(r"^transformers\.(\d+)\.pool\.")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: PoolingTransformer) -> dict[str, torch.Tensor]:
    """Map an official or timm-format PiT state dict onto ``model``'s keys.

    timm stores the pooling layers as ``transformers.{i+1}.pool.*`` (-> ``pools.{i}.*``) and an
    empty per-stage norm; ``pos_embed`` is resampled bicubically when its grid differs from
    the model's (e.g. a 224 px checkpoint into a model built with another ``img_size``).
    """
    out = {}
    for k, v in state_dict.items():
        k = _TIMM_POOL.sub(lambda m: f"pools.{int(m.group(1)) - 1}.", k)
        if k == "pos_embed" and v.ndim == 4 and v.shape[:2] == model.pos_embed.shape[:2]:
            v = resample_pos_embed(v.float(), model.pos_embed.shape[-2:]).to(v.dtype)
        out[k] = v
    return out


def _create_pit(variant: str, pretrained: bool = False, **kwargs) -> PoolingTransformer:
    out_indices = kwargs.pop("out_indices", (0, 1, 2))
    if "image_size" in kwargs:
        kwargs["img_size"] = kwargs.pop("image_size")
    return build_model_with_cfg(
        PoolingTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs,
    )


def _cfg(hub_id: str, **kwargs) -> dict:
    return {
        "hf_hub_id": hub_id,  # timm's copy of the official weights; checkpoint_filter_fn remaps it
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.conv", "classifier": "head",
        "license": "apache-2.0", "paper_ids": "arXiv:2103.16302",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "pit_ti.in1k": _cfg("timm/pit_ti_224.in1k"),
    "pit_xs.in1k": _cfg("timm/pit_xs_224.in1k"),
    "pit_s.in1k": _cfg("timm/pit_s_224.in1k"),
    "pit_b.in1k": _cfg("timm/pit_b_224.in1k"),
    "pit_ti_distilled.in1k": _cfg("timm/pit_ti_distilled_224.in1k", classifier=("head", "head_dist")),
    "pit_xs_distilled.in1k": _cfg("timm/pit_xs_distilled_224.in1k", classifier=("head", "head_dist")),
    "pit_s_distilled.in1k": _cfg("timm/pit_s_distilled_224.in1k", classifier=("head", "head_dist")),
    "pit_b_distilled.in1k": _cfg("timm/pit_b_distilled_224.in1k", classifier=("head", "head_dist")),
})

_TI = dict(patch_size=16, stride=8, base_dims=[32, 32, 32], depth=[2, 6, 4], heads=[2, 4, 8], mlp_ratio=4)
_XS = dict(patch_size=16, stride=8, base_dims=[48, 48, 48], depth=[2, 6, 4], heads=[2, 4, 8], mlp_ratio=4)
_S = dict(patch_size=16, stride=8, base_dims=[48, 48, 48], depth=[2, 6, 4], heads=[3, 6, 12], mlp_ratio=4)
_B = dict(patch_size=14, stride=7, base_dims=[64, 64, 64], depth=[3, 6, 4], heads=[4, 8, 16], mlp_ratio=4)
# The four sizes by name (the *_distilled variants add a second class token and head).
CONFIGS = {"pit_ti": _TI, "pit_xs": _XS, "pit_s": _S, "pit_b": _B}


@register_model
def pit_ti(pretrained: bool = False, **kwargs) -> PoolingTransformer:
    """PiT-Ti: 4.9M params, 0.7 GMACs at 224 px."""
    return _create_pit("pit_ti", pretrained, **dict(_TI, **kwargs))


@register_model
def pit_xs(pretrained: bool = False, **kwargs) -> PoolingTransformer:
    """PiT-XS: 10.6M params, 1.4 GMACs at 224 px."""
    return _create_pit("pit_xs", pretrained, **dict(_XS, **kwargs))


@register_model
def pit_s(pretrained: bool = False, **kwargs) -> PoolingTransformer:
    """PiT-S: 23.5M params, 2.9 GMACs at 224 px."""
    return _create_pit("pit_s", pretrained, **dict(_S, **kwargs))


@register_model
def pit_b(pretrained: bool = False, **kwargs) -> PoolingTransformer:
    """PiT-B: 73.8M params, 12.5 GMACs at 224 px."""
    return _create_pit("pit_b", pretrained, **dict(_B, **kwargs))


@register_model
def pit_ti_distilled(pretrained: bool = False, **kwargs) -> PoolingTransformer:
    """PiT-Ti with a distillation token and head."""
    return _create_pit("pit_ti_distilled", pretrained, **dict(_TI, distilled=True, **kwargs))


@register_model
def pit_xs_distilled(pretrained: bool = False, **kwargs) -> PoolingTransformer:
    """PiT-XS with a distillation token and head."""
    return _create_pit("pit_xs_distilled", pretrained, **dict(_XS, distilled=True, **kwargs))


@register_model
def pit_s_distilled(pretrained: bool = False, **kwargs) -> PoolingTransformer:
    """PiT-S with a distillation token and head."""
    return _create_pit("pit_s_distilled", pretrained, **dict(_S, distilled=True, **kwargs))


@register_model
def pit_b_distilled(pretrained: bool = False, **kwargs) -> PoolingTransformer:
    """PiT-B with a distillation token and head."""
    return _create_pit("pit_b_distilled", pretrained, **dict(_B, distilled=True, **kwargs))
