"""Exact analyses by enumerating every completion of a small problem: J, its
gradient, estimator moments, what group methods and KL penalties optimise, and trust
regions, and the gradient lab (`lab`). Everything sampled is checked against these.
"""

from __future__ import annotations

from .._tensor import flat_grad, flat_params
from . import ascent, critics, enumeration, group, kl, lab, trust_region
from .ascent import ascend
from .critics import EstimatorMoments
from .enumeration import (
    MAX_ENUMERATION,
    MAX_FISHER_PARAMS,
    ExactProblem,
    enumerate_completions,
    objective_landscape,
)
from .group import (
    MAX_GROUPS,
    binary_advantage_table,
    binary_objective,
    binary_weight,
    conditional_advantages,
    enumerated_update,
    expected_group_gradient,
    implied_surrogate,
    implied_weights,
    zero_variance_probability,
)
from .kl import (
    PENALTY_FORMS,
    gradient_table,
    kl_estimator_stats,
    kl_penalty_gradients,
    kl_penalty_weights,
    regularised_optimum,
    state_kl,
)
from .lab import (
    CLASS_TOL,
    bias_variance_plot,
    compare_to_gradient,
    implied_objective,
    lab_table,
    method_update_moments,
    passk_objective,
)
from .trust_region import (
    apply_flat_step,
    conjugate_gradient,
    fisher_vector_product,
    get_flat_params,
    kl_constrained_step,
    natural_gradient,
    set_flat_params,
    trpo_line_search,
)

__all__ = [
    "ascent",
    "ascend",
    "critics",
    "EstimatorMoments",
    "enumeration",
    "group",
    "kl",
    "trust_region",
    "MAX_ENUMERATION",
    "MAX_FISHER_PARAMS",
    "enumerate_completions",
    "ExactProblem",
    "objective_landscape",
    "MAX_GROUPS",
    "conditional_advantages",
    "binary_advantage_table",
    "binary_weight",
    "binary_objective",
    "zero_variance_probability",
    "implied_weights",
    "implied_surrogate",
    "expected_group_gradient",
    "enumerated_update",
    "PENALTY_FORMS",
    "state_kl",
    "kl_estimator_stats",
    "kl_penalty_weights",
    "kl_penalty_gradients",
    "gradient_table",
    "regularised_optimum",
    "natural_gradient",
    "conjugate_gradient",
    "fisher_vector_product",
    "kl_constrained_step",
    "get_flat_params",
    "set_flat_params",
    "apply_flat_step",
    "trpo_line_search",
    "flat_grad",
    "flat_params",
    "lab",
    "CLASS_TOL",
    "method_update_moments",
    "compare_to_gradient",
    "passk_objective",
    "implied_objective",
    "lab_table",
    "bias_variance_plot",
]
