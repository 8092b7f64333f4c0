"""Bad weights and model names through the CLI: exit 2, one ``error:`` line naming the file, no traceback.

Each case writes a weights file F (or names a missing one) and runs ``bench --models pit_ti --weights F``
and, for a subset, ``robustness --model pit_ti --weights F`` on a tiny generated ImageFolder. The table
is docs/reliability.md's "Models and weights" matrix.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import timm
import torch
from safetensors.torch import save_file

import pit
from common.synthetic import ClassificationSpec, make_classification
from tests.cli_helpers import assert_one_line_error

MARKER = "ran_code"


class _RunsCode:
    """Unpickling this would create ``marker``: the payload of a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _pit_ti() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return pit.create_model("pit_ti").state_dict()


def _poisoned(value: float) -> dict[str, torch.Tensor]:
    sd = _pit_ti()
    sd["transformers.2.blocks.3.attn.qkv.weight"][5, 7] = value
    return sd


def _zeros_of(name: str) -> dict[str, torch.Tensor]:
    """A state dict of ``name``'s keys and shapes (timm's own model, built on the meta device)."""
    with torch.device("meta"):
        shapes = timm.create_model(name).state_dict()
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}


def _truncated(path: Path) -> None:
    torch.save(_pit_ti(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


# case id -> (file name, writer(path), expected words in the one error line)
CASES: dict[str, tuple[str, Callable[[Path], None], tuple[str, ...]]] = {
    "missing": ("absent.pth", lambda p: None, ("absent.pth", "does not exist")),
    "empty": ("empty.pth", lambda p: p.write_bytes(b""), ("empty.pth", "is empty")),
    "random-bytes": ("random.pth", lambda p: p.write_bytes(bytes(range(256)) * 64), ("random.pth", "not a pytorch checkpoint")),
    "text": ("notes.pth", lambda p: p.write_text("weights are on the shared drive"), ("notes.pth", "not a pytorch checkpoint")),
    "truncated": ("cut.pth", _truncated, ("cut.pth", "truncated")),
    "malicious-pickle": ("evil.pth", lambda p: torch.save({"model": _pit_ti(), "x": _RunsCode(p.parent / MARKER)}, p),
                         ("evil.pth", "could run code", "refused")),
    "nan": ("nan.pth", lambda p: torch.save(_poisoned(float("nan")), p), ("nan.pth", "nan or inf", "refused")),
    "inf-in-container": ("inf.pth", lambda p: torch.save({"model": _poisoned(float("inf")), "epoch": 9}, p),
                         ("inf.pth", "nan or inf")),
    "nan-safetensors": ("nan.safetensors", lambda p: save_file(_poisoned(float("-inf")), p),
                        ("nan.safetensors", "nan or inf")),
    "other-architecture": ("deit.pth", lambda p: torch.save(_zeros_of("deit_tiny_patch16_224"), p),
                           ("deit.pth", "do not fit model 'pit_ti'", "looks like 'deit_tiny_patch16_224'")),
    "other-pit-variant": ("distilled.pth", lambda p: torch.save(_zeros_of("pit_ti_distilled"), p),
                          ("distilled.pth", "cls_token", "looks like 'pit_ti_distilled'")),
    "folder": ("weights_dir", lambda p: p.mkdir(), ("weights_dir", "is a folder")),
    "safetensors-garbage": ("junk.safetensors", lambda p: p.write_bytes(b"\xff" * 512),
                            ("junk.safetensors", "not a readable safetensors file")),
    "no-tensors": ("meta.pth", lambda p: torch.save({"epoch": 3, "args": {"lr": 0.1}}, p), ("meta.pth", "no state dict")),
}
ROBUSTNESS_CASES = ("missing", "truncated", "malicious-pickle", "nan", "other-architecture", "folder")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    spec = ClassificationSpec(num_classes=2, train_per_class=1, val_per_class=2, img_size=32)
    return make_classification(tmp_path_factory.mktemp("synthetic"), spec) / "val"


def _weights(tmp_path: Path, case: str) -> Path:
    """Write case ``case``'s file under ``tmp_path`` and return its path."""
    name, write, _ = CASES[case]
    path = tmp_path / name
    write(path)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_bench_weights(tmp_path, case):
    path = _weights(tmp_path, case)
    assert_one_line_error(["bench", "--models", "pit_ti", "--weights", str(path), "--warmup", "0",
                           "--batch-size", "1", "--device", "cpu"], 2, *CASES[case][2])
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("case", ROBUSTNESS_CASES)
def test_robustness_weights(tmp_path, data, case):
    path = _weights(tmp_path, case)
    assert_one_line_error(["robustness", "--model", "pit_ti", "--weights", str(path), "--data", str(data),
                           "--class-map", "folder", "--out", str(tmp_path / "out"), "--limit", "2", "--workers", "0",
                           "--device", "cpu", "--no-progress"], 2, *CASES[case][2])
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("argv", [["bench", "--models", "pit_sx", "--warmup", "0"],
                                  ["robustness", "--model", "pit_sx", "--data", "{data}", "--class-map", "folder",
                                   "--out", "{out}", "--limit", "2", "--workers", "0", "--no-progress"]],
                         ids=["bench", "robustness"])
def test_unknown_model_name(tmp_path, data, argv):
    argv = [a.format(data=data, out=tmp_path / "out") for a in argv]
    assert_one_line_error(argv, 2, "unknown model 'pit_sx'", "did you mean", "pit_s")


@pytest.mark.parametrize("raised", [KeyError("pos_embed"), RuntimeError("shape '[1, 64, 8, 8]' is invalid")])
def test_filter_tripped_by_a_foreign_file_reports_the_mismatch(tmp_path, monkeypatch, raised):
    """A family filter that fails on another architecture's keys: the key comparison names the file."""
    import pit.pit as family

    def tripping(state_dict, model):
        raise raised

    monkeypatch.setattr(family, "checkpoint_filter_fn", tripping)
    path = tmp_path / "deit.pth"
    torch.save(_zeros_of("deit_tiny_patch16_224"), path)
    with pytest.raises(ValueError, match="do not fit model 'pit_ti'"):
        pit.create_model("pit_ti", weights=path)


def test_fault_inside_a_filter_raises_naming_the_filter(tmp_path, monkeypatch):
    import pit.pit as family

    def broken(state_dict, model):
        return state_dict.no_such_method()

    monkeypatch.setattr(family, "checkpoint_filter_fn", broken)
    path = tmp_path / "pit_ti.pth"
    torch.save(_pit_ti(), path)
    with pytest.raises(RuntimeError, match=r"pit\.pit\.checkpoint_filter_fn failed on .*pit_ti\.pth \(AttributeError"):
        pit.create_model("pit_ti", weights=path)
