"""A small image-classification trainer built from timm's recipe pieces — ``python eval.py train-classifier``.

Recipe (DeiT-style, scaled down): AdamW (``timm.optim.create_optimizer_v2``) with a per-step cosine
schedule and linear warm-up (``timm.scheduler.CosineLRScheduler``), label smoothing
(``LabelSmoothingCrossEntropy``) or Mixup/CutMix (``timm.data.Mixup`` + ``SoftTargetCrossEntropy``),
optional EMA of the weights (``timm.utils.ModelEmaV3``) and optional DeiT hard distillation from a
teacher for two-head ("distilled") models: ``loss = ½·CE(cls_head, y) + ½·CE(dist_head, argmax teacher)``.

Data: an ImageFolder root with ``train/`` and ``val/`` (class folders, e.g. wnids), read through
``classification.data.ImageFolderSet`` (uint8 decode once, unreadable images skipped with a warning);
without ``--data`` the built-in generated set (``common.synthetic.make_classification``). Every model
takes [0, 1] pixels and normalises inside itself (``pit.NormalizedModel``); the checkpoint holds the
inner model's weights, so ``pit.create_model(name, weights=checkpoint)`` loads it.

Example::

    python eval.py train-classifier --model pit_ti --data DATA --img-size 64 --epochs 10 --out runs/pit_ti

Run folder (``--out``, default ``runs/train-classifier-<model>``), opened by ``common.run.open_run``:
``checkpoint.pth`` (written atomically after every epoch) = ``{"model", "model_ema"?, "optimizer", "scaler",
"epoch", "options", "classes", "val", "history", "partial"?}`` and ``log.jsonl`` (one record per epoch, rewritten
from the checkpoint's history). Running the same command again resumes from the checkpoint (a finished
run is returned as is); other options are refused unless ``--resume`` (continue to more ``--epochs``) or
``--overwrite`` (start over).

Ctrl-C stops after the step in flight and saves the partial epoch (``"partial"``: the steps done, the
running loss and every random stream); the DataLoader workers ignore the signal and are shut down in
order (``common.interrupt``). Resume is exact: every epoch reseeds all random streams from
``(seed, epoch)`` and the process's rank, a partial epoch replays its first batches through the loader (so
the workers' streams advance as before) and restores the saved streams, and evaluation draws from its
own generator, so an interrupted and resumed run ends with bitwise the same weights (with the same
``--workers`` and number of processes).

``torchrun --nproc_per_node W eval.py train-classifier ...`` trains with ``DistributedDataParallel``:
``--batch-size`` stays the global batch (each process takes ``batch_size / W`` images of it, so the updates
are the one-process updates up to float rounding when the augmentation draws no randomness), each process
draws its own augmentations, validation counts every image once over the processes, rank 0 decides
everything read from the disk and alone writes the run folder (``classification.train_loop``,
``classification.checkpointing``). ``--amp``: ``common.autocast`` around forward and loss, with a gradient
scaler (saved in the checkpoint) where the policy picks float16.
"""
from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from classification.checkpointing import done_text, open_run_state, result, write_log
from classification.train_config import KIND, ClassifierTrainConfig
from classification.train_data import check_data
from classification.train_loop import build_session, run_epochs
from common import synthetic
from common.distributed import init_distributed, is_main_process, main_decides
from common.interrupt import StopRequest
from common.options import non_negative_float, open_fraction, positive_float, positive_int
from common.run import say_resumed
from common.rundir import announce, default_out, note
from common.vocabulary import add_shared_flags

__all__ = ["KIND", "ClassifierTrainConfig", "train_classifier", "add_arguments", "main"]


def _resolve_data(config: ClassifierTrainConfig) -> ClassifierTrainConfig:
    """``data`` as an absolute path, checked; without one, the built-in generated set (with a banner saying so).
    Run on rank 0 only (``main_decides``): one process generates the set, and all agree on the data."""
    if config.data is None:
        spec = synthetic.ClassificationSpec()
        root = synthetic.make_classification(None, spec)
        note(f"no --data: training on the built-in generated set ({spec.num_classes} shape/texture classes, "
             f"{spec.train_per_class}/{spec.val_per_class} train/val images per class, {spec.img_size} px, in {root}); "
             "pass --data DIR (an ImageFolder root with train/ and val/) for real data")
        config = replace(config, data=str(root))
    config = replace(config, data=str(Path(config.data).resolve()))
    check_data(Path(config.data))  # before the run folder is claimed
    return config


