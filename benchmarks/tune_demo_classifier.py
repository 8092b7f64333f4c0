"""One tuning run of the demo classifiers' recipe, on the tuning split (never the demo's val images).

    python benchmarks/tune_demo_classifier.py --model pit_ti --kwargs '{"depth": [1, 3, 2]}'
    python benchmarks/tune_demo_classifier.py --model deit_tiny_patch16_224 --kwargs '{"depth": 6}' --epochs 20

The tuning split is ``demo.classifier.tuning_split`` of the demo's generated train images (the default
demo's ``ClassificationSpec``, generated into the cache if missing): the last ``--held-out`` images of every
train class are tuning-val, the rest tuning-train; the demo's ``val/`` is never read. The recipe is
``demo.classifier.ClassifierRecipe`` with the fields given on the command line changed, trained by
``classification.train.train_classifier`` as the demo does. Prints the tuning-val top-1 per epoch, the final
top-1 and the training seconds (on a CPU: wall time on ``--threads`` threads; measure on an idle machine).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from common import synthetic
from common.io import read_jsonl
from demo.classifier import ClassifierRecipe, tuning_split


def main() -> None:
    from classification.train import ClassifierTrainConfig, train_classifier
    from demo.pipeline import DEFAULT_CONFIG

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="pit.create_model name")
    p.add_argument("--kwargs", default="{}", help="model kwargs as JSON, e.g. '{\"depth\": 6}'")
    p.add_argument("--out", default="runs/tune-classifier", help="parent folder of the runs and the split")
    p.add_argument("--cache", default=None, help="synthetic-data cache (default: the demo's)")
    p.add_argument("--held-out", type=int, default=50, help="train images per class held out as tuning-val")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    for f in fields(ClassifierRecipe):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                       help=f"recipe field (default {f.default})")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recipe = replace(ClassifierRecipe(), **{f.name: getattr(args, f.name) for f in fields(ClassifierRecipe)
                                            if getattr(args, f.name) is not None})
    kwargs = json.loads(args.kwargs)
    root = synthetic.make_classification(args.cache, DEFAULT_CONFIG.classification)
    split = tuning_split(root, Path(args.out) / f"split-{root.name}-{args.held_out}", args.held_out)
    tag = "-".join([args.model, *(f"{k}{v}" for k, v in kwargs.items()),
                    *(f"{f.name}{getattr(recipe, f.name)}" for f in fields(ClassifierRecipe))]).replace(" ", "")
    out = Path(args.out) / tag
    started = time.perf_counter()
    result = train_classifier(ClassifierTrainConfig(model=args.model, data=str(split), out=str(out),
                                                    model_kwargs=kwargs, workers=DEFAULT_CONFIG.num_workers, progress=False,
                                                    **recipe.train_kwargs()))
    seconds = time.perf_counter() - started
    curve = [r["top1"] for r in read_jsonl(out / "log.jsonl") if "top1" in r]
    print(json.dumps({"model": args.model, "kwargs": kwargs, "recipe": recipe.train_kwargs(), "threads": args.threads,
                      "tuning_val_top1": result["top1"], "curve": curve, "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
