"""COCO object detection over any backbone (PiT, DeiT/ViT, ResNet): DETR here, Deformable DETR in
``detection.deformable``; data, matcher, set loss, training/evaluation engine, ``eval.py detection``."""
