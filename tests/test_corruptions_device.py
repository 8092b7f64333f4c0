"""The corruptions do nothing that only works on a CPU: no host sync per batch (counted through
``__torch_function__``, which sees every ``.item()``/``.tolist()``/``nonzero``/``bool()``/``.cpu()`` a call
makes) and half-precision batches."""
import collections

import pytest
import torch
from torch.overrides import TorchFunctionMode

from corruptions import ALL_CORRUPTIONS, corrupt

SYNCS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.__bool__,
         torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.cpu, torch.Tensor.numpy,
         torch.Tensor.any, torch.Tensor.all, torch.argwhere, torch.masked_select, torch.unique, torch.equal}


class HostSyncs(TorchFunctionMode):
    """Counts the calls that make a CUDA device wait for the host to read a value (or copy data to it)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNCS:
            self.calls[func.__name__] += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("severity", [1, 4])
@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_no_host_sync_per_batch(name, severity):
    """After the first call (which builds and caches size-dependent matrices on the CPU), a batch costs no
    host sync; jpeg_compression copies the batch to its CPU codec exactly once; spatter's Canny hysteresis
    (severities 1-3) grows until nothing changes, which only a comparison read on the host can tell."""
    x = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    corrupt(x, name, severity, generator=generators, check_range=False)  # warm the caches
    with HostSyncs() as counter:
        corrupt(x, name, severity, generator=generators, check_range=False)
    if name == "spatter" and severity <= 3:
        assert set(counter.calls) == {"equal"}
        return
    expected = {"cpu": 1, "numpy": 1} if name == "jpeg_compression" else {}  # numpy: of the CPU copy
    assert dict(counter.calls) == expected


def test_the_range_check_is_one_sync():
    x = torch.rand(2, 3, 16, 16)
    with HostSyncs() as counter:
        corrupt(x, "contrast", 1)
    assert dict(counter.calls) == {"__bool__": 1}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corrupt(x * 2, "contrast", 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_half_precision_batches_are_corrupted_in_float32(name, dtype):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    out = corrupt(x, name, 3, generator=gens())
    assert out.dtype == dtype
    reference = corrupt(x.float(), name, 3, generator=gens()).to(dtype)
    assert torch.equal(out, reference)
