"""Shape bias on the cue-conflict stimuli (Geirhos et al., ICLR 2019), scored as model-vs-human scores it.

A 1000-class model's decision among the 16 categories: softmax over the 1000 logits, then each category's
probability is the *mean* of its ImageNet classes' probabilities (``robustness.cue_conflict.CATEGORY_CLASSES``),
and the decision is the category with the largest mean. Images whose shape and texture categories are
the same carry no conflict: they count in ``n`` but never as a shape or texture decision. Exact counts per
cell: ``n`` (images read), ``shape`` and ``texture`` (decisions for the image's shape / texture category);
then shape bias = shape / (shape + texture), shape fraction = shape / n, texture fraction = texture / n
(model-vs-human's ``ShapeBias``: its fractions also divide by all images, the no-conflict ones included).
"""
from __future__ import annotations

import torch

from robustness.cue_conflict import CATEGORIES, CATEGORY_CLASSES

DATASET = "cue-conflict"


def category_matrix(num_classes: int = 1000, device: torch.device | str = "cpu") -> torch.Tensor:
    """float (num_classes, 16): column c averages category c's ImageNet classes (1/|c| on them, 0 elsewhere)."""
    table = torch.zeros(num_classes, len(CATEGORIES), device=device)
    for c, name in enumerate(CATEGORIES):
        classes = CATEGORY_CLASSES[name]
        table[list(classes), c] = 1.0 / len(classes)
    return table


def category_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """(B, 1000) ImageNet probabilities → (B, 16): the mean probability of each category's classes."""
    if probabilities.shape[-1] != 1000:
        raise ValueError(f"shape bias needs 1000 ImageNet probabilities per image, got {probabilities.shape[-1]}")
    return probabilities.float() @ category_matrix(1000, probabilities.device)


def decisions(logits: torch.Tensor) -> torch.Tensor:
    """int64 (B,): the 16-category decision of each image's 1000 logits."""
    return category_probabilities(logits.float().softmax(-1)).argmax(-1)


def decision_counts(logits: torch.Tensor, shape: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
    """int64 (3,) [n, shape decisions, texture decisions] of a batch; ``shape``/``texture`` (B,) category indices."""
    decided = decisions(logits)
    conflict = shape != texture
    return torch.stack([torch.tensor(shape.numel(), device=shape.device),
                        ((decided == shape) & conflict).sum(), ((decided == texture) & conflict).sum()]).long()


def shape_bias(shape: int, texture: int) -> float | None:
    """shape / (shape + texture) as a percentage; None when the model made neither decision."""
    return 100.0 * shape / (shape + texture) if shape + texture else None


def summary(n: int, shape: int, texture: int) -> dict[str, float | None]:
    """The summary numbers of one cue-conflict cell, in percent."""
    return {"shape_bias": shape_bias(shape, texture), "shape_fraction": 100.0 * shape / n if n else None,
            "texture_fraction": 100.0 * texture / n if n else None}


def report_lines(records: list, labels: list[str]) -> list[str]:
    """Markdown lines of the report's shape-bias section (empty without cue-conflict cells). ``records``:
    ``CellRecord``s whose ``decisions`` hold the exact shape/texture counts."""
    from common.tables import fmt, markdown_table

    mine = {r.key.model: r for r in records if r.key.dataset == DATASET and r.decisions}
    if not mine:
        return []
    rows = []
    for label in labels:
        r = mine.get(label)
        if r is None:
            continue
        s, t = r.decisions["shape"], r.decisions["texture"]
        numbers = summary(r.n, s, t)
        rows.append([label, fmt(numbers["shape_bias"], 2), fmt(numbers["shape_fraction"], 2),
                     fmt(numbers["texture_fraction"], 2), f"{s}/{t}/{r.n}"])
    return ["", "## Shape bias (cue-conflict stimuli, Geirhos et al. 2019)", "",
            markdown_table(["Model", "Shape bias %", "Shape decisions %", "Texture decisions %",
                            "shape/texture/images"], rows),
            "", "Decision among 16 categories: mean softmax probability of each category's ImageNet classes "
            "(model-vs-human). Shape bias = shape / (shape + texture) decisions over the images whose shape and "
            "texture differ; the fractions divide by all images read."]
