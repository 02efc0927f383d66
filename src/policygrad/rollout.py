"""The batch of sampled trajectories that every estimator consumes.

Introduced in {ref}`sec-reinforce-estimator`; the full RL batch (old/reference log-probs, group ids,
loss masks) grows out of this in later chapters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_mask, check_tensor

__all__ = ["Samples"]


@dataclass(frozen=True)
class Samples:
    """Completions sampled from a policy, one row per trajectory.

    prompts: ``(B,)`` prompt ids (or ``(B, P)`` prompt tokens for a language model);
    completions: ``(B, T)`` token ids; mask: ``(B, T)`` 1 on real completion tokens, 0 on padding;
    log_probs: ``(B, T)`` per-token log-probabilities under the sampling policy (no gradient, 0 on padding);
    truncated: ``(B,)`` True where the completion hit the length limit before ending.
    """

    prompts: torch.Tensor
    completions: torch.Tensor
    mask: torch.Tensor
    log_probs: torch.Tensor
    truncated: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor(self.completions, "completions", 2)
        B, T = self.completions.shape
        check_tensor(self.prompts, "prompts", (1, 2))
        if self.prompts.shape[0] != B:
            raise ValueError(f"prompts has {self.prompts.shape[0]} rows but completions has {B}")
        check_tensor(self.mask, "mask", 2)
        if self.mask.shape != (B, T):
            raise ValueError(f"mask must have shape {(B, T)}, got {tuple(self.mask.shape)}")
        check_mask(self.mask.reshape(-1), "mask") if B > 0 else None
        check_tensor(self.log_probs, "log_probs", 2)
        if self.log_probs.shape != (B, T):
            raise ValueError(f"log_probs must have shape {(B, T)}, got {tuple(self.log_probs.shape)}")
        check_tensor(self.truncated, "truncated", 1)
        if self.truncated.shape[0] != B:
            raise ValueError(f"truncated must have shape {(B,)}, got {tuple(self.truncated.shape)}")

    def __len__(self) -> int:
        return self.completions.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """Number of real tokens per completion, ``(B,)``."""
        return self.mask.sum(-1)
