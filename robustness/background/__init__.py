"""ImageNet-9 backgrounds evaluation (Xiao et al., "Noise or Signal", ICLR 2021): variant accuracies,
BG-gap and the exact, batched Background Challenge. ``in_to_in9.json`` is the authors' mapping (see
SOURCE.txt next to it)."""
from robustness.background.challenge import ChallengeResult, reference_passes, run_challenge
from robustness.background.evaluate import (CHALLENGE, DATASET, cell_fingerprint, check_in9, evaluate_in9, in9_summary,
                                            planned_cells)
from robustness.background.layout import IN9_CLASSES, VARIANTS, in_to_in9, output_map
from robustness.background.variants import bg_gap, evaluate_variant, in9_predictor

__all__ = ["CHALLENGE", "DATASET", "IN9_CLASSES", "VARIANTS", "ChallengeResult", "bg_gap", "cell_fingerprint",
           "check_in9", "evaluate_in9", "evaluate_variant", "in9_predictor", "in9_summary", "in_to_in9", "output_map",
           "planned_cells", "reference_passes", "run_challenge"]
