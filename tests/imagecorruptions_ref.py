"""Import the reference ``imagecorruptions`` on today's numpy/scikit-image/setuptools (test/benchmark only).

Patches: a ``pkg_resources.resource_filename`` shim, ``np.float_`` (removed in numpy 2), and skimage's
``gaussian(multichannel=...)`` (renamed ``channel_axis``). Returns None when the package is absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types


def load_reference():
    """The reference corruptions module (``get_corruption`` style functions by name) or None."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None:
        return None
    import numpy as np
    import skimage.filters

    if "pkg_resources" not in sys.modules:
        try:
            importlib.import_module("pkg_resources")
        except Exception:
            shim = types.ModuleType("pkg_resources")

            def resource_filename(package, resource):
                origin = importlib.util.find_spec(package).origin
                return os.path.join(os.path.dirname(origin), resource)

            shim.resource_filename = resource_filename
            sys.modules["pkg_resources"] = shim
    if not hasattr(np, "float_"):
        np.float_ = np.float64
    module = importlib.import_module("imagecorruptions.corruptions")
    original = skimage.filters.gaussian

    def gaussian(image, sigma=1, *args, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return original(image, sigma, *args, **kwargs)

    module.gaussian = gaussian
    return module


def reference_corrupt(module, image_u8, name: str, severity: int):
    """Apply the reference to one (H, W, 3) uint8 image; returns float64 (H, W, 3) in [0, 1]."""
    import numpy as np
    from PIL import Image

    x = Image.fromarray(image_u8) if name in ("jpeg_compression", "pixelate", "spatter") else image_u8
    if name in ("jpeg_compression", "pixelate") or name == "spatter" and severity >= 4:
        x = Image.fromarray(image_u8)
    out = getattr(module, name)(x, severity)
    return np.clip(np.asarray(out, dtype=np.float64), 0, 255) / 255
