"""The demo's detection recipe learns to find the objects on a reduced budget.

The demo's data spec and ``DetectionRecipe`` (``demo.pipeline.DEFAULT_CONFIG``: batch 16, its learning
rates, autocast where fast) with fewer images and epochs (800 images, 3 epochs, lr ×0.1 for the last)
and a randomly initialised backbone (the demo starts from its classifiers; training those here would
cost minutes), on generated images of another seed than the demo's. Chance: an untrained detector
scores AP50 0.0 on these images; this one reached 43.6 (docs/demo.md). Not a timing test.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from common import synthetic
from demo.detection import train_demo_detector
from demo.pipeline import DEFAULT_CONFIG

pytestmark = pytest.mark.slow

TEST_SPEC = replace(DEFAULT_CONFIG.detection, num_train=800, num_val=32, seed=7)
TEST_RECIPE = replace(DEFAULT_CONFIG.detector, epochs=3, lr_drop=2, seeds=(0,))


def test_reduced_demo_recipe_learns_well_above_chance(tmp_path):
    root = synthetic.make_detection(tmp_path / "cache", TEST_SPEC)
    trained = train_demo_detector(TEST_RECIPE, root, TEST_SPEC.img_size, tmp_path / "run", backbone="pit_ti",
                                  backbone_weights=None, seed=0, device="cpu", num_workers=0, progress=False)
    curve = trained["curve"]
    assert [c["epoch"] for c in curve] == list(range(1, TEST_RECIPE.epochs + 1))
    assert curve[-1]["loss"] < 0.7 * curve[0]["loss"]  # measured 0.58 (11.5 → 6.6; the focal weight 5 starts it high)
    assert trained["AP50"] >= 25.0, (trained, curve)  # measured 43.6 (untrained: 0.0); bf16 and fp32 CPUs differ a little
    assert 0 < trained["AP"] <= trained["AP50"]
