"""The suite's one mixed-precision policy, for every command and device.

CUDA: bfloat16 where the GPU computes it natively (Ampere and newer), else float16 (with a ``GradScaler`` for training); CPU:
bfloat16; other devices: autocast off. ``enabled=False`` (``--no-amp``) always means full fp32.
"""
from __future__ import annotations

import contextlib

import torch


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None where the suite runs in fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)  # the default counts V100/T4 emulation
        return torch.bfloat16 if native else torch.float16
    if device.type == "cpu":
        return torch.bfloat16
    return None


def fast_autocast(device: torch.device | str) -> bool:
    """True where autocast makes training faster: CUDA, and CPUs that multiply bfloat16 natively
    (AVX512-BF16 or AMX; elsewhere bfloat16 is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's feature probes (torch ≥ 2.3)
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def autocast(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """``torch.autocast`` with the suite's dtype for ``device``; a no-op context when disabled."""
    device = torch.device(device)
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device | str, enabled: bool = True) -> torch.amp.GradScaler:
    """A ``GradScaler`` that is active only when the policy picks float16 (bfloat16 needs none)."""
    device = torch.device(device)
    active = enabled and amp_dtype(device) is torch.float16
    return torch.amp.GradScaler(device.type, enabled=active)
