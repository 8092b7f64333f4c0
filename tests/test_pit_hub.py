"""pit.default_weights and create_model(pretrained=True): the local hub cache, the offline switch, a quick probe."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file

import pit
import pit.hub

ROOT = Path(__file__).resolve().parents[1]
REPO = "timm/pit_ti_224.in1k"  # where timm publishes pit_ti's weights (pit_ti's pretrained_cfg.hf_hub_id)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A hub cache (``HF_HOME`` layout) holding a timm-format pit_ti_224 state dict as REPO's model.safetensors."""
    torch.manual_seed(0)
    reference = timm.create_model("pit_ti_224").eval()
    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / ("models--" + REPO.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
              repo / "snapshots" / commit / "model.safetensors")
    return home, reference


@pytest.fixture(autouse=True)
def fresh_probe():
    pit.hub._probe.cache_clear()
    yield
    pit.hub._probe.cache_clear()


def test_cache_found_offline_and_create_model_loads_it(published, monkeypatch):
    home, reference = published
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    use, banner = pit.default_weights("pit_ti")
    assert use is True
    assert banner.startswith("using the published pit_ti weights from the local hub cache (")
    assert str(home / "hub") in banner and banner.endswith("model.safetensors)")
    model = pit.create_model("pit_ti", pretrained=True)
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_env_cache_in_a_fresh_process(published):
    """The user's path: HF_HOME and HF_HUB_OFFLINE set before start-up, read by huggingface_hub itself."""
    home, reference = published
    out = home.parent / "loaded.pth"
    code = ("import sys, torch, pit; use, banner = pit.default_weights('pit_ti'); print(use, banner); "
            f"torch.save(pit.create_model('pit_ti', pretrained=True).state_dict(), {str(out)!r})")
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True using the published pit_ti weights from the local hub cache")
    loaded = torch.load(out, weights_only=True)
    expected = pit.checkpoint_filter_fn(reference.state_dict(), pit.pit_ti())
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_no_cache_offline_asks_nothing_and_says_chance(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked, built = [], []
    monkeypatch.setattr(pit.hub, "get_hf_file_metadata", lambda url, **k: asked.append(url))
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: built.append(k))
    assert pit.default_weights("pit_s") == (
        False, "no --weights given and no published pit_s weights offline: random initialisation, "
               "accuracy will be at chance; pass --weights FILE")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set.*--weights PATH"):
        pit.create_model("pit_s", pretrained=True)
    assert asked == [] and built == []  # offline: no request to the hub, no download attempt by timm


def test_hanging_network_is_cut_short(tmp_path, monkeypatch):
    """A request that does not answer: the probe gives up after PROBE_TIMEOUT_S and reports no weights
    while the request is still pending (it is released only at the end of the test)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(pit.hub, "PROBE_TIMEOUT_S", 0.5)
    started, release = threading.Event(), threading.Event()

    def hang(*args, **kwargs):  # answers (the file exists) only once the test releases it
        started.set()
        release.wait(60)

    monkeypatch.setattr(pit.hub, "get_hf_file_metadata", hang)
    try:
        use, banner = pit.default_weights("pit_s")
        assert not use and "accuracy will be at chance" in banner  # had it waited for the answer: True
        assert started.wait(60), "the probe never asked the hub"
    finally:
        release.set()


def test_reachable_hub_means_download(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []
    monkeypatch.setattr(pit.hub, "get_hf_file_metadata", lambda url, **k: asked.append(url))
    assert pit.default_weights("pit_ti") == (
        True, f"using the published pit_ti weights, downloaded from the Hugging Face hub ({REPO})")
    assert asked and REPO in asked[0] and asked[0].endswith("model.safetensors")


def test_unknown_name_and_model_without_published_weights(monkeypatch):
    with pytest.raises(ValueError, match="unknown model 'pit_sx'"):
        pit.default_weights("pit_sx")
    monkeypatch.setattr(pit.hub, "hub_source", lambda name: None)
    monkeypatch.setattr(pit.factory, "hub_source", lambda name: None)
    assert pit.default_weights("pit_ti")[0] is False
    with pytest.raises(RuntimeError, match="no published weights"):
        pit.create_model("pit_ti", pretrained=True)
