"""Deformable DETR head: builds over every backbone on non-square padded batches, loss values
against hand-computed focal/L1/GIoU, top-k post-processing, and overfitting a handful of
generated images to AP > 0.5 through pycocotools."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from detection.criterion import SetCriterion, weight_dict
from detection.deformable import PostProcessTopK, build_deformable_criterion, build_deformable_detector
from detection.presets import get_preset

TINY = dict(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=12, dropout=0.0)


class FixedMatcher(nn.Module):
    """Query i ↔ target i, so losses can be computed by hand."""

    def forward(self, outputs, targets):
        return [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in targets]


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(2, 3, 96, 128)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, 64:, :] = True
    mask[1, :, 80:] = True
    images[mask[:, None].expand_as(images)] = 0
    return images, mask


def _check_detector(model, levels_extra: bool) -> None:
    images, mask = _padded_batch()
    with torch.no_grad():
        out = model(images, mask)
    assert out["pred_logits"].shape == (2, 12, 5)
    assert out["pred_boxes"].shape == (2, 12, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert len(out["aux_outputs"]) == TINY["dec_layers"] - 1
    assert ("enc_outputs" in out) == levels_extra
    # the padded image's prediction must not depend on what lies in its padding (the backbone
    # zeroes it; masks keep the deformable attention off it)
    noisy = images.clone()
    noisy[1][mask[1][None].expand(3, -1, -1)] = 5.0
    with torch.no_grad():
        out_noisy = model(noisy, mask)
    torch.testing.assert_close(out_noisy["pred_boxes"][1], out["pred_boxes"][1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backbone", ["pit_ti", "deit_tiny_patch16_224", "resnet50"])
def test_builds_over_each_backbone(backbone):
    """Three backbone levels (strides 8/16/32) + the extra stride-64 conv level."""
    torch.manual_seed(0)
    model = build_deformable_detector(backbone=backbone, num_classes=5, num_feature_levels=4, **TINY).eval()
    assert model.backbone.strides == [8, 16, 32]
    _check_detector(model, levels_extra=False)


@pytest.mark.parametrize("backbone,kwargs,blocks", [("deit_tiny_patch16_224", {"depth": 6}, 6),
                                                    ("pit_ti", {"depth": [1, 3, 2]}, 6)])
def test_backbone_kwargs_shape_the_backbone_and_take_its_weights(tmp_path, backbone, kwargs, blocks):
    """``backbone_kwargs`` reach ``pit.create_model``: a classifier of another depth loads as the backbone, and
    its weights arrive (compared with timm's own state dict of the same model)."""
    import pit

    torch.manual_seed(0)
    classifier = pit.create_model(backbone, num_classes=10, img_size=64, **kwargs)
    torch.save({"model": classifier.state_dict()}, tmp_path / "classifier.pth")
    model = build_deformable_detector(backbone=backbone, num_classes=5, num_feature_levels=3,
                                      backbone_weights=str(tmp_path / "classifier.pth"), backbone_kwargs=kwargs, **TINY)
    body = model.backbone.body
    count = len(body.blocks) if hasattr(body, "blocks") else sum(len(t.blocks) for t in body.transformers)
    assert count == blocks
    theirs = classifier.state_dict()
    for name, value in body.state_dict().items():
        if name in theirs and "pos_embed" not in name:  # the position grid is resampled to the detector's size
            torch.testing.assert_close(value, theirs[name], msg=name)
    _check_detector(model.eval(), levels_extra=False)


def test_box_refinement_and_two_stage():
    torch.manual_seed(0)
    model = build_deformable_detector(
        backbone="pit_ti", num_classes=5, num_feature_levels=2, with_box_refine=True, two_stage=True, **TINY
    ).eval()
    assert len(model.input_proj) == 2
    _check_detector(model, levels_extra=True)


def test_param_groups_low_lr_for_offsets_and_reference_points():
    model = build_deformable_detector(backbone="pit_ti", num_classes=3, **TINY)
    groups = {g["name"]: g for g in model.param_groups(lr=2e-4, lr_backbone=2e-5)}
    names = {id(p): n for n, p in model.named_parameters()}
    low = [names[id(p)] for p in groups["sampling_offsets_reference_points"]["params"]]
    assert low and all("sampling_offsets" in n or "reference_points" in n for n in low)
    assert groups["sampling_offsets_reference_points"]["lr"] == pytest.approx(2e-5)
    assert all(names[id(p)].startswith("backbone.") for p in groups["backbone"]["params"])
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(1 for p in model.parameters() if p.requires_grad)


def test_criterion_matches_hand_computed_losses():
    torch.manual_seed(0)
    num_classes, queries = 3, 4
    logits = torch.randn(1, queries, num_classes)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1], [0.7, 0.2, 0.3, 0.2], [0.4, 0.4, 0.4, 0.4]]])
    targets = [{"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.45, 0.5, 0.25, 0.3], [0.3, 0.65, 0.1, 0.2]])}]
    criterion = SetCriterion(num_classes, FixedMatcher(), weight_dict(1), focal=True)
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, targets)
    # focal loss by its definition: -α_t (1 - p_t)^γ log p_t over every query × class, / num boxes
    p = logits.sigmoid()
    onehot = torch.zeros_like(p)
    onehot[0, 0, 2] = onehot[0, 1, 0] = 1
    p_t = torch.where(onehot == 1, p, 1 - p)
    alpha_t = torch.where(onehot == 1, 0.25, 0.75)
    focal = (-alpha_t * (1 - p_t) ** 2 * p_t.log()).sum() / 2
    l1 = (boxes[0, :2] - targets[0]["boxes"]).abs().sum() / 2
    giou = (1 - generalized_box_iou(box_convert(boxes[0, :2], "cxcywh", "xyxy"),
                                    box_convert(targets[0]["boxes"], "cxcywh", "xyxy")).diag()).sum() / 2
    torch.testing.assert_close(losses["loss_ce"], focal)
    torch.testing.assert_close(losses["loss_bbox"], l1)
    torch.testing.assert_close(losses["loss_giou"], giou)


def test_criterion_aux_enc_and_empty_images():
    criterion = build_deformable_criterion(num_classes=4, dec_layers=3, two_stage=True)
    assert criterion.weight_dict["loss_ce"] == 2 and criterion.weight_dict["loss_bbox"] == 5
    assert {"loss_ce_0", "loss_ce_1", "loss_giou_enc"} <= set(criterion.weight_dict)
    head = {"pred_logits": torch.randn(2, 6, 4, requires_grad=True), "pred_boxes": torch.rand(2, 6, 4) * 0.5 + 0.25}
    outputs = {**head, "aux_outputs": [dict(head), dict(head)], "enc_outputs": dict(head)}
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.3, 0.1, 0.1]])},
               {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    losses = criterion(outputs, targets)
    assert set(criterion.weight_dict) <= set(losses)
    total = sum(criterion.weight_dict[k] * losses[k] for k in criterion.weight_dict)
    assert torch.isfinite(total)
    total.backward()
    assert head["pred_logits"].grad.abs().sum() > 0


def test_postprocess_topk_over_queries_and_classes():
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 1, 0], logits[0, 1, 1], logits[0, 2, 1] = 3.0, 2.0, 1.0  # query 1 listed with both classes
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 0.2], [0.5, 0.5, 1.0, 1.0]]])
    (result,) = PostProcessTopK(num_select=3)({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))
    assert result["labels"].tolist() == [0, 1, 1]
    torch.testing.assert_close(result["scores"], torch.tensor([3.0, 2.0, 1.0]).sigmoid())
    torch.testing.assert_close(result["boxes"][0], torch.tensor([0.0, 40.0, 100.0, 20.0]))  # absolute xywh
    torch.testing.assert_close(result["boxes"][2], torch.tensor([0.0, 0.0, 200.0, 100.0]))


