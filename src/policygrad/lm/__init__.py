"""Language models: TinyGPT (policy and critic), the verifiable character-level tasks, and the shipped
warm-start checkpoints.
"""

from __future__ import annotations

from . import pretrained, tasks, tinygpt
from .pretrained import (
    CHECKPOINT_DIR,
    CHECKPOINT_SHA256,
    EVAL_SIZE,
    OFF_PATH_TOLERANCE,
    WARM_STARTS,
    WarmStart,
    build_warm_start,
    checkpoint_path,
    load_warm_start,
    supervised_loss,
    train_supervised,
    warm_start_table,
)
from .tasks import (
    HELDOUT_BUCKETS,
    REASONS,
    TASKS,
    TOOL_TOKENS,
    AdditionTask,
    CharTokenizer,
    PrefixCopyTask,
    Problem,
    ReversalTask,
    Task,
    evaluate,
    exact_problem,
    is_heldout,
    make_task,
    shared_tokenizer,
    success_probabilities,
)
from .tinygpt import KVCache, TinyGPT, TinyGPTConfig, TinyGPTCritic

__all__ = [
    "tinygpt",
    "tasks",
    "pretrained",
    "TinyGPTConfig",
    "TinyGPT",
    "KVCache",
    "TinyGPTCritic",
    "TOOL_TOKENS",
    "REASONS",
    "HELDOUT_BUCKETS",
    "CharTokenizer",
    "shared_tokenizer",
    "Problem",
    "Task",
    "AdditionTask",
    "ReversalTask",
    "PrefixCopyTask",
    "TASKS",
    "make_task",
    "is_heldout",
    "evaluate",
    "success_probabilities",
    "exact_problem",
    "CHECKPOINT_DIR",
    "EVAL_SIZE",
    "WarmStart",
    "WARM_STARTS",
    "CHECKPOINT_SHA256",
    "OFF_PATH_TOLERANCE",
    "supervised_loss",
    "train_supervised",
    "build_warm_start",
    "checkpoint_path",
    "load_warm_start",
    "warm_start_table",
]
