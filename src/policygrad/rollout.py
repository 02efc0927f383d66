"""The batch of sampled trajectories that every estimator consumes.

`Samples` is what a sampler returns; `RolloutBatch` is the full RL batch the training
loop builds from it — rewards, group ids, the loss mask, and the log-probabilities
under the sampler and the reference. `Samples` is introduced in chapter 2 ("The Monte
Carlo estimator and its surrogate loss"), `RolloutBatch` in chapter 4 ("The rollout
batch").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_finite, check_mask, check_positive_int, check_tensor

__all__ = ["Samples", "RolloutBatch"]


@dataclass(frozen=True)
class Samples:
    """Completions sampled from a policy, one row per trajectory.

    * `prompts`: `(B,)` prompt ids (or `(B, P)` prompt tokens for a language model);
    * `completions`: `(B, T)` token ids;
    * `mask`: `(B, T)` 1 on real completion tokens, 0 on padding;
    * `log_probs`: `(B, T)` per-token log-probabilities under the policy (no
      gradient, 0 on padding);
    * `truncated`: `(B,)` True where the completion hit the length limit before ending;
    * `sampler_log_probs`: `(B, T)` or None, the log-probabilities under the
      distribution the tokens were actually drawn from when it is not the policy's
      (a temperature other than 1, or top-k; 0 on padding). None: the same as
      `log_probs`.
    """

    prompts: torch.Tensor
    completions: torch.Tensor
    mask: torch.Tensor
    log_probs: torch.Tensor
    truncated: torch.Tensor
    sampler_log_probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_tensor(self.completions, "completions", 2)
        B, T = self.completions.shape
        check_tensor(self.prompts, "prompts", (1, 2))
        if self.prompts.shape[0] != B:
            raise ValueError(
                f"prompts has {self.prompts.shape[0]} rows but completions has {B}"
            )
        check_tensor(self.mask, "mask", 2)
        if self.mask.shape != (B, T):
            raise ValueError(
                f"mask must have shape {(B, T)}, got {tuple(self.mask.shape)}"
            )
        check_mask(self.mask.reshape(-1), "mask") if B > 0 else None
        check_tensor(self.log_probs, "log_probs", 2)
        if self.log_probs.shape != (B, T):
            raise ValueError(
                f"log_probs must have shape {(B, T)}, got {tuple(self.log_probs.shape)}"
            )
        check_tensor(self.truncated, "truncated", 1)
        if self.truncated.shape[0] != B:
            raise ValueError(
                f"truncated must have shape {(B,)}, got {tuple(self.truncated.shape)}"
            )
        if self.sampler_log_probs is not None:
            check_tensor(self.sampler_log_probs, "sampler_log_probs", 2)
            if self.sampler_log_probs.shape != (B, T):
                raise ValueError(
                    f"sampler_log_probs must have shape {(B, T)}, "
                    f"got {tuple(self.sampler_log_probs.shape)}"
                )

    def __len__(self) -> int:
        return self.completions.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """Number of real tokens per completion, `(B,)`."""
        return self.mask.sum(-1)


def _check_01(x: torch.Tensor, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    check_tensor(x, name, len(shape))
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{name} must contain only 0 and 1")
    return check_mask(x, name, allow_empty=True)


def _check_log_probs(
    x: torch.Tensor, name: str, shape: tuple[int, ...], mask: torch.Tensor
) -> None:
    check_tensor(x, name, 2)
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    # padding may hold anything: every consumer selects it away
    check_finite(x, name, mask=mask)
    if bool(((x.detach() > 1e-5) & (mask != 0)).any()):
        raise ValueError(
            f"{name} must be log-probabilities (<= 0) on real tokens; "
            "found a positive value"
        )


def _check_float(x: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
    check_tensor(x, name, len(shape))
    if tuple(x.shape) != shape or not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor of shape {shape}, "
            f"got {x.dtype} {tuple(x.shape)}"
        )


def _detach(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach()


def _rows(x: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else x[idx]


@dataclass(frozen=True)
class RolloutBatch:
    """One RL batch: `B` completions with all the reward and trajectory sides need.

    Shapes (`B` rows, prompt length `P`, completion width `T`):

    * `prompts (B, P)`, `completions (B, T)`: token ids;
    * `mask (B, T)`: 1 on the completion's real tokens (up to and including EOS), 0 on
      padding;
    * `loss_mask (B, T)`: 1 on tokens the loss trains on; a subset of `mask` (it differs
      once trajectories hold tokens the policy did not choose, e.g. tool outputs in
      chapter 11, planned);
    * `old_log_probs (B, T)`: log π_θ_old(y_t | s_t) under the policy being trained,
      as it was before this batch's first update — the denominator of every importance
      ratio; `policygrad.train.train` recomputes them with a teacher-forced forward pass
      of that policy (as verl does), no gradient;
    * `rollout_log_probs (B, T)` or None: the same under the *sampler* (what `sample`
      reported while generating). In exact arithmetic they equal `old_log_probs`; in
      practice a KV-cached sampler, a different kernel or precision, or an inference
      engine differ from the trainer, and the gap (`rollout_kl` in
      `policygrad.train.METRICS`) is the sampler/trainer mismatch of chapter 10
      (planned);
    * `ref_log_probs (B, T)` or None: the same under a frozen reference policy;
    * `rewards (B,)` outcome rewards, or `(B, T)` per-step rewards (0 where `mask`
      is 0);
    * `group_ids (B,)`: integer id of the prompt each row was sampled for. Rows of a
      group are contiguous and every group has the same size `G` (`group_size`);
    * `truncated (B,)`: True where the completion hit the length limit before EOS;
    * `values (B, T)` or None: a critic's V(s_t) at sampling time (methods with a value
      model; 0 on padding);
    * `greedy_rewards (B,)` or None: the reward of the greedy (argmax) completion of
      each row's prompt, the same on every row of a group (ReMax's baseline;
      `policygrad.train.train` fills it for a method with `greedy_baseline`);
    * `reward_components (B, K)` or None: K reward components of each completion (e.g.
      correctness and format, in the order of `policygrad.lm.Task.reward_names`),
      whose weighted sum is `rewards` (GDPO reads them);
    * `sum_pi_squared (B, T)` or None: Σ_v π_θ_old(v | x, y_<t)² at each position
      (anything on padding), verl's `sum_pi_squared` for the optimal token baseline
      (filled for a method with `needs_sum_pi_squared`);
    * `entropies (B, T)` or None: the entropy H(π_θ_old(· | x, y_<t)) of the sampling
      policy's next-token distribution at each position, detached (anything on
      padding; the 80/20 filter of chapter 9 reads it; filled for a method with
      `needs_entropy`).

    Everything is validated on construction (ValueError naming the field): shapes, 0/1
    masks, the loss mask inside the mask, finite rewards, log-probabilities and values
    on real tokens (padding may hold anything: every function selects it away), equal
    contiguous groups. A row whose loss mask is empty is allowed: it contributes nothing
    to a loss. Build one from sampler output with `from_samples`.
    """

    prompts: torch.Tensor
    completions: torch.Tensor
    mask: torch.Tensor
    loss_mask: torch.Tensor
    old_log_probs: torch.Tensor
    ref_log_probs: torch.Tensor | None
    rewards: torch.Tensor
    group_ids: torch.Tensor
    truncated: torch.Tensor
    values: torch.Tensor | None = None
    rollout_log_probs: torch.Tensor | None = None
    greedy_rewards: torch.Tensor | None = None
    reward_components: torch.Tensor | None = None
    sum_pi_squared: torch.Tensor | None = None
    entropies: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_tensor(self.completions, "completions", 2)
        if self.completions.is_floating_point() or self.completions.dtype == torch.bool:
            raise ValueError(
                "completions must hold integer token ids, "
                f"got dtype {self.completions.dtype}"
            )
        B, T = self.completions.shape
        if B < 1 or T < 1:
            raise ValueError(
                "a batch needs at least one row and one token, "
                f"got completions of shape {(B, T)}"
            )
        check_tensor(self.prompts, "prompts", 2)
        if self.prompts.shape[0] != B:
            raise ValueError(
                f"prompts has {self.prompts.shape[0]} rows but completions has {B}"
            )
        _check_01(self.mask, "mask", (B, T))
        _check_01(self.loss_mask, "loss_mask", (B, T))
        if bool(((self.loss_mask != 0) & (self.mask == 0)).any()):
            raise ValueError(
                "loss_mask must be 0 wherever mask is 0 (padding is never trained on)"
            )
        _check_log_probs(self.old_log_probs, "old_log_probs", (B, T), self.mask)
        for name in ("ref_log_probs", "rollout_log_probs"):
            if getattr(self, name) is not None:
                _check_log_probs(getattr(self, name), name, (B, T), self.mask)
        check_tensor(self.rewards, "rewards", (1, 2))
        if self.rewards.shape[0] != B or (
            self.rewards.dim() == 2 and self.rewards.shape[1] != T
        ):
            raise ValueError(
                f"rewards must have shape ({B},) or ({B}, {T}), "
                f"got {tuple(self.rewards.shape)}"
            )
        if not self.rewards.is_floating_point():
            raise ValueError(
                "rewards must be a floating-point tensor, "
                f"got dtype {self.rewards.dtype}"
            )
        check_finite(self.rewards, "rewards")
        if self.rewards.dim() == 2 and bool(
            ((self.rewards != 0) & (self.mask == 0)).any()
        ):
            raise ValueError("per-step rewards must be 0 on padding (where mask is 0)")
        check_tensor(self.group_ids, "group_ids", 1)
        if (
            self.group_ids.shape[0] != B
            or self.group_ids.is_floating_point()
            or self.group_ids.dtype == torch.bool
        ):
            raise ValueError(
                f"group_ids must be an integer tensor of shape ({B},), "
                f"got {self.group_ids.dtype} {tuple(self.group_ids.shape)}"
            )
        ids = self.group_ids.tolist()
        starts = [0] + [i for i in range(1, B) if ids[i] != ids[i - 1]]
        if len(set(ids)) != len(starts):
            raise ValueError(
                "rows of a group must be contiguous: "
                "a group id reappears after another group"
            )
        sizes = {b - a for a, b in zip(starts, starts[1:] + [B], strict=True)}
        if len(sizes) != 1:
            raise ValueError(
                f"every group must have the same size, got sizes {sorted(sizes)}"
            )
        check_tensor(self.truncated, "truncated", 1)
        if self.truncated.shape[0] != B or self.truncated.dtype != torch.bool:
            raise ValueError(f"truncated must be a bool tensor of shape ({B},)")
        if self.values is not None:
            check_tensor(self.values, "values", 2)
            if (
                tuple(self.values.shape) != (B, T)
                or not self.values.is_floating_point()
            ):
                raise ValueError(
                    f"values must be a floating-point tensor of shape {(B, T)}, "
                    f"got {tuple(self.values.shape)}"
                )
            check_finite(self.values, "values", mask=self.mask)
        if self.greedy_rewards is not None:
            _check_float(self.greedy_rewards, "greedy_rewards", (B,))
            check_finite(self.greedy_rewards, "greedy_rewards")
            per_group = self.greedy_rewards.detach().reshape(-1, B // len(starts))
            if bool((per_group != per_group[:, :1]).any()):
                raise ValueError(
                    "greedy_rewards must be the same on every row of a group "
                    "(the reward of the prompt's greedy completion)"
                )
        if self.reward_components is not None:
            check_tensor(self.reward_components, "reward_components", 2)
            K = self.reward_components.shape[1]
            if K < 1:
                raise ValueError("reward_components needs at least one column")
            _check_float(self.reward_components, "reward_components", (B, K))
            check_finite(self.reward_components, "reward_components")
        if self.sum_pi_squared is not None:
            _check_float(self.sum_pi_squared, "sum_pi_squared", (B, T))
            check_finite(self.sum_pi_squared, "sum_pi_squared", mask=self.mask)
            bad = (self.sum_pi_squared.detach() < 0) | (
                self.sum_pi_squared.detach() > 1 + 1e-5
            )
            if bool((bad & (self.mask != 0)).any()):
                raise ValueError(
                    "sum_pi_squared must lie in [0, 1] on real tokens (a sum of "
                    "squared probabilities)"
                )
        if self.entropies is not None:
            _check_float(self.entropies, "entropies", (B, T))
            check_finite(self.entropies, "entropies", mask=self.mask)
            if bool(((self.entropies.detach() < -1e-6) & (self.mask != 0)).any()):
                raise ValueError(
                    "entropies must be >= 0 on real tokens (an entropy is never "
                    "negative)"
                )

    @classmethod
    def from_samples(
        cls,
        samples: Samples,
        rewards: torch.Tensor,
        *,
        group_size: int = 1,
        ref_log_probs: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        old_log_probs: torch.Tensor | None = None,
        greedy_rewards: torch.Tensor | None = None,
        reward_components: torch.Tensor | None = None,
        sum_pi_squared: torch.Tensor | None = None,
        entropies: torch.Tensor | None = None,
    ) -> RolloutBatch:
        """Wrap sampler output, laid out as by `sample(group_size=G)`.

        Rows `i*G .. i*G+G-1` form group `i`. `loss_mask` defaults to the completion
        mask; `rollout_log_probs` are the sampler's log-probs
        (`samples.sampler_log_probs` when set, else `samples.log_probs`);
        `old_log_probs` default to the policy's, `samples.log_probs` (pass the
        trainer's recomputed ones, as `policygrad.train.train` does); `values` are a
        critic's values of the sampled states; `greedy_rewards`, `reward_components`,
        `sum_pi_squared` and `entropies` go to the fields of those names
        (None: absent). Tensors that the batch keeps are detached.
        """
        if not isinstance(samples, Samples):
            raise ValueError(f"samples must be a Samples, got {type(samples).__name__}")
        G = check_positive_int(group_size, "group_size")
        B = len(samples)
        if B % G:
            raise ValueError(
                f"group_size={G} does not divide the batch of {B} completions"
            )
        device = samples.completions.device
        return cls(
            prompts=samples.prompts,
            completions=samples.completions,
            mask=samples.mask,
            loss_mask=samples.mask if loss_mask is None else loss_mask,
            old_log_probs=(
                samples.log_probs if old_log_probs is None else old_log_probs
            ).detach(),
            ref_log_probs=None if ref_log_probs is None else ref_log_probs.detach(),
            rewards=rewards,
            group_ids=torch.arange(B // G, device=device).repeat_interleave(G),
            truncated=samples.truncated,
            values=None if values is None else values.detach(),
            rollout_log_probs=(
                samples.log_probs
                if samples.sampler_log_probs is None
                else samples.sampler_log_probs
            ).detach(),
            greedy_rewards=_detach(greedy_rewards),
            reward_components=_detach(reward_components),
            sum_pi_squared=_detach(sum_pi_squared),
            entropies=_detach(entropies),
        )

    def __len__(self) -> int:
        return self.completions.shape[0]

    @property
    def group_size(self) -> int:
        """`G`: completions per prompt (1 when every row has its own group)."""
        return len(self) // len(torch.unique(self.group_ids))

    @property
    def num_groups(self) -> int:
        return len(self) // self.group_size

    @property
    def lengths(self) -> torch.Tensor:
        """Number of real tokens per completion (EOS included), `(B,)`."""
        return self.mask.sum(-1)

    @property
    def sequence_rewards(self) -> torch.Tensor:
        """The return R(τ) of each row, `(B,)` (per-step rewards are summed)."""
        return self.rewards if self.rewards.dim() == 1 else self.rewards.sum(-1)

    def select(self, rows: torch.Tensor) -> RolloutBatch:
        """The sub-batch of `rows` (a 1-D index tensor), e.g. a minibatch.

        Group ids are kept; the selection must still form equal contiguous groups
        (select whole groups).
        """
        check_tensor(rows, "rows", 1)
        if rows.numel() == 0:
            raise ValueError("rows selects no row")
        idx = rows.to(self.completions.device)
        return RolloutBatch(
            prompts=self.prompts[idx],
            completions=self.completions[idx],
            mask=self.mask[idx],
            loss_mask=self.loss_mask[idx],
            old_log_probs=self.old_log_probs[idx],
            ref_log_probs=None
            if self.ref_log_probs is None
            else self.ref_log_probs[idx],
            rewards=self.rewards[idx],
            group_ids=self.group_ids[idx],
            truncated=self.truncated[idx],
            values=None if self.values is None else self.values[idx],
            rollout_log_probs=None
            if self.rollout_log_probs is None
            else self.rollout_log_probs[idx],
            greedy_rewards=_rows(self.greedy_rewards, idx),
            reward_components=_rows(self.reward_components, idx),
            sum_pi_squared=_rows(self.sum_pi_squared, idx),
            entropies=_rows(self.entropies, idx),
        )
