"""policygrad: LLM policy optimization from first principles (the book's package).

The layout follows the two factors of

    J(θ) = E_{τ ~ p_θ}[R(τ)]

and the book's layers, each depending only on those listed before it:

* low level: `policygrad.utils` (seeds, devices), `policygrad.numeric_path`, and the
  private validation and tensor helpers;
* `policygrad.rollout` — the batch every estimator consumes;
* `policygrad.trajectory_side` — how the score is formed: log-probs, ratios, clipping,
  aggregation, KL;
* `policygrad.reward_side` — what multiplies it: returns, GAE, baselines, normalisers,
  shaping;
* `policygrad.methods` — the `Method` type, the registry, one module per family;
* `policygrad.exact` — every expectation computed exactly on small problems;
* `policygrad.toy` (tabular policy, enumerable tasks) and `policygrad.lm` (TinyGPT,
  tasks, warm starts);
* `policygrad.diagnostics`, `policygrad.train`, `policygrad.plotting`.
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
