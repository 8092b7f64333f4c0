"""common.distributed: rank-0 decisions reach every process (also errors, also when rank 1's view of the
disk lags), gather to rank 0 only, the unpadded shard sampler; common.autocast's native-bf16 rule."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common import autocast
from common.distributed import ShardSampler, gather_to_main, get_rank, main_decides
from tests.distributed_helpers import lagging_listing, spawn


def _decide_worker(rank: int, folder: str, out: str) -> None:
    marker = Path(folder) / "checkpoint.pth"
    with lagging_listing(folder):
        own_view = marker.is_file()
        decided = main_decides(marker.is_file)
    try:
        main_decides(lambda: (_ for _ in ()).throw(ValueError("refused on rank 0")))
        error = ""
    except ValueError as err:
        error = str(err)
    gathered = gather_to_main(rank * 10)
    Path(out, f"rank{rank}.txt").write_text(f"{own_view} {decided} {error} {gathered}")


@pytest.mark.distributed
def test_rank0_decides_even_when_rank1_sees_another_listing(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "checkpoint.pth").write_bytes(b"x")
    spawn(_decide_worker, 2, str(folder), str(tmp_path), timeout=120)
    assert (tmp_path / "rank0.txt").read_text() == "True True refused on rank 0 [0, 10]"
    assert (tmp_path / "rank1.txt").read_text() == "False True refused on rank 0 None"


def test_single_process_is_a_passthrough():
    assert main_decides(lambda: 3) == 3 and gather_to_main("a") == ["a"] and get_rank() == 0
    with pytest.raises(KeyError):
        main_decides(lambda: {}["missing"])


def test_shard_sampler_covers_every_index_once():
    class Shard(ShardSampler):
        def __init__(self, n: int, rank: int, world: int) -> None:
            torch.utils.data.DistributedSampler.__init__(self, range(n), num_replicas=world, rank=rank, shuffle=False)

    for n, world in ((7, 2), (7, 3), (2, 3)):
        shards = [list(Shard(n, r, world)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert [len(Shard(n, r, world)) for r in range(world)] == [len(s) for s in shards]


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_amp_uses_bf16_only_where_native(monkeypatch, native, expected):
    calls = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        calls.append(including_emulation)
        return native or including_emulation  # a V100/T4: emulated bf16 only

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert autocast.amp_dtype("cuda") is expected and calls == [False]
    assert autocast.grad_scaler("cpu").is_enabled() is False
