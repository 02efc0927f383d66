"""Exact quantities by enumerating every completion of a small problem.

For a small vocabulary and length, the expectation in

    J(θ) = E_{τ∼p_θ}[R(τ)]

is a finite sum, so J, ∇J (by autograd through the sum), KL divergences, success
probabilities, values and advantages can be computed exactly. Every Monte Carlo
estimator in the book is checked against these numbers. Only
`policy(prompts, completions) -> logits (B, T, V)` is used, so the same code runs on
the tabular policy and on a transformer. Derived in chapter 1 ("The objective as a
finite sum"), where J and ∇_θ J are computed exactly.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .._checks import (
    check_finite,
    check_mask,
    check_positive_int,
    check_tensor,
    check_unit_interval,
)
from .._tensor import flat_grad, flat_params
from ..trajectory_side.logprobs import token_log_probs

__all__ = [
    "MAX_ENUMERATION",
    "MAX_FISHER_PARAMS",
    "enumerate_completions",
    "ExactProblem",
    "objective_landscape",
]


#: Largest number of (prompt, completion) pairs an enumeration may have.
MAX_ENUMERATION = 250_000


#: Largest parameter count `ExactProblem.fisher` forms a dense `(P, P)` matrix for
#: (3.2 GB in float64).
MAX_FISHER_PARAMS = 20_000


def enumerate_completions(
    vocab_size: int,
    max_len: int,
    *,
    eos: int | None = None,
    limit: int = MAX_ENUMERATION,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every completion of at most `max_len` tokens over a vocabulary of `vocab_size`.

    Without `eos` these are the V^L sequences of length exactly `L`. With `eos` a
    completion stops at its first `eos`; positions after it are padded with `eos` and
    masked out, so each distinct completion appears once. Returns `tokens (K, L)`
    (long) and `mask (K, L)` (float). Raises ValueError if `K` would exceed `limit`.
    """
    check_positive_int(vocab_size, "vocab_size")
    check_positive_int(max_len, "max_len")
    check_positive_int(limit, "limit")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
    if eos is not None and (
        isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < vocab_size
    ):
        raise ValueError(f"eos must be a token id in [0, {vocab_size - 1}], got {eos}")
    body = [v for v in range(vocab_size) if v != eos]
    if eos is None:
        count = vocab_size**max_len
    else:
        count = sum(len(body) ** t for t in range(max_len)) + len(body) ** max_len
    if count > limit:
        raise ValueError(
            f"enumerating {count} completions (vocab_size={vocab_size}, "
            f"max_len={max_len}) exceeds the "
            f"limit of {limit}; use a smaller problem or raise `limit` deliberately"
        )
    rows, masks = [], []
    if eos is None:
        for seq in itertools.product(range(vocab_size), repeat=max_len):
            rows.append(seq)
            masks.append([1] * max_len)
    else:
        for t in range(max_len + 1):
            for prefix in itertools.product(body, repeat=t):
                if t < max_len:
                    rows.append(list(prefix) + [eos] * (max_len - t))
                    masks.append([1] * (t + 1) + [0] * (max_len - t - 1))
                else:
                    rows.append(list(prefix))
                    masks.append([1] * max_len)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(
        masks, dtype=torch.get_default_dtype()
    )


def _check_ids(x, name: str, ndim) -> torch.Tensor:
    """A tensor of non-negative integer ids (prompt ids, prompt tokens or completion
    tokens)."""
    check_tensor(x, name, ndim)
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise ValueError(
            f"{name} must be an integer tensor of ids, got dtype {x.dtype}"
        )
    if x.numel() and int(x.min()) < 0:
        raise ValueError(f"{name} must hold non-negative ids, got {int(x.min())}")
    return x


