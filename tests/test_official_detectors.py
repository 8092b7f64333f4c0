"""``detection.load_detector`` against the Hugging Face transformers implementations of DETR and
Deformable DETR (random init, ResNet-50 via timm, every parameter and frozen-BN statistic
perturbed so no layer is trivially zero or identity): the save_pretrained folder and an
official-layout ``.pth`` written from the same weights must give the same ``pred_logits`` /
``pred_boxes`` within 1e-4, on a batch holding one unpadded and one padded image (DETR-R50, DETR-R50-DC5,
Deformable DETR plain / box refinement / two-stage)."""
from __future__ import annotations

import argparse

import pytest
import torch

from detection.load import load_detector, suite_checkpoint
from detection.official_keys import hf_to_official

transformers = pytest.importorskip("transformers")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SMALL = dict(use_pretrained_backbone=False, num_labels=91, encoder_layers=2, decoder_layers=2, d_model=64,
             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96)
VARIANTS = {
    "detr": ("DetrForObjectDetection", "DetrConfig", dict(num_queries=7)),
    "detr-dc5": ("DetrForObjectDetection", "DetrConfig", dict(num_queries=7, dilation=True)),
    "deformable": ("DeformableDetrForObjectDetection", "DeformableDetrConfig", dict(num_queries=7)),
    "deformable-refine": ("DeformableDetrForObjectDetection", "DeformableDetrConfig",
                          dict(num_queries=7, with_box_refine=True)),
    "deformable-two-stage": ("DeformableDetrForObjectDetection", "DeformableDetrConfig",
                             dict(num_queries=7, two_stage_num_proposals=7, with_box_refine=True, two_stage=True)),
}


def _perturb(model: torch.nn.Module) -> None:
    """Move every float tensor off its init: BN variances in [0.5, 1.5], backbone BN scales in
    [0.25, 0.75] (keeps 50 random ResNet blocks finite), everything else + N(0, 0.02)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif "backbone" in name and name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.25)
            else:
                t.add_(torch.randn(t.shape, generator=g) * 0.02)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Image 0 fills the 64×96 canvas (unpadded); image 1 is 48×72 (padded right and below)."""
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, 48:, :] = True
    mask[1, :, 72:] = True
    return images, mask


def _reference(model: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' forward on normalised, zero-padded pixels (pixel_mask 1 = valid)."""
    pixels = ((images - MEAN) / STD).masked_fill(mask[:, None], 0.0)
    with torch.no_grad():
        out = model(pixel_values=pixels, pixel_mask=(~mask).long())
    return out.logits, out.pred_boxes


@pytest.fixture(scope="module", params=[pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS])
def reference(request, tmp_path_factory):
    model_cls, config_cls, extra = VARIANTS[request.param]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**SMALL, **extra)).eval()
    _perturb(model)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    arch = "detr" if request.param.startswith("detr") else "deformable"
    official = tmp_path_factory.mktemp("official") / f"{request.param}.pth"
    args = argparse.Namespace(backbone="resnet50", nheads=4, dilation=request.param == "detr-dc5", num_queries=7,
                              enc_n_points=4, dec_n_points=4)
    torch.save({"model": hf_to_official(model.state_dict(), arch), "args": args, "epoch": 49}, official)
    return request.param, folder, official, _batch(), _reference(model, *_batch())


def _check(loaded, batch, expected) -> None:
    with torch.no_grad():
        out = loaded.model(*batch)
    for got, want in zip((out["pred_logits"], out["pred_boxes"]), expected):
        assert got.shape == want.shape
        assert (got - want).abs().max() < 1e-4, (got - want).abs().max()


def test_hugging_face_folder_gives_the_reference_outputs(reference):
    name, folder, _, batch, expected = reference
    loaded = load_detector(str(folder))
    assert not loaded.model.training and "Hugging Face" in loaded.source
    assert loaded.cat_ids == list(range(91))  # official head rows are COCO category ids
    _check(loaded, batch, expected)


def test_official_pth_gives_the_reference_outputs(reference, tmp_path):
    name, _, official, batch, expected = reference
    loaded = load_detector(str(official))
    variant = {"detr": "DETR-resnet50", "detr-dc5": "DETR-resnet50-DC5", "deformable": "(plain)", "deformable-refine": "with_box_refine",
               "deformable-two-stage": "two_stage"}[name]
    assert variant in loaded.source
    _check(loaded, batch, expected)
    converted = tmp_path / "suite.pth"  # detection convert: a suite checkpoint that loads to the same outputs
    torch.save(suite_checkpoint(loaded), converted)
    _check(load_detector(str(converted)), batch, expected)


