"""A small image-classification trainer built from timm's recipe pieces — ``python eval.py train-classifier``.

Recipe (DeiT-style, scaled down): AdamW (``timm.optim.create_optimizer_v2``) with a per-step cosine
schedule and linear warm-up (``timm.scheduler.CosineLRScheduler``), label smoothing
(``LabelSmoothingCrossEntropy``) or Mixup/CutMix (``timm.data.Mixup`` + ``SoftTargetCrossEntropy``),
optional EMA of the weights (``timm.utils.ModelEmaV3``) and optional DeiT hard distillation from a
teacher for two-head ("distilled") models: ``loss = ½·CE(cls_head, y) + ½·CE(dist_head, argmax teacher)``.

Data: an ImageFolder root with ``train/`` and ``val/`` (class folders, e.g. wnids). Models come from
``pit.create_model`` (any PiT or timm name) and take normalised input; the mean/std are the model's
``pretrained_cfg`` ones, so a checkpoint written here evaluates correctly through ``pit.NormalizedModel``.

Example::

    python eval.py train-classifier --model pit_ti --data DATA --img-size 64 --epochs 10 --out runs/pit_ti

The checkpoint (``OUT/checkpoint.pth``, written atomically after every epoch) is
``{"model": state_dict, "model_ema"?, "optimizer", "scheduler", "epoch", "args", "classes", "val"}``;
``--resume`` continues from it, and a finished run is returned without retraining.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3, accuracy
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2
from tqdm import tqdm

import pit
from common.distributed import default_device
from common.io import append_jsonl, atomic_torch_save

CHECKPOINT_NAME = "checkpoint.pth"
# Arguments that must agree between a checkpoint and a resumed run (others, e.g. num_workers, may change).
_RESUME_KEYS = ("model", "data", "img_size", "epochs", "batch_size", "lr", "mixup", "cutmix", "label_smoothing",
                "teacher", "model_kwargs", "seed")


def build_loaders(data: str | os.PathLike, img_size: int, batch_size: int, mean, std, num_workers: int,
                  seed: int) -> tuple[DataLoader, DataLoader, list[str]]:
    """Train/val DataLoaders over ``data/train`` and ``data/val`` (normalised float tensors, B×3×img_size×img_size)."""
    root = Path(data)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root / split} not found: --data must be an ImageFolder root with train/ and val/ "
                                    "class folders (e.g. made by common.synthetic.make_classification)")
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    train_tf = v2.Compose([v2.PILToTensor(), v2.RGB(), v2.RandomResizedCrop(img_size, scale=(0.5, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), *normalise])
    val_tf = v2.Compose([v2.PILToTensor(), v2.RGB(), v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size),
                         *normalise])
    train_set = datasets.ImageFolder(str(root / "train"), transform=train_tf)
    val_set = datasets.ImageFolder(str(root / "val"), transform=val_tf)
    if train_set.classes != val_set.classes:
        raise ValueError(f"train/ and val/ of {root} have different class folders")
    if len(train_set) < batch_size:
        raise ValueError(f"{root / 'train'} has {len(train_set)} images, fewer than one batch of {batch_size}: "
                         "lower --batch-size")
    generator = torch.Generator().manual_seed(seed)
    common = {"num_workers": num_workers, "persistent_workers": num_workers > 0, "pin_memory": torch.cuda.is_available()}
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator, **common)
    val_loader = DataLoader(val_set, batch_size=batch_size * 2, shuffle=False, **common)
    return train_loader, val_loader, train_set.classes


class DistillationLoss(nn.Module):
    """DeiT hard distillation: ½·base(cls_logits, targets) + ½·CE(dist_logits, argmax teacher(images))."""

    def __init__(self, base: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.teacher = teacher.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor, outputs, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, tuple):
            raise ValueError("distillation needs a two-head model (e.g. pit_ti_distilled, deit_tiny_distilled_patch16_224)")
        cls_logits, dist_logits = outputs
        with torch.no_grad():
            teacher_labels = self.teacher(images).argmax(dim=1)
        return 0.5 * self.base(cls_logits, targets) + 0.5 * F.cross_entropy(dist_logits, teacher_labels)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) and mean cross-entropy over ``loader``; restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    top1 = top5 = loss = 0.0
    count = 0
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(images)
        acc1, acc5 = accuracy(logits, targets, topk=(1, min(5, logits.shape[1])))
        n = images.shape[0]
        top1 += acc1.item() * n
        top5 += acc5.item() * n
        loss += F.cross_entropy(logits, targets, reduction="sum").item()
        count += n
    model.train(was_training)
    return {"top1": top1 / count, "top5": top5 / count, "loss": loss / count}


def _load_resume(path: Path, args: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    changed = [k for k in _RESUME_KEYS if checkpoint.get("args", {}).get(k) != args.get(k)]
    if changed:
        raise ValueError(f"{path} was written with different settings ({', '.join(changed)}): "
                         "use a new --out folder, or drop --resume to start over")
    return checkpoint


def train_classifier(*, model: str, data: str | os.PathLike, out: str | os.PathLike, epochs: int = 10,
                     batch_size: int = 64, img_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.05,
                     warmup_epochs: float = 1.0, min_lr: float = 1e-5, label_smoothing: float = 0.1,
                     mixup: float = 0.0, cutmix: float = 0.0, ema_decay: float | None = None,
                     teacher: str | None = None, teacher_weights: str | None = None,
                     teacher_kwargs: dict[str, Any] | None = None, weights: str | None = None,
                     model_kwargs: dict[str, Any] | None = None, clip_grad: float | None = None,
                     num_workers: int = 2, seed: int = 0, resume: bool = False,
                     device: str | torch.device | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``model`` on the ImageFolder ``data`` and return ``{"top1", "top5", "top1_ema"?, "checkpoint", ...}``.

    ``top1``/``top5`` are the final validation accuracies in percent. ``mixup``/``cutmix`` are the
    Beta alphas (0 disables); ``teacher`` (+ ``teacher_weights``) turns on hard distillation and
    needs a distilled ``model``; ``model_kwargs`` / ``teacher_kwargs`` go to ``pit.create_model``
    (e.g. ``{"depth": 4}``).
    With ``resume`` an existing ``out/checkpoint.pth`` is continued (a finished one is returned as is).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if (mixup > 0 or cutmix > 0) and batch_size % 2:
        raise ValueError(f"Mixup/CutMix need an even batch size, got {batch_size}")
    if teacher is None and teacher_weights is not None:
        raise ValueError("--teacher-weights given without --teacher")
    model_kwargs = dict(model_kwargs or {})
    device = torch.device(device) if device is not None else default_device()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    run_args = {"model": model, "data": str(data), "img_size": img_size, "epochs": epochs, "batch_size": batch_size,
                "lr": lr, "weight_decay": weight_decay, "warmup_epochs": warmup_epochs, "min_lr": min_lr,
                "label_smoothing": label_smoothing, "mixup": mixup, "cutmix": cutmix, "ema_decay": ema_decay,
                "teacher": teacher, "teacher_weights": teacher_weights, "teacher_kwargs": teacher_kwargs, "weights": weights,
                "model_kwargs": model_kwargs,
                "clip_grad": clip_grad, "seed": seed}
    state = _load_resume(ckpt_path, run_args) if resume else None
    if state is not None and state["epoch"] + 1 >= epochs:
        return _result(state, ckpt_path)

    train_dir = Path(data) / "train"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"{train_dir} not found: --data must be an ImageFolder root with train/ and val/ "
                                "class folders (e.g. made by common.synthetic.make_classification)")
    num_classes = len(datasets.folder.find_classes(str(train_dir))[0])
    torch.manual_seed(seed)
    net = pit.create_model(model, weights=weights, num_classes=num_classes, img_size=img_size, **model_kwargs)
    cfg = net.pretrained_cfg or {}
    mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    train_loader, val_loader, classes = build_loaders(data, img_size, batch_size, mean, std, num_workers, seed)
    if hasattr(net, "set_distilled_training"):
        net.set_distilled_training(True)
    net.to(device).train()

    mixup_fn = None
    if mixup > 0 or cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=len(classes))
        base_loss: nn.Module = SoftTargetCrossEntropy()
    elif label_smoothing > 0:
        base_loss = LabelSmoothingCrossEntropy(smoothing=label_smoothing)
    else:
        base_loss = nn.CrossEntropyLoss()
    distill = None
    if teacher is not None:
        teacher_net = pit.create_model(teacher, weights=teacher_weights, num_classes=len(classes), img_size=img_size,
                                       **(teacher_kwargs or {}))
        distill = DistillationLoss(base_loss, teacher_net.to(device))

    optimizer = create_optimizer_v2(net, opt="adamw", lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = CosineLRScheduler(optimizer, t_initial=epochs * steps_per_epoch, lr_min=min_lr,
                                  warmup_t=int(warmup_epochs * steps_per_epoch), warmup_lr_init=lr * 0.01,
                                  warmup_prefix=True, t_in_epochs=False)
    ema = ModelEmaV3(net, decay=ema_decay) if ema_decay else None
    start_epoch = 0
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and "model_ema" in state:
            ema.module.load_state_dict(state["model_ema"])
        start_epoch = state["epoch"] + 1

    log_path = out / "log.jsonl"
    for epoch in range(start_epoch, epochs):
        train_loader.generator.manual_seed(seed + epoch)  # the same batches whether or not the run was resumed
        torch.manual_seed(seed + 1000 + epoch)
        started = time.perf_counter()
        total_loss = 0.0
        bar = tqdm(train_loader, desc=f"{model} epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for step, (images, targets) in enumerate(bar):
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            loss_targets = targets
            if mixup_fn is not None:
                images, loss_targets = mixup_fn(images, targets)
            outputs = net(images)
            if distill is not None:
                loss = distill(images, outputs, loss_targets)
            elif isinstance(outputs, tuple):  # a two-head model trained without a teacher: both heads on the labels
                loss = sum(base_loss(o, loss_targets) for o in outputs) / len(outputs)
            else:
                loss = base_loss(outputs, loss_targets)
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step}: lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
            optimizer.step()
            num_updates = epoch * steps_per_epoch + step + 1
            scheduler.step_update(num_updates)
            if ema is not None:
                ema.update(net, step=num_updates)
            total_loss += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        val = evaluate(net, val_loader, device)
        if ema is not None:
            val.update({f"{k}_ema": v for k, v in evaluate(ema.module, val_loader, device).items()})
        record = {"epoch": epoch, "train_loss": total_loss / steps_per_epoch, "seconds": time.perf_counter() - started, **val}
        append_jsonl(log_path, record)
        tqdm.write(f"{model} epoch {epoch + 1}/{epochs}: loss {record['train_loss']:.3f}  val top-1 {val['top1']:.2f}"
                   + (f"  (EMA {val['top1_ema']:.2f})" if ema is not None else ""))
        sys.stdout.flush()  # epoch lines show up at once when the output goes to a file or pipe
        state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "epoch": epoch, "args": run_args, "classes": classes, "val": val}
        if ema is not None:
            state["model_ema"] = ema.module.state_dict()
        atomic_torch_save(state, ckpt_path)
    return _result(state, ckpt_path)


def _result(state: dict[str, Any], path: Path) -> dict[str, Any]:
    return {**state["val"], "epoch": state["epoch"], "classes": state["classes"], "checkpoint": str(path)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name: pit_ti ... pit_b(_distilled) or any timm name")
    parser.add_argument("--data", required=True, help="ImageFolder root with train/ and val/ class folders")
    parser.add_argument("--out", required=True, help="output folder (checkpoint.pth, log.jsonl)")
    g = parser.add_argument_group("recipe")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--img-size", type=int, default=64, help="square training/eval resolution in pixels")
    g.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (cosine decay, linear warm-up)")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--warmup-epochs", type=float, default=1.0)
    g.add_argument("--min-lr", type=float, default=1e-5)
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--mixup", type=float, default=0.0, help="Mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha (0 = off)")
    g.add_argument("--ema-decay", type=float, default=None, help="keep an EMA of the weights with this decay")
    g.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value")
    g = parser.add_argument_group("models")
    g.add_argument("--weights", default=None, help="initial weights for the model (checkpoint path)")
    g.add_argument("--teacher", default=None, help="teacher model name: DeiT hard distillation (needs a *_distilled model)")
    g.add_argument("--teacher-weights", default=None, help="teacher checkpoint (e.g. a checkpoint.pth from this trainer)")
    g = parser.add_argument_group("run")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    g.add_argument("--num-workers", type=int, default=2)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pth")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    result = train_classifier(model=args.model, data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
                              img_size=args.img_size, lr=args.lr, weight_decay=args.weight_decay,
                              warmup_epochs=args.warmup_epochs, min_lr=args.min_lr, label_smoothing=args.smoothing,
                              mixup=args.mixup, cutmix=args.cutmix, ema_decay=args.ema_decay, teacher=args.teacher,
                              teacher_weights=args.teacher_weights, weights=args.weights, clip_grad=args.clip_grad,
                              num_workers=args.num_workers, seed=args.seed, resume=args.resume, device=args.device,
                              progress=not args.no_progress)
    print(f"val top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  checkpoint {result['checkpoint']}")
    return 0