def _check_distinct(completions: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise ValueError if two rows are the same completion (same tokens where the mask
    is 1, same mask).

    The exact sums visit each row once: a completion listed twice would be counted
    twice.
    """
    keep = mask != 0
    key = torch.where(
        keep, completions.long(), torch.full_like(completions, -1, dtype=torch.long)
    )
    uniq, counts = torch.unique(key, dim=0, return_counts=True)
    if uniq.shape[0] != key.shape[0]:
        dup = uniq[counts > 1][0]
        rows = torch.nonzero((key == dup).all(-1)).flatten().tolist()
        raise ValueError(
            f"completions must be distinct: rows {rows[:5]} are the same completion "
            "(tokens "
            f"{dup[dup >= 0].tolist()} where the mask is 1); "
            f"{int((counts - 1).sum())} duplicate row(s) in all, "
            "and each would be counted once more in every exact sum"
        )


def _check_policy(policy, name: str) -> torch.device:
    """The device of a policy module's parameters; ValueError if it is not a module
    with parameters."""
    if not isinstance(policy, torch.nn.Module):
        raise ValueError(
            f"{name} must be a torch.nn.Module policy, got {type(policy).__name__}"
        )
    p = next(policy.parameters(), None)
    if p is None:
        raise ValueError(f"{name} has no parameters")
    return p.device


@dataclass(frozen=True)
class ExactProblem:
    """A prompt distribution, every completion, and the reward of each (prompt,
    completion) pair.

    prompts: `(N,)` prompt ids or `(N, P)` prompt tokens; prompt_probs: `(N,)` sums
    to 1; completions: `(K, L)`; mask: `(K, L)`; rewards: `(N, K)` terminal rewards
    R(x, y) or `(N, K, L)` per-step rewards r_t (only masked-in entries count);
    gamma: discount for per-step rewards (a terminal reward is not discounted).

    Per-step rewards must be causal: r_t may depend on x and y_≤t only (as in any
    MDP). A table where r_t depends on later tokens is accepted, but then
    reward-to-go, values and advantages no longer describe an MDP and their
    identities do not hold.

    Every field is checked on construction (ValueError naming the field): prompts and
    completions are tensors of non-negative integer ids, the completions distinct
    (each is summed over once); prompt_probs are finite, non-negative floats summing
    to 1 (within 1e-6); the mask is 0/1 of the completions' shape with at least one
    token per row; rewards are finite floats of one of the two shapes.
    """

    prompts: torch.Tensor
    prompt_probs: torch.Tensor
    completions: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    gamma: float = 1.0

    def __post_init__(self) -> None:
        _check_ids(self.prompts, "prompts", (1, 2))
        N = self.prompts.shape[0]
        if N < 1 or (self.prompts.dim() == 2 and self.prompts.shape[1] < 1):
            shape = tuple(self.prompts.shape)
            raise ValueError(
                "prompts must hold at least one prompt (of at least one token), "
                f"got shape {shape}"
            )
        check_tensor(self.prompt_probs, "prompt_probs", 1)
        if self.prompt_probs.shape[0] != N:
            raise ValueError(
                f"prompt_probs must have shape ({N},), "
                f"got {tuple(self.prompt_probs.shape)}"
            )
        check_finite(self.prompt_probs, "prompt_probs")
        if not self.prompt_probs.is_floating_point():
            raise ValueError(
                "prompt_probs must be a floating-point tensor, "
                f"got dtype {self.prompt_probs.dtype}"
            )
        if bool((self.prompt_probs < 0).any()):
            low = float(self.prompt_probs.min())
            raise ValueError(
                "prompt_probs must be non-negative and sum to 1, "
                f"got a negative entry {low:.6g}"
            )
        total = float(self.prompt_probs.sum())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"prompt_probs must be non-negative and sum to 1, got sum {total:.9g}"
            )
        _check_ids(self.completions, "completions", 2)
        K, L = self.completions.shape
        if K < 1 or L < 1:
            raise ValueError(
                "completions must hold at least one completion of at least one token, "
                f"got shape {(K, L)}"
            )
        check_tensor(self.mask, "mask")
        if self.mask.shape != (K, L):
            raise ValueError(
                f"mask must have shape {(K, L)} (that of completions), "
                f"got {tuple(self.mask.shape)}"
            )
        check_mask(self.mask, "mask")
        if bool((self.mask.sum(-1) == 0).any()):
            raise ValueError(
                "every enumerated completion needs at least one token in its mask"
            )
        _check_distinct(self.completions, self.mask)
        check_tensor(self.rewards, "rewards", (2, 3))
        if self.rewards.shape[:2] != (N, K) or (
            self.rewards.dim() == 3 and self.rewards.shape[2] != L
        ):
            raise ValueError(
                f"rewards must have shape {(N, K)} (terminal) "
                f"or {(N, K, L)} (per step), "
                f"got {tuple(self.rewards.shape)}"
            )
        if not self.rewards.is_floating_point():
            raise ValueError(
                "rewards must be a floating-point tensor, "
                f"got dtype {self.rewards.dtype}: pass floats "
                "(e.g. rewards.to(torch.get_default_dtype())), "
                "integer and bool tables are not converted silently"
            )
        check_finite(self.rewards, "rewards")
        check_unit_interval(self.gamma, "gamma")
        if N * K > MAX_ENUMERATION:
            raise ValueError(
                f"{N} prompts x {K} completions exceeds the limit of "
                f"{MAX_ENUMERATION} pairs"
            )

    # -- shapes --------------------------------------------------------------------
    @property
    def num_prompts(self) -> int:
        return self.prompts.shape[0]

    @property
    def num_completions(self) -> int:
        return self.completions.shape[0]

    @property
    def per_step(self) -> bool:
        """True when rewards are given per token `(N, K, L)`."""
        return self.rewards.dim() == 3

    def with_rewards(
        self, rewards: torch.Tensor, gamma: float | None = None
    ) -> ExactProblem:
        """The same problem with other rewards (e.g. shifted by a constant)."""
        return replace(
            self, rewards=rewards, gamma=self.gamma if gamma is None else gamma
        )

    def completion_index(self, completions: torch.Tensor) -> torch.Tensor:
        """Row of each given completion in the enumeration: `(B, L) -> (B,)` long.

        Completions must be in canonical form (padded with the same token as the
        enumeration).
        """
        _check_ids(completions, "completions", 2)
        if completions.shape[1] != self.completions.shape[1]:
            raise ValueError(
                f"completions must have length {self.completions.shape[1]}, "
                f"got {completions.shape[1]}"
            )
        base = int(max(int(self.completions.max()), int(completions.max()))) + 1
        powers = base ** torch.arange(self.completions.shape[1] - 1, -1, -1)
        table = (self.completions * powers).sum(-1)
        order = torch.argsort(table)
        codes = (completions.cpu().long() * powers).sum(-1)
        pos = torch.searchsorted(table[order], codes).clamp_max(len(order) - 1)
        idx = order[pos]
        if not bool((table[idx] == codes).all()):
            raise ValueError(
                "some completions are not in the enumeration (wrong padding or tokens?)"
            )
        return idx

    def rewards_for(
        self, prompt_ids: torch.Tensor, completions: torch.Tensor
    ) -> torch.Tensor:
        """Look up the reward of sampled pairs: `(B,)` terminal or `(B, L)` per-step
        rewards."""
        _check_ids(prompt_ids, "prompt_ids", 1)
        if prompt_ids.numel() and (
            int(prompt_ids.min()) < 0 or int(prompt_ids.max()) >= self.num_prompts
        ):
            raise ValueError(f"prompt_ids must lie in [0, {self.num_prompts - 1}]")
        k = self.completion_index(completions)
        return self.rewards[prompt_ids.cpu().long(), k].to(completions.device)

    def sample_prompts(
        self, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw `n` prompt indices from ρ: `(n,)` long."""
        check_positive_int(n, "n")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(
                "generator must be a torch.Generator or None, "
                f"got {type(generator).__name__}"
            )
        return torch.multinomial(
            self.prompt_probs, n, replacement=True, generator=generator
        )

    # -- per-step rewards and returns ----------------------------------------------
    def step_rewards(self) -> torch.Tensor:
        """Per-step rewards `(N, K, L)`; a terminal reward sits on the last real
        token."""
        m = self.mask
        if self.per_step:
            return self.rewards * m
        last = (m.cumsum(-1) == m.sum(-1, keepdim=True)) & (m > 0)
        return self.rewards.unsqueeze(-1) * last.to(self.rewards.dtype)

    def returns_to_go(self) -> torch.Tensor:
        """G_t = Σ_{s≥t} γ^(s-t) r_s for every (prompt, completion, t):
        `(N, K, L)`."""
        from ..reward_side.returns import returns_to_go

        r = self.step_rewards()
        N, K, L = r.shape
        m = self.mask.expand(N, K, L).reshape(N * K, L)
        return returns_to_go(r.reshape(N * K, L), m, gamma=self.gamma).reshape(N, K, L)

    def returns(self) -> torch.Tensor:
        """Trajectory return R(τ) = G_0 for each pair: `(N, K)`."""
        if not self.per_step:
            return self.rewards
        return self.returns_to_go()[..., 0]

    # -- the policy on every pair --------------------------------------------------
    def _pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        N, K = self.num_prompts, self.num_completions
        prompts = self.prompts.repeat_interleave(K, dim=0)
        completions = self.completions.repeat(N, 1)
        return prompts, completions

    def token_log_probs(self, policy: torch.nn.Module) -> torch.Tensor:
        """log π_θ(y_t | x, y_<t) for every pair and position, 0 where masked:
        `(N, K, L)`."""
        device = _check_policy(policy, "policy")
        prompts, completions = self._pairs()
        logits = policy(prompts.to(device), completions.to(device))
        logp = token_log_probs(logits, completions.to(device))
        N, K, L = self.num_prompts, self.num_completions, self.completions.shape[1]
        return logp.reshape(N, K, L) * self.mask.to(device)

    def log_probs(self, policy: torch.nn.Module) -> torch.Tensor:
        """log p_θ(y | x) for every pair: `(N, K)`."""
        return self.token_log_probs(policy).sum(-1)

    def probs(self, policy: torch.nn.Module) -> torch.Tensor:
        """p_θ(y | x) for every pair: `(N, K)`; each row sums to 1."""
        return self.log_probs(policy).exp()

    # -- exact objective and gradient ----------------------------------------------
    def objective(self, policy: torch.nn.Module) -> torch.Tensor:
        """J(θ) = Σ_x ρ(x) Σ_y p_θ(y | x) R(x, y) as a differentiable scalar."""
        p = self.probs(policy)
        R = self.returns().to(p.device)
        return (self.prompt_probs.to(p.device) * (p * R).sum(-1)).sum()

    def gradient(self, policy: torch.nn.Module) -> torch.Tensor:
        """The exact policy gradient ∇_θ J as a flat vector `(d,)` (see
        `flat_params`)."""
        return flat_grad(self.objective(policy), flat_params(policy)).detach()

    def success_probability(
        self, policy: torch.nn.Module, threshold: float = 0.5
    ) -> torch.Tensor:
        """Per-prompt probability that the return exceeds `threshold`: `(N,)`."""
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or math.isnan(threshold)
        ):
            raise ValueError(f"threshold must be a number, got {threshold!r}")
        with torch.no_grad():
            p = self.probs(policy)
            return (p * (self.returns().to(p.device) > threshold).to(p.dtype)).sum(-1)

    def kl(self, policy: torch.nn.Module, other: torch.nn.Module) -> torch.Tensor:
        """Per-prompt KL(p_θ(· | x) ‖ q(· | x)) over whole completions: `(N,)`.

        Differentiable in `policy`; `other` is evaluated without gradient.
        """
        _check_policy(other, "other")
        logp = self.log_probs(policy)
        with torch.no_grad():
            logq = self.log_probs(other).to(logp.device)
        return (logp.exp() * (logp - logq)).sum(-1)

    def expected_kl(
        self, policy: torch.nn.Module, other: torch.nn.Module
    ) -> torch.Tensor:
        """E_{x∼ρ} KL(p_θ ‖ q) (a scalar)."""
        kl = self.kl(policy, other)
        return (self.prompt_probs.to(kl.device) * kl).sum()

    # -- values and advantages -----------------------------------------------------
    def values(self, policy: torch.nn.Module) -> torch.Tensor:
        """Exact state values V(x, y_<t) = E[R_t | x, y_<t] at every position:
        `(N, K, L)`.

        Positions after the end of a completion (mask 0) get 0. Derived in chapter 3
        ("Values, action values and advantages").
        """
        with torch.no_grad():
            logp = self.token_log_probs(policy).cpu()
        G = self.returns_to_go()
        N, K, L = logp.shape
        # p(y_{>=t} | x, y_{<t}) = exp(sum_{s>=t} log pi_s)
        tail = torch.flip(torch.cumsum(torch.flip(logp, [-1]), -1), [-1]).exp()
        vocab = int(self.completions.max()) + 1
        # a float64 policy on a float32 problem
        dtype = torch.promote_types(G.dtype, logp.dtype)
        out = torch.zeros(N, K, L, dtype=dtype)
        code = torch.zeros(K, dtype=torch.long)
        for t in range(L):
            # group completions by their prefix y_{<t}; weighted sum of R_t within
            # each group
            uniq, inv = torch.unique(code, return_inverse=True)
            contrib = tail[:, :, t] * G[:, :, t]  # (N, K)
            sums = torch.zeros(N, len(uniq), dtype=dtype).index_add_(
                1, inv, contrib.to(dtype)
            )
            out[:, :, t] = sums[:, inv]
            code = code * vocab + self.completions[:, t]
        return out * self.mask

    def advantages(self, policy: torch.nn.Module) -> torch.Tensor:
        """Exact A(s_t, a_t) = r_t + γ V(s_{t+1}) - V(s_t): `(N, K, L)` (0 where
        masked).

        Its expectation under the policy at each state is 0. Derived in chapter 3
        ("Values, action values and advantages").
        """
        V = self.values(policy)
        r = self.step_rewards()
        V_next = torch.cat([V[..., 1:], torch.zeros_like(V[..., :1])], -1)
        return (r + self.gamma * V_next - V) * self.mask

    # -- exact moments of a single-sample score-function estimator -----------------
    def per_sample_gradients(
        self, policy: torch.nn.Module, weights: torch.Tensor
    ) -> torch.Tensor:
        """g(x, y) = ∇_θ Σ_t w_t(x, y) log π_θ(y_t | x, y_<t) for every pair.

        weights: `(N, K)` (one weight for the whole sequence) or `(N, K, L)` (per
        token), treated as constants. Returns `(N, K, P)`. Each row is what one sampled
        trajectory contributes to a REINFORCE-type estimate.
        """
        N, K, L = self.num_prompts, self.num_completions, self.completions.shape[1]
        _check_policy(policy, "policy")
        check_tensor(weights, "weights", (2, 3))
        if weights.shape[:2] != (N, K) or (
            weights.dim() == 3 and weights.shape[2] != L
        ):
            raise ValueError(
                f"weights must have shape {(N, K)} or {(N, K, L)}, "
                f"got {tuple(weights.shape)}"
            )
        if not weights.is_floating_point():
            raise ValueError(
                "weights must be a floating-point tensor, "
                f"got dtype {weights.dtype}: pass floats"
            )
        check_finite(weights, "weights")
        names = [n for n, p in policy.named_parameters() if p.requires_grad]
        params = {
            n: p.detach() for n, p in policy.named_parameters() if p.requires_grad
        }
        prompts, completions = self._pairs()
        device = next(policy.parameters()).device
        prompts, completions = prompts.to(device), completions.to(device)
        w = weights.detach().to(device)
        w = w.unsqueeze(-1).expand(N, K, L) if w.dim() == 2 else w
        m = self.mask.to(device)

        def surrogate(p):
            logits = torch.func.functional_call(policy, p, (prompts, completions))
            logp = token_log_probs(logits, completions).reshape(N, K, L) * m
            return (w * logp).sum(-1).reshape(-1)

        jac = torch.func.jacrev(surrogate)(params)
        return torch.cat([jac[n].reshape(N * K, -1) for n in names], 1).reshape(
            N, K, -1
        )

    def estimator_moments(
        self, policy: torch.nn.Module, weights: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        """Exact mean `(P,)` and total variance tr Cov[g] of a one-sample estimator.

        The trajectory is drawn as x ∼ ρ, y ∼ p_θ(· | x); `g` is
        `per_sample_gradients`. A mean of `n` independent samples has variance
        `total / n`.
        """
        g = self.per_sample_gradients(policy, weights)
        with torch.no_grad():
            w = (
                self.prompt_probs.to(g.device).unsqueeze(1) * self.probs(policy)
            ).unsqueeze(-1)  # (N,K,1)
        mean = (w * g).sum((0, 1))
        second = (w.squeeze(-1) * (g**2).sum(-1)).sum()
        return mean, float(second - (mean**2).sum())

    # -- trust-region quantities: the Fisher metric and the importance weight ------
    def fisher(self, policy: torch.nn.Module) -> torch.Tensor:
        """Exact Fisher information as `(P, P)`:

            F = Σ_x ρ(x) Σ_y p_θ(y | x) s s^T

        s = ∇_θ log p_θ(y | x) is the score of the whole completion, in the order of
        `flat_params`. F is the Hessian of

            θ ↦ E_{x∼ρ} KL(p_θ_old ‖ p_θ)

        at θ = θ_old: the metric of the trust region (see
        `policygrad.exact.trust_region`). Symmetric positive semi-definite; directions
        that shift a softmax row by a constant are in its null space. Raises
        ValueError if `P > MAX_FISHER_PARAMS`: the dense matrix needs `P**2` numbers
        (use `policygrad.exact.trust_region.fisher_vector_product` instead).
        """
        _check_policy(policy, "policy")
        params = flat_params(policy)
        P = sum(p.numel() for p in params)
        if P > MAX_FISHER_PARAMS:
            raise ValueError(
                f"policy has {P} parameters; a dense Fisher needs P**2 = {P * P} "
                "numbers of memory "
                f"(limit P <= {MAX_FISHER_PARAMS}); "
                "use trust_region.fisher_vector_product instead"
            )
        ones = torch.ones(self.num_prompts, self.num_completions, dtype=params[0].dtype)
        s = self.per_sample_gradients(policy, ones).reshape(-1, P)  # (N*K, P)
        with torch.no_grad():
            w = (
                (self.prompt_probs.to(s.device).unsqueeze(1) * self.probs(policy))
                .reshape(-1, 1)
                .to(s.dtype)
            )
        F = s.T @ (w * s)
        # exactly symmetric (the two halves differ only by rounding)
        return 0.5 * (F + F.T)

    def importance_weight_stats(
        self, policy: torch.nn.Module, sampler: torch.nn.Module
    ) -> dict:
        """Exact statistics of the sequence importance weight
        w = p_θ(y | x) / q(y | x), y ∼ q.

        `q` is `sampler`'s completion distribution. Per prompt (tensors `(N,)`):

        * `mean_per_prompt`: E_q[w] = Σ_{y: q>0} p_θ, exactly 1 when q > 0 wherever
          p_θ > 0 (below 1 otherwise: importance sampling then misses that mass);
        * `second_moment_per_prompt`: E_q[w^2] = Σ_y p_θ^2 / q;
        * `variance_per_prompt`: Var_q[w], the χ^2(p_θ ‖ q) divergence
          Σ_y p_θ^2 / q - 1 when the supports match;
        * `ess_fraction_per_prompt`: the effective-sample-size fraction
          E_q[w]^2 / E_q[w^2] (Kish), = 1 / (1 + Var) when the mean is 1: `n`
          weighted samples are worth about `n * ess_fraction` samples from p_θ;
        * `kl_policy_sampler_per_prompt`: KL(p_θ ‖ q);
        * `kl_sampler_policy_per_prompt`: KL(q ‖ p_θ).

        The same keys without `_per_prompt` are Python floats for the weight of a
        pair (x, y) drawn as x ∼ ρ, y ∼ q(· | x) (x has the same law under both,
        so w is unchanged): `mean` and `second_moment` are ρ-averages, `variance` is
        `second_moment - mean**2` and `ess_fraction` is `mean**2 / second_moment`;
        the two KLs are ρ-averages. Computed in log space:

            log E_q[w^2] = logsumexp_y(2 log p_θ - log q)

        No gradient flows.
        """
        for name, module in (("policy", policy), ("sampler", sampler)):
            if not isinstance(module, torch.nn.Module):
                raise ValueError(
                    f"{name} must be a torch.nn.Module, got {type(module).__name__}"
                )
        with torch.no_grad():
            logp = self.log_probs(policy)
            logq = self.log_probs(sampler).to(device=logp.device, dtype=logp.dtype)
            seen = logq > -math.inf  # completions the sampler can produce
            neg_inf = torch.full_like(logp, -math.inf)
            mean = torch.logsumexp(torch.where(seen, logp, neg_inf), -1).exp()
            second = torch.logsumexp(
                torch.where(seen, 2 * logp - logq, neg_inf), -1
            ).exp()
            p, q = logp.exp(), logq.exp()
            kl_pq = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)
            kl_qp = torch.where(q > 0, q * (logq - logp), torch.zeros_like(q)).sum(-1)
            rho = self.prompt_probs.to(device=logp.device, dtype=logp.dtype)
            out = {
                "mean_per_prompt": mean,
                "second_moment_per_prompt": second,
                "variance_per_prompt": second - mean**2,
                "ess_fraction_per_prompt": mean**2 / second,
                "kl_policy_sampler_per_prompt": kl_pq,
                "kl_sampler_policy_per_prompt": kl_qp,
            }
            m, m2 = float((rho * mean).sum()), float((rho * second).sum())
            out.update(
                mean=m,
                second_moment=m2,
                variance=m2 - m**2,
                ess_fraction=m**2 / m2,
                kl_policy_sampler=float((rho * kl_pq).sum()),
                kl_sampler_policy=float((rho * kl_qp).sum()),
            )
        return out


