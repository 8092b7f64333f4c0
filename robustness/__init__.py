"""Robustness suite: ImageNet-C/A/R, IN-9, occlusion and FGSM/PGD evaluation of [0,1]-pixel classifiers.

Modules: ``config`` (``RobustnessConfig``, ``ModelSpec``: the typed run configuration), ``cells``
(``CellKey``, ``CellRecord``: the record type), ``plan`` (the passes and cells of a run), ``datasets``
(ImageNet-C/A/R folders, the run's one loader), ``attacks`` (FGSM/PGD), ``occlusion``, ``metrics``
(exact counts, mCE), ``runner`` (``run_robustness``: the one entry point), ``store`` (the run folder:
finished cells, resume), ``report`` (markdown + plots), ``background`` (IN-9) and ``cli``
(``python eval.py robustness``). Corruptions live in the top-level ``corruptions`` package.
"""
