"""Exact count reduction and ImageNet-C error metrics (CE, mCE, relative mCE) with the AlexNet baselines.

Error rates are fractions in [0, 1]; CE values are ratios (multiply by 100 for the usual "mCE 76.7").
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from common.distributed import all_reduce_sum

# AlexNet top-1 error per corruption, the mean over severities 1-5 (Hendrycks & Dietterich 2019; docs/references.md).
ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204,
    "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
ALEXNET_CLEAN_ERROR = 0.4345


def reduce_counts(counts: torch.Tensor) -> torch.Tensor:
    """Sum an integer count tensor over all processes (exact: int64, no averaging)."""
    return all_reduce_sum(counts.to(torch.int64))


def corruption_errors(errors: Mapping[str, list[float]]) -> dict[str, float]:
    """CE_c = Σ_s err(model,c,s) / Σ_s err(AlexNet,c,s) for each corruption with an AlexNet baseline.

    ``errors`` maps a corruption name to the model's top-1 errors (fractions) at severities 1-5 (all
    five: the baseline is a mean over five severities). Corruptions without a baseline are left out.
    """
    out = {}
    for name, errs in errors.items():
        if name in ALEXNET_ERRORS:
            _check_five(name, errs)
            out[name] = (sum(errs) / len(errs)) / ALEXNET_ERRORS[name]
    return out


def relative_corruption_errors(errors: Mapping[str, list[float]], clean_error: float) -> dict[str, float]:
    """rCE_c = Σ_s (err_c,s − err_clean) / Σ_s (err_AlexNet,c,s − err_AlexNet,clean), per corruption."""
    out = {}
    for name, errs in errors.items():
        if name in ALEXNET_ERRORS:
            _check_five(name, errs)
            out[name] = (sum(errs) / len(errs) - clean_error) / (ALEXNET_ERRORS[name] - ALEXNET_CLEAN_ERROR)
    return out


def mean_ce(ces: Mapping[str, float]) -> float | None:
    """mCE (or relative mCE): the mean of the per-corruption CEs; None when there are none."""
    return sum(ces.values()) / len(ces) if ces else None


def mean_corruption_error(errors: Mapping[str, list[float]]) -> float | None:
    """Raw (un-normalised) mean top-1 error over every evaluated corruption and severity."""
    flat = [e for errs in errors.values() for e in errs]
    return sum(flat) / len(flat) if flat else None


def _check_five(name: str, errs: list[float]) -> None:
    if len(errs) != 5:
        raise ValueError(f"CE for {name!r} needs the errors at all 5 severities (got {len(errs)}): "
                         "the AlexNet baseline is a mean over severities 1-5")
