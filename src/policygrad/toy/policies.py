"""The tabular softmax policy: one free logit vector per (prompt, completion prefix).

It follows the policy protocol of chapter 1 ("A language model is a policy over token
sequences"): `policy(prompts, completions)` returns next-token logits `(B, T, V)`;
`policy.sample(prompts, generator=...)` returns a `policygrad.rollout.Samples`.
Introduced in chapter 1 ("Toy tasks whose every completion we can list").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_positive_int, check_tensor
from ..rollout import Samples
from ..trajectory_side.logprobs import token_log_probs

__all__ = ["TabularPolicy"]


class TabularPolicy(nn.Module):
    """A softmax policy with one free logit vector per (prompt, completion prefix).

    It can represent *every* distribution over completions of length `max_len`, so
    nothing in the book's toy results is an artefact of a restricted model class.
    Parameters: `logits_table` of shape `(num_prompts, num_prefixes, vocab_size)`
    where `num_prefixes = sum_{t < max_len} V^t`.

    With `eos` set, a completion ends at its first `eos` token; later positions are
    padding (filled with `eos`, mask 0) and never sampled. A contextual bandit is
    `max_len=1`. Introduced in chapter 1 ("A language model is a policy over token
    sequences").
    """

    def __init__(
        self,
        num_prompts: int,
        vocab_size: int,
        max_len: int,
        *,
        eos: int | None = None,
        init_scale: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.num_prompts = check_positive_int(num_prompts, "num_prompts")
        self.vocab_size = check_positive_int(vocab_size, "vocab_size")
        self.max_len = check_positive_int(max_len, "max_len")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        if eos is not None and (
            isinstance(eos, bool)
            or not isinstance(eos, int)
            or not 0 <= eos < vocab_size
        ):
            raise ValueError(
                f"eos must be a token id in [0, {vocab_size - 1}], got {eos!r}"
            )
        scale_ok = isinstance(init_scale, (int, float)) and not isinstance(
            init_scale, bool
        )
        if not scale_ok or not math.isfinite(init_scale) or init_scale < 0:
            raise ValueError(
                f"init_scale must be a finite number >= 0, got {init_scale!r}"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(
                "generator must be a torch.Generator or None, "
                f"got {type(generator).__name__}"
            )
        self.eos = eos
        self.num_prefixes = sum(vocab_size**t for t in range(max_len))
        if self.num_prompts * self.num_prefixes * vocab_size > 5_000_000:
            raise ValueError(
                "TabularPolicy would need more than 5M logits "
                f"({num_prompts} prompts x {self.num_prefixes} prefixes "
                f"x {vocab_size} tokens); "
                "use a smaller vocabulary or length"
            )
        init = (
            torch.randn(num_prompts, self.num_prefixes, vocab_size, generator=generator)
            * init_scale
        )
        self.logits_table = nn.Parameter(init)
        # offset of the first prefix of each length t: sum_{k<t} V^k
        offsets = torch.tensor(
            [sum(vocab_size**k for k in range(t)) for t in range(max_len)]
        )
        self.register_buffer("_offsets", offsets, persistent=False)

    def prefix_index(self, completions: torch.Tensor) -> torch.Tensor:
        """Index of the prefix y_<t for every position: `(B, T) -> (B, T)`."""
        B, T = completions.shape
        idx = torch.zeros(B, T, dtype=torch.long, device=completions.device)
        code = torch.zeros(B, dtype=torch.long, device=completions.device)
        for t in range(T):
            idx[:, t] = self._offsets[t] + code
            code = code * self.vocab_size + completions[:, t].long()
        return idx

    def state_index(
        self, prompts: torch.Tensor, completions: torch.Tensor
    ) -> torch.Tensor:
        """One integer per state s_t = (x, y_<t): `(B, T)`, in
        `[0, num_prompts * num_prefixes)`."""
        self._check_inputs(prompts, completions)
        return prompts.long().unsqueeze(1) * self.num_prefixes + self.prefix_index(
            completions
        )

    def _check_inputs(
        self, prompts: torch.Tensor, completions: torch.Tensor | None = None
    ) -> None:
        check_tensor(prompts, "prompts", 1)
        if (
            prompts.dtype == torch.bool
            or prompts.is_floating_point()
            or prompts.is_complex()
        ):
            raise ValueError(
                f"prompts must be integer prompt ids, got dtype {prompts.dtype}"
            )
        if prompts.numel() and (
            int(prompts.min()) < 0 or int(prompts.max()) >= self.num_prompts
        ):
            raise ValueError(f"prompt ids must lie in [0, {self.num_prompts - 1}]")
        if completions is not None:
            check_tensor(completions, "completions", 2)
            if (
                completions.dtype == torch.bool
                or completions.is_floating_point()
                or completions.is_complex()
            ):
                raise ValueError(
                    "completions must be integer token ids, "
                    f"got dtype {completions.dtype}"
                )
            if completions.shape[0] != prompts.shape[0]:
                raise ValueError(
                    f"prompts has {prompts.shape[0]} rows "
                    f"but completions has {completions.shape[0]}"
                )
            if completions.shape[1] > self.max_len:
                raise ValueError(
                    f"completions are longer ({completions.shape[1]}) "
                    f"than max_len={self.max_len}"
                )
            if completions.numel() and (
                int(completions.min()) < 0 or int(completions.max()) >= self.vocab_size
            ):
                raise ValueError(
                    f"completion tokens must lie in [0, {self.vocab_size - 1}]"
                )

    def forward(self, prompts: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
        """Next-token logits at every completion position. prompts `(B,)`, completions
        `(B, T)` -> `(B, T, V)`."""
        self._check_inputs(prompts, completions)
        idx = self.prefix_index(completions)
        return self.logits_table[prompts.long().unsqueeze(1), idx]

    logits = forward

    def completion_mask(self, completions: torch.Tensor) -> torch.Tensor:
        """1 up to and including the first `eos` (all ones without `eos`).
        `(B, T) -> (B, T)` float."""
        if self.eos is None:
            return torch.ones_like(completions, dtype=torch.get_default_dtype())
        is_eos = (completions == self.eos).long()
        # number of eos strictly before t
        ended_before = torch.cumsum(is_eos, dim=1) - is_eos
        return (ended_before == 0).to(torch.get_default_dtype())

    @torch.no_grad()
    def sample(
        self, prompts: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> Samples:
        """Sample one completion per prompt id (repeat ids for a group).
        `prompts (B,)`."""
        self._check_inputs(prompts)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(
                "generator must be a torch.Generator or None, "
                f"got {type(generator).__name__}"
            )
        B, V = prompts.shape[0], self.vocab_size
        device = self.logits_table.device
        prompts = prompts.to(device)
        tokens = torch.zeros(B, self.max_len, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        code = torch.zeros(B, dtype=torch.long, device=device)
        for t in range(self.max_len):
            logits = self.logits_table[prompts, self._offsets[t] + code]  # (B, V)
            probs = torch.softmax(logits, dim=-1)
            # draw on the generator's device so a CPU-seeded generator gives the same
            # samples on any device
            gen_device = generator.device if generator is not None else probs.device
            tok = (
                torch.multinomial(probs.to(gen_device), 1, generator=generator)
                .squeeze(1)
                .to(device)
            )
            if self.eos is not None:
                tok = torch.where(done, torch.full_like(tok, self.eos), tok)
                done = done | (tok == self.eos)
            tokens[:, t] = tok
            code = code * V + tok
        mask = self.completion_mask(tokens)
        logp = token_log_probs(self.logits(prompts, tokens), tokens) * mask
        truncated = (
            ~done
            if self.eos is not None
            else torch.zeros(B, dtype=torch.bool, device=device)
        )
        return Samples(
            prompts=prompts,
            completions=tokens,
            mask=mask,
            log_probs=logp,
            truncated=truncated,
        )
