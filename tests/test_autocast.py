"""The suite's mixed-precision policy: which dtype autocast uses, and where autocast is worth turning on."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.autocast import amp_dtype, autocast, fast_autocast
from demo.detection import DetectionRecipe


def _cpu_flags() -> set[str]:
    """The kernel's view of the CPU's features (Linux), independent of torch's own probes."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("/proc/cpuinfo lists no CPU flags")


def test_fast_autocast_on_cpu_follows_native_bfloat16_support():
    flags = _cpu_flags()
    assert fast_autocast("cpu") == bool({"avx512_bf16", "amx_bf16", "amx_tile"} & flags)


def test_fast_autocast_on_other_devices():
    assert fast_autocast("cuda") and fast_autocast(torch.device("cuda", 1))
    assert not fast_autocast("meta")


def test_cpu_autocast_computes_matmuls_in_bfloat16_and_disabled_means_fp32():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    assert amp_dtype("cpu") is torch.bfloat16
    with autocast("cpu"):
        assert (a @ b).dtype is torch.bfloat16
    with autocast("cpu", enabled=False):
        assert (a @ b).dtype is torch.float32


@pytest.mark.parametrize("amp", [True, False])
def test_demo_recipe_asks_for_autocast_only_where_it_is_fast(amp):
    recipe = DetectionRecipe(amp=amp)
    assert recipe.uses_amp("cpu") == (amp and fast_autocast("cpu"))
    assert recipe.train_kwargs(96, "cpu")["amp"] == recipe.uses_amp("cpu")
    assert not recipe.uses_amp("meta")
