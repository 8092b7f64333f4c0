"""The robustness suite's record type: a cell's structured key and its finished result.

A *cell* is one (model, dataset, corruption, severity, variant) and yields exact top-1/top-5 counts.
``CellKey`` has one string form, ``model|dataset|corruption|severity|variant`` with ``None`` for an
absent part (``pit_s|imagenet|None|None|clean``), used in ``cells.jsonl`` and ``results.json``;
``CellKey.parse`` reads it back. ``CellRecord`` is a finished cell; ``to_json`` / ``from_json`` give and
read the file form (accuracies in percent, counts exact; ECE in percent and NLL in nats from the exact
calibration statistic of ``robustness.calibration``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from robustness import calibration

DATASETS = ("imagenet", "imagenet-c", "imagenet-a", "imagenet-r", "imagenet-v2", "imagenet-sketch", "cue-conflict", "in9")


@dataclass(frozen=True)
class CellKey:
    """``dataset``: one of ``DATASETS``; ``variant``: "clean", "real" (ReaL labels), "fgsm", "pgd",
    "occlusion_center", "occlusion_random", or an IN-9 variant / "bg_challenge"; corruption and severity
    only for ImageNet-C."""

    model: str
    dataset: str
    corruption: str | None = None
    severity: int | None = None
    variant: str = "clean"

    def __str__(self) -> str:
        return "|".join(str(part) for part in (self.model, self.dataset, self.corruption, self.severity, self.variant))

    @classmethod
    def parse(cls, text: str) -> "CellKey":
        """The key of ``str(key)`` (a model label may itself hold ``|``: the other four parts are read from the right)."""
        parts = text.rsplit("|", 4)
        if len(parts) != 5:
            raise ValueError(f"not a robustness cell key: {text!r} (expected model|dataset|corruption|severity|variant)")
        model, dataset, corruption, severity, variant = parts
        return cls(model, dataset, None if corruption == "None" else corruption,
                   None if severity == "None" else int(severity), variant)

    @property
    def label(self) -> str:
        """The key for people: its parts without the absent ones (``pit_s imagenet-c fog 3 clean``)."""
        return " ".join(str(p) for p in (self.model, self.dataset, self.corruption, self.severity, self.variant)
                        if p is not None)


@dataclass
class CellRecord:
    """A finished cell. ``n`` images read, ``skipped_files`` {path: [size, mtime_ns]} of unreadable ones;
    ``inputs`` a hash of the file list read; ``options`` what made the number (None: an older version's
    record); ``challenge`` the Background Challenge's statistics (IN-9 only); ``calibration`` the exact
    ECE/NLL statistic (``robustness.calibration.to_record``; None for IN-9, ReaL, cue-conflict and older
    versions' records); ``decisions`` the exact shape and texture decision counts (cue-conflict only:
    ``top1_correct`` is the shape count, no top-5)."""

    key: CellKey
    model_name: str
    n: int
    top1_correct: int
    top5_correct: int | None
    root: str | None = None
    inputs: str | None = None
    options: dict[str, Any] | None = None
    skipped_files: dict[str, Any] = field(default_factory=dict)
    challenge: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    decisions: dict[str, int] | None = None

    @property
    def top1(self) -> float | None:
        return 100.0 * self.top1_correct / self.n if self.n else None

    @property
    def top5(self) -> float | None:
        return 100.0 * self.top5_correct / self.n if self.n and self.top5_correct is not None else None

    @property
    def ece(self) -> float | None:
        """Expected calibration error in percent (15 equal-width bins, Guo et al. 2017)."""
        value = calibration.ece(self.calibration) if self.calibration else None
        return None if value is None else 100.0 * value

    @property
    def nll(self) -> float | None:
        """Mean negative log-likelihood of the true class, in nats."""
        return calibration.nll(self.calibration) if self.calibration else None

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    def to_json(self) -> dict[str, Any]:
        """The file form (one line of ``cells.jsonl``, one entry of ``results.json``'s records)."""
        k = self.key
        out = {"key": str(k), "model": k.model, "dataset": k.dataset, "corruption": k.corruption,
               "severity": k.severity, "variant": k.variant, "model_name": self.model_name, "n": self.n,
               "skipped": self.skipped, "top1_correct": self.top1_correct, "top5_correct": self.top5_correct,
               "top1": self.top1, "top5": self.top5, "root": self.root, "inputs": self.inputs,
               "skipped_files": self.skipped_files, "options": self.options}
        if self.challenge is not None:
            out["challenge"] = self.challenge
        if self.calibration is not None:
            out.update(ece=self.ece, nll=self.nll, calibration=self.calibration)
        if self.decisions is not None:
            out["decisions"] = self.decisions
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CellRecord":
        """A record from its file form (also the records of older versions, which may lack ``options`` or
        ``calibration``)."""
        return cls(CellKey.parse(data["key"]), data.get("model_name", ""), int(data["n"]), int(data["top1_correct"]),
                   data.get("top5_correct"), data.get("root"), data.get("inputs"), data.get("options"),
                   dict(data.get("skipped_files") or {}), data.get("challenge"), calibration=data.get("calibration"),
                   decisions=data.get("decisions"))
