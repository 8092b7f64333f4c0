"""COCO object detection over any backbone (PiT, DeiT/ViT, ResNet, any timm model with
``forward_intermediates``): DETR here, Deformable DETR in ``detection.deformable``; data, matcher,
set loss, presets, training/evaluation engine, loading of every detector format (``detection.load.load_detector``),
``eval.py detection``."""


def __getattr__(name: str):
    """``detection.load_detector`` without importing the models at package import."""
    if name == "load_detector":
        from detection.load import load_detector

        return load_detector
    raise AttributeError(f"module 'detection' has no attribute {name!r}")
