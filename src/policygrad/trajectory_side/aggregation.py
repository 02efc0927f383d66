"""Aggregation: the named ways of turning per-token losses ``(B, T)`` into one number.

Used from {ref}`sec-ppo-clip` on; chapter 9 studies their length bias.
"""

from __future__ import annotations

import torch

from .._checks import check_positive_int
from .masks import _check_per_token

__all__ = ["AGGREGATIONS", "aggregate"]


#: The named ways of turning per-token losses ``(B, T)`` into one number (see :func:`aggregate`).
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm", "seq-mean-token-sum")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, *, max_len: int | None = None) -> torch.Tensor:
    """Reduce per-token values ``(B, T)`` (e.g. per-token losses) over the tokens where ``mask`` is 1.

    With :math:`m_{i,t}` the mask and :math:`|o_i| = \\sum_t m_{i,t}`:

    * ``"seq-mean-token-mean"``: :math:`\\frac1B\\sum_i \\frac{1}{|o_i|}\\sum_t m_{i,t}L_{i,t}` — each sequence
      weighs the same, whatever its length (original GRPO);
    * ``"token-mean"``: :math:`\\sum_{i,t} m_{i,t}L_{i,t} / \\sum_{i,t} m_{i,t}` — each token weighs the same
      (DAPO; verl's default);
    * ``"seq-mean-token-sum-norm"``: :math:`\\sum_{i,t} m_{i,t}L_{i,t} / (B\\,L_\\text{max})` with
      :math:`L_\\text{max}` = ``max_len`` (default ``T``) — a constant normaliser (Dr.GRPO);
    * ``"seq-mean-token-sum"``: :math:`\\frac1B\\sum_i\\sum_t m_{i,t}L_{i,t}` — the REINFORCE sum
      (:func:`pg_surrogate`'s normalisation).

    Edge cases, all defined and never NaN: a row with an empty mask contributes 0 to the sequence modes
    (and still counts in :math:`B`); an entirely empty mask gives 0 (with a zero gradient).
    Used from {ref}`sec-ppo-clip` on (chapter 9 studies their length bias).
    """
    m = _check_per_token(per_token, mask, "per_token")
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose one of {AGGREGATIONS}")
    B, T = per_token.shape
    if B == 0:
        raise ValueError("per_token has no rows")
    masked = per_token * m
    if mode == "token-mean":
        n = m.sum()
        return masked.sum() / n.clamp_min(1.0)
    if mode == "seq-mean-token-mean":
        lengths = m.sum(-1)
        return (masked.sum(-1) / lengths.clamp_min(1.0)).sum() / B
    if mode == "seq-mean-token-sum":
        return masked.sum() / B
    L = T if max_len is None else check_positive_int(max_len, "max_len")
    return masked.sum() / (B * L)
