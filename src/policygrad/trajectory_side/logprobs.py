"""Per-token log-probabilities and entropies from a policy's logits.

The raw material of the score. The policy protocol (`policygrad.toy`, `policygrad.lm`):
`policy(prompts, completions)` returns next-token logits `(B, T, V)` by teacher forcing;
these functions turn them into the per-token log π_θ(y_t | s_t) and entropies that
every estimator uses. Introduced in chapter 1 ("A language model is a policy over token
sequences").
"""

from __future__ import annotations

import torch

from .._checks import check_float, check_tensor

__all__ = ["token_log_probs", "token_entropy", "sequence_log_probs"]


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token log-probabilities log π(y_t | x, y_<t).

    logits: `(B, T, V)` floats; tokens: `(B, T)` integer ids. Returns `(B, T)`.
    Non-finite logits are not refused here (a padded position may hold anything): they
    give non-finite log-probs, which every loss refuses on trained tokens, naming
    `logp`, and `policygrad.train.train` reports as divergence.
    """
    check_float(logits, "logits", 3)
    check_tensor(tokens, "tokens", 2)
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(
            f"tokens must be an integer tensor of token ids, got dtype {tokens.dtype}"
        )
    if logits.shape[:2] != tokens.shape:
        raise ValueError(
            f"logits (B, T, V) and tokens (B, T) disagree: {tuple(logits.shape)} vs "
            f"{tuple(tokens.shape)}"
        )
    if tokens.numel() and (
        int(tokens.min()) < 0 or int(tokens.max()) >= logits.shape[-1]
    ):
        raise ValueError(
            f"tokens must lie in [0, {logits.shape[-1] - 1}] (the vocabulary)"
        )
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution, −Σ_v π_v log π_v.

    `(B, T, V) -> (B, T)`.
    """
    check_float(logits, "logits", 3)
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def sequence_log_probs(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p_θ(y | x) = Σ_t m_t log π_θ(y_t | x, y_<t). `(B, T) -> (B,)`."""
    check_tensor(token_logp, "token_logp", 2)
    if mask.shape != token_logp.shape:
        raise ValueError(
            f"mask must have shape {tuple(token_logp.shape)}, got {tuple(mask.shape)}"
        )
    return (token_logp * mask.to(token_logp.dtype)).sum(-1)