def test_official_key_layout_has_the_official_key_counts():
    """The official checkpoints hold 458 (DETR-R50) and 561 (Deformable DETR) keys."""
    with torch.device("meta"):
        detr = transformers.DetrForObjectDetection(transformers.DetrConfig(use_pretrained_backbone=False, num_labels=91))
        deformable = transformers.DeformableDetrForObjectDetection(
            transformers.DeformableDetrConfig(use_pretrained_backbone=False, num_labels=91))
    detr_keys = hf_to_official(detr.state_dict(), "detr")
    assert len(detr_keys) == 458
    assert {"backbone.0.body.layer1.0.conv1.weight", "transformer.decoder.layers.5.multihead_attn.in_proj_weight",
            "transformer.decoder.norm.weight", "bbox_embed.layers.2.bias", "class_embed.weight"} <= set(detr_keys)
    deformable_keys = hf_to_official(deformable.state_dict(), "deformable")
    assert len(deformable_keys) == 561
    assert {"transformer.level_embed", "transformer.decoder.layers.0.cross_attn.sampling_offsets.weight",
            "transformer.decoder.layers.0.norm3.weight", "transformer.reference_points.weight"} <= set(deformable_keys)


def test_a_wrong_mapping_is_caught(reference, tmp_path):
    """Swapping the Deformable decoder's norm1/norm2 (same names and shapes) changes the outputs beyond
    the tolerance, so the parity above would catch it; a renamed or missing key is refused in one line."""
    name, _, official, batch, expected = reference
    if name != "deformable":
        pytest.skip("one variant is enough")
    ckpt = torch.load(official, weights_only=False)
    state = dict(ckpt["model"])
    for kind in ("weight", "bias"):
        a, b = (f"transformer.decoder.layers.0.norm{i}.{kind}" for i in (1, 2))
        state[a], state[b] = state[b], state[a]
    swapped = tmp_path / "swapped.pth"
    torch.save({**ckpt, "model": state}, swapped)
    with torch.no_grad():
        out = load_detector(str(swapped)).model(*batch)
    assert (out["pred_logits"] - expected[0]).abs().max() > 1e-3

    renamed = {k.replace("layers.0.norm1.", "layers.0.norm.") : v for k, v in ckpt["model"].items()}
    torch.save({**ckpt, "model": renamed}, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"Deformable DETR.*does not fit.*unexpected.*layers\.0\.norm\.") as info:
        load_detector(str(tmp_path / "renamed.pth"))
    assert "\n" not in str(info.value)
    torch.save({"model": {"fc.weight": torch.zeros(3, 3)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="fits neither DETR nor Deformable DETR"):
        load_detector(str(tmp_path / "other.pth"))


def _official_layout(state: dict) -> dict:
    """Our key names → the official ones (the reverse of the documented prefix map), written by hand."""
    import re

    out = {}
    for key, value in state.items():
        key = key.replace("backbone.body.", "backbone.0.body.")
        match = re.match(r"^(bbox_embed(?:\.\d+)?)\.(\d+)\.(weight|bias)$", key)
        if match:
            key = f"{match.group(1)}.layers.{int(match.group(2)) // 3}.{match.group(3)}"
        out[key] = value
    return out


def test_eval_cli_on_an_official_checkpoint_writes_the_coco_stats(tmp_path):
    """``eval.py detection eval --checkpoint OFFICIAL.pth --coco DIR`` and ``detection convert``."""
    import json

    from tests.cli_helpers import run_cli
    from tests.coco_fixtures import make_tiny_coco
    from detection.detr import build_detr

    torch.manual_seed(0)
    model = build_detr(backbone="resnet18", num_classes=91, hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1,
                       dim_feedforward=32, num_queries=5)
    official = tmp_path / "detr-official.pth"
    torch.save({"model": _official_layout(model.state_dict()), "epoch": 299,
                "args": argparse.Namespace(backbone="resnet18", nheads=4, dilation=False)}, official)
    coco = make_tiny_coco(tmp_path / "coco", num_images=3, size=(64, 80))
    code, out, err = run_cli(["detection", "eval", "--checkpoint", str(official), "--coco", coco["root"],
                              "--out", str(tmp_path / "run"), "--num-workers", "0", "--no-progress"])
    assert code == 0, err
    stats = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"} <= set(stats)
    code, out, err = run_cli(["detection", "convert", str(official), str(tmp_path / "suite.pth")])
    assert code == 0 and "suite checkpoint" in out, err
    loaded = load_detector(str(tmp_path / "suite.pth"))
    assert loaded.cat_ids == list(range(91)) and loaded.config["backbone"] == "resnet18"
    # fine-tune from the official file on contiguous labels: the 92-row head is re-initialised with a warning
    from detection.config import DetectionTrainConfig
    from detection.engine import train_detector

    kw = dict(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=32, num_queries=5)
    with pytest.warns(UserWarning, match="mismatched shapes"):
        train_detector(DetectionTrainConfig(
            backbone="resnet18", train_ann=coco["train_ann"], train_images=coco["train_images"],
            val_ann=coco["val_ann"], val_images=coco["val_images"], out=str(tmp_path / "ft"), epochs=1, eval_every=1,
            num_workers=0, progress=False, model_kwargs=kw, finetune=str(official), device="cpu",
            scales=[64], max_size=96, test_size=64))
