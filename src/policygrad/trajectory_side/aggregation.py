"""Aggregation: the named ways of turning per-token losses `(B, T)` into one number.

Used from chapter 5 ("PPO: a pessimistic, clipped surrogate") on; chapter 9
studies their length bias.
"""

from __future__ import annotations

import torch

from .._checks import check_positive_int
from .._tensor import compute_dtype, select
from .masks import check_per_token

__all__ = ["AGGREGATIONS", "aggregation_weights", "aggregate"]

#: The named ways of turning per-token losses `(B, T)` into one number (see
#: `aggregate`).
AGGREGATIONS = (
    "seq-mean-token-mean",
    "token-mean",
    "seq-mean-token-sum-norm",
    "seq-mean-token-sum",
    "token-sum",
)


def _check_mode(mode: str) -> None:
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose one of {AGGREGATIONS}")


def aggregation_weights(
    mask: torch.Tensor,
    mode: str,
    *,
    max_len: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The weight w_{i,t} each token gets in `aggregate`: `aggregate(L) = sum(w * L)`.

    `(B, T)`, 0 off the mask; see `aggregate` for the modes. It is what makes the
    aggregations comparable: e.g. `"seq-mean-token-mean"` gives a token of a completion
    of length |o_i| the weight 1/(B·|o_i|), `"token-mean"` gives every token 1/Σ m.
    """
    m = check_per_token(torch.zeros(mask.shape, dtype=dtype), mask, "mask")
    _check_mode(mode)
    B, T = m.shape
    mf = m.to(dtype)
    if mode == "token-mean":
        w = mf / mf.sum().clamp_min(1.0)
    elif mode == "seq-mean-token-mean":
        w = mf / (B * mf.sum(-1, keepdim=True).clamp_min(1.0))
    elif mode == "seq-mean-token-sum":
        w = mf / B
    elif mode == "token-sum":
        w = mf
    else:
        w = mf / (
            B * (T if max_len is None else check_positive_int(max_len, "max_len"))
        )
    return w


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce per-token values `(B, T)` (e.g. losses) over the tokens where `mask` is 1.

    With m_{i,t} the mask and |o_i| = Σ_t m_{i,t}:

    * `"seq-mean-token-mean"`: (1/B) Σ_i (1/|o_i|) Σ_t m_{i,t} L_{i,t} — each
      sequence weighs the same, whatever its length (original GRPO);
    * `"token-mean"`: Σ_{i,t} m_{i,t} L_{i,t} / Σ_{i,t} m_{i,t} — each token weighs
      the same (DAPO; verl's default);
    * `"seq-mean-token-sum-norm"`: Σ_{i,t} m_{i,t} L_{i,t} / (B·L_max) with
      L_max = `max_len` (default `T`) — a constant normaliser (Dr.GRPO);
    * `"seq-mean-token-sum"`: (1/B) Σ_i Σ_t m_{i,t} L_{i,t} — the REINFORCE sum
      (`pg_surrogate`'s normalisation);
    * `"token-sum"`: Σ_{i,t} m_{i,t} L_{i,t} — no normaliser at all (the loss of a
      batch is the sum of its tokens' losses; verl's `token-sum`).

    Edge cases, all defined and never NaN: positions where the mask is 0 are selected
    away (a NaN there changes nothing); a row with an empty mask contributes 0 to the
    sequence modes and still counts in B (as verl's `agg_loss` when its trainer passes
    `global_batch_size`; called without it, `agg_loss` divides by the number of
    non-empty rows); an entirely empty mask gives 0 with a zero gradient. The sum is
    taken in at least float32 (half-precision inputs are promoted). Used from chapter 5
    ("PPO: a pessimistic, clipped surrogate") on (chapter 9 studies
    their length bias).
    """
    m = check_per_token(per_token, mask, "per_token")
    _check_mode(mode)
    B, T = per_token.shape
    # half precision is summed in float32
    masked = select(per_token.to(compute_dtype(per_token)), m)
    mf = m.to(per_token.dtype)
    if mode == "token-mean":
        return masked.sum() / mf.sum().clamp_min(1.0)
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / mf.sum(-1).clamp_min(1.0)).sum() / B
    if mode == "seq-mean-token-sum":
        return masked.sum() / B
    if mode == "token-sum":
        return masked.sum()
    L = T if max_len is None else check_positive_int(max_len, "max_len")
    return masked.sum() / (B * L)