def objective_landscape(
    problem: ExactProblem,
    policy: torch.nn.Module,
    param: torch.nn.Parameter,
    index_a: tuple[int, ...],
    index_b: tuple[int, ...],
    grid_a,
    grid_b,
) -> np.ndarray:
    """Exact J on a grid over two entries of one parameter, all other parameters held
    fixed.

    Returns an array of shape `(len(grid_a), len(grid_b))`; the parameter is restored
    afterwards.
    """
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    _check_policy(policy, "policy")
    if not isinstance(param, torch.Tensor) or not any(
        param is p for p in policy.parameters()
    ):
        raise ValueError("param must be one of policy.parameters()")
    entries = []
    for name, index in (("index_a", index_a), ("index_b", index_b)):
        ok = isinstance(index, tuple) and len(index) == param.dim()
        for i, n in zip(index, param.shape, strict=False) if ok else ():
            ok = (
                ok
                and not isinstance(i, bool)
                and isinstance(i, (int, np.integer))
                and -n <= i < n
            )
        if not ok:
            raise ValueError(
                f"{name} must be a tuple of {param.dim()} valid indices into param "
                f"of shape {tuple(param.shape)}, "
                f"got {index!r}"
            )
        entries.append(
            tuple(int(i) % n for i, n in zip(index, param.shape, strict=True))
        )
    if entries[0] == entries[1]:
        raise ValueError(
            "index_a and index_b must name two different entries, "
            f"got {index_a!r} and {index_b!r}"
        )
    for name, grid in (("grid_a", grid_a), ("grid_b", grid_b)):
        try:
            values = [float(v) for v in grid]
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a sequence of numbers") from None
        if not values or not all(math.isfinite(v) for v in values):
            raise ValueError(f"{name} must be a non-empty sequence of finite numbers")
    saved = param.detach().clone()
    out = np.zeros((len(grid_a), len(grid_b)))
    try:
        with torch.no_grad():
            for i, a in enumerate(grid_a):
                for j, b in enumerate(grid_b):
                    param[index_a] = float(a)
                    param[index_b] = float(b)
                    out[i, j] = float(problem.objective(policy))
    finally:
        with torch.no_grad():
            param.copy_(saved)
    return out
