"""Evaluation of any hierarchy: importance weights and IWAE, PSIS k̂, active units, the one
evaluation loop behind ``hlvm.evaluate``, ``hlvm compare``, ``make results`` and the Trainer
(:mod:`.evaluate`), the scoring of a trained model by its own bounds (:mod:`.scores`) and paired
differences of per-image bounds between rows (:mod:`.paired`)."""

from .active import ActiveUnits, active_units
from .evaluate import evaluate
from .paired import paired_difference, paired_table
from .psis import KHAT_THRESHOLD, MIN_KHAT_SAMPLES, ParetoKWarning, khat_summary, pareto_khat
from .scores import Scores, own_bounds, score
from .weights import iwae_bound, per_example_log_weights, per_site_terms

__all__ = ["evaluate", "score", "Scores", "own_bounds", "per_site_terms", "per_example_log_weights", "iwae_bound",
           "pareto_khat", "khat_summary", "ParetoKWarning", "KHAT_THRESHOLD", "MIN_KHAT_SAMPLES", "active_units", "ActiveUnits",
           "paired_difference", "paired_table"]
