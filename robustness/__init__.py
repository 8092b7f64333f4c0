"""Robustness suite: ImageNet-C/A/R, occlusion and FGSM/PGD evaluation of [0,1]-pixel classifiers.

Modules: ``corruptions`` (batched ImageNet-C corruptions), ``datasets`` (ImageNet val/-C/-A/-R folders),
``attacks`` (FGSM/PGD), ``occlusion``, ``metrics`` (top-k counts, mCE), ``runner`` (``run_robustness``),
``report`` (markdown + plots) and ``cli`` (``python eval.py robustness``).
"""
