"""Robustness suite: ImageNet-C/A/R, occlusion and FGSM/PGD evaluation of [0,1]-pixel classifiers.

Modules: ``config`` (``RobustnessConfig``, ``ModelSpec``: the typed run configuration), ``datasets``
(ImageNet val/-C/-A/-R folders, the run's one loader), ``attacks`` (FGSM/PGD), ``occlusion``,
``metrics`` (exact counts, mCE), ``runner`` (``run``/``run_robustness``, the pass plan), ``store``
(the run folder: finished cells, resume), ``report`` (markdown + plots) and ``cli``
(``python eval.py robustness``). Corruptions live in the top-level ``corruptions`` package.
"""
