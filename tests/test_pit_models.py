"""PiT family: parameter counts, timm parity, the timm model contract, any input size."""
from __future__ import annotations

import pytest
import timm
import torch

import pit
from pit.pit import PoolingTransformer, resample_pos_embed

PARAMS = {
    "pit_ti": 4_847_272,
    "pit_xs": 10_618_888,
    "pit_s": 23_461_912,
    "pit_b": 73_764_840,
    "pit_ti_distilled": 5_104_336,
    "pit_xs_distilled": 11_003_984,  # from the architecture; equal to timm's pit_xs_distilled_224 (checked below)
    "pit_s_distilled": 24_039_056,
    "pit_b_distilled": 74_790_096,  # likewise vs pit_b_distilled_224
}
TIMM_NAME = {n: n.replace("_distilled", "") + ("_distilled_224" if "distilled" in n else "_224") for n in pit.PIT_NAMES}
OFFICIAL_KEYS = ("pos_embed", "cls_token", "patch_embed.conv.weight", "transformers.0.blocks.0.attn.qkv.weight",
                 "transformers.2.blocks.0.mlp.fc2.bias", "pools.0.conv.weight", "pools.1.fc.weight", "norm.weight",
                 "head.weight")


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", pit.PIT_NAMES)
def test_param_counts_and_official_keys(name):
    ours, reference = _meta(name), _meta(TIMM_NAME[name])
    assert isinstance(ours, PoolingTransformer)  # timm.create_model('pit_s') builds OURS
    assert type(reference).__module__ == "timm.models.pit"  # timm's own name still builds timm's
    assert _count(ours) == _count(reference) == PARAMS[name]
    keys = ours.state_dict().keys()
    assert all(k in keys for k in OFFICIAL_KEYS)
    assert ("head_dist.weight" in keys) == name.endswith("distilled")
    assert not any(".pool." in k for k in keys)
    grid = 31 if name.startswith("pit_b") else 27
    assert ours.pos_embed.shape[-2:] == (grid, grid)


