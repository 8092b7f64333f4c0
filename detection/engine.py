"""Training and evaluation of COCO detectors, architecture-agnostic (``detection.build``).

Recipes (image sizes, loss/matcher numbers, detections kept) come from ``detection.presets``;
AdamW, grad-norm clip, StepLR ×0.1 at ``lr_drop``. Multi-GPU / multi-process: ``torchrun --nproc_per_node N eval.py detection
train ...`` (DDP, DistributedSampler; gloo on CPU); the batch size is per process.

A run folder ``out`` holds ``run.json`` (arch, backbone, params, GFLOPs, args), ``log.jsonl``
(one line per epoch: mean losses, lr, eval stats), ``checkpoint.pth`` (written atomically every
epoch on the main process; resume-complete) and ``eval.json``.
"""
from __future__ import annotations

import math
import random
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from detection.build import build_criterion, build_detector, build_postprocessor
from detection.coco_eval import CocoEvaluator
from detection.data import CocoDetection, collate, make_transforms
from detection.presets import ARCH_DEFAULT, get_preset
from common.distributed import all_gather_objects, all_reduce_sum, get_rank, get_world_size, init_distributed, is_distributed, is_main_process
from common.io import append_jsonl, atomic_torch_save, atomic_write_json

PRINTED = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def param_groups(model: nn.Module, lr: float, lr_backbone: float, weight_decay: float) -> list[dict]:
    """``model.param_groups(lr, lr_backbone, weight_decay)`` if the model defines it, else
    ``backbone.*`` at ``lr_backbone`` and everything else at ``lr``."""
    if hasattr(model, "param_groups"):
        return model.param_groups(lr, lr_backbone, weight_decay)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not n.startswith("backbone.")], "lr": lr, "weight_decay": weight_decay},
            {"params": [p for n, p in named if n.startswith("backbone.")], "lr": lr_backbone, "weight_decay": weight_decay}]


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # keys as a tensor: checkpoints stay weights-only loadable
    state = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_device(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]


