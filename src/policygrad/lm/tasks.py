"""Tasks with verifiable rewards for a tiny character-level language model.

A task turns a *problem* (a prompt string and its ground-truth answer) into tokens for a
policy, and a sampled completion back into a reward R(x, y) ∈ {0, 1} by exact match.
Three tasks:

    task (name)  prompt (text)  answer    answer length (chars)  P  T
    -----------  -------------  --------  ---------------------  -  -
    addition     "07+35="       "42"      1-3 (3 with padding)   7  4
    reverse      "abdcca="      "accdba"  6                      8  7
    prefix       "cabzazb="     "cab"     1-6, uniform           9  8

One variant (`TASK_VARIANTS`, also built by `make_task`): `addition_format`
(`FormatAdditionTask`), the addition problems with two reward components, correctness
and format, for GDPO.

`P` is `Task.prompt_length` (BOS + prompt characters; every prompt of a task has the
same length, so prompts batch without padding) and `T` is `Task.max_new_tokens` (room
for the longest answer and its EOS; `prefix` leaves one more so a policy can copy the
whole string and still stop).

Vocabularies (token ids in order; specials first, then characters, then reserved
extras):

* every tokenizer: `0 <pad>`, `1 <bos>`, `2 <eos>`, `3 =` (the separator that ends a
  prompt);
* `addition`: `4..13` the digits `0-9`, `14 +` — 15 tokens;
* `reverse`: `4..7` = `a b c d` — 8 tokens;
* `prefix`: `4..7` = `a b c z` — 8 tokens;
* `shared_tokenizer`: `0-9 + a b c d z` after the specials — 20 tokens, one model for
  all tasks.

Tool tokens (`TOOL_TOKENS`) are reserved for the agentic chapter: pass them as
`extra_specials`; they get the ids after the characters, so adding them never renumbers
an existing token.

Rewards read a completion up to its first EOS and ignore everything after it (the
sampler's padding). They never raise on a malformed completion: they return 0 and
`Task.reward_with_reason` says why (one of `REASONS`). Held-out evaluation problems are
separated from training problems by a hash of the prompt (`is_heldout`), so the split is
fixed, needs no stored list, and is the same on every machine. Introduced in chapter 1
("A language model is a policy over token sequences").
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from .._checks import check_positive_int, check_tensor
from ..exact.enumeration import MAX_ENUMERATION, ExactProblem, enumerate_completions
from ..rollout import Samples

__all__ = [
    "TOOL_TOKENS",
    "REASONS",
    "HELDOUT_BUCKETS",
    "CharTokenizer",
    "shared_tokenizer",
    "Problem",
    "Task",
    "AdditionTask",
    "FormatAdditionTask",
    "ReversalTask",
    "PrefixCopyTask",
    "TASKS",
    "TASK_VARIANTS",
    "make_task",
    "is_heldout",
    "evaluate",
    "success_probabilities",
    "exact_problem",
]

#: Special tokens reserved for tool calls (agentic chapter). Not in any default
#: vocabulary: pass them as `CharTokenizer(..., extra_specials=TOOL_TOKENS)`.
TOOL_TOKENS = ("<tool>", "</tool>", "<obs>", "</obs>")

#: Every reason `Task.reward_with_reason` can give, with its meaning.
REASONS = {
    "ok": "exact match with the answer",
    "no eos": "no EOS token: the completion never stopped "
    "(or was truncated at the length limit)",
    "empty": "EOS is the first token: nothing was answered",
    "invalid id": "a token id outside the vocabulary before EOS",
    "pad inside": "a PAD token before EOS",
    "special token": "BOS, the separator or a reserved special token before EOS",
    "not a number": "(addition) the answer contains a character that is not a digit",
    "wrong format": "(addition) the right number, written differently "
    "(leading zeros / missing padding)",
    "invalid character": "(reverse, prefix) a character outside the task's alphabet",
    "wrong length": "(reverse, prefix) well-formed, but of the wrong length",
    "wrong answer": "well-formed, but not the answer",
}

#: A prompt is held out for evaluation iff its hash is 0 modulo this number (1/8 of
#: every problem space).
HELDOUT_BUCKETS = 8


# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------
class CharTokenizer:
    """A character tokenizer with special tokens.

    Ids: `0 <pad>`, `1 <bos>`, `2 <eos>`, `3` the separator `sep` (a one-character token
    written as itself, e.g. `"="`), then one id per character of `chars` in the given
    order, then one id per name in `extra_specials` (for example `TOOL_TOKENS`). Extras
    come last so that adding them keeps every other id.

    In text, specials are written by name (`"<bos>"`), so `encode("<bos>07+35=")` works;
    `chars` may therefore not contain `<` or `>`. Attributes: `pad_id`, `bos_id`,
    `eos_id`, `sep_id`, `vocab_size`, `vocab` (the token strings by id), `chars`,
    `extra_ids` (name -> id).
    """

    PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"

    def __init__(
        self, chars: str, *, sep: str = "=", extra_specials: Sequence[str] = ()
    ) -> None:
        if not isinstance(chars, str) or not chars:
            raise ValueError(
                "chars must be a non-empty string of distinct characters, "
                f"got {chars!r}"
            )
        if len(set(chars)) != len(chars):
            dup = sorted(c for c, k in Counter(chars).items() if k > 1)
            raise ValueError(f"chars must be distinct; repeated: {dup}")
        if not isinstance(sep, str) or len(sep) != 1:
            raise ValueError(f"sep must be a single character, got {sep!r}")
        if sep in chars:
            raise ValueError(f"the separator {sep!r} must not also be in chars")
        for c in chars + sep:
            if c in "<>" or c.isspace():
                raise ValueError(
                    f"character {c!r} is not allowed in a vocabulary "
                    "('<', '>' mark specials)"
                )
        if isinstance(extra_specials, str):
            raise ValueError(
                "extra_specials must be a sequence of names such as ('<tool>',), "
                "not a string"
            )
        extras = tuple(extra_specials)
        for name in extras:
            if not (
                isinstance(name, str)
                and len(name) >= 3
                and name[0] == "<"
                and name[-1] == ">"
            ):
                raise ValueError(
                    f"extra special tokens must be written '<name>', got {name!r}"
                )
            if "<" in name[1:-1] or ">" in name[1:-1]:
                raise ValueError(
                    f"extra special token {name!r} may not contain '<' or '>' inside"
                )
        if len(set(extras)) != len(extras) or set(extras) & {
            self.PAD,
            self.BOS,
            self.EOS,
        }:
            raise ValueError(
                "extra_specials must be distinct and differ from <pad>, <bos>, <eos>: "
                f"{extras}"
            )
        self.chars = chars
        self.sep = sep
        self.pad_id, self.bos_id, self.eos_id, self.sep_id = 0, 1, 2, 3
        self.vocab: tuple[str, ...] = (
            self.PAD,
            self.BOS,
            self.EOS,
            sep,
            *chars,
            *extras,
        )
        self._ids = {tok: i for i, tok in enumerate(self.vocab)}
        self.extra_ids = {name: self._ids[name] for name in extras}
        # tokens written as <name> in text
        self._named = {self.PAD, self.BOS, self.EOS, *extras}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of every token that is not an ordinary character.

        That is pad, bos, eos, sep and the extras.
        """
        return (
            self.pad_id,
            self.bos_id,
            self.eos_id,
            self.sep_id,
            *self.extra_ids.values(),
        )

    def __repr__(self) -> str:
        extras = f", extra_specials={tuple(self.extra_ids)}" if self.extra_ids else ""
        return (
            f"CharTokenizer(chars={self.chars!r}, sep={self.sep!r}{extras})"
            f"  # vocab_size={self.vocab_size}"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.vocab == other.vocab

    def __hash__(self) -> int:
        return hash(self.vocab)

    def token_id(self, token: str) -> int:
        """The id of one token.

        A character, the separator, or a special written `"<name>"`.
        """
        if token not in self._ids:
            raise ValueError(
                f"unknown token {token!r}; the vocabulary is {list(self.vocab)}"
            )
        return self._ids[token]

    def encode(
        self,
        text: str,
        *,
        bos: bool = False,
        eos: bool = False,
        return_tensor: bool = False,
    ) -> list[int] | torch.Tensor:
        """Token ids of `text`: a list of ints, or a LongTensor `(len,)`.

        The tensor comes with `return_tensor=True`. `bos`/`eos` add those tokens at the
        ends. Specials inside `text` are written by name. Raises ValueError naming the
        first character that is not in the vocabulary.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}")
        ids = [self.bos_id] if bos else []
        i = 0
        while i < len(text):
            c = text[i]
            if c == "<":
                j = text.find(">", i)
                name = text[i : j + 1] if j >= 0 else ""
                if name not in self._named:
                    raise ValueError(
                        f"unknown special token {name or text[i:]!r} "
                        f"at position {i} of {text!r}; "
                        f"known: {sorted(self._named)}"
                    )
                ids.append(self._ids[name])
                i = j + 1
                continue
            if c not in self._ids:
                raise ValueError(
                    f"character {c!r} at position {i} of {text!r} "
                    f"is not in the vocabulary {self.chars + self.sep!r}"
                )
            ids.append(self._ids[c])
            i += 1
        if eos:
            ids.append(self.eos_id)
        return torch.tensor(ids, dtype=torch.long) if return_tensor else ids

    def decode(
        self, ids, *, stop_at_eos: bool = True, skip_specials: bool = False
    ) -> str:
        """Text of a sequence of ids (list, tuple or 1-D tensor).

        PAD is always skipped. With `stop_at_eos` (default) decoding stops before the
        first EOS. Other specials are written by name (`"<bos>"`) unless
        `skip_specials`; the separator is text. Raises ValueError on an id outside
        `[0, vocab_size)`.
        """
        seq = _as_id_list(ids, "ids")
        out = []
        for t in seq:
            if not 0 <= t < self.vocab_size:
                raise ValueError(
                    f"token id {t} is outside the vocabulary [0, {self.vocab_size - 1}]"
                )
            if t == self.eos_id and stop_at_eos:
                break
            if t == self.pad_id:
                continue
            tok = self.vocab[t]
            if skip_specials and tok in self._named:
                continue
            out.append(tok)
        return "".join(out)


def shared_tokenizer(extra_specials: Sequence[str] = ()) -> CharTokenizer:
    """One 20-token vocabulary that covers all three tasks.

    `0-9 + a b c d z` after the 4 specials.
    """
    return CharTokenizer("0123456789+abcdz", extra_specials=extra_specials)


def _as_id_list(ids, name: str) -> list[int]:
    """A list of Python ints from a list/tuple of ints or a 1-D integer tensor.

    ValueError otherwise.
    """
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.is_complex():
            raise ValueError(
                f"{name} must hold integer token ids, got dtype {ids.dtype}"
            )
        return [int(t) for t in ids.tolist()]
    if isinstance(ids, (list, tuple)):
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int):
                raise ValueError(f"{name} must hold integer token ids, got {t!r}")
        return list(ids)
    raise ValueError(
        f"{name} must be a list of ints or a 1-D LongTensor, got {type(ids).__name__}"
    )


# --------------------------------------------------------------------------------------
# problems, the held-out split and the task base class
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One problem: `prompt` and its exact `answer`.

    The prompt is text without BOS, ending with the separator.
    """

    prompt: str
    answer: str


def is_heldout(prompt: str) -> bool:
    """True iff `prompt` belongs to the held-out evaluation split.

    The split is a hash split of the problem space: a prompt is held out iff
    `blake2b(prompt) mod HELDOUT_BUCKETS == 0`. It depends on the prompt text only (not
    on the task or on a seed), so it is fixed, identical on every machine, and the
    padded and unpadded addition tasks share it. Training samples are drawn only from
    prompts where this is False, so training and evaluation never share a prompt.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    digest = hashlib.blake2b(
        prompt.encode(), digest_size=8, person=b"policygrad-split"
    ).digest()
    return int.from_bytes(digest, "little") % HELDOUT_BUCKETS == 0


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            "generator must be a torch.Generator or None, "
            f"got {type(generator).__name__}"
        )
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            "generator must be a CPU torch.Generator (problems are drawn on the CPU)"
        )


class Task:
    """Base class of a task with a verifiable, exact-match reward.

    Subclasses set `name`, `alphabet` (characters of well-formed answers),
    `answer_chars` (characters that occur in correct answers), `prompt_chars`
    (characters of a prompt), the `prompt_length` and `max_new_tokens`, and implement
    `_problem_space` (every problem, in a fixed order), `_score` and optionally
    `_stratum` (problems are drawn by first choosing a stratum uniformly, then a problem
    uniformly inside it — one stratum unless a task wants, e.g., a uniform answer
    length).
    """

    name: str = ""
    #: The names of the reward's components (`reward_components` columns); one name
    #: for a task whose reward is a single exact match.
    reward_names: tuple[str, ...] = ("correct",)
    prompt_chars: str = ""
    alphabet: str = ""
    answer_chars: str = ""
    prompt_length: int = 0
    max_new_tokens: int = 0
    default_chars: str = ""

    def __init__(self, tokenizer: CharTokenizer | None = None) -> None:
        if tokenizer is None:
            tokenizer = CharTokenizer(self.default_chars)
        if not isinstance(tokenizer, CharTokenizer):
            raise ValueError(
                f"tokenizer must be a CharTokenizer, got {type(tokenizer).__name__}"
            )
        missing = sorted(set(self.prompt_chars + self.alphabet) - set(tokenizer.chars))
        if missing or tokenizer.sep != "=":
            raise ValueError(
                f"the tokenizer lacks characters {missing} "
                f"(or its separator is not '=') needed by task {self.name!r}"
            )
        self.tokenizer = tokenizer

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, "
            f"P={self.prompt_length}, T={self.max_new_tokens})"
        )

    # -- subclass hooks ----------------------------------------------------------------
    def _problem_space(self) -> list[Problem]:
        raise NotImplementedError

    def _stratum(self, problem: Problem) -> int:
        return 0

    def _score(self, problem: Problem, text: str) -> tuple[float, str]:
        raise NotImplementedError

    # -- the problem space and its split -----------------------------------------------
    def problem_space(self) -> list[Problem]:
        """Every problem of the task, in a fixed order (a copy)."""
        return list(self._space)

    @cached_property
    def _space(self) -> tuple[Problem, ...]:
        return tuple(self._problem_space())

    @cached_property
    def _pools(self) -> dict[bool, list[list[Problem]]]:
        """The problems by split and stratum, in problem-space order.

        `{heldout: [problems of stratum 0, stratum 1, ...]}`.
        """
        num = 1 + max(self._stratum(p) for p in self._space)
        pools: dict[bool, list[list[Problem]]] = {
            False: [[] for _ in range(num)],
            True: [[] for _ in range(num)],
        }
        for p in self._space:
            pools[is_heldout(p.prompt)][self._stratum(p)].append(p)
        for split, strata in pools.items():
            if any(len(s) == 0 for s in strata):
                raise RuntimeError(
                    f"task {self.name!r}: an empty stratum in the "
                    f"{'eval' if split else 'train'} split"
                )
        return pools

    def is_heldout(self, problem: Problem | str) -> bool:
        """True iff the problem (or prompt) is in the held-out evaluation split.

        See `is_heldout`.
        """
        return is_heldout(problem.prompt if isinstance(problem, Problem) else problem)

    def sample_problems(
        self, n: int, generator: torch.Generator | None = None
    ) -> list[Problem]:
        """`n` problems drawn i.i.d. (with replacement) from the training split.

        Reproducible for a seeded `generator`; never returns a held-out prompt.
        """
        check_positive_int(n, "n")
        _check_generator(generator)
        strata = self._pools[False]
        sizes = torch.tensor([len(s) for s in strata], dtype=torch.float64)
        which = torch.randint(len(strata), (n,), generator=generator)
        pos = (
            torch.rand(n, generator=generator, dtype=torch.float64) * sizes[which]
        ).long()
        pos = torch.minimum(pos, sizes[which].long() - 1)
        return [strata[s][i] for s, i in zip(which.tolist(), pos.tolist(), strict=True)]

    def eval_set(self, n: int = 240, seed: int = 0) -> list[Problem]:
        """A fixed held-out evaluation set: `n` distinct problems of the held-out split.

        Drawn without replacement with `torch.Generator().manual_seed(seed)`, split as
        evenly as possible across strata (for `prefix`: across answer lengths), so the
        same `(n, seed)` always gives the same list. Disjoint from every
        `sample_problems` draw.
        """
        check_positive_int(n, "n")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        strata = self._pools[True]
        k = len(strata)
        counts = [n // k + (j < n % k) for j in range(k)]
        for j, (c, s) in enumerate(zip(counts, strata, strict=True)):
            if c > len(s):
                raise ValueError(
                    f"eval_set(n={n}) needs {c} held-out problems in stratum {j} "
                    f"of task {self.name!r}, which has only {len(s)} "
                    f"(at most {k * min(len(t) for t in strata)} in all)"
                )
        g = torch.Generator().manual_seed(seed)
        out: list[Problem] = []
        for c, s in zip(counts, strata, strict=True):
            out += [s[i] for i in torch.randperm(len(s), generator=g)[:c].tolist()]
        return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]

    # -- tokens ------------------------------------------------------------------------
    def encode_prompts(self, problems: Sequence[Problem]) -> torch.Tensor:
        """Prompt tokens `(n, P)` (long): BOS followed by the prompt characters."""
        problems = self._check_problems(problems)
        rows = []
        for p in problems:
            ids = self.tokenizer.encode(p.prompt, bos=True)
            if len(ids) != self.prompt_length:
                raise ValueError(
                    f"prompt {p.prompt!r} has {len(ids)} tokens with BOS; "
                    f"task {self.name!r} needs {self.prompt_length}"
                )
            rows.append(ids)
        return torch.tensor(rows, dtype=torch.long)

    def answer_ids(self, problem: Problem) -> list[int]:
        """The correct completion as token ids: the answer's characters then EOS."""
        self._check_problems([problem])
        return self.tokenizer.encode(problem.answer, eos=True)

    def target_completions(
        self, problems: Sequence[Problem], *, pad_id: int | None = None
    ):
        """Correct completions and their mask, both `(n, max_new_tokens)`.

        The completions are long, the mask is float.

        Positions after EOS hold `pad_id` (default EOS, the canonical padding of
        `policygrad.exact.enumerate_completions`) with mask 0. For supervised warm
        starts and tests.
        """
        problems = self._check_problems(problems)
        fill = self.tokenizer.eos_id if pad_id is None else pad_id
        if (
            isinstance(fill, bool)
            or not isinstance(fill, int)
            or not 0 <= fill < self.tokenizer.vocab_size
        ):
            raise ValueError(
                "pad_id must be a token id in "
                f"[0, {self.tokenizer.vocab_size - 1}], got {pad_id!r}"
            )
        T = self.max_new_tokens
        tokens = torch.full((len(problems), T), fill, dtype=torch.long)
        mask = torch.zeros(len(problems), T)
        for i, p in enumerate(problems):
            ids = self.answer_ids(p)
            if len(ids) > T:
                raise ValueError(
                    f"answer {p.answer!r} does not fit in max_new_tokens={T}"
                )
            tokens[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1.0
        return tokens, mask

    # -- rewards -----------------------------------------------------------------------
    def _parse(self, ids: list[int]) -> tuple[str | None, str]:
        """`(text, "")` for a well-formed completion, else `(None, reason)`.

        Nothing after EOS is read.
        """
        tok = self.tokenizer
        try:
            end = ids.index(tok.eos_id)
        except ValueError:
            return None, "no eos"
        body = ids[:end]
        if not body:
            return None, "empty"
        if any(not 0 <= t < tok.vocab_size for t in body):
            return None, "invalid id"
        if tok.pad_id in body:
            return None, "pad inside"
        specials = set(tok.special_ids)
        if any(t in specials for t in body):
            return None, "special token"
        return "".join(tok.vocab[t] for t in body), ""

    def reward_with_reason(self, problem: Problem, completion_ids) -> tuple[float, str]:
        """Reward R(x, y) ∈ {0, 1} of one completion, and why (a key of `REASONS`).

        `completion_ids`: list of ints or a 1-D LongTensor, read up to the first EOS.
        Never raises on a malformed completion (missing EOS, PAD inside, garbage,
        empty): it scores 0 with a reason.
        """
        self._check_problems([problem])
        text, reason = self._parse(_as_id_list(completion_ids, "completion_ids"))
        if text is None:
            return 0.0, reason
        return self._score(problem, text)

    def reward(self, problem: Problem, completion_ids) -> float:
        """Reward of one completion, see `reward_with_reason`."""
        return self.reward_with_reason(problem, completion_ids)[0]

    def rewards_with_reasons(
        self,
        problems: Sequence[Problem],
        completions: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[str]]:
        """Batched `reward_with_reason`: rewards `(B,)` and a list of `B` reasons.

        `completions`: `(B, T)` token ids; `mask`: `(B, T)` 0/1, the completion mask of
        `policygrad.rollout.Samples` (1 on real tokens). Row `b` is read from its
        masked-in tokens (all tokens when `mask` is None), so the result equals the
        per-item reward of those tokens.
        """
        problems, rows = self._rows(problems, completions, mask)
        out, reasons = [], []
        for p, r in zip(problems, rows, strict=True):
            text, reason = self._parse(r)
            value, reason = (0.0, reason) if text is None else self._score(p, text)
            out.append(value)
            reasons.append(reason)
        return torch.tensor(
            out, dtype=torch.get_default_dtype(), device=completions.device
        ), reasons

    def _rows(
        self,
        problems: Sequence[Problem],
        completions: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> tuple[list[Problem], list[list[int]]]:
        """Checked problems and each row's masked-in token ids (all without a mask)."""
        problems = self._check_problems(problems)
        check_tensor(completions, "completions", 2)
        if completions.is_floating_point() or completions.is_complex():
            raise ValueError(
                "completions must hold integer token ids, "
                f"got dtype {completions.dtype}"
            )
        B = completions.shape[0]
        if len(problems) != B:
            raise ValueError(
                f"got {len(problems)} problems but completions has {B} rows"
            )
        rows = completions.detach().cpu().tolist()
        if mask is not None:
            check_tensor(mask, "mask", 2)
            if mask.shape != completions.shape:
                raise ValueError(
                    f"mask must have shape {tuple(completions.shape)}, "
                    f"got {tuple(mask.shape)}"
                )
            m = mask.detach().cpu()
            if not bool(((m == 0) | (m == 1)).all()):
                raise ValueError("mask must contain only 0 and 1")
            keep = (m != 0).tolist()
            rows = [
                [t for t, k in zip(r, kr, strict=True) if k]
                for r, kr in zip(rows, keep, strict=True)
            ]
        return problems, rows

    def rewards(
        self,
        problems: Sequence[Problem],
        completions: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Batched rewards `(B,)`, default float dtype, on the device of `completions`.

        See `rewards_with_reasons` for the arguments.
        """
        return self.rewards_with_reasons(problems, completions, mask)[0]

    def reward_components(
        self,
        problems: Sequence[Problem],
        completions: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The reward's components `(B, K)`, one column per name of `reward_names`.

        For a single-reward task (K = 1) the column is `rewards(...)` itself; a task
        with several components (e.g. `FormatAdditionTask`: correctness and format)
        returns each, unweighted, in the default float dtype on the device of
        `completions`. Arguments as for `rewards_with_reasons`. GDPO normalises each
        column separately (`policygrad.reward_side.gdpo_advantages`).
        """
        return self.rewards(problems, completions, mask).unsqueeze(1)

    def _check_problems(self, problems) -> list[Problem]:
        if isinstance(problems, Problem):
            raise ValueError(
                "expected a sequence of problems, got a single Problem "
                "(wrap it in a list)"
            )
        if not isinstance(problems, (list, tuple)) or len(problems) == 0:
            raise ValueError("problems must be a non-empty list of Problem")
        for p in problems:
            if not isinstance(p, Problem):
                raise ValueError(
                    f"problems must contain Problem objects, got {type(p).__name__}"
                )
        return list(problems)


# --------------------------------------------------------------------------------------
# the three tasks
# --------------------------------------------------------------------------------------
class AdditionTask(Task):
    """Two-digit addition: `"ab+cd="` -> the digits of `ab + cd` then EOS, exact match.

    Operands are zero-padded to two digits (`"07+35="`), so every prompt is 7 tokens
    with BOS. The sum (0-198) is written without leading zeros by default (`"42"`,
    `"7"`, `"105"`: 1-3 digits, a mildly variable length — about 0.5% / 49.5% / 50% of
    problems); with `pad_answer=True` it is zero-padded to 3 digits (`"042"`) and every
    answer has the same length. `max_new_tokens = 4`. A correct number written in the
    other format scores 0 with reason `"wrong format"`. Problem space: 10,000 prompts.
    """

    prompt_chars = "0123456789+"
    alphabet = "0123456789"
    answer_chars = "0123456789"
    default_chars = "0123456789+"
    prompt_length = 7
    max_new_tokens = 4

    def __init__(
        self, *, pad_answer: bool = False, tokenizer: CharTokenizer | None = None
    ) -> None:
        if not isinstance(pad_answer, bool):
            raise ValueError(f"pad_answer must be True or False, got {pad_answer!r}")
        self.pad_answer = pad_answer
        self.name = "addition_padded" if pad_answer else "addition"
        super().__init__(tokenizer)

    def _problem_space(self) -> list[Problem]:
        fmt = "{:03d}" if self.pad_answer else "{:d}"
        return [
            Problem(f"{a:02d}+{b:02d}=", fmt.format(a + b))
            for a in range(100)
            for b in range(100)
        ]

    def _score(self, problem: Problem, text: str) -> tuple[float, str]:
        if text == problem.answer:
            return 1.0, "ok"
        if not all(c in "0123456789" for c in text):
            return 0.0, "not a number"
        if int(text) == int(problem.answer):
            return 0.0, "wrong format"
        return 0.0, "wrong answer"


class FormatAdditionTask(AdditionTask):
    """Two-digit addition with two reward components: correctness and format.

    The problems, prompts, tokenizer and held-out split are `AdditionTask`'s (answers
    without leading zeros). Each completion gets

    * `correct` ∈ {0, 1}: the exact match of `AdditionTask`;
    * `format` ∈ {0, 1}: 1 when the completion, read up to its first EOS, is a number
      (digits only) with exactly as many digits as the answer, then EOS — the right
      shape whatever its value (`"43"` for `"42"` has format 1, `"042"` and `"4"` have
      0; no EOS, an empty answer or a non-digit give 0);

    and the reward R = correct + `format_weight` · format (default 0.2, so the two
    components have different scales and a correct completion scores 1.2).
    `reward_names = ("correct", "format")`; `reward_components` returns both columns
    (GDPO normalises each within its group: chapter 8, "Several rewards: normalise,
    then sum (GDPO)"). `reward_with_reason` gives the combined reward and
    `AdditionTask`'s reason; `evaluate`'s accuracy counts exact matches (reason
    `"ok"`).
    """

    reward_names = ("correct", "format")

    def __init__(
        self,
        *,
        format_weight: float = 0.2,
        tokenizer: CharTokenizer | None = None,
    ) -> None:
        if (
            isinstance(format_weight, bool)
            or not isinstance(format_weight, (int, float))
            or not math.isfinite(format_weight)
        ):
            raise ValueError(
                f"format_weight must be a finite number, got {format_weight!r}"
            )
        self.format_weight = float(format_weight)
        super().__init__(tokenizer=tokenizer)
        self.name = "addition_format"

    def _format(self, problem: Problem, text: str | None) -> float:
        ok = (
            text is not None
            and len(text) == len(problem.answer)
            and all(c in "0123456789" for c in text)
        )
        return 1.0 if ok else 0.0

    def _score(self, problem: Problem, text: str) -> tuple[float, str]:
        correct, reason = super()._score(problem, text)
        return correct + self.format_weight * self._format(problem, text), reason

    def reward_components(
        self,
        problems: Sequence[Problem],
        completions: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`(B, 2)`: the `correct` and `format` components (see the class docstring)."""
        problems, rows = self._rows(problems, completions, mask)
        out = []
        for p, r in zip(problems, rows, strict=True):
            text, _ = self._parse(r)
            correct = 0.0 if text is None else AdditionTask._score(self, p, text)[0]
            out.append([correct, self._format(p, text)])
        return torch.tensor(
            out, dtype=torch.get_default_dtype(), device=completions.device
        )


class _StringTask(Task):
    """Letter tasks' shared scoring: invalid character, wrong length, wrong answer."""

    def _score(self, problem: Problem, text: str) -> tuple[float, str]:
        if text == problem.answer:
            return 1.0, "ok"
        if any(c not in self.alphabet for c in text):
            return 0.0, "invalid character"
        if len(text) != len(problem.answer):
            return 0.0, "wrong length"
        return 0.0, "wrong answer"


class ReversalTask(_StringTask):
    """String reversal: 6 letters over `abcd` then `=` -> the reversed string.

    Exact match: `"abdcca="` -> `"accdba"`. Prompts are 8 tokens with BOS; answers are
    always 6 letters + EOS (`max_new_tokens = 7`). Problem space: 4^6 = 4096 prompts.
    """

    name = "reverse"
    prompt_chars = "abcd"
    alphabet = "abcd"
    answer_chars = "abcd"
    default_chars = "abcd"
    length = 6
    prompt_length = 8
    max_new_tokens = 7

    def _problem_space(self) -> list[Problem]:
        return [
            Problem("".join(s) + "=", "".join(reversed(s)))
            for s in itertools.product(self.alphabet, repeat=self.length)
        ]


class PrefixCopyTask(_StringTask):
    """Copy the letters before the first `z`: a variable-length answer (1 to 6 letters).

    The prompt is 7 letters over `abcz` then `=` (9 tokens with BOS); its first `z` is
    at position 1-6, and the answer is everything before it: `"cabzazb="` -> `"cab"`.
    Problems are drawn with a uniform answer length (a length first, then a problem with
    that length), so correct completions range from 2 to 7 tokens with EOS.
    `max_new_tokens = 8` leaves room to copy the whole string and stop. Problem space:
    Σ_{ℓ=1}^{6} 3^ℓ 4^(6-ℓ) = 10,101 prompts.
    """

    name = "prefix"
    prompt_chars = "abcz"
    alphabet = "abcz"
    answer_chars = "abc"
    default_chars = "abcz"
    length = 7
    prompt_length = 9
    max_new_tokens = 8

    def _problem_space(self) -> list[Problem]:
        out = []
        for s in itertools.product(self.prompt_chars, repeat=self.length):
            text = "".join(s)
            first = text.find("z")
            if 1 <= first <= self.length - 1:
                out.append(Problem(text + "=", text[:first]))
        return out

    def _stratum(self, problem: Problem) -> int:
        return len(problem.answer) - 1


#: The tasks by name.
TASKS = {"addition": AdditionTask, "reverse": ReversalTask, "prefix": PrefixCopyTask}

#: Variants of those tasks (same problems, another reward), by name; `make_task`
#: knows them too. They have no warm start of their own: `addition_format` uses
#: `addition`'s.
TASK_VARIANTS = {"addition_format": FormatAdditionTask}


def make_task(name: str, **kwargs) -> Task:
    """A task by name (a key of `TASKS` or `TASK_VARIANTS`).

    Keyword arguments go to its constructor.
    """
    known = {**TASKS, **TASK_VARIANTS}
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(known)}")
    return known[name](**kwargs)


# --------------------------------------------------------------------------------------
# evaluation and exact enumeration
# --------------------------------------------------------------------------------------
def evaluate(
    policy,
    task: Task,
    problems: Sequence[Problem],
    *,
    greedy: bool = True,
    samples: int = 1,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> dict:
    """Accuracy of a policy on `problems`.

    `policy.sample(prompts, ...)` (`prompts (B, P)`; keywords `max_new_tokens`, `eos`,
    `temperature`, `top_k`, `generator`) must return a `policygrad.rollout.Samples`.
    Greedy decoding is `top_k=1` (one completion per problem); otherwise `samples`
    completions per problem are drawn at `temperature`. The policy is put in eval mode
    and restored. Returns a dict:

    * `accuracy`: fraction of completions with reward 1 (for a task with several
      reward components, `FormatAdditionTask`: of exact matches); `mean_reward`: mean
      reward;
    * `pass_at_k`: fraction of problems with at least one of their `k = samples`
      completions correct;
    * `mean_length`: mean completion length in tokens, EOS included; `frac_truncated`:
      fraction that never emitted EOS;
    * `num_completions` and `reasons`: the fraction of completions for each reason (see
      `REASONS`);
    * `components`: the mean of each reward component, by name (`task.reward_names`;
      a single-reward task: its mean reward).
    """
    if not callable(getattr(policy, "sample", None)):
        raise ValueError(
            "policy must have a "
            "sample(prompts, max_new_tokens=..., eos=..., ...) method"
        )
    if not isinstance(task, Task):
        raise ValueError(f"task must be a Task, got {type(task).__name__}")
    problems = task._check_problems(problems)
    if not isinstance(greedy, bool):
        raise ValueError(f"greedy must be True or False, got {greedy!r}")
    check_positive_int(samples, "samples")
    check_positive_int(batch_size, "batch_size")
    if greedy and samples != 1:
        raise ValueError(
            "greedy decoding gives one completion per problem; "
            "use samples=1 or greedy=False"
        )
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not temperature > 0
    ):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            "generator must be a torch.Generator or None, "
            f"got {type(generator).__name__}"
        )

    # samples of one problem are adjacent
    reps = [p for p in problems for _ in range(samples)]
    prompts = task.encode_prompts(reps)
    params = list(policy.parameters()) if isinstance(policy, torch.nn.Module) else []
    if params:
        prompts = prompts.to(params[0].device)
    was_training = getattr(policy, "training", None)
    if isinstance(policy, torch.nn.Module):
        policy.eval()
    rewards, reasons, lengths, truncated, parts = [], [], [], [], []
    several = len(task.reward_names) > 1
    try:
        with torch.no_grad():
            for start in range(0, len(reps), batch_size):
                chunk = prompts[start : start + batch_size]
                s = policy.sample(
                    chunk,
                    max_new_tokens=task.max_new_tokens,
                    eos=task.tokenizer.eos_id,
                    temperature=1.0 if greedy else float(temperature),
                    top_k=1 if greedy else None,
                    generator=generator,
                )
                if not isinstance(s, Samples) or len(s) != chunk.shape[0]:
                    raise ValueError(
                        "policy.sample must return a Samples with one row per prompt"
                    )
                r, why = task.rewards_with_reasons(
                    reps[start : start + chunk.shape[0]], s.completions, s.mask
                )
                if several:
                    parts.append(
                        task.reward_components(
                            reps[start : start + chunk.shape[0]],
                            s.completions,
                            s.mask,
                        )
                        .double()
                        .cpu()
                    )
                rewards.append(r.cpu())
                reasons += why
                lengths.append(s.lengths.detach().cpu().to(torch.float64))
                truncated.append(s.truncated.detach().cpu().to(torch.float64))
    finally:
        if isinstance(policy, torch.nn.Module) and was_training:
            policy.train()
    R = torch.cat(rewards).to(torch.float64)
    if len(task.reward_names) == 1:
        correct = R == 1.0
    else:  # a reward with several components: exact match is reason "ok"
        correct = torch.tensor([w == "ok" for w in reasons])
    counts = Counter(reasons)
    return {
        "accuracy": correct.double().mean().item(),
        "mean_reward": R.mean().item(),
        "pass_at_k": correct.reshape(len(problems), samples)
        .any(1)
        .double()
        .mean()
        .item(),
        "mean_length": torch.cat(lengths).mean().item(),
        "frac_truncated": torch.cat(truncated).mean().item(),
        "num_completions": len(reps),
        "reasons": {k: counts[k] / len(reps) for k in sorted(counts)},
        "components": (
            dict(
                zip(
                    task.reward_names,
                    torch.cat(parts).mean(0).tolist(),
                    strict=True,
                )
            )
            if several
            else {task.reward_names[0]: R.mean().item()}
        ),
    }


def success_probabilities(
    policy: torch.nn.Module,
    task: Task,
    problems: Sequence[Problem],
    *,
    temperature: float = 1.0,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Exact p_x = P(R = 1 | x) of every problem under `policy` at `temperature`.

    Returns `(n,)` float64. The reward is an exact match on the text before EOS, so
    exactly one completion is correct, the answer's tokens then EOS (`Task.answer_ids`),
    and p_x = Π_t π_θ(a_t | x, a_<t) needs one forward pass: no sampling, no
    enumeration. `policy(prompts, completions) -> logits` as for a `policygrad.TinyGPT`.
    Used in chapter 7 ("Groups with nothing to say").
    """
    if not isinstance(policy, torch.nn.Module):
        raise ValueError(
            f"policy must be a torch.nn.Module, got {type(policy).__name__}"
        )
    if not isinstance(task, Task):
        raise ValueError(f"task must be a Task, got {type(task).__name__}")
    problems = task._check_problems(problems)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not temperature > 0
    ):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    check_positive_int(batch_size, "batch_size")
    from ..trajectory_side.logprobs import token_log_probs

    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(problems), batch_size):
                chunk = problems[start : start + batch_size]
                prompts = task.encode_prompts(chunk).to(device)
                tokens, mask = task.target_completions(chunk)
                logits = policy(prompts, tokens.to(device)) / float(temperature)
                logp = token_log_probs(logits, tokens.to(device)) * mask.to(device)
                out.append(logp.sum(-1).double().exp().cpu())
    finally:
        policy.train(was_training)
    return torch.cat(out)


def exact_problem(
    task: Task,
    problems: Sequence[Problem],
    max_len: int | None = None,
    *,
    allowed_tokens: Sequence[int | str] | None = None,
    rewarded_only: bool = False,
) -> ExactProblem:
    """Every completion of up to `max_len` tokens, for exact J(θ) on a language model.

    Enumerates the completions over `allowed_tokens` (ids, or token strings such as
    `"7"`/`"<eos>"`; default: the characters of correct answers, `task.answer_chars`;
    EOS is always added) with `policygrad.exact.enumerate_completions`, maps them to the
    tokenizer's ids, and scores each pair with the task's reward. Prompts are the
    `(N, P)` tokens of `problems` with uniform ρ; `max_len` defaults to
    `task.max_new_tokens` and must leave room for every answer and its EOS. Completions
    are padded with EOS after their first EOS (mask 0), the canonical form of
    `policygrad.exact.ExactProblem.completion_index`; rows without EOS stand for every
    continuation of that prefix.

    With a restricted alphabet A, the enumeration covers only Y_A. Every left-out
    completion contains a token that no correct answer contains, so its reward is 0 and

        J(θ) = Σ_x ρ(x) Σ_{y ∈ Y_A} p_θ(y | x) R(x, y)

    and its gradient are still exact. Quantities that need the whole distribution (KL,
    values, advantages, estimator variances, `probs` summing to 1) are exact only with
    `allowed_tokens=range(vocab_size)`, which is usually too large: `N * K` pairs must
    stay within `policygrad.exact.MAX_ENUMERATION`, where K = Σ_{t<L} b^t + b^L for b
    allowed non-EOS tokens (ValueError otherwise).

    `rewarded_only=True` keeps only the completions whose reward is nonzero for at
    least one prompt (with 0/1 rewards: the correct answers). Every dropped pair has
    R(x, y) = 0, so J(θ), ∇_θ J, `success_probability` and any other sum of
    R(x, y) p_θ(y | x) f(x, y) are unchanged, at a fraction of the cost: chapter 4
    ("A tiny language model as the policy") evaluates 64 pairs (8 prompts × their 8
    answers) instead of 8 888. Sampled completions outside the kept set have no row.
    """
    if not isinstance(task, Task):
        raise ValueError(f"task must be a Task, got {type(task).__name__}")
    if not isinstance(rewarded_only, bool):
        raise ValueError(f"rewarded_only must be True or False, got {rewarded_only!r}")
    problems = task._check_problems(problems)
    tok = task.tokenizer
    L = (
        task.max_new_tokens
        if max_len is None
        else check_positive_int(max_len, "max_len")
    )
    longest = max(len(task.answer_ids(p)) for p in problems)
    if L < longest:
        raise ValueError(
            f"max_len={L} is too short: an answer needs {longest} tokens with EOS"
        )
    if allowed_tokens is None:
        allowed = [tok.token_id(c) for c in task.answer_chars]
    else:
        if isinstance(allowed_tokens, str) or not isinstance(
            allowed_tokens, (list, tuple, range)
        ):
            raise ValueError(
                "allowed_tokens must be a list of token ids or token strings"
            )
        allowed = []
        for t in allowed_tokens:
            if isinstance(t, str):
                allowed.append(tok.token_id(t))
            elif (
                isinstance(t, int)
                and not isinstance(t, bool)
                and 0 <= t < tok.vocab_size
            ):
                allowed.append(t)
            else:
                raise ValueError(
                    f"allowed token {t!r} is neither a token string "
                    f"nor an id in [0, {tok.vocab_size - 1}]"
                )
        if len(set(allowed)) != len(allowed):
            raise ValueError(
                f"allowed_tokens contains duplicates: {list(allowed_tokens)}"
            )
    if tok.eos_id not in allowed:
        allowed.append(tok.eos_id)
    allowed = sorted(allowed)
    needed = {tok.token_id(c) for p in problems for c in p.answer}
    if not needed <= set(allowed):
        raise ValueError(
            "allowed_tokens must include every token of the answers: "
            f"missing {sorted(tok.vocab[t] for t in needed - set(allowed))}"
        )
    b = len(allowed) - 1
    K = sum(b**t for t in range(L)) + b**L
    if len(problems) * K > MAX_ENUMERATION:
        raise ValueError(
            f"{len(problems)} prompts x {K} completions "
            f"({b} allowed tokens + EOS, max_len={L}) exceeds the "
            f"limit of {MAX_ENUMERATION} pairs; "
            "use fewer prompts, fewer allowed tokens or a smaller max_len"
        )
    idx, mask = enumerate_completions(len(allowed), L, eos=allowed.index(tok.eos_id))
    # enumeration index -> token id
    completions = torch.tensor(allowed, dtype=torch.long)[idx]
    parsed = [task._parse(row) for row in completions.tolist()]
    rewards = torch.tensor(
        [
            [0.0 if text is None else task._score(p, text)[0] for text, _ in parsed]
            for p in problems
        ],
        dtype=torch.get_default_dtype(),
    )
    if rewarded_only:
        keep = (rewards != 0).any(0)
        if not keep.any():
            raise ValueError(
                "rewarded_only=True but no enumerated completion has a nonzero reward "
                "for any of the prompts"
            )
        completions, mask, rewards = completions[keep], mask[keep], rewards[:, keep]
    N = len(problems)
    return ExactProblem(
        prompts=task.encode_prompts(problems),
        prompt_probs=torch.full((N,), 1.0 / N),
        completions=completions,
        mask=mask,
        rewards=rewards,
    )