def _random_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Random weights of a realistic scale (no slow per-layer init): norms ~1, the rest ~N(0, 0.02²)."""
    gen = torch.Generator().manual_seed(0)
    return {k: (1.0 if "norm" in k and k.endswith("weight") else 0.0) + 0.02 * torch.randn(v.shape, generator=gen)
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["pit_ti", "pit_xs", "pit_s", "pit_b", "pit_ti_distilled", "pit_s_distilled"])
def test_parity_with_timm(name):
    reference, ours = _meta(TIMM_NAME[name]).eval(), _meta(name).eval()
    timm_sd = _random_state_dict(reference)
    reference.load_state_dict(timm_sd, strict=True, assign=True)
    ours.load_state_dict(pit.checkpoint_filter_fn(timm_sd, ours), strict=True, assign=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        features, expected_features = ours.forward_features(x), reference.forward_features(x)
        torch.testing.assert_close(features, expected_features, atol=1e-4, rtol=0)
        expected = reference.forward_head(expected_features)  # forward = forward_head(forward_features)
        assert expected.std() > 0.05  # a meaningful comparison, not two near-zero outputs
        torch.testing.assert_close(ours.forward_head(features), expected, atol=1e-4, rtol=0)


def test_official_api_and_strict_load():
    model = pit.pit_ti()
    official = {k: v.clone() for k, v in model.state_dict().items()}  # the official checkpoint's layout
    fresh = pit.pit_ti(num_classes=1000)
    assert fresh.load_state_dict(official, strict=True).missing_keys == []
    direct = PoolingTransformer(image_size=224, patch_size=16, stride=8, base_dims=[32, 32, 32], depth=[2, 6, 4],
                                heads=[2, 4, 8], mlp_ratio=4, num_classes=1000)
    direct.load_state_dict(official, strict=True)


def test_distilled_train_returns_both_eval_the_mean():
    model = pit.pit_ti_distilled(num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    model.train()  # no dropout in pit_ti: train-mode outputs are deterministic
    cls_logits, dist_logits = model(x)
    tokens = model.forward_features(x)
    torch.testing.assert_close(cls_logits, model.head(tokens[:, 0]))
    torch.testing.assert_close(dist_logits, model.head_dist(tokens[:, 1]))
    assert cls_logits.shape == (2, 5)
    model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(x), (cls_logits + dist_logits).detach() / 2)


@pytest.mark.parametrize("name", pit.PIT_NAMES)
def test_intermediates_and_feature_info(name):
    model = _meta(name)
    x = torch.empty(2, 3, 256, 320, device="meta")
    maps = model.forward_intermediates(x, intermediates_only=True)
    stride = 7 if name.startswith("pit_b") else 8
    patch = 14 if name.startswith("pit_b") else 16
    h, w = (256 - patch) // stride + 1, (320 - patch) // stride + 1
    assert len(maps) == len(model.feature_info) == 3
    for i, (fmap, info) in enumerate(zip(maps, model.feature_info)):
        assert fmap.shape == (2, info["num_chs"], h, w)
        assert info["reduction"] == stride * 2 ** i
        h, w = (h + 1) // 2, (w + 1) // 2
    cls_tokens, maps = model.forward_intermediates(x, indices=[2])
    assert len(maps) == 1 and cls_tokens.shape == (2, 2 if "distilled" in name else 1, model.num_features)


def test_any_input_size_and_runtime_interpolation():
    torch.manual_seed(0)
    model = pit.pit_ti(num_classes=7).eval()
    with torch.inference_mode():
        for size in [(320, 256), (96, 200)]:
            assert model(torch.randn(1, 3, *size)).shape == (1, 7)
        # At the native size the run-time resampling is a no-op: same output as the plain formula.
        x = torch.randn(2, 3, 224, 224)
        tokens = model.patch_embed(x) + model.pos_embed
        assert resample_pos_embed(model.pos_embed, (27, 27)) is model.pos_embed
        torch.testing.assert_close(model.forward_intermediates(x, indices=[0], intermediates_only=True)[0],
                                   model.transformers[0](tokens, model.cls_token.expand(2, -1, -1))[0])
        # Elsewhere the embedding is torch's bicubic resampling to the token grid.
        x = torch.randn(1, 3, 160, 240)
        grid = model.patch_embed(x).shape[-2:]
        expected = torch.nn.functional.interpolate(model.pos_embed, size=grid, mode="bicubic", align_corners=False)
        tokens = model.patch_embed(x) + expected
        torch.testing.assert_close(model.forward_intermediates(x, indices=[0], intermediates_only=True)[0],
                                   model.transformers[0](tokens, model.cls_token.expand(1, -1, -1))[0])
    big = _meta("pit_s")
    assert big.forward_intermediates(torch.empty(1, 3, 800, 1216, device="meta"), intermediates_only=True)[-1].shape \
        == (1, 576, 25, 38)


def test_img_size_sets_native_grid():
    model = _meta("pit_s", img_size=(320, 256))
    assert model.pos_embed.shape[-2:] == (39, 31)
    assert PoolingTransformer(image_size=384, patch_size=16, stride=8, base_dims=[8], depth=[1], heads=[2],
                              mlp_ratio=2, num_classes=3).pos_embed.shape[-2:] == (47, 47)


def test_timm_contract():
    model = pit.pit_ti_distilled(num_classes=4)
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    head, head_dist = model.get_classifier()
    assert head.out_features == head_dist.out_features == 4
    model.reset_classifier(0)
    x = torch.randn(1, 3, 64, 64)
    assert model.eval()(x).shape == (1, model.num_features)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 256)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="avg")
    features = timm.create_model("pit_ti", features_only=True)
    assert [f.shape[1] for f in features(torch.randn(1, 3, 64, 64))] == [64, 128, 256]
