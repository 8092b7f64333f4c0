"""pit.create_model weight loading: every checkpoint format, resizing, heads, clear errors."""
from __future__ import annotations

import os

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

import pit
import pit.factory
import pit.hub


@pytest.fixture(scope="module")
def reference():
    """timm's pit_ti_224 (random weights) and its timm-format state dict."""
    torch.manual_seed(0)
    model = timm.create_model("pit_ti_224").eval()
    return model, model.state_dict()


@pytest.fixture(scope="module")
def official_sd(reference):
    """The same weights in the official repository's layout (pools.{i}.*)."""
    return {("pools." + str(int(k.split(".")[1]) - 1) + k.split(".pool", 1)[1]) if ".pool." in k else k: v
            for k, v in reference[1].items()}


def _logits_equal(model, reference):
    x = torch.randn(1, 3, 224, 224)  # timm's PiT only runs at its native size
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["official", "timm", "deit_model", "state_dict", "model_ema", "ddp", "safetensors"])
def test_formats(tmp_path, reference, official_sd, fmt):
    timm_model, timm_sd = reference
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    content = {
        "official": official_sd,
        "timm": timm_sd,
        "deit_model": {"model": official_sd, "epoch": 3},
        "state_dict": {"state_dict": timm_sd},
        "model_ema": {"model_ema": official_sd},
        "ddp": {"module." + k: v for k, v in official_sd.items()},
    }.get(fmt)
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in official_sd.items()}, path)
    else:
        torch.save(content, path)
    model = pit.create_model("pit_ti", weights=path)
    assert not model.training
    for k, v in official_sd.items():
        assert torch.equal(model.state_dict()[k], v), k
    if fmt in ("official", "timm"):  # one forward each is enough: the other formats hold the same tensors
        _logits_equal(model, timm_model)


def test_timm_converted_official_layout_loads_strictly(official_sd):
    result = pit.pit_ti().load_state_dict(official_sd, strict=True)
    assert result.missing_keys == result.unexpected_keys == []


def test_pos_embed_resized_for_img_size(tmp_path, official_sd):
    torch.save(official_sd, tmp_path / "w.pth")
    model = pit.create_model("pit_ti", weights=tmp_path / "w.pth", img_size=(320, 256))
    expected = torch.nn.functional.interpolate(official_sd["pos_embed"], size=(39, 31), mode="bicubic",
                                               align_corners=False)
    torch.testing.assert_close(model.pos_embed.data, expected)


def test_deit_checkpoint_uses_timm_filter(tmp_path):
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = timm.create_model("deit_tiny_patch16_224").state_dict()
    sd = {k: torch.randn(v.shape) for k, v in shapes.items()}
    torch.save({"model": sd}, tmp_path / "deit.pth")
    model = pit.create_model("deit_tiny_patch16_224", weights=tmp_path / "deit.pth", img_size=256)
    expected = resample_abs_pos_embed(sd["pos_embed"], (16, 16), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.data, expected)


def test_head_of_another_size_dropped_with_warning(tmp_path, official_sd):
    torch.save(official_sd, tmp_path / "w.pth")
    with pytest.warns(UserWarning, match="head.weight"):
        model = pit.create_model("pit_ti", weights=tmp_path / "w.pth", num_classes=10)
    assert model.head.out_features == 10
    assert torch.equal(model.pos_embed.data, official_sd["pos_embed"])
    ten = dict(official_sd, **{"head.weight": torch.randn(10, 256), "head.bias": torch.randn(10)})
    torch.save(ten, tmp_path / "ten.pth")
    inferred = pit.create_model("pit_ti", weights=tmp_path / "ten.pth")  # num_classes read from the file
    assert torch.equal(inferred.head.weight.data, ten["head.weight"])


def test_wrong_checkpoint_names_keys_and_lookalike(tmp_path, official_sd):
    torch.save(official_sd, tmp_path / "pit_ti.pth")
    with pytest.raises(ValueError) as err:
        pit.create_model("pit_ti_distilled", weights=tmp_path / "pit_ti.pth")
    message = str(err.value)
    assert "cls_token: file (1, 1, 64) vs model (1, 2, 64)" in message
    assert "looks like 'pit_ti'" in message
    with pytest.raises(ValueError, match=r"missing keys.*unexpected keys.*looks like 'pit_ti'"):
        pit.create_model("deit_tiny_patch16_224", weights=tmp_path / "pit_ti.pth")


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        pit.create_model("pit_ti", weights=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        pit.create_model("pit_ti", weights=tmp_path / "junk.pth")
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match="no state dict"):
        pit.create_model("pit_ti", weights=tmp_path / "meta.pth")


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'pit_sx'.*Did you mean: .*pit_s"):
        pit.create_model("pit_sx")


