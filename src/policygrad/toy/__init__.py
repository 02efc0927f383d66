"""Enumerable toys of Part I: the tabular softmax policy and the bandit /
token-sequence tasks whose expectations `policygrad.exact` computes exactly.
"""

from __future__ import annotations

from . import policies, tasks
from .policies import TabularPolicy
from .tasks import contextual_bandit, target_sequence_task, variable_length_task

__all__ = [
    "policies",
    "tasks",
    "TabularPolicy",
    "contextual_bandit",
    "target_sequence_task",
    "variable_length_task",
]
