"""``ClassifierTrainConfig``: every option of ``train-classifier``, and which of them define the run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from common.run import check_resume_overwrite

KIND = "train-classifier"
# Fields that say where and how a run executes, not what it trains: they may change between reruns.
RUNTIME_FIELDS = ("out", "device", "workers", "progress", "resume", "overwrite", "eval_every")


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Everything ``train_classifier`` needs; these field defaults are the command's only defaults.

    ``data`` None: the built-in generated set; ``out`` None: ``runs/train-classifier-<model>``.
    ``batch_size`` is the global batch: under ``torchrun`` each of the W processes takes ``batch_size / W``
    images per step, so a run's updates do not depend on W. ``mixup``/``cutmix`` are Beta alphas (0
    disables); ``teacher`` (+ ``teacher_weights``) turns on hard distillation and needs a distilled
    ``model``; ``model_kwargs``/``teacher_kwargs`` go to ``pit.create_model`` (e.g. ``{"depth": 4}``).
    ``eval_every``: validate every N epochs (and after the last). ``resume``: continue a run whose options
    differ only in ``epochs`` (to more epochs); ``overwrite``: delete this folder's checkpoint and log and
    start over. ``workers``: DataLoader processes (None: ``common.vocabulary.default_workers()``); ``amp``:
    autocast with the suite's policy (and a gradient scaler where that policy picks float16).
    """

    model: str = "pit_ti"
    data: str | None = None
    out: str | None = None
    epochs: int = 10
    batch_size: int = 64
    img_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    ema_decay: float | None = None
    clip_grad: float | None = None
    weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    teacher_weights: str | None = None
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    eval_every: int = 1
    resume: bool = False
    overwrite: bool = False
    device: str | None = None
    amp: bool = False
    workers: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "img_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or (self.workers is not None and self.workers < 0):
            raise ValueError(f"need --lr > 0 and --workers >= 0, got {self.lr} and {self.workers}")
        if self.uses_mixup() and self.batch_size % 2:
            raise ValueError(f"Mixup/CutMix need an even --batch-size, got {self.batch_size}")
        if self.teacher is None and self.teacher_weights is not None:
            raise ValueError("--teacher-weights given without --teacher")
        check_resume_overwrite(self.resume, self.overwrite)

    def uses_mixup(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def options(self) -> dict[str, Any]:
        """What the run trains (every field except ``RUNTIME_FIELDS``), as plain JSON data."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}

    def per_process_batch(self, world: int) -> int:
        """``batch_size / world``: each process's share of the global batch (a clear error when it does not split)."""
        if self.batch_size % world:
            raise ValueError(f"--batch-size {self.batch_size} is the global batch and must split evenly over the "
                             f"{world} processes: use a multiple of {world}")
        share = self.batch_size // world
        if self.uses_mixup() and share % 2:
            raise ValueError(f"Mixup/CutMix need an even batch on every process, but --batch-size {self.batch_size} "
                             f"over {world} processes gives {share}: use a multiple of {2 * world}")
        return share