def _device(config: ClassifierTrainConfig) -> torch.device:
    """This process's device (``--device``, else the best available), after joining a ``torchrun`` group."""
    if config.device and torch.device(config.device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {config.device}: no CUDA GPU is available here; use --device cpu")
    return init_distributed(config.device)


def train_classifier(config: ClassifierTrainConfig) -> dict[str, Any]:
    """Train ``config.model`` and return ``{"top1", "top5", "loss", "top1_ema"?, ..., "epoch", "classes",
    "checkpoint", "out"}`` (accuracies in percent, of the last validation; ``epoch`` counts from 0), on
    every process of a ``torchrun`` job.

    Ctrl-C saves the partial epoch and raises ``KeyboardInterrupt``; the same call again resumes it."""
    device = _device(config)
    config = main_decides(lambda: _resolve_data(config))
    out = Path(config.out) if config.out else main_decides(
        lambda: default_out(KIND, [config.model], KIND, config.options()))
    # The handler is in place before the first line is printed: a Ctrl-C while the run is set up only sets the
    # flag, and the run stops after its first step, all processes together (a KeyboardInterrupt raised inside
    # library set-up code can be swallowed there, e.g. by a finalizer, and the Ctrl-C lost: seen once under load).
    with StopRequest() as stop:
        if is_main_process():
            announce(out)
        run, state = open_run_state(config, out)
        if state is not None:
            say_resumed(run, done_text(state, config.epochs))
            write_log(out, state["history"])  # the log matches the checkpoint, whatever was interrupted
            if state["epoch"] + 1 >= config.epochs and "partial" not in state:
                if is_main_process():
                    print(f"{out} already holds this finished run ({state['epoch'] + 1} epochs): nothing to train",
                          flush=True)
                return result(state, out)
        s = build_session(config, device, state)
        state = run_epochs(s, out, state, stop)
    return result(state, out)


def _default(name: str) -> Any:
    """The config's default for field ``name`` (the CLI shows and uses it, never a copy)."""
    return next(f.default for f in fields(ClassifierTrainConfig) if f.name == name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _default
    add_shared_flags(parser, "models", models=[d("model")])
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="ImageFolder root with train/ and val/ class folders (default: the built-in generated set)")
    add_shared_flags(parser, "out", out_help="run folder: checkpoint.pth, log.jsonl (default: runs/train-classifier-<model>)")
    g = parser.add_argument_group("recipe")
    g.add_argument("--epochs", type=positive_int, default=d("epochs"))
    add_shared_flags(g, "batch_size", batch_size=d("batch_size"),
                     batch_size_help="images per step over all processes (the global batch; each of W processes takes 1/W)")
    g.add_argument("--img-size", type=positive_int, default=d("img_size"), help="square training/eval side in pixels")
    g.add_argument("--lr", type=positive_float, default=d("lr"), help="peak AdamW learning rate (cosine, linear warm-up)")
    g.add_argument("--weight-decay", type=non_negative_float, default=d("weight_decay"))
    g.add_argument("--warmup-epochs", type=non_negative_float, default=d("warmup_epochs"))
    g.add_argument("--min-lr", type=non_negative_float, default=d("min_lr"))
    g.add_argument("--smoothing", dest="label_smoothing", type=open_fraction, default=d("label_smoothing"),
                   help="label smoothing in [0, 1)")
    g.add_argument("--mixup", type=non_negative_float, default=d("mixup"), help="Mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=non_negative_float, default=d("cutmix"), help="CutMix alpha (0 = off)")
    g.add_argument("--ema-decay", type=open_fraction, default=d("ema_decay"), help="keep an EMA of the weights")
    g.add_argument("--clip-grad", type=positive_float, default=d("clip_grad"), help="clip the gradient norm to this")
    add_shared_flags(g, "seed", "amp", seed=d("seed"))
    g = parser.add_argument_group("models")
    g.add_argument("--weights", default=d("weights"), help="initial weights for the model (checkpoint path)")
    g.add_argument("--teacher", default=d("teacher"), help="teacher model: DeiT hard distillation (needs a *_distilled model)")
    g.add_argument("--teacher-weights", default=d("teacher_weights"), help="teacher checkpoint (e.g. this trainer's)")
    g = parser.add_argument_group("run")
    g.add_argument("--eval-every", type=positive_int, default=d("eval_every"), help="validate every N epochs (and last)")
    add_shared_flags(g, "device", "workers", "resume", "overwrite", "progress")


def main(args: argparse.Namespace) -> int:
    if len(args.models) != 1:
        raise ValueError(f"train-classifier trains one model, got {len(args.models)} ({' '.join(args.models)}): "
                         "run it once per --model")
    names = {f.name for f in fields(ClassifierTrainConfig)}
    values = {**vars(args), "model": args.models[0]}
    config = ClassifierTrainConfig(**{k: v for k, v in values.items() if k in names})
    done = train_classifier(config)
    if is_main_process():
        print(f"val top-1 {done['top1']:.2f}  top-5 {done['top5']:.2f}  checkpoint {done['checkpoint']}")
        announce(done["out"], finished=True)
    return 0