def test_paper_preset_scales():
    preset = get_preset("paper")
    assert sorted(preset.sizes.train_scales, reverse=True) == [400, 384, 368, 352, 336, 320, 304, 288, 272, 256, 240]
    assert (preset.lr, preset.lr_backbone, preset.epochs, preset.lr_drop) == (2e-4, 2e-5, 50, 40)
    assert preset.sizes.test_size == 400 and preset.sizes.max_size == 667
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("nope")


def _load_coco_tensors(ann_file: str, image_dir: str):
    """Images in [0, 1] (N, 3, H, W) (the detector normalises), targets with contiguous labels and normalised cxcywh."""
    import numpy as np
    from PIL import Image
    from pycocotools.coco import COCO

    coco = COCO(ann_file)
    category_ids = sorted(coco.getCatIds())
    image_ids = sorted(coco.getImgIds())
    images, targets = [], []
    for image_id in image_ids:
        info = coco.loadImgs(image_id)[0]
        pixels = np.asarray(Image.open(f"{image_dir}/{info['file_name']}").convert("RGB"), dtype=np.float32) / 255
        images.append(torch.from_numpy(pixels).permute(2, 0, 1))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        scale = torch.tensor([info["width"], info["height"]] * 2, dtype=torch.float32)
        boxes = box_convert(torch.tensor([a["bbox"] for a in anns], dtype=torch.float32), "xywh", "cxcywh") / scale
        targets.append({"labels": torch.tensor([category_ids.index(a["category_id"]) for a in anns]), "boxes": boxes})
    return coco, category_ids, image_ids, torch.stack(images), targets


def test_overfits_a_handful_of_images(tmp_path):
    from pycocotools.cocoeval import COCOeval

    from common.synthetic import DetectionSpec, make_detection
    from detection.data import coco_paths

    torch.manual_seed(0)
    paths = coco_paths(make_detection(tmp_path, DetectionSpec(num_train=4, num_val=1, img_size=64, max_objects=2)))
    coco, category_ids, image_ids, images, targets = _load_coco_tensors(paths["train_ann"], paths["train_images"])
    mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool)
    sizes = dict(TINY, num_queries=10, num_feature_levels=2)
    model = build_deformable_detector(backbone="pit_ti", num_classes=len(category_ids), **sizes)
    criterion = build_deformable_criterion(num_classes=len(category_ids), dec_layers=sizes["dec_layers"])
    optimizer = torch.optim.AdamW(model.param_groups(lr=1e-3, lr_backbone=1e-3), weight_decay=1e-4)
    first = None
    for _ in range(150):
        losses = criterion(model(images, mask), targets)
        loss = sum(criterion.weight_dict[k] * losses[k] for k in criterion.weight_dict)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
    assert loss.item() < 0.2 * first
    model.eval()
    with torch.no_grad():
        results = PostProcessTopK()(model(images, mask), torch.tensor([[64, 64]] * len(image_ids)))
    detections = [
        {"image_id": image_id, "category_id": category_ids[label], "bbox": box, "score": score}
        for image_id, r in zip(image_ids, results)
        for score, label, box in zip(r["scores"].tolist(), r["labels"].tolist(), r["boxes"].tolist())
    ]
    evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] > 0.5
