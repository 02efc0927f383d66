"""Enumerable toy tasks: a contextual bandit and short token-sequence tasks with exact
rewards.

Each builder returns a `policygrad.exact.ExactProblem` (prompts are ids `0..N-1` with
a uniform distribution) together with the `policygrad.toy.TabularPolicy` shape it
needs. Introduced in chapter 1 ("Toy tasks whose every completion we can list").
"""

from __future__ import annotations

import torch

from .._checks import check_positive_int, check_unit_interval
from ..exact.enumeration import ExactProblem, enumerate_completions

__all__ = ["contextual_bandit", "target_sequence_task", "variable_length_task"]

# the reward structures target_sequence_task knows
_TARGET_REWARDS = ("exact_match", "fraction", "per_step")


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


def _check_sizes(**sizes: int) -> None:
    """Each size a positive integer; a vocabulary (or arm count) of at least 2."""
    for name, value in sizes.items():
        check_positive_int(value, name)
        if name in ("vocab_size", "num_arms") and value < 2:
            raise ValueError(f"{name} must be at least 2, got {value}")


def _uniform_prompts(
    num_prompts: int, completions, mask, rewards, gamma: float = 1.0
) -> ExactProblem:
    """Prompt ids `0..num_prompts-1` with a uniform distribution, the given completions
    and rewards."""
    return ExactProblem(
        prompts=torch.arange(num_prompts),
        prompt_probs=torch.full((num_prompts,), 1.0 / num_prompts),
        completions=completions,
        mask=mask,
        rewards=rewards,
        gamma=gamma,
    )


def contextual_bandit(
    num_contexts: int = 2,
    num_arms: int = 3,
    *,
    rewards: torch.Tensor | None = None,
    seed: int = 0,
) -> ExactProblem:
    """A contextual bandit: a prompt (context) `x`, one action `a` (a one-token
    completion), reward `R(x, a)`.

    With `rewards=None` the table `(num_contexts, num_arms)` is drawn from a seeded
    standard normal; pass a table to choose it. Use with
    `TabularPolicy(num_contexts, num_arms, max_len=1)`.
    """
    _check_sizes(num_contexts=num_contexts, num_arms=num_arms)
    _check_seed(seed)
    if rewards is None:
        g = torch.Generator().manual_seed(seed)
        rewards = torch.randn(num_contexts, num_arms, generator=g)
    elif not isinstance(rewards, torch.Tensor):
        kind = type(rewards).__name__
        raise ValueError(
            "rewards must be a torch.Tensor of shape "
            f"{(num_contexts, num_arms)}, got {kind}"
        )
    elif tuple(rewards.shape) != (num_contexts, num_arms):
        raise ValueError(
            f"rewards must have shape {(num_contexts, num_arms)}, "
            f"got {tuple(rewards.shape)}"
        )
    elif rewards.dtype == torch.bool or rewards.is_complex():
        raise ValueError(f"rewards must hold real numbers, got dtype {rewards.dtype}")
    completions, mask = enumerate_completions(num_arms, 1)
    return _uniform_prompts(
        num_contexts, completions, mask, rewards.to(torch.get_default_dtype())
    )


def target_sequence_task(
    num_prompts: int = 2,
    vocab_size: int = 3,
    length: int = 3,
    *,
    reward: str = "fraction",
    gamma: float = 1.0,
    seed: int = 0,
) -> tuple[ExactProblem, torch.Tensor]:
    """Each prompt has a secret target sequence; the completion is rewarded for
    matching it.

    `reward` chooses the reward structure (all verifiable, all exact):

    * `"exact_match"`: terminal R = 1[y = y*] (sparse, like a checked final answer);
    * `"fraction"`: terminal R = (1/L) Σ_t 1[y_t = y*_t];
    * `"per_step"`: per-step r_t = (1/L) 1[y_t = y*_t] — the same total as
      `"fraction"`, but revealed token by token, so reward-to-go can use it.

    Returns `(problem, targets)` with `targets (num_prompts, length)`. Use with
    `TabularPolicy(num_prompts, vocab_size, length)`.
    """
    _check_sizes(num_prompts=num_prompts, vocab_size=vocab_size, length=length)
    check_unit_interval(gamma, "gamma")
    _check_seed(seed)
    if not isinstance(reward, str) or reward not in _TARGET_REWARDS:
        raise ValueError(
            f"reward must be 'exact_match', 'fraction' or 'per_step', got {reward!r}"
        )
    completions, mask = enumerate_completions(vocab_size, length)
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, vocab_size, (num_prompts, length), generator=g)
    # (N, K, L)
    match = (completions.unsqueeze(0) == targets.unsqueeze(1)).to(
        torch.get_default_dtype()
    )
    if reward == "exact_match":
        rewards = match.prod(-1)
    elif reward == "fraction":
        rewards = match.mean(-1)
    else:
        rewards = match / length
    return _uniform_prompts(num_prompts, completions, mask, rewards, gamma), targets


def variable_length_task(
    num_prompts: int = 3,
    vocab_size: int = 3,
    max_len: int = 4,
    *,
    answer_lengths: list[int] | None = None,
    seed: int = 0,
) -> tuple[ExactProblem, torch.Tensor]:
    """Completions of variable length: token 0 is EOS, each prompt has one correct
    completion.

    Prompt `x`'s answer is `answer_lengths[x]` tokens drawn from `1..vocab_size-1`
    followed by EOS; R(x, y) = 1 if `y` is exactly that (0/1, exact match, like a
    checked final answer). Completions end at their first EOS or after `max_len`
    tokens (then they are cut off, never correct), so wrong answers come in every
    length from 1 to `max_len` — the setting where per-sequence length normalisation
    matters. `answer_lengths` defaults to `1, 2, ...` cycling below `max_len`.
    Returns `(problem, answers)` with `answers (num_prompts, max_len)` in canonical
    form (padded with EOS). Use with
    `TabularPolicy(num_prompts, vocab_size, max_len, eos=0)`. Used in chapter 7
    ("Length normalisation and the length of wrong answers").
    """
    check_positive_int(num_prompts, "num_prompts")
    check_positive_int(max_len, "max_len")
    check_positive_int(vocab_size, "vocab_size")
    _check_seed(seed)
    if vocab_size < 2:
        raise ValueError(
            f"vocab_size must be at least 2 (EOS and one other token), got {vocab_size}"
        )
    if max_len < 2:
        raise ValueError(
            "max_len must be at least 2 so that an answer has a token and EOS, "
            f"got {max_len}"
        )
    if answer_lengths is None:
        answer_lengths = [1 + x % (max_len - 1) for x in range(num_prompts)]
    if (
        not isinstance(answer_lengths, (list, tuple))
        or len(answer_lengths) != num_prompts
    ):
        raise ValueError(
            f"answer_lengths must be a list of {num_prompts} lengths, "
            f"got {answer_lengths!r}"
        )
    for n in answer_lengths:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_len - 1:
            raise ValueError(
                f"every answer length must be an integer in [1, {max_len - 1}], "
                f"got {n!r}"
            )
    completions, mask = enumerate_completions(vocab_size, max_len, eos=0)
    g = torch.Generator().manual_seed(seed)
    answers = torch.zeros(num_prompts, max_len, dtype=torch.long)
    for x, n in enumerate(answer_lengths):
        answers[x, :n] = torch.randint(1, vocab_size, (n,), generator=g)
    rewards = (
        (completions.unsqueeze(0) == answers.unsqueeze(1))
        .all(-1)
        .to(torch.get_default_dtype())
    )
    return _uniform_prompts(num_prompts, completions, mask, rewards), answers
