"""policygrad: LLM policy optimization from first principles — the package behind the book.

The layout follows the two factors of :math:`J(\\theta)=\\mathbb E_{\\tau\\sim p_\\theta}[R(\\tau)]` and the
book's layers, each depending only on those listed before it:

* low level: :mod:`policygrad.utils` (seeds, devices), :mod:`policygrad.numeric_path`, and the private
  validation and tensor helpers;
* :mod:`policygrad.rollout` — the batch every estimator consumes;
* :mod:`policygrad.trajectory_side` — how the score is formed: log-probs, ratios, clipping, aggregation, KL;
* :mod:`policygrad.reward_side` — what multiplies it: returns, GAE, baselines, normalisers, shaping;
* :mod:`policygrad.methods` — the :class:`Method` type, the registry, one module per family;
* :mod:`policygrad.exact` — every expectation computed exactly on small problems;
* :mod:`policygrad.toy` (tabular policy, enumerable tasks) and :mod:`policygrad.lm` (TinyGPT, tasks,
  warm starts);
* :mod:`policygrad.diagnostics`, :mod:`policygrad.train`, :mod:`policygrad.plotting`.
"""

from . import (
    diagnostics,
    exact,
    lm,
    methods,
    numeric_path,
    plotting,
    reward_side,
    rollout,
    toy,
    train,
    trajectory_side,
    utils,
)
from .exact import ExactProblem, enumerate_completions
from .lm import TinyGPT, TinyGPTConfig, load_warm_start
from .methods import Method, get_method
from .rollout import RolloutBatch, Samples
from .toy import TabularPolicy
from .train import History
from .utils import get_device, make_generator, near_zero, seed_everything, show_source

__version__ = "0.1.0"

__all__ = [
    "diagnostics",
    "exact",
    "lm",
    "methods",
    "numeric_path",
    "plotting",
    "reward_side",
    "rollout",
    "toy",
    "train",
    "trajectory_side",
    "utils",
    "ExactProblem",
    "enumerate_completions",
    "TabularPolicy",
    "Method",
    "get_method",
    "load_warm_start",
    "RolloutBatch",
    "Samples",
    "History",
    "TinyGPT",
    "TinyGPTConfig",
    "get_device",
    "make_generator",
    "near_zero",
    "seed_everything",
    "show_source",
]