def test_pretrained_offline_fails_without_a_request_and_with_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pit.factory, "cached_pretrained_file", lambda name: None)
    asked, built = [], []
    monkeypatch.setattr(pit.hub, "get_hf_file_metadata", lambda url, **k: asked.append(url))
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: built.append(k))
    with pytest.raises(RuntimeError, match="--weights PATH"):
        pit.create_model("pit_s", pretrained=True)
    assert asked == [] and built == []  # refused before any request to the hub or download by timm


def test_pixel_model_normalises_inside():
    model = pit.create_model("pit_ti", num_classes=3)
    wrapped = pit.NormalizedModel(model)
    assert wrapped.model is model
    cfg = timm.data.resolve_data_config({}, model=model)
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        torch.testing.assert_close(wrapped(x), model((x - mean) / std))
    assert list(wrapped.state_dict()) == ["model." + k for k in model.state_dict()]
    custom = pit.NormalizedModel(model, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    with torch.inference_mode():
        torch.testing.assert_close(custom(x), model(x * 2 - 1))
    pixel = pit.create_pixel_model("pit_ti", num_classes=3)
    assert isinstance(pixel, pit.NormalizedModel) and pixel.model.num_classes == 3


class _RunsCode:
    """A pickled object whose unpickling would create ``marker`` (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_weights_refused_naming_the_file(tmp_path, official_sd, bad):
    sd = dict(official_sd)
    sd["transformers.1.blocks.0.mlp.fc1.weight"] = sd["transformers.1.blocks.0.mlp.fc1.weight"].clone()
    sd["transformers.1.blocks.0.mlp.fc1.weight"][0, 0] = float(bad)
    torch.save(sd, tmp_path / "diverged.pth")
    with pytest.raises(ValueError, match=r"diverged\.pth hold NaN or inf values in 1 of \d+ tensors "
                                         r"\(transformers\.1\.blocks\.0\.mlp\.fc1\.weight\)"):
        pit.create_model("pit_ti", weights=tmp_path / "diverged.pth")


def test_malicious_pickle_never_runs(tmp_path, official_sd):
    marker = tmp_path / "PWNED"
    torch.save({"model": official_sd, "payload": _RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth hold posix\.system, which could run code"):
        pit.read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_unreadable_files_one_line_each(tmp_path, official_sd):
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "folder.pth").mkdir()
    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "junk.safetensors").write_bytes(b"\x05" * 300)
    torch.save(official_sd, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    cases = {"empty.pth": (ValueError, "is empty"), "folder.pth": (IsADirectoryError, "is a folder"),
             "random.pth": (ValueError, "not a PyTorch checkpoint"),
             "junk.safetensors": (ValueError, "not a readable safetensors file"),
             "truncated.pth": (ValueError, "truncated")}
    for name, (kind, needle) in cases.items():
        with pytest.raises(kind) as err:
            pit.read_state_dict(tmp_path / name)
        assert name in str(err.value) and needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_containers_follow_timm(tmp_path, official_sd):
    """timm's reader picks ``state_dict`` then ``model``; an EMA-only container is unwrapped too."""
    other = {k: v + 1 for k, v in official_sd.items()}
    torch.save({"model": official_sd, "model_ema": other, "epoch": 3}, tmp_path / "train.pth")
    assert torch.equal(pit.read_state_dict(tmp_path / "train.pth")["cls_token"], official_sd["cls_token"])
    torch.save({"model_ema": {"_orig_mod.module." + k: v for k, v in other.items()}}, tmp_path / "ema.pth")
    assert torch.equal(pit.read_state_dict(tmp_path / "ema.pth")["cls_token"], other["cls_token"])


@pytest.mark.parametrize("name", ["pit_ti", "pit_xs_distilled", "pit_s", "pit_b_distilled", "pit_s_224",
                                  "deit_tiny_patch16_224", "deit_small_distilled_patch16_224",
                                  "vit_base_patch16_224", "resnet18", "resnet50", "resnet101"])
def test_guess_architecture_names_the_model_without_building_any(name, monkeypatch):
    with torch.device("meta"):
        sd = timm.create_model(name).state_dict()
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("guess_architecture built a model"))
    expected = {"pit_s_224": "pit_s", "vit_base_patch16_224": "deit_base_patch16_224"}.get(name, name)
    assert pit.guess_architecture(sd) == (expected, 1.0)


def test_misfit_message_describes_unknown_sizes(tmp_path):
    sd = {"patch_embed.proj.weight": torch.zeros(100, 3, 8, 8), "cls_token": torch.zeros(1, 1, 100),
          **{f"blocks.{i}.norm1.weight": torch.zeros(100) for i in range(3)}}
    assert pit.guess_architecture(sd) == (None, 0.0)
    torch.save(sd, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"odd\.pth do not fit model 'pit_ti'.*holds a ViT/DeiT state dict "
                                         r"\(width 100, 3 blocks, patch 8\)"):
        pit.create_model("pit_ti", weights=tmp_path / "odd.pth")
