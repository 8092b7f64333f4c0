"""PiT: Pooling-based Vision Transformers (Heo et al., ICCV 2021), for the downstream suite.

    import pit
    model = pit.pit_s()                                   # official API; also timm.create_model('pit_s')
    model = pit.create_model("pit_s", weights="pit_s_809.pth")
    use_published, banner = pit.default_weights("pit_s")  # no --weights: published weights offline?
    pixel_model = pit.create_pixel_model("deit_small_patch16_224", weights="deit_small.pth")  # [0,1] input

Importing the package registers ``pit_ti``/``pit_xs``/``pit_s``/``pit_b`` (and ``*_distilled``)
with timm's registry.
"""
from pit.checkpoint import describe, guess_architecture, read_state_dict
from pit.factory import create_model, load_weights
from pit.hub import default_weights
from pit.names import PIT_NAMES
from pit.flops import count_macs
from pit.normalize import NormalizedModel, create_pixel_model
from pit.pit import (
    PoolingTransformer,
    checkpoint_filter_fn,
    pit_b,
    pit_b_distilled,
    pit_s,
    pit_s_distilled,
    pit_ti,
    pit_ti_distilled,
    pit_xs,
    pit_xs_distilled,
    resample_pos_embed,
)

__all__ = [
    "PIT_NAMES", "PoolingTransformer", "NormalizedModel", "checkpoint_filter_fn", "count_macs", "create_model",
    "create_pixel_model", "default_weights", "describe", "guess_architecture", "load_weights", "read_state_dict", "resample_pos_embed",
    "pit_ti", "pit_xs", "pit_s", "pit_b", "pit_ti_distilled", "pit_xs_distilled", "pit_s_distilled", "pit_b_distilled",
]
