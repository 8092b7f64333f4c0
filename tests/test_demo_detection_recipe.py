"""Regression guard on the demo's detection recipe: on a reduced budget it still learns to find the objects.

The demo's data spec and ``DetectionRecipe`` (``demo.pipeline.DEFAULT_CONFIG``) with fewer images and
epochs and a randomly initialised backbone (the demo starts from its classifiers; training those
here would cost minutes). Chance level, for reference: a detector that puts its boxes at random
positions and sizes scores an AP50 well under 1 % on these images. A timing test this is not.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from common import synthetic
from demo.detection import train_demo_detector
from demo.pipeline import DEFAULT_CONFIG

pytestmark = pytest.mark.slow

TEST_SPEC = replace(DEFAULT_CONFIG.detection, num_train=160, num_val=24, seed=7)  # not the demo's images
TEST_RECIPE = replace(DEFAULT_CONFIG.detector, epochs=6, lr_drop=5, seeds=(0,))


def test_reduced_demo_recipe_learns_well_above_chance(tmp_path):
    root = synthetic.make_detection(tmp_path / "cache", TEST_SPEC)
    result = train_demo_detector(TEST_RECIPE, root, TEST_SPEC.img_size, tmp_path / "run", backbone="pit_ti",
                                 backbone_weights=None, seed=0, device="cpu", num_workers=0, progress=False)
    curve = result["curve"]
    assert [c["epoch"] for c in curve] == list(range(1, TEST_RECIPE.epochs + 1))
    assert curve[-1]["loss"] < 0.7 * curve[0]["loss"]
    assert result["AP50"] >= 20.0, result  # chance: < 1
    assert result["AP"] <= result["AP50"]