def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, epoch: int, clip_max_norm: float = 0.1, accum_steps: int = 1,
                    amp: bool = False, scaler: torch.amp.GradScaler | None = None, progress: bool = True) -> dict[str, float]:
    """One pass over ``loader``; returns mean weighted ``loss`` and every unweighted component (all processes)."""
    model.train()
    criterion.train()
    weights = criterion.weight_dict
    sums: dict[str, Tensor] = {}
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not (progress and is_main_process()), dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    for step, (images, mask, targets) in enumerate(bar):
        images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        targets = _to_device(targets, device)
        with _autocast(device, amp):
            outputs = model(images, mask)
        losses = criterion(outputs, targets)
        loss = sum(losses[k] * weights[k] for k in losses if k in weights)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss is {loss.item()} at epoch {epoch} step {step}: lower the lr or disable AMP")
        (scaler.scale(loss / accum_steps) if scaler else loss / accum_steps).backward()
        if (step + 1) % accum_steps == 0 or step + 1 == len(loader):
            if scaler:
                scaler.unscale_(optimizer)
            if clip_max_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        record = {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items() if not k[-1].isdigit()}}
        for k, v in record.items():
            sums[k] = sums.get(k, 0) + v.float()
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in record.items() if k in ("loss", "loss_ce", "loss_bbox", "loss_giou")})
    count = torch.tensor(float(len(loader)), device=device)
    keys = sorted(sums)
    totals = all_reduce_sum(torch.stack([sums[k] for k in keys] + [count]))
    return {k: (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}


@torch.no_grad()
def evaluate(model: nn.Module, postprocessor: nn.Module, loader: DataLoader, evaluator: CocoEvaluator,
             device: torch.device, *, amp: bool = False, progress: bool = True) -> tuple[dict, dict[int, dict]]:
    """COCO bbox metrics over ``loader`` (gathered across processes) plus ``fps``/``latency_ms`` of the
    whole detector (forward + post-processing, per image). Returns (stats, this process's predictions)."""
    model.eval()
    predictions: dict[int, dict] = {}
    seconds, images_seen = 0.0, 0
    for images, mask, targets in tqdm(loader, desc="eval", disable=not (progress and is_main_process()), dynamic_ncols=True):
        images, mask = images.to(device), mask.to(device)
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with _autocast(device, amp):
            outputs = model(images, mask)
        results = postprocessor(outputs, sizes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        images_seen += len(images)
        batch = {t["image_id"]: {k: v.cpu() for k, v in r.items()} for t, r in zip(targets, results)}
        evaluator.update(batch)
        predictions.update(batch)
    evaluator.synchronize()
    stats = evaluator.summarize()
    fps = images_seen / seconds if seconds > 0 else 0.0
    stats.update(fps=fps, latency_ms=1000.0 / fps if fps else 0.0)
    return stats, predictions


def _loader(dataset: CocoDetection, batch_size: int, num_workers: int, train: bool, seed: int) -> DataLoader:
    sampler = DistributedSampler(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=train, seed=seed,
                                 drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def count_gflops(model: nn.Module, size: tuple[int, int]) -> float:
    """GMACs ("GFLOPs" in the DETR papers' sense) of one forward on a (3, *size) image."""
    from pit.flops import count_macs

    class _Single(nn.Module):
        def __init__(self, detector: nn.Module) -> None:
            super().__init__()
            self.detector = detector

        def forward(self, x: Tensor) -> dict:
            return self.detector(x, torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool, device=x.device))

    return count_macs(_Single(model), (3, *size)) / 1e9


def load_state_dropping_mismatched(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Load ``state`` into ``model``, dropping (with a warning) keys whose shapes differ (a new class head)."""
    own = model.state_dict()
    dropped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if dropped:
        warnings.warn(f"dropped parameters with mismatched shapes (re-initialised): {dropped}", stacklevel=2)
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=False)
    if unexpected or [k for k in missing if k not in dropped]:
        raise ValueError(f"checkpoint does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return dropped


def load_checkpoint(path: str) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "backbone" not in ckpt:
        raise ValueError(f"{path} is not a detection checkpoint written by detection.engine")
    return ckpt


def _finetune_state(path: str, arch: str, backbone: str) -> dict[str, Tensor]:
    """The weights of any detector ``load_detector`` reads (suite, official, Hugging Face), checked to be ``arch`` over ``backbone``."""
    from detection.official import load_detector

    loaded = load_detector(path)
    config = loaded.config
    if (config["arch"], config["backbone"]) != (arch, backbone):
        raise ValueError(f"--finetune {path} is {config['arch']} over {config['backbone']}: pass --arch {config['arch']} "
                         f"--backbone {config['backbone']}")
    return loaded.model.state_dict()


def _check_compatible(ckpt: dict, path: str, *, arch: str, backbone: str, num_classes: int, cat_ids: list[int]) -> None:
    if ckpt.get("arch", "detr") != arch:
        raise ValueError(f"checkpoint {path} is for --arch {ckpt.get('arch')}, not {arch}")
    if ckpt["backbone"] != backbone:
        raise ValueError(f"checkpoint {path} is for backbone {ckpt['backbone']!r}, not {backbone!r}: pass --backbone "
                         f"{ckpt['backbone']} or start a new run")
    if ckpt["num_classes"] != num_classes or list(ckpt.get("cat_ids", cat_ids)) != list(cat_ids):
        raise ValueError(f"checkpoint {path} has num_classes={ckpt['num_classes']} (category ids {ckpt.get('cat_ids')}) "
                         f"but the dataset has {num_classes} ({cat_ids}): use --finetune to start from it with a new head")


def train_detector(*, backbone: str, train_ann: str, train_images: str, val_ann: str, val_images: str, out: str,
                   arch: str = "detr", backbone_weights: str | None = None, epochs: int = 50, batch_size: int = 2,
                   lr: float = 1e-4, lr_backbone: float = 1e-5, weight_decay: float = 1e-4, clip_max_norm: float = 0.1,
                   lr_drop: int | None = None, scales: list[int] | None = None, max_size: int | None = None,
                   test_size: int | None = None, img_scale: float = 1.0, amp: bool = False, accum_steps: int = 1,
                   device: str | None = None, num_workers: int = 2, resume: str | None = None, seed: int = 42,
                   eval_every: int = 1, progress: bool = True, model_kwargs: dict | None = None,
                   finetune: str | None = None, augment: bool = True, gflops_size: tuple[int, int] | None = None,
                   preset: str | None = None, label_space: str = "contiguous") -> dict:
    """Train ``arch`` over ``backbone`` on a COCO-format set, evaluating on the val set; returns the final
    eval stats (see :func:`evaluate`). ``resume`` continues a run exactly; ``finetune`` starts from a
    checkpoint's weights with mismatched heads dropped (optimizer state not restored). ``augment=False``
    trains on the test transform (for overfitting checks and debugging). ``preset`` (default: the
    official recipe of ``arch``) supplies the image sizes, loss/matcher numbers and ``num_select``;
    ``label_space`` "coco-ids" makes head rows COCO category ids (as the official heads), "contiguous" 0..K-1."""
    if accum_steps < 1 or epochs < 0 or batch_size < 1:
        raise ValueError("accum_steps and batch_size must be ≥ 1 and epochs ≥ 0")
    if resume and finetune:
        raise ValueError("--resume and --finetune are exclusive: resume continues a run, finetune starts a new one")
    args = {k: v for k, v in locals().items() if k != "device"}
    device = init_distributed(device)
    if amp and device.type != "cuda":
        warnings.warn("AMP is for GPUs: training in float32 on the CPU", stacklevel=2)
        amp = False
    torch.manual_seed(seed + get_rank())
    np.random.seed(seed + get_rank())
    random.seed(seed + get_rank())
    model_kwargs = dict(model_kwargs or {})
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = get_preset(preset or ARCH_DEFAULT[arch])
    sizes = dict(sizes=recipe.sizes, scales=scales, max_size=max_size, test_size=test_size, img_scale=img_scale)
    if recipe.arch != arch:
        raise ValueError(f"--preset {preset} is a {recipe.arch} recipe, not {arch}")
    train_set = CocoDetection(train_ann, train_images, make_transforms(augment, **sizes), label_space=label_space)
    val_set = CocoDetection(val_ann, val_images, make_transforms(False, **sizes), label_space=label_space)
    if val_set.cat_ids != train_set.cat_ids:
        raise ValueError(f"train and val category ids differ: {train_set.cat_ids} vs {val_set.cat_ids}")
    num_classes = train_set.num_classes
    model = build_detector(arch, backbone=backbone, num_classes=num_classes, backbone_weights=backbone_weights,
                           **model_kwargs).to(device)
    criterion = build_criterion(arch, num_classes=num_classes, model_kwargs=model_kwargs, **recipe.criterion_kwargs).to(device)
    postprocessor = build_postprocessor(arch, recipe.num_select)
    optimizer = torch.optim.AdamW(param_groups(model, lr, lr_backbone, weight_decay), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_drop or 10**9, gamma=0.1)
    scaler = torch.amp.GradScaler(device.type) if amp and not torch.cuda.is_bf16_supported() else None
    start_epoch, history = 0, []
    if resume:
        ckpt = load_checkpoint(resume)
        _check_compatible(ckpt, resume, arch=arch, backbone=backbone, num_classes=num_classes, cat_ids=train_set.cat_ids)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = ckpt["epoch"] + 1
        _set_rng_state(ckpt["rng"][get_rank()] if isinstance(ckpt["rng"], list) and get_rank() < len(ckpt["rng"]) else ckpt["rng"][0])
    elif finetune:
        load_state_dropping_mismatched(model, _finetune_state(finetune, arch, backbone))
    if is_main_process() and not resume:
        size = gflops_size or (make_transforms(False, **sizes).transforms[-1].sizes[0],) * 2
        atomic_write_json(out_dir / "run.json", {
            "arch": arch, "backbone": backbone, "num_classes": num_classes, "category_names": train_set.category_names,
            "params": sum(p.numel() for p in model.parameters()), "gflops": count_gflops(model, tuple(size)),
            "gflops_size": list(size), "args": args})
    train_model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if is_distributed() else model
    train_loader = _loader(train_set, batch_size, num_workers, True, seed)
    val_loader = _loader(val_set, batch_size, num_workers, False, seed)
    stats: dict = {}
    for epoch in range(start_epoch, epochs):
        train_loader.sampler.set_epoch(epoch)
        train_stats = train_one_epoch(train_model, criterion, train_loader, optimizer, device, epoch=epoch,
                                      clip_max_norm=clip_max_norm, accum_steps=accum_steps, amp=amp, scaler=scaler,
                                      progress=progress)
        scheduler.step()
        rng = all_gather_objects(_rng_state())  # before evaluation, whose loader draws from the RNG
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **{f"train_{k}": v for k, v in train_stats.items()}}
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            stats, _ = evaluate(model, postprocessor, val_loader, CocoEvaluator(val_set.coco, val_set.cat_ids), device,
                                amp=amp, progress=progress)
            record.update({k: stats[k] for k in PRINTED}, fps=stats["fps"])
        if is_main_process():
            append_jsonl(out_dir / "log.jsonl", record)
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                               "epoch": epoch, "rng": rng, "args": args, "arch": arch, "backbone": backbone,
                               "num_classes": num_classes, "cat_ids": train_set.cat_ids,
                               "category_names": train_set.category_names, "model_kwargs": model_kwargs},
                              out_dir / "checkpoint.pth")
    if not stats:
        stats, _ = evaluate(model, postprocessor, val_loader, CocoEvaluator(val_set.coco, val_set.cat_ids), device,
                            amp=amp, progress=progress)
    if is_main_process():
        atomic_write_json(out_dir / "eval.json", {k: v for k, v in stats.items() if k != "summary"})
        print(stats["summary"] + "  ".join(f"{k} {100 * stats[k]:.1f}" for k in PRINTED) + f"  fps {stats['fps']:.1f}")
    return stats


def evaluate_checkpoint(checkpoint: str, val_ann: str, val_images: str, out: str, *, device: str | None = None,
                        batch_size: int = 2, num_workers: int = 2, save_vis: int = 0, progress: bool = True) -> dict:
    """Evaluate a detector (any ``detection.load_detector`` format: suite, official DETR / Deformable DETR .pth,
    Hugging Face folder) on a COCO-format set; writes ``eval.json`` (+ ``vis/*.png``) under ``out``."""
    from detection.official import load_detector

    device = init_distributed(device)
    loaded = load_detector(checkpoint, device=str(device))
    rows_are_ids = loaded.cat_ids == list(range(len(loaded.cat_ids)))
    val_set = CocoDetection(val_ann, val_images, make_transforms(False, loaded.sizes),
                            label_space="coco-ids" if rows_are_ids else "contiguous")
    unknown = sorted(set(val_set.coco.getCatIds()) - set(loaded.cat_ids))
    if unknown:
        raise ValueError(f"checkpoint {checkpoint} ({loaded.source}) was trained on category ids {loaded.cat_ids} but "
                         f"{val_ann} also has {unknown}: evaluate on the dataset it was trained on")
    stats, predictions = evaluate(loaded.model, loaded.postprocessor, _loader(val_set, batch_size, num_workers, False, 0),
                                  CocoEvaluator(val_set.coco, loaded.cat_ids), device, progress=progress)
    out_dir = Path(out)
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "eval.json", {k: v for k, v in stats.items() if k != "summary"})
        print(stats["summary"] + "  ".join(f"{k} {100 * stats[k]:.1f}" for k in PRINTED) + f"  fps {stats['fps']:.1f}")
    if save_vis > 0:
        from detection.visualize import save_visualizations

        save_visualizations(val_set, predictions, out_dir / "vis", save_vis)
    return stats
