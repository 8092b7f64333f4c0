"""One prepared device check: corruptions on the device vs the CPU, the robustness and detection commands
under ``--amp``, two COCO-C cells, forward throughput and peak GPU memory, in one JSON.

    python benchmarks/gpu_check.py                              # CUDA, ~3 min on one H200
    python benchmarks/gpu_check.py --device cpu --quick         # smoke test of every section, tiny sizes

Each section runs in its own try/except and records status (ok / failed / skipped), seconds, peak GPU
memory (MiB; ``torch.cuda.max_memory_allocated``, reset per section; the command sections report their
child process's peak), numbers and error text. Exit status 1 when any section failed. See docs/gpu.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common.timing import time_call  # noqa: E402
from corruptions import ALL_CORRUPTIONS, corrupt  # noqa: E402

# corruptions that draw no random numbers: the device and the CPU must agree on them
DETERMINISTIC = ("brightness", "contrast", "saturate", "defocus_blur", "gaussian_blur", "zoom_blur", "pixelate",
                 "jpeg_compression")
DETERMINISTIC_MEAN_TOL = 1 / 255  # mean |device - cpu| allowed for a deterministic corruption
TINY_DETECTOR = {"hidden_dim": 32, "nheads": 4, "enc_layers": 1, "dec_layers": 2, "dim_feedforward": 64,
             "num_queries": 6}
PEAK_TAG = "gpu_check peak bytes"
FP16_ENV = "GPU_CHECK_FP16"
# runs eval.py in a child process and prints its peak GPU memory on exit; with GPU_CHECK_FP16 set, the
# suite's mixed-precision policy is made to pick float16 (and so a GradScaler) on CUDA
_CHILD = ("import atexit, os, runpy, sys, torch\n"
          f"if os.environ.get({FP16_ENV!r}):\n"
          "    import common.autocast as policy\n"
          "    base = policy.amp_dtype\n"
          "    policy.amp_dtype = lambda d: torch.float16 if torch.device(d).type == 'cuda' else base(d)\n"
          f"atexit.register(lambda: torch.cuda.is_available() and print({PEAK_TAG!r}, "
          "torch.cuda.max_memory_allocated(), flush=True))\n"
          "sys.argv = ['eval.py', *sys.argv[1:]]\n"
          "runpy.run_path('eval.py', run_name='__main__')\n")


class Skipped(Exception):
    """A section that cannot run in this configuration (reported as skipped, not failed)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_section(name: str, fn: Callable[[], dict], device: torch.device) -> dict:
    """Run one section: ``{"status", "seconds", "peak_gpu_mib", "results" | "error"}``."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        results = fn()
        _sync(device)
        # a command section reports its child process's peak; the others this process's
        peak = results.pop("child_peak_gpu_mib") if "child_peak_gpu_mib" in results else _peak_mib(device)
        record: dict[str, Any] = {"status": "ok", "results": results, "peak_gpu_mib": peak}
    except Skipped as exc:
        record = {"status": "skipped", "error": str(exc), "peak_gpu_mib": None}
    except Exception as exc:  # every failure is recorded, the other sections still run
        record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "peak_gpu_mib": None,
                  "traceback": traceback.format_exc()[-3000:]}
    record["seconds"] = round(time.perf_counter() - start, 2)
    if record["status"] == "ok" and record["results"].get("failures"):
        record["status"] = "failed"
        record["error"] = "; ".join(record["results"]["failures"])
    print(f"[{record['status']:7s}] {name} ({record['seconds']:.1f} s)", flush=True)
    return record


# ---- (1) corruptions: device vs cpu ---------------------------------------------------------------------

def _images(batch: int, size: int) -> torch.Tensor:
    from common.synthetic import draw_classification_batch

    rng = np.random.default_rng(0)
    pixels = draw_classification_batch(rng, np.arange(batch) % 10, size)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


def _compare_one(x: torch.Tensor, name: str, severities: list[int], device: torch.device) -> dict:
    """Max / mean |device - cpu| over the severities (same seeds, each device's own generator)."""
    x_dev = x.to(device)
    worst_max, worst_mean = 0.0, 0.0
    for s in severities:
        ours = corrupt(x_dev, name, s, torch.Generator(device).manual_seed(s))
        ref = corrupt(x, name, s, torch.Generator().manual_seed(s))
        if not bool(torch.isfinite(ours).all()):
            raise FloatingPointError(f"non-finite output at severity {s}")
        diff = (ours.cpu().float() - ref.float()).abs()
        worst_max, worst_mean = max(worst_max, diff.max().item()), max(worst_mean, diff.mean().item())
    g = torch.Generator(device).manual_seed(0)
    seconds = time_call(lambda: corrupt(x_dev, name, 3, g), min_run_time=0.2, warmup=1)
    half = corrupt(x_dev.bfloat16(), name, 3, torch.Generator(device).manual_seed(3))
    if half.dtype != torch.bfloat16 or not bool(torch.isfinite(half).all()):
        raise FloatingPointError(f"bfloat16 input gave {half.dtype} output or non-finite pixels")
    full = corrupt(x_dev.bfloat16().float(), name, 3, torch.Generator(device).manual_seed(3))
    return {"max_abs_diff": worst_max, "mean_abs_diff": worst_mean, "ms_per_image": 1e3 * seconds / len(x),
            "bf16_mean_abs_diff_vs_fp32": (half.float() - full).abs().mean().item(),
            "host_syncs": _host_syncs(lambda: corrupt(x_dev, name, 3, g, check_range=False), device)}


def _host_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """How many device-to-host synchronisations ``fn()`` makes (CUDA's sync debug mode), None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def check_corruptions(device: torch.device, quick: bool) -> dict:
    x = _images(2, 64) if quick else _images(16, 224)
    severities = [3] if quick else [1, 2, 3, 4, 5]
    per, failures = {}, []
    for name in ALL_CORRUPTIONS:
        try:
            per[name] = _compare_one(x, name, severities, device)
        except Exception as exc:
            per[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failures.append(f"{name}: {per[name]['error']}")
            continue
        if name in DETERMINISTIC and per[name]["mean_abs_diff"] > DETERMINISTIC_MEAN_TOL:
            failures.append(f"{name}: mean |{device.type} - cpu| {per[name]['mean_abs_diff'] * 255:.2f}/255")
    random_means = [v["mean_abs_diff"] for k, v in per.items() if k not in DETERMINISTIC and "error" not in v]
    return {"batch": list(x.shape), "severities": severities, "per_corruption": per, "failures": failures,
            "deterministic": list(DETERMINISTIC),
            "random_mean_abs_diff": float(np.mean(random_means)) if random_means else None}


# ---- (2)-(4) the commands, in child processes ----------------------------------------------------------

def run_eval(args: list[str], timeout: float, fp16: bool = False) -> dict:
    """``python eval.py *args`` in a child process (``fp16``: autocast in float16 on CUDA); raises with its
    stderr tail when it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", FP16_ENV: "1" if fp16 else ""}
    cmd = [sys.executable, "-c", _CHILD, *args]
    # its own process group, so that a timeout also ends its DataLoader workers
    child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise TimeoutError(f"`eval.py {' '.join(args)}` ran past {timeout:.0f} s") from exc
    if child.returncode != 0:
        raise RuntimeError(f"`eval.py {' '.join(args)}` exited {child.returncode}: {stderr.strip()[-1500:]}")
    peak = [line.split()[-1] for line in stdout.splitlines() if line.startswith(PEAK_TAG)]
    return {"command": "python eval.py " + " ".join(args), "stdout_tail": stdout.strip()[-600:],
            "child_peak_gpu_mib": int(peak[-1]) / 2**20 if peak else None}


def check_robustness(device: torch.device, quick: bool, work: Path, timeout: float) -> dict:
    out = work / "robustness"
    args = ["robustness", "--model", "pit_ti", "--device", str(device), "--amp", "--corrupt-on-the-fly",
            "--corruptions", "fog", "jpeg_compression", "--severities", "1", "3", "--limit", "16" if quick else "200",
            "--attacks", "fgsm", "--out", str(out), "--no-progress"]
    record = run_eval(args, timeout)
    record["models_in_results_json"] = sorted(json.loads((out / "results.json").read_text()).get("models", {}))
    return record


def _numbers(tree: Any, depth: int = 2) -> Any:
    """The numbers of a results file, a few levels down (lists and strings left out)."""
    if isinstance(tree, dict) and depth > 0:
        kept = {k: _numbers(v, depth - 1) for k, v in tree.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {}}
    return tree if isinstance(tree, (int, float)) else None


def _tiny_detection_data(work: Path) -> list[str]:
    from common import synthetic
    from detection.data import coco_paths

    spec = synthetic.DetectionSpec(num_train=8, num_val=4, img_size=64, max_objects=2)
    paths = coco_paths(synthetic.make_detection(cache=work / "det-data", spec=spec))
    return ["--train-ann", paths["train_ann"], "--train-images", paths["train_images"],
            "--val-ann", paths["val_ann"], "--val-images", paths["val_images"]]


def check_detection_train(device: torch.device, quick: bool, work: Path, timeout: float, arch: str,
                          fp16: bool = False) -> dict:
    """One epoch of ``detection train --amp`` (pit_ti backbone) on the built-in set, or a tiny one with --quick;
    ``fp16``: float16 autocast with a GradScaler instead of the policy's bfloat16 (CUDA only)."""
    if fp16 and device.type != "cuda":
        raise Skipped("float16 autocast with a GradScaler is a CUDA path")
    out = work / f"train-{arch}{'-fp16' if fp16 else ''}"
    args = ["detection", "train", "--backbone", "pit_ti", "--arch", arch, "--epochs", "1", "--batch-size", "4",
            "--amp", "--device", str(device), "--out", str(out), "--no-progress"]
    if quick:
        args += [*_tiny_detection_data(work), "--scales", "96", "--max-size", "128", "--test-size", "96",
                 "--model-kwargs", json.dumps(TINY_DETECTOR)]
    else:
        args += ["--img-scale", "0.4"]
    record = run_eval(args, timeout, fp16)
    record["eval"] = _numbers(json.loads((out / "eval.json").read_text()))
    return record


def check_coco_c(device: torch.device, quick: bool, work: Path, timeout: float) -> dict:
    """Clean + fog severity 1 with the DETR checkpoint the training section wrote."""
    checkpoint = work / "train-detr" / "checkpoint.pth"
    if not checkpoint.is_file():
        raise RuntimeError(f"no checkpoint at {checkpoint}: the detection_train_detr section did not finish")
    out = work / "coco-c"
    args = ["detection", "eval", "--checkpoint", str(checkpoint), "--corruptions", "fog", "--severities", "1",
            "--device", str(device), "--out", str(out), "--no-progress"]
    if quick:
        args += _tiny_detection_data(work)[4:]
    record = run_eval(args, timeout)
    record["coco_c"] = _numbers(json.loads((out / "coco_c.json").read_text()))
    return record


# ---- (5) forward throughput ----------------------------------------------------------------------------

def _images_per_second(model: torch.nn.Module, inputs: tuple, device: torch.device, dtype: torch.dtype | None,
                       min_time: float) -> float:
    def forward() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(*inputs)

    with torch.inference_mode():
        seconds = time_call(forward, min_run_time=min_time, warmup=2 if device.type == "cuda" else 1)
    return inputs[0].shape[0] / seconds


def check_throughput(device: torch.device, quick: bool) -> dict:
    """img/s of pit_s at 224 (batch 64; 2 with --quick) and of DETR / Deformable DETR R50 at 800×1333 batch 1
    (128×160 with --quick), fp32 and bf16 autocast, random weights; peak GPU MiB per model."""
    from detection.build import build_detector
    from pit import create_model

    min_time = 0.1 if quick else 2.0
    h, w = (128, 160) if quick else (800, 1333)
    detector_inputs = (torch.rand(1, 3, h, w), torch.zeros(1, h, w, dtype=torch.bool))  # mask True = padding
    models = {
        "pit_s": (lambda: create_model("pit_s"), (torch.rand(2 if quick else 64, 3, 224, 224),)),
        "detr_r50": (lambda: build_detector("detr", backbone="resnet50", num_classes=91), detector_inputs),
        "deformable_detr_r50": (lambda: build_detector("deformable", backbone="resnet50", num_classes=91),
                                detector_inputs),
    }
    results, failures = {}, []
    for name, (build, inputs) in models.items():
        try:
            model = build().eval().to(device)
            inputs = tuple(t.to(device) for t in inputs)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            results[name] = {dtype: round(_images_per_second(model, inputs, device, amp, min_time), 2)
                             for dtype, amp in (("fp32", None), ("bf16", torch.bfloat16))}
            results[name]["peak_gpu_mib"] = _peak_mib(device)
            results[name]["input"] = list(inputs[0].shape)
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failures.append(f"{name}: {results[name]['error']}")
        finally:
            model = None
    return {**results, "failures": failures}


# ---- driver --------------------------------------------------------------------------------------------

def _environment(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["bf16_native"] = torch.cuda.is_bf16_supported(including_emulation=False)
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu for a smoke test")
    p.add_argument("--quick", action="store_true", help="tiny sizes and sets: every section starts, in a few minutes")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_check.json"), help="the JSON written")
    p.add_argument("--timeout", type=float, default=120, help="seconds allowed to each eval.py child process")
    p.add_argument("--budget", type=float, help="seconds for the whole check: sections that would start later are "
                   "skipped and child processes end by then (default 230; 900 with --quick)")
    args = p.parse_args(argv)
    budget = args.budget or (900 if args.quick else 230)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device} but CUDA is not available here; use --device cpu --quick",
              file=sys.stderr)
        return 2
    report: dict[str, Any] = {"environment": _environment(device), "quick": args.quick, "sections": {}}
    start = time.perf_counter()

    def timeout() -> float:
        return max(1.0, min(args.timeout, budget - (time.perf_counter() - start)))

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        sections: dict[str, Callable[[], dict]] = {
            "corruptions_vs_cpu": lambda: check_corruptions(device, args.quick),
            "robustness_cli": lambda: check_robustness(device, args.quick, work, timeout()),
            "detection_train_detr": lambda: check_detection_train(device, args.quick, work, timeout(), "detr"),
            "detection_train_detr_fp16":
                lambda: check_detection_train(device, args.quick, work, timeout(), "detr", fp16=True),
            "detection_train_deformable":
                lambda: check_detection_train(device, args.quick, work, timeout(), "deformable"),
            "coco_c_cells": lambda: check_coco_c(device, args.quick, work, timeout()),
            "throughput": lambda: check_throughput(device, args.quick),
        }
        for name, fn in sections.items():
            if time.perf_counter() - start > budget:
                fn = _over_budget(budget)
            report["sections"][name] = run_section(name, fn, device)
    report["seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    _print_summary(report)
    print(f"wrote {args.out}")
    return 1 if any(s["status"] == "failed" for s in report["sections"].values()) else 0


def _over_budget(budget: float) -> Callable[[], dict]:
    def skip() -> dict:
        raise Skipped(f"the {budget:.0f} s budget was spent before this section (--budget)")
    return skip


def _print_summary(report: dict) -> None:
    env = report["environment"]
    print(f"\n{env.get('gpu', env['device'])}, torch {env['torch']}, {report['seconds']} s in all")
    for name, s in report["sections"].items():
        peak = f", peak {s['peak_gpu_mib']:.0f} MiB" if s.get("peak_gpu_mib") is not None else ""
        print(f"  {name:28s} {s['status']:7s} {s['seconds']:6.1f} s{peak}  {s.get('error', '')[:200]}")
    corr = report["sections"]["corruptions_vs_cpu"].get("results", {}).get("per_corruption", {})
    for name, r in corr.items():
        if "error" not in r:
            kind = "det" if name in DETERMINISTIC else "rnd"
            print(f"    {name:18s} {kind} max {r['max_abs_diff'] * 255:7.2f}/255 "
                  f"mean {r['mean_abs_diff'] * 255:6.3f}/255 {r['ms_per_image']:8.3f} ms/img  "
                  f"host syncs {r['host_syncs']}")
    for name, r in report["sections"]["throughput"].get("results", {}).items():
        if isinstance(r, dict) and "fp32" in r:
            print(f"    {name:20s} {'x'.join(map(str, r['input'])):16s} fp32 {r['fp32']:9.1f} img/s  "
                  f"bf16 {r['bf16']:9.1f} img/s")


if __name__ == "__main__":
    sys.exit(main())
