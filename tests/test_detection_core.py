"""Detection building blocks against independent references: brute-force assignment, losses
computed by hand, pycocotools on perfect predictions, every backbone on padded non-square batches."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from detection.backbones import build_backbone
from detection.build import build_criterion, build_detector, build_postprocessor
from detection.coco_eval import CocoEvaluator
from detection.criterion import SetCriterion, detr_weight_dict
from detection.data import CocoDetection, collate, make_transforms
from detection.matcher import HungarianMatcher
from detection.position_encoding import PositionEmbeddingSine
from tests.coco_fixtures import make_tiny_coco

TINY = dict(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=6, dropout=0.0)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    return make_tiny_coco(tmp_path_factory.mktemp("coco"), num_images=6)


def _random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
    return torch.cat([centre, torch.rand(n, 2, generator=gen) * 0.3 + 0.05], 1)


def _brute_force_cost(matcher: HungarianMatcher, logits, boxes, labels, tgt_boxes) -> float:
    """Minimum total cost over every injective target → query assignment, cost by its definition."""
    xyxy = lambda b: box_convert(b, "cxcywh", "xyxy")  # noqa: E731
    best = math.inf
    for queries in itertools.permutations(range(len(boxes)), len(labels)):
        q = torch.tensor(queries, dtype=torch.long)
        cls = matcher.class_cost(logits[q], labels).diagonal()
        l1 = (boxes[q] - tgt_boxes).abs().sum(-1)
        giou = generalized_box_iou(xyxy(boxes[q]), xyxy(tgt_boxes)).diagonal()
        best = min(best, float((matcher.cost_class * cls + matcher.cost_bbox * l1 - matcher.cost_giou * giou).sum()))
    return best


@pytest.mark.parametrize("focal", [False, True])
def test_matcher_equals_brute_force_optimum(focal):
    gen = torch.Generator().manual_seed(0)
    matcher = HungarianMatcher(2.0 if focal else 1.0, 5.0, 2.0, focal=focal)
    classes = 4 if focal else 5
    for trial in range(6):
        queries, counts = 5, [trial % 4, 3, 0][: 1 + trial % 3]
        logits = torch.randn(len(counts), queries, classes, generator=gen)
        boxes = torch.stack([_random_boxes(queries, gen) for _ in counts])
        targets = [{"labels": torch.randint(0, 4, (n,), generator=gen), "boxes": _random_boxes(n, gen)} for n in counts]
        indices = matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
        for b, ((qi, ti), t) in enumerate(zip(indices, targets)):
            assert qi.dtype == ti.dtype == torch.int64 and len(qi) == len(ti) == len(t["labels"])
            if len(ti) == 0:
                continue
            order = ti.argsort()
            q, labels, tb = qi[order], t["labels"], t["boxes"]
            cls = matcher.class_cost(logits[b][q], labels).diagonal()
            xyxy = lambda x: box_convert(x, "cxcywh", "xyxy")  # noqa: E731
            cost = (matcher.cost_class * cls + 5 * (boxes[b][q] - tb).abs().sum(-1)
                    - 2 * generalized_box_iou(xyxy(boxes[b][q]), xyxy(tb)).diagonal()).sum()
            assert float(cost) == pytest.approx(_brute_force_cost(matcher, logits[b], boxes[b], labels, tb), abs=1e-4)


class FixedMatcher(nn.Module):
    def forward(self, outputs, targets):
        return [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in targets]


def test_criterion_matches_hand_computed_losses():
    torch.manual_seed(0)
    num_classes = 3
    logits = torch.randn(2, 3, num_classes + 1)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1], [0.7, 0.2, 0.3, 0.2]],
                          [[0.4, 0.4, 0.4, 0.4], [0.6, 0.6, 0.2, 0.2], [0.5, 0.5, 0.5, 0.5]]])
    targets = [{"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.45, 0.5, 0.25, 0.3], [0.3, 0.65, 0.1, 0.2]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.45, 0.3, 0.4]])}]
    criterion = SetCriterion(num_classes, FixedMatcher(), detr_weight_dict(1), eos_coef=0.1)
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, targets)
    # weighted CE: Σ w_y · (−log p_y) / Σ w_y with weight 0.1 for "no object" (class 3)
    classes = torch.tensor([[2, 0, 3], [1, 3, 3]])
    logp = logits.log_softmax(-1).gather(-1, classes[..., None])[..., 0]
    w = torch.where(classes == 3, 0.1, 1.0)
    assert losses["loss_ce"].item() == pytest.approx(float((-logp * w).sum() / w.sum()), rel=1e-5)
    src = torch.cat([boxes[0, :2], boxes[1, :1]])
    tgt = torch.cat([targets[0]["boxes"], targets[1]["boxes"]])
    assert losses["loss_bbox"].item() == pytest.approx(float((src - tgt).abs().sum() / 3), rel=1e-5)
    giou = []
    for s, t in zip(box_convert(src, "cxcywh", "xyxy").tolist(), box_convert(tgt, "cxcywh", "xyxy").tolist()):
        inter = max(0, min(s[2], t[2]) - max(s[0], t[0])) * max(0, min(s[3], t[3]) - max(s[1], t[1]))
        union = (s[2] - s[0]) * (s[3] - s[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter
        hull = (max(s[2], t[2]) - min(s[0], t[0])) * (max(s[3], t[3]) - min(s[1], t[1]))
        giou.append(inter / union - (hull - union) / hull)
    assert losses["loss_giou"].item() == pytest.approx(sum(1 - g for g in giou) / 3, rel=1e-5)
    predicted = (logits.argmax(-1) != 3).sum(1).float()
    assert losses["cardinality_error"].item() == pytest.approx(float((predicted - torch.tensor([2.0, 1.0])).abs().mean()))


def test_focal_option_and_aux_losses():
    torch.manual_seed(0)
    logits, boxes = torch.randn(1, 4, 3), torch.rand(1, 4, 2).repeat(1, 1, 2) * 0.5 + 0.25
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    criterion = SetCriterion(3, FixedMatcher(), detr_weight_dict(2), focal=True)
    out = {"pred_logits": logits, "pred_boxes": boxes, "aux_outputs": [{"pred_logits": logits, "pred_boxes": boxes}]}
    losses = criterion(out, targets)
    onehot = torch.zeros(1, 4, 3)
    onehot[0, 0, 1] = 1
    p = logits.sigmoid()
    p_t = p * onehot + (1 - p) * (1 - onehot)
    alpha_t = 0.25 * onehot + 0.75 * (1 - onehot)
    expected = (-alpha_t * (1 - p_t) ** 2 * p_t.log()).sum()
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["loss_ce_0"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(criterion.weight_dict) == {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0"}


def test_no_object_image_matches_nothing():
    matcher = HungarianMatcher()
    out = {"pred_logits": torch.randn(2, 4, 4), "pred_boxes": torch.rand(2, 4, 4) * 0.3 + 0.2}
    empty = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    assert all(len(q) == 0 for q, _ in matcher(out, [empty, empty]))
    losses = build_criterion("detr", num_classes=3, dec_layers=1)(out, [empty, empty])
    assert torch.isfinite(losses["loss_ce"]) and losses["loss_bbox"].item() == 0.0


def test_perfect_predictions_give_ap_one(tiny_coco):
    dataset = CocoDetection(tiny_coco["val_ann"], tiny_coco["val_images"])
    evaluator = CocoEvaluator(dataset.coco, dataset.cat_ids)
    for image_id in dataset.ids:
        anns = [a for a in dataset.coco.imgToAnns[image_id] if not a["iscrowd"] and a["bbox"][2] > 0]
        evaluator.update({image_id: {"scores": torch.ones(len(anns)),
                                     "labels": torch.tensor([dataset.label_of[a["category_id"]] for a in anns], dtype=torch.long),
                                     "boxes": torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)}})
    evaluator.synchronize()
    stats = evaluator.summarize()
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0) and len(stats["stats"]) == 12


def test_dataset_drops_crowd_and_degenerate_and_maps_categories(tiny_coco):
    dataset = CocoDetection(tiny_coco["train_ann"], tiny_coco["train_images"])
    coco = COCO(tiny_coco["train_ann"])
    assert dataset.num_classes == 3 and dataset.cat_ids == [2, 5, 9]
    assert [dataset.cat_ids[dataset.label_of[c]] for c in (2, 5, 9)] == [2, 5, 9]
    image, target = dataset[0]
    valid = [a for a in coco.imgToAnns[1] if not a["iscrowd"] and a["bbox"][2] > 0 and a["bbox"][3] > 0]
    assert len(coco.imgToAnns[1]) == len(valid) + 2 and len(target["labels"]) == len(valid)
    h, w = image.shape[-2:]
    xywh = box_convert(target["boxes"] * torch.tensor([w, h, w, h]), "cxcywh", "xywh")
    torch.testing.assert_close(xywh, torch.tensor([a["bbox"] for a in valid], dtype=torch.float32))
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert len(dataset[len(dataset) - 1][1]["labels"]) == 0  # the image without objects


def test_train_transforms_keep_boxes_valid_and_collate_pads(tiny_coco):
    torch.manual_seed(0)
    dataset = CocoDetection(tiny_coco["train_ann"], tiny_coco["train_images"],
                            make_transforms(True, scales=[64, 80], max_size=120, img_scale=1.0))
    images, mask, targets = collate([dataset[i] for i in range(len(dataset))])
    for k, t in enumerate(targets):
        h, w = t["size"].tolist()
        assert (~mask[k, :h, :w]).all() and mask[k].sum() == mask.shape[1] * mask.shape[2] - h * w
        assert (images[k][:, mask[k]] == 0).all()
        assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all() and (t["boxes"][:, 2:] > 0).all()
        assert min(h, w) <= 120


def test_clear_errors(tmp_path, tiny_coco):
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoDetection(tmp_path / "nope.json", tiny_coco["val_images"])
    data = json.loads(open(tiny_coco["val_ann"]).read())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**data, "images": [], "annotations": []}))
    with pytest.raises(ValueError, match="empty"):
        CocoDetection(empty, tiny_coco["val_images"])
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({**data, "images": [{**data["images"][0], "file_name": "gone.jpg"}]}))
    with pytest.raises(FileNotFoundError, match="missing on disk"):
        CocoDetection(missing, tiny_coco["val_images"])[0]
    with pytest.raises(KeyError, match="unknown detector architecture"):
        build_detector("yolo", backbone="pit_ti", num_classes=3)


def test_position_encoding_ignores_padding():
    pe = PositionEmbeddingSine(16)
    mask = torch.zeros(2, 6, 9, dtype=torch.bool)
    mask[1, 4:] = True
    mask[1, :, 7:] = True
    emb = pe(mask)
    assert emb.shape == (2, 32, 6, 9)
    torch.testing.assert_close(emb[1, :, :4, :7], pe(torch.zeros(1, 4, 7, dtype=torch.bool))[0])


def _padded_batch():
    images = torch.randn(2, 3, 80, 112)
    mask = torch.zeros(2, 80, 112, dtype=torch.bool)
    mask[1, 48:] = True
    mask[1, :, 64:] = True
    return images.masked_fill(mask[:, None], 0), mask


@pytest.mark.parametrize("name", ["pit_ti", "deit_tiny_patch16_224", "resnet50"])
def test_backbones_and_detr_on_padded_non_square_batches(name):
    torch.manual_seed(0)
    images, mask = _padded_batch()
    for multi_scale in (False, True):
        backbone = build_backbone(name, multi_scale=multi_scale).eval()
        with torch.no_grad():
            features = backbone(images, mask)
        assert [f.shape[1] for f, _ in features] == backbone.num_channels
        assert backbone.strides == ([8, 16, 32] if multi_scale else backbone.strides[-1:])
        for (f, m), stride in zip(features, backbone.strides):
            assert m.shape == (2, *f.shape[-2:]) and m.dtype == torch.bool
            assert abs(f.shape[-1] - 112 / stride) <= 2 and abs(f.shape[-2] - 80 / stride) <= 2
            assert not m[0].any() and m[1].any()
    model = build_detector("detr", backbone=name, num_classes=4, **TINY).eval()
    with torch.no_grad():
        out = model(images, mask)
        noisy = images.clone()
        noisy[1][mask[1][None].expand(3, -1, -1)] = 3.0
        out_noisy = model(noisy, mask)
    assert out["pred_logits"].shape == (2, 6, 5) and out["pred_boxes"].shape == (2, 6, 4)
    assert len(out["aux_outputs"]) == 1 and ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    torch.testing.assert_close(out_noisy["pred_boxes"], out["pred_boxes"])  # padding content is ignored
    results = build_postprocessor("detr")(out, torch.tensor([[80, 112], [48, 64]]))
    assert results[1]["boxes"].shape == (6, 4) and (results[1]["labels"] < 4).all()


def test_freeze_patch_embed():
    backbone = build_backbone("pit_ti", freeze_patch_embed=True)
    assert not any(p.requires_grad for p in backbone.body.patch_embed.parameters())
    assert all(p.requires_grad for n, p in backbone.body.named_parameters() if not n.startswith("patch_embed."))


@pytest.mark.parametrize("pre_norm", [False, True])
def test_transformer_layers_equal_torch_layers_with_the_same_weights(pre_norm):
    """Without positional embeddings, DETR's encoder/decoder layers are torch's ``TransformerEncoderLayer`` /
    ``TransformerDecoderLayer`` (ReLU, ``norm_first=pre_norm``): same parameter names, same outputs, padding
    included; the pre-norm transformer ends its encoder with a LayerNorm (the official layout)."""
    from detection.transformer import DecoderLayer, EncoderLayer, Transformer

    torch.manual_seed(0)
    d, heads, ff = 32, 4, 64
    ours_enc, ours_dec = EncoderLayer(d, heads, ff, 0.0, pre_norm), DecoderLayer(d, heads, ff, 0.0, pre_norm)
    ref_enc = nn.TransformerEncoderLayer(d, heads, ff, 0.0, batch_first=True, norm_first=pre_norm)
    ref_dec = nn.TransformerDecoderLayer(d, heads, ff, 0.0, batch_first=True, norm_first=pre_norm)
    for ours, ref in ((ours_enc, ref_enc), (ours_dec, ref_dec)):
        for p in ours.parameters():  # LayerNorms away from (1, 0), so a misplaced norm shows
            nn.init.normal_(p, std=0.3)
        ref.load_state_dict(ours.state_dict(), strict=True)
        ours.eval(), ref.eval()
    src, tgt = torch.randn(2, 7, d), torch.randn(2, 5, d)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad():
        memory = ours_enc(src, pad, None)
        torch.testing.assert_close(memory, ref_enc(src, src_key_padding_mask=pad))
        torch.testing.assert_close(ours_dec(tgt, memory, pad, None, None),
                                   ref_dec(tgt, memory, memory_key_padding_mask=pad))
    assert (Transformer(d, heads, 1, 1, ff, 0.0, normalize_before=pre_norm).encoder.norm is not None) == pre_norm


def test_resnet_backbone_is_frozen_as_the_official_one():
    """Official DETR: every BatchNorm frozen, stem + layer1 not trained — 222,400 parameters
    (conv1 9,408 + layer1 212,992 convolution weights)."""
    from torchvision.ops import FrozenBatchNorm2d

    body = build_backbone("resnet50").body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    frozen = sum(p.numel() for p in body.parameters() if not p.requires_grad)
    assert frozen == 222_400
    assert all(p.requires_grad for n, p in body.named_parameters() if n.startswith(("layer2", "layer3", "layer4")))


def test_position_encodings_follow_each_paper():
    """DETR: y / (y_last + 1e-6) · 2π; Deformable DETR: (y − 0.5) / (y_last + 1e-6) · 2π (first feature = sin)."""
    import math

    from detection.position_encoding import deformable_position_embedding, detr_position_embedding

    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, 3:, :] = True  # 3 valid rows
    y = torch.tensor(2.0)  # row index 1 → cumulative count 2
    detr = detr_position_embedding(8)(mask)
    deformable = deformable_position_embedding(8)(mask)
    torch.testing.assert_close(detr[0, 0, 1, 0], torch.sin(y / (3 + 1e-6) * 2 * math.pi))
    torch.testing.assert_close(deformable[0, 0, 1, 0], torch.sin((y - 0.5) / (3 + 1e-6) * 2 * math.pi))


def test_any_timm_backbone_with_forward_intermediates():
    backbone = build_backbone("convnext_atto", multi_scale=True)
    assert backbone.strides == [8, 16, 32] and backbone.num_channels == [80, 160, 320]
    images, mask = torch.rand(1, 3, 72, 104), torch.zeros(1, 72, 104, dtype=torch.bool)
    assert [m.shape[-2:] for m, _ in backbone(images, mask)] == [(9, 13), (4, 6), (2, 3)]  # floor: stride-2 convs without padding
    with pytest.raises(ValueError, match="cannot serve a detector at arbitrary input sizes") as info:
        build_backbone("mixer_s16_224")
    assert "\n" not in str(info.value)
