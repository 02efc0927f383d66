"""policygrad: LLM policy optimization from first principles — the package behind the book.

Modules are organised by the two factors of :math:`J(\\theta)=\\mathbb E_{\\tau\\sim p_\\theta}[R(\\tau)]`:
:mod:`policygrad.reward_side` (what multiplies the score) and :mod:`policygrad.trajectory_side`
(how the score is formed). :mod:`policygrad.exact` computes every expectation exactly on small problems.
"""

from . import (
    diagnostics,
    exact,
    group_exact,
    kl_exact,
    lm_tasks,
    methods,
    numeric_path,
    plotting,
    policies,
    pretrained,
    reward_side,
    rollout,
    tasks,
    tinygpt,
    train,
    trajectory_side,
    trust_region,
)
from .exact import ExactProblem, enumerate_completions
from .methods import Method, get_method
from .policies import TabularPolicy
from .pretrained import load_warm_start
from .rollout import RolloutBatch
from .tinygpt import TinyGPT, TinyGPTConfig
from .train import History
from .utils import get_device, make_generator, near_zero, seed_everything, show_source

__version__ = "0.1.0"

__all__ = [
    "diagnostics",
    "exact",
    "group_exact",
    "kl_exact",
    "lm_tasks",
    "methods",
    "numeric_path",
    "plotting",
    "policies",
    "pretrained",
    "reward_side",
    "rollout",
    "tasks",
    "tinygpt",
    "train",
    "trajectory_side",
    "trust_region",
    "ExactProblem",
    "enumerate_completions",
    "TabularPolicy",
    "Method",
    "get_method",
    "load_warm_start",
    "RolloutBatch",
    "History",
    "TinyGPT",
    "TinyGPTConfig",
    "get_device",
    "make_generator",
    "near_zero",
    "seed_everything",
    "show_source",
]
