"""Reading checkpoint files a user hands us, safely: ``torch.load(weights_only=True)`` and safetensors only.

No file the suite reads can run code: pickles are unpickled with PyTorch's restricted unpickler, which
accepts tensors, containers and plain scalars, plus the few globals a caller allow-lists (official DETR
files carry an ``argparse.Namespace``, for example). Anything else is refused with one line that names
the file and what it holds, as are missing, empty, truncated and non-checkpoint files.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Iterable

import torch


class CheckpointError(ValueError):
    """A file that is not a checkpoint the suite can read (the message names the file and the fix)."""


def safe_load(path: str | os.PathLike, *, what: str = "checkpoint", allow: Iterable[Any] = ()) -> Any:
    """Load ``path`` (``.pth``/``.pt``/``.bin`` pickle, or ``.safetensors``) on the CPU without running code.

    ``allow`` lists extra globals (classes / functions) the restricted unpickler may rebuild, e.g.
    ``[argparse.Namespace]``. A file that needs any other global is refused, never loaded.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a folder, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes): an interrupted download or copy? get the file again")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{what} {path} is not a readable safetensors file ({err})") from None
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported global" in text or "not an allowed global" in text or "GLOBAL" in text:
            name = text.split("GLOBAL", 1)[-1].split()[0] if "GLOBAL" in text else "an object"
            raise CheckpointError(
                f"{what} {path} holds {name}, which could run code when loaded; refused (the suite loads only "
                "tensors and plain data: re-save the state dict with torch.save(model.state_dict(), ...))") from None
        raise CheckpointError(f"{what} {path} is not a PyTorch checkpoint (neither a torch.save archive nor a "
                              "tensor pickle): check the path, or get the file again") from None
    except Exception as err:  # noqa: BLE001  (random bytes reach pickle's opcodes: IndexError, KeyError, struct.error ...)
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{what} {path} is not a readable PyTorch checkpoint (truncated or another format? "
                              f"{first})") from None
