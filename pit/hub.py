"""Published weights on the Hugging Face hub: the local cache, the hub's offline switch, a quick probe.

timm names a model's published weights in its pretrained config (``hf_hub_id``, e.g.
``timm/pit_s_224.in1k`` for ``pit_s``). They are usable when the file is already in the local hub
cache (``HF_HUB_CACHE`` / ``HF_HOME``, read by ``huggingface_hub`` at start-up) or, unless the hub's
offline switch ``HF_HUB_OFFLINE=1`` is on, when the hub answers a metadata request within
``PROBE_TIMEOUT_S`` seconds. The probe runs in a daemon thread, so a network that swallows packets
cannot hold a command for longer than that.
"""
from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import timm
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

from pit.names import check_name

__all__ = ["HubSource", "PROBE_TIMEOUT_S", "cached_pretrained_file", "default_weights", "hub_offline",
           "hub_reachable", "hub_source"]

PROBE_TIMEOUT_S = 3.0
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # the files timm tries, in its order


class HubSource(NamedTuple):
    """Where timm fetches a model's published weights: hub repository, revision, candidate file names."""

    repo: str
    revision: str | None
    files: tuple[str, ...]


def hub_source(name: str) -> HubSource | None:
    """The hub location of ``name``'s published weights (timm's default tag), or None if it has none."""
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id:
        return None
    repo, _, revision = hub_id.partition("@")
    filename = getattr(cfg, "hf_hub_filename", None)
    return HubSource(repo, revision or None, (filename,) if filename else _HUB_FILES)


def hub_offline() -> bool:
    """The hub library's offline switch: ``HF_HUB_OFFLINE`` at start-up or set in this process since."""
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return constants.is_offline_mode() or flag in constants.ENV_VARS_TRUE_VALUES


def cached_pretrained_file(name: str) -> Path | None:
    """``name``'s published weights file in the local hub cache, or None (no network access)."""
    source = hub_source(name)
    if source is None:
        return None
    for filename in source.files:
        found = try_to_load_from_cache(source.repo, filename, revision=source.revision)
        if isinstance(found, str):
            return Path(found)
    return None


@lru_cache(maxsize=None)
def _probe(source: HubSource) -> bool:
    """Whether the hub answers a metadata request for one of ``source``'s files (once per process)."""
    done, found = threading.Event(), []

    def ask() -> None:
        for filename in source.files:
            try:
                get_hf_file_metadata(hf_hub_url(source.repo, filename, revision=source.revision),
                                     timeout=PROBE_TIMEOUT_S)
            except Exception:  # offline, no route, DNS failure, 404: this file is not reachable
                continue
            found.append(filename)
            break
        done.set()

    threading.Thread(target=ask, name=f"hub-probe-{source.repo}", daemon=True).start()
    return done.wait(PROBE_TIMEOUT_S + 0.5) and bool(found)


def hub_reachable(name: str) -> bool:
    """Whether ``name``'s published weights can be downloaded now (False at once when offline)."""
    source = hub_source(name)
    return source is not None and not hub_offline() and _probe(source)


def default_weights(name: str) -> tuple[bool, str]:
    """For a command run without ``--weights``: (use ``name``'s published weights?, one-line banner).

    True when timm's published file for ``name`` is in the local hub cache or reachable on the hub
    within a few seconds (never when ``HF_HUB_OFFLINE=1`` and nothing is cached); then
    ``pit.create_model(name, pretrained=True)`` loads it. False means random initialisation, and the
    banner says so. Raises ``ValueError`` for an unknown model name.
    """
    check_name(name)
    cached = cached_pretrained_file(name)
    if cached is not None:
        return True, f"using the published {name} weights from the local hub cache ({cached})"
    if hub_reachable(name):
        return True, f"using the published {name} weights, downloaded from the Hugging Face hub ({hub_source(name).repo})"
    return False, (f"no --weights given and no published {name} weights offline: random initialisation, "
                   "accuracy will be at chance; pass --weights FILE")
