"""Calibration of a classification cell: expected calibration error (ECE) and negative log-likelihood (NLL).

Guo et al., "On Calibration of Modern Neural Networks", ICML 2017: confidence = the largest softmax
probability, 15 equal-width bins, bin b = (b/15, (b+1)/15], ECE = Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|;
NLL = mean −log softmax(logits)[true class].

A cell keeps a *statistic* that is summed over batches, chunks and processes: an int64 vector of
``WIDTH`` entries, per bin the image count, the correct count and the confidence sum, then the NLL sum
and the count of images whose logits had no softmax (NaN or +inf). Confidences and NLLs are added as
fixed-point integers (``round(value · 2^32)``, each image's value computed alone in float64), so the sums
do not depend on the order, the batch, the chunk or the number of processes: a resumed or sharded run
gives bitwise the ECE/NLL of one uninterrupted process for the same logits.
"""
from __future__ import annotations

from typing import Any

import torch

N_BINS = 15
SCALE_BITS = 32
NLL_CAP = 1024.0  # nats: beyond float64's smallest probability (e^-745); keeps the int64 NLL sum safe to 2^21 images
WIDTH = 3 * N_BINS + 2
_COUNT, _CORRECT, _CONF = slice(0, N_BINS), slice(N_BINS, 2 * N_BINS), slice(2 * N_BINS, 3 * N_BINS)
_NLL, _NONFINITE = 3 * N_BINS, 3 * N_BINS + 1


def batch_statistic(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The int64 (WIDTH,) statistic of one batch: logits (B, K) (classes that cannot be predicted at -inf),
    labels (B,) int64; on the logits' device. Images whose softmax is undefined are only counted."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"calibration needs logits (B, K) and labels (B,), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    log_probs = torch.log_softmax(logits.double(), dim=1)
    valid = ~log_probs.isnan().any(dim=1)
    log_probs, labels = log_probs[valid], labels[valid]
    conf, pred = torch.softmax(logits[valid].double(), dim=1).max(dim=1)  # K equal logits: exactly 1/K
    nll = (-log_probs.gather(1, labels[:, None]).squeeze(1)).clamp(max=NLL_CAP)
    edges = torch.arange(1, N_BINS, dtype=torch.float64, device=logits.device) / N_BINS
    bins = torch.bucketize(conf, edges)  # right=False: edges[b-1] < conf <= edges[b], Guo's (b/15, (b+1)/15]
    onehot = torch.nn.functional.one_hot(bins, N_BINS)  # (B, 15) int64: integer sums, exact on any device
    per_bin = [onehot.sum(0), (onehot * pred.eq(labels)[:, None]).sum(0), (onehot * _fixed(conf)[:, None]).sum(0)]
    return torch.cat([*per_bin, _fixed(nll).sum()[None], (~valid).sum()[None]]).to(torch.int64)


def _fixed(values: torch.Tensor) -> torch.Tensor:
    return torch.round(values * 2.0 ** SCALE_BITS).to(torch.int64)


def to_record(stat: torch.Tensor | list[int]) -> dict[str, Any]:
    """The file form of a statistic (``CellRecord.calibration``): integer lists, sums in units of 2^-32."""
    s = [int(v) for v in (stat.tolist() if isinstance(stat, torch.Tensor) else stat)]
    if len(s) != WIDTH:
        raise ValueError(f"a calibration statistic has {WIDTH} entries, got {len(s)}")
    return {"bins": N_BINS, "scale_bits": SCALE_BITS, "count": s[_COUNT], "correct": s[_CORRECT],
            "confidence_sum": s[_CONF], "nll_sum": s[_NLL], "nonfinite": s[_NONFINITE]}


def ece(record: dict[str, Any]) -> float | None:
    """ECE as a fraction in [0, 1] from a ``to_record`` dict; None without images or when some image's
    logits had no softmax."""
    n = sum(record["count"])
    if not n or record["nonfinite"]:
        return None
    scale = 2.0 ** record["scale_bits"]
    return sum(abs(correct - conf / scale) for correct, conf in zip(record["correct"], record["confidence_sum"])) / n


def nll(record: dict[str, Any]) -> float | None:
    """Mean NLL in nats from a ``to_record`` dict; None as for ``ece``."""
    n = sum(record["count"])
    if not n or record["nonfinite"]:
        return None
    return record["nll_sum"] / 2.0 ** record["scale_bits"] / n
