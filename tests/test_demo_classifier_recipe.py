"""The demo classifiers' recipe: its tuning split holds out train images only, and the recipe learns.

``test_reduced_recipe_learns_well_above_chance`` trains both demo models (PiT-Ti, DeiT-Ti) with the demo's
``ClassifierRecipe`` on a reduced budget (600 images of another seed than the demo's, 4 epochs) and checks
held-out top-1 well above chance (10 %) for both. Today's recipe does not: measured 11.0 (PiT-Ti) and 11.5
(DeiT-Ti), 194 s for both on a loaded 2-core machine, so the test is a strict xfail (issue 25's ≥ 60 % goal is
open, docs/demo.md); it turns into a failure, to be made a plain test, once a recipe learns. Not a timing test.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from common import synthetic
from demo.classifier import tuning_split


def _files(root: Path) -> dict[str, set[str]]:
    return {split: {f"{d.name}/{f.name}" for d in (root / split).iterdir() for f in d.iterdir()}
            for split in ("train", "val")}


def test_tuning_split_holds_out_train_images_only(tmp_path):
    root = synthetic.make_classification(tmp_path / "cache", synthetic.ClassificationSpec(
        num_classes=3, train_per_class=5, val_per_class=2, img_size=16))
    split = tuning_split(root, tmp_path / "split", held_out_per_class=2)
    got, source = _files(split), _files(root)
    assert got["train"] | got["val"] == source["train"] and not got["train"] & got["val"]
    for folder in sorted(os.listdir(root / "train")):
        names = sorted(os.listdir(root / "train" / folder))
        assert sorted(os.listdir(split / "val" / folder)) == names[-2:]  # the last two of each class, by name
        assert sorted(os.listdir(split / "train" / folder)) == names[:-2]
    targets = {os.path.realpath(p) for p in split.rglob("*.JPEG")}
    assert all(t.startswith(str((root / "train").resolve())) for t in targets)  # the demo's val/ is never used
    assert not (tmp_path / "split.partial").exists()


def test_tuning_split_refuses_to_hold_out_a_whole_class(tmp_path):
    root = synthetic.make_classification(tmp_path / "cache", synthetic.ClassificationSpec(
        num_classes=2, train_per_class=2, val_per_class=1, img_size=16))
    with pytest.raises(ValueError, match="cannot hold out 2"):
        tuning_split(root, tmp_path / "split", held_out_per_class=2)


REDUCED_SPEC = synthetic.ClassificationSpec(num_classes=10, train_per_class=60, val_per_class=20, img_size=64, seed=7)
REDUCED_EPOCHS = 4


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 25 open: the demo's classifier recipe learns too slowly (docs/demo.md)")
@pytest.mark.parametrize("label,name", [("PiT-Ti", "pit_ti"), ("DeiT-Ti", "deit_tiny_patch16_224")])
def test_reduced_recipe_learns_well_above_chance(tmp_path, label, name):
    from dataclasses import replace

    from classification.train import ClassifierTrainConfig, train_classifier
    from demo.pipeline import DEFAULT_CONFIG

    recipe = replace(DEFAULT_CONFIG.classifier, epochs=REDUCED_EPOCHS)
    root = synthetic.make_classification(tmp_path / "cache", replace(REDUCED_SPEC, img_size=recipe.img_size))
    result = train_classifier(ClassifierTrainConfig(model=name, data=str(root), out=str(tmp_path / "run"), workers=0,
                                                    device="cpu", progress=False, **recipe.train_kwargs()))
    assert result["top1"] >= 30.0, (label, result["top1"])  # chance 10 %
