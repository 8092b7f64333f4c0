"""The demo classifiers' tuning split holds out train images only (the demo's val split is never tuned on)."""
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
