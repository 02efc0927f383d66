"""Tests for policygrad.lm.tasks: tokenizer, the three tasks, rewards, the evaluator and exact enumeration."""

import math

import pytest
import torch
from torch import nn

import policygrad as pg
from policygrad.lm.tasks import (
    REASONS,
    TOOL_TOKENS,
    AdditionTask,
    CharTokenizer,
    PrefixCopyTask,
    Problem,
    ReversalTask,
    evaluate,
    exact_problem,
    is_heldout,
    make_task,
    shared_tokenizer,
)
from policygrad.rollout import Samples

ALL_TASKS = [
    pytest.param(lambda: AdditionTask(), id="addition"),
    pytest.param(lambda: AdditionTask(pad_answer=True), id="addition_padded"),
    pytest.param(lambda: ReversalTask(), id="reverse"),
    pytest.param(lambda: PrefixCopyTask(), id="prefix"),
    pytest.param(lambda: PrefixCopyTask(tokenizer=shared_tokenizer(TOOL_TOKENS)), id="prefix_shared"),
]


# ---------------------------------------------------------------------------------------------------------
# fake policies (the evaluator must work with anything that has .sample)
# ---------------------------------------------------------------------------------------------------------
class OraclePolicy(nn.Module):
    """Answers every prompt correctly; records the sampling arguments it was called with."""

    def __init__(self, task):
        super().__init__()
        self.task = task
        self.answers = {p.prompt: p for p in task.problem_space()}
        self.calls = []
        self.dummy = nn.Parameter(torch.zeros(1))

    def sample(self, prompts, *, max_new_tokens, eos, temperature=1.0, top_k=None, generator=None):
        self.calls.append(dict(B=prompts.shape[0], T=max_new_tokens, eos=eos, temperature=temperature, top_k=top_k))
        self.seen_training = self.training
        tok = self.task.tokenizer
        probs = [self.answers[tok.decode(row, skip_specials=True)] for row in prompts]
        comp, mask = self.task.target_completions(probs)
        assert comp.shape[1] == max_new_tokens and eos == tok.eos_id
        B = prompts.shape[0]
        return Samples(prompts, comp, mask, torch.zeros(B, max_new_tokens), torch.zeros(B, dtype=torch.bool))


class GarbagePolicy:
    """Random non-EOS tokens: never stops, never right."""

    def __init__(self, task):
        self.task = task

    def sample(self, prompts, *, max_new_tokens, eos, temperature=1.0, top_k=None, generator=None):
        B, V = prompts.shape[0], self.task.tokenizer.vocab_size
        comp = torch.randint(0, V - 1, (B, max_new_tokens), generator=generator)
        comp = comp + (comp >= eos).long()  # skip the EOS id
        ones = torch.ones(B, max_new_tokens)
        return Samples(prompts, comp, ones, torch.zeros(B, max_new_tokens), torch.ones(B, dtype=torch.bool))


class ToyLM(nn.Module):
    """A tiny autoregressive model over (B, P) prompt tokens: logits from the previous token, position, prompt."""

    def __init__(self, vocab, max_len, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.prev = nn.Parameter(torch.randn(vocab, vocab, generator=g, dtype=torch.float64))
        self.pos = nn.Parameter(torch.randn(max_len, vocab, generator=g, dtype=torch.float64))
        self.ctx = nn.Parameter(torch.randn(vocab, vocab, generator=g, dtype=torch.float64))
        self.vocab = vocab

    def forward(self, prompts, completions):
        T = completions.shape[1]
        prev = torch.cat([prompts[:, -1:], completions[:, :-1]], 1)
        ctx = nn.functional.one_hot(prompts, self.vocab).double().mean(1) @ self.ctx  # (B, V)
        return self.prev[prev] + self.pos[:T] + ctx.unsqueeze(1)


# ---------------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------------
def test_tokenizer_round_trip_and_ids():
    tok = CharTokenizer("0123456789+")
    assert tok.vocab_size == 15 and tok.vocab[:4] == ("<pad>", "<bos>", "<eos>", "=")
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id) == (0, 1, 2, 3)
    assert len(set(tok.special_ids)) == len(tok.special_ids) == 4
    assert tok.token_id("0") == 4 and tok.token_id("+") == 14
    for text in ["07+35=42", "", "=", "99+99=198"]:
        ids = tok.encode(text)
        assert isinstance(ids, list) and tok.decode(ids) == text
        t = tok.encode(text, bos=True, eos=True, return_tensor=True)
        assert t.dtype == torch.long and t.shape == (len(text) + 2,)
        assert tok.decode(t) == "<bos>" + text  # stops at EOS
        assert tok.decode(t, stop_at_eos=False) == "<bos>" + text + "<eos>"
        assert tok.decode(t, skip_specials=True) == text
        assert tok.encode(tok.decode(t, stop_at_eos=False)) == t.tolist()  # specials parse by name
    # PAD is skipped, everything after EOS is dropped
    assert tok.decode([tok.bos_id, 4, tok.pad_id, 5, tok.eos_id, 6]) == "<bos>01"
    assert tok.decode(torch.tensor([4, 2, 5]), stop_at_eos=False) == "0<eos>1"


def test_tokenizer_errors():
    tok = CharTokenizer("abcd")
    with pytest.raises(ValueError, match="'e'"):
        tok.encode("abe=")
    with pytest.raises(ValueError, match="'7'"):
        tok.encode("7")
    with pytest.raises(ValueError, match="unknown special"):
        tok.encode("<tool>ab")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([4, 99])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        tok.decode([1.0, 2.0])
    with pytest.raises(ValueError, match="unknown token"):
        tok.token_id("z")
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer("aab")
    with pytest.raises(ValueError, match="separator"):
        CharTokenizer("ab=")
    with pytest.raises(ValueError, match="not allowed"):
        CharTokenizer("ab<")
    with pytest.raises(ValueError):
        CharTokenizer("")
    with pytest.raises(ValueError, match="<name>"):
        CharTokenizer("ab", extra_specials=("tool",))
    with pytest.raises(ValueError, match="not a string"):
        CharTokenizer("ab", extra_specials="<tool>")
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer("ab", extra_specials=("<eos>",))


def test_extra_specials_keep_ids():
    base = shared_tokenizer()
    ext = shared_tokenizer(TOOL_TOKENS)
    assert base.vocab_size == 20 and ext.vocab_size == 24
    assert ext.vocab[:20] == base.vocab  # tool tokens never renumber existing tokens
    assert list(ext.extra_ids.values()) == [20, 21, 22, 23]
    assert len(set(ext.special_ids)) == 8
    ids = ext.encode("<tool>12+3</tool>")
    assert ids[0] == ext.extra_ids["<tool>"] and ids[-1] == ext.extra_ids["</tool>"]
    assert ext.decode(ids) == "<tool>12+3</tool>" and ext.decode(ids, skip_specials=True) == "12+3"
    assert ext != base and ext == shared_tokenizer(TOOL_TOKENS) and "vocab_size=24" in repr(ext)


def test_task_tokenizer_validation_and_registry():
    with pytest.raises(ValueError, match="lacks"):
        AdditionTask(tokenizer=CharTokenizer("abcd"))
    with pytest.raises(ValueError, match="lacks"):
        ReversalTask(tokenizer=CharTokenizer("abcd", sep=":"))
    with pytest.raises(ValueError, match="CharTokenizer"):
        ReversalTask(tokenizer="abcd")
    with pytest.raises(ValueError, match="pad_answer"):
        AdditionTask(pad_answer=1)
    with pytest.raises(ValueError, match="unknown task"):
        make_task("sorting")
    assert make_task("addition", pad_answer=True).name == "addition_padded"
    assert isinstance(make_task("prefix"), PrefixCopyTask)
    assert set(pg.lm.tasks.TASKS) == {"addition", "reverse", "prefix"}
    vocab_sizes = {AdditionTask().tokenizer.vocab_size, ReversalTask().tokenizer.vocab_size}
    assert vocab_sizes == {15, 8} and PrefixCopyTask().tokenizer.vocab_size == 8


# ---------------------------------------------------------------------------------------------------------
# problems, prompts and the held-out split
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", ALL_TASKS)
def test_prompts_fixed_length_and_answers(make):
    task = make()
    space = task.problem_space()
    prompts = task.encode_prompts(space)
    assert prompts.shape == (len(space), task.prompt_length) and prompts.dtype == torch.long
    assert bool((prompts[:, 0] == task.tokenizer.bos_id).all())
    assert bool((prompts[:, -1] == task.tokenizer.sep_id).all())
    assert len({p.prompt for p in space}) == len(space)  # prompts are unique
    longest = max(len(p.answer) for p in space)
    assert longest + 1 <= task.max_new_tokens
    comp, mask = task.target_completions(space[:50])
    assert comp.shape == mask.shape == (50, task.max_new_tokens)
    assert torch.equal(mask.sum(1), torch.tensor([len(p.answer) + 1.0 for p in space[:50]]))


def test_task_formats():
    add, addp, rev, pre = AdditionTask(), AdditionTask(pad_answer=True), ReversalTask(), PrefixCopyTask()
    assert len(add.problem_space()) == 10_000 and len(rev.problem_space()) == 4**6
    assert len(pre.problem_space()) == sum(3**k * 4 ** (6 - k) for k in range(1, 7)) == 10_101
    by_prompt = {p.prompt: p.answer for p in add.problem_space()}
    assert by_prompt["07+35="] == "42" and by_prompt["00+03="] == "3" and by_prompt["99+99="] == "198"
    assert {p.prompt: p.answer for p in addp.problem_space()}["00+03="] == "003"
    assert {p.prompt: p.answer for p in rev.problem_space()}["abdcca="] == "accdba"
    assert {p.prompt: p.answer for p in pre.problem_space()}["cabzazb="] == "cab"
    # every addition answer is the integer sum
    assert all(int(p.answer) == int(p.prompt[:2]) + int(p.prompt[3:5]) for p in add.problem_space())


@pytest.mark.parametrize("make", ALL_TASKS)
def test_sampling_is_seeded_and_disjoint_from_eval(make):
    task = make()
    a = task.sample_problems(500, torch.Generator().manual_seed(3))
    b = task.sample_problems(500, torch.Generator().manual_seed(3))
    c = task.sample_problems(500, torch.Generator().manual_seed(4))
    assert a == b and a != c
    ev = task.eval_set()
    assert ev == task.eval_set() and len(ev) == 240 and len(set(ev)) == 240
    assert ev != task.eval_set(seed=1)
    assert all(task.is_heldout(p) for p in ev)
    draws = task.sample_problems(20_000, torch.Generator().manual_seed(0))
    heldout = {p.prompt for p in task.problem_space() if is_heldout(p.prompt)}
    assert not ({p.prompt for p in draws} & heldout)
    assert not ({p.prompt for p in draws} & {p.prompt for p in ev})
    # the hash split holds out about 1/8 of the space (a CLT bound for a fair hash)
    n, frac = len(task.problem_space()), len(heldout) / len(task.problem_space())
    assert abs(frac - 1 / 8) < 4 * math.sqrt((1 / 8) * (7 / 8) / n)


def test_split_is_shared_between_padded_and_unpadded_addition():
    a, b = AdditionTask(), AdditionTask(pad_answer=True)
    assert [p.prompt for p in a.eval_set(100)] == [p.prompt for p in b.eval_set(100)]


def test_sampling_validation():
    task = ReversalTask()
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n must"):
            task.sample_problems(bad)
    with pytest.raises(ValueError, match="Generator"):
        task.sample_problems(3, generator=0)
    with pytest.raises(ValueError, match="only"):
        task.eval_set(n=10_000)
    with pytest.raises(ValueError, match="seed"):
        task.eval_set(seed=-1)
    with pytest.raises(ValueError, match="tokens"):
        task.encode_prompts([Problem("ab=", "ba")])
    with pytest.raises(ValueError, match="'7'"):
        task.encode_prompts([Problem("abcda7=", "ba")])
    with pytest.raises(ValueError, match="single Problem"):
        task.encode_prompts(Problem("abcdaa=", "aadcba"))
    with pytest.raises(ValueError, match="non-empty"):
        task.encode_prompts([])
    with pytest.raises(ValueError, match="Problem objects"):
        task.encode_prompts(["abcdaa="])
    with pytest.raises(ValueError, match="pad_id"):
        task.target_completions(task.eval_set(2), pad_id=99)


def test_answer_length_distributions():
    g = torch.Generator().manual_seed(0)
    n = 6000
    lengths = torch.tensor([len(p.answer) for p in PrefixCopyTask().sample_problems(n, g)])
    assert int(lengths.min()) == 1 and int(lengths.max()) == 6
    p, sd = 1 / 6, math.sqrt((1 / 6) * (5 / 6) / n)
    for k in range(1, 7):
        assert abs((lengths == k).double().mean().item() - p) < 4 * sd
    ev = [len(q.answer) for q in PrefixCopyTask().eval_set(240)]
    assert all(ev.count(k) == 40 for k in range(1, 7))
    add = {len(q.answer) for q in AdditionTask().problem_space()}
    assert add == {1, 2, 3}
    assert {len(q.answer) for q in AdditionTask(pad_answer=True).problem_space()} == {3}
    assert {len(q.answer) for q in ReversalTask().problem_space()} == {6}


# ---------------------------------------------------------------------------------------------------------
# rewards
# ---------------------------------------------------------------------------------------------------------
def _malformed_cases(task, prob):
    """(completion ids, expected reason) pairs that must all score 0."""
    tok = task.tokenizer
    ans = tok.encode(prob.answer)
    E = tok.eos_id
    return [
        (ans, "no eos"),  # the right answer that never stopped
        (ans[:-1], "no eos"),  # truncated
        ([], "no eos"),  # nothing at all
        ([E], "empty"),
        ([E, *ans, E], "empty"),
        (ans[:1] + [tok.pad_id] + ans[1:] + [E], "pad inside"),
        ([tok.pad_id, E], "pad inside"),
        ([tok.bos_id, *ans, E], "special token"),
        ([*ans, tok.sep_id, E], "special token"),
        ([*ans[:1], 999, E], "invalid id"),
        ([*ans[:1], -1, E], "invalid id"),
    ]


@pytest.mark.parametrize("make", ALL_TASKS)
def test_reward_correct_and_malformed(make):
    task = make()
    tok = task.tokenizer
    for prob in task.eval_set(24):
        ids = task.answer_ids(prob)
        assert task.reward_with_reason(prob, ids) == (1.0, "ok")
        assert task.reward(prob, torch.tensor(ids)) == 1.0
        # anything after the first EOS is padding and ignored
        assert task.reward(prob, [*ids, tok.pad_id, 5, tok.bos_id]) == 1.0
        for comp, why in _malformed_cases(task, prob):
            assert task.reward_with_reason(prob, comp) == (0.0, why), (prob, comp)
    assert set(REASONS) >= {"ok", "no eos", "empty", "pad inside", "special token", "invalid id", "wrong answer"}


def test_addition_reasons():
    task = AdditionTask()
    tok = task.tokenizer
    prob = Problem("07+35=", "42")

    def r(text):
        return task.reward_with_reason(prob, tok.encode(text, eos=True))

    assert r("42") == (1.0, "ok")
    assert r("43") == (0.0, "wrong answer")
    assert r("4") == (0.0, "wrong answer")
    assert r("042") == (0.0, "wrong format")
    assert r("4+2") == (0.0, "not a number")
    assert r("+") == (0.0, "not a number")
    padded = AdditionTask(pad_answer=True)
    assert padded.reward_with_reason(Problem("07+35=", "042"), tok.encode("42", eos=True)) == (0.0, "wrong format")
    # a shared vocabulary lets the model write letters: not a number
    shared = AdditionTask(tokenizer=shared_tokenizer())
    assert shared.reward_with_reason(prob, shared.tokenizer.encode("4a", eos=True)) == (0.0, "not a number")


def test_string_task_reasons():
    rev, pre = ReversalTask(), PrefixCopyTask()
    prob = Problem("abdcca=", "accdba")
    enc = rev.tokenizer.encode
    assert rev.reward_with_reason(prob, enc("accdba", eos=True)) == (1.0, "ok")
    assert rev.reward_with_reason(prob, enc("accdbb", eos=True)) == (0.0, "wrong answer")
    assert rev.reward_with_reason(prob, enc("accdb", eos=True)) == (0.0, "wrong length")
    assert rev.reward_with_reason(prob, enc("abdcca", eos=True)) == (0.0, "wrong answer")
    shared = ReversalTask(tokenizer=shared_tokenizer())
    assert shared.reward_with_reason(prob, shared.tokenizer.encode("accd1a", eos=True)) == (0.0, "invalid character")
    assert shared.reward_with_reason(prob, shared.tokenizer.encode("acczba", eos=True)) == (0.0, "invalid character")
    pprob = Problem("cabzazb=", "cab")
    penc = pre.tokenizer.encode
    assert pre.reward_with_reason(pprob, penc("cab", eos=True)) == (1.0, "ok")
    assert pre.reward_with_reason(pprob, penc("cabzazb", eos=True)) == (0.0, "wrong length")  # ran past the z
    assert pre.reward_with_reason(pprob, penc("ca", eos=True)) == (0.0, "wrong length")
    assert pre.reward_with_reason(pprob, penc("cba", eos=True)) == (0.0, "wrong answer")


def test_reward_input_validation():
    task = ReversalTask()
    prob = task.eval_set(1)[0]
    with pytest.raises(ValueError, match="1-D"):
        task.reward(prob, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        task.reward(prob, torch.zeros(3))
    with pytest.raises(ValueError, match="list of ints"):
        task.reward(prob, "abc")
    with pytest.raises(ValueError, match="Problem"):
        task.reward("abcdaa=", [2])
    comp = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="rows"):
        task.rewards([prob], comp)
    with pytest.raises(ValueError, match="mask must have shape"):
        task.rewards([prob, prob], comp, torch.ones(2, 4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        task.rewards([prob, prob], comp, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="integer"):
        task.rewards([prob, prob], comp.float())
    with pytest.raises(ValueError, match="2 dimension"):
        task.rewards([prob, prob], comp[0])


@pytest.mark.parametrize("make", ALL_TASKS)
def test_batched_rewards_equal_per_item(make):
    task = make()
    tok = task.tokenizer
    g = torch.Generator().manual_seed(1)
    problems = task.sample_problems(300, g)
    T = task.max_new_tokens
    comp, _ = task.target_completions(problems)
    # corrupt two thirds of the rows with random tokens (any id, EOS included) at random positions
    noise = torch.randint(0, tok.vocab_size, comp.shape, generator=g)
    hit = torch.rand(comp.shape, generator=g) < 0.3
    row = (torch.arange(300) % 3 != 0).unsqueeze(1)
    comp = torch.where(hit & row, noise, comp)
    # the sampler's completion mask: 1 up to and including the first EOS
    is_eos = (comp == tok.eos_id).long()
    mask = ((is_eos.cumsum(1) - is_eos) == 0).float()
    batched, reasons = task.rewards_with_reasons(problems, comp, mask)
    assert batched.shape == (300,) and batched.dtype == torch.get_default_dtype()
    per_item = [task.reward_with_reason(p, c[m > 0]) for p, c, m in zip(problems, comp, mask, strict=True)]
    assert batched.tolist() == [r for r, _ in per_item] and reasons == [w for _, w in per_item]
    assert torch.equal(task.rewards(problems, comp), batched)  # after EOS nothing is read anyway
    assert torch.equal(task.rewards(problems, comp, mask.bool()), batched)
    assert 0 < batched.mean().item() < 1 and len(set(reasons)) >= 3
    assert set(reasons) <= set(REASONS)
    assert T == comp.shape[1]


# ---------------------------------------------------------------------------------------------------------
# the evaluator
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", ALL_TASKS)
def test_evaluate_oracle_and_garbage(make):
    task = make()
    problems = task.eval_set(60)
    oracle = OraclePolicy(task)
    oracle.train()
    res = evaluate(oracle, task, problems, batch_size=16)
    assert res["accuracy"] == 1.0 and res["mean_reward"] == 1.0 and res["pass_at_k"] == 1.0
    assert res["frac_truncated"] == 0.0 and res["reasons"] == {"ok": 1.0} and res["num_completions"] == 60
    assert res["mean_length"] == pytest.approx(sum(len(p.answer) + 1 for p in problems) / 60)
    assert [c["B"] for c in oracle.calls] == [16, 16, 16, 12]
    assert all(c["top_k"] == 1 and c["T"] == task.max_new_tokens for c in oracle.calls)
    assert oracle.training and not oracle.seen_training  # eval mode while sampling, restored afterwards
    bad = evaluate(
        GarbagePolicy(task), task, problems, greedy=False, samples=3, generator=torch.Generator().manual_seed(0)
    )
    assert bad["accuracy"] == 0.0 and bad["pass_at_k"] == 0.0 and bad["mean_reward"] == 0.0
    assert bad["frac_truncated"] == 1.0 and bad["reasons"] == {"no eos": 1.0}
    assert bad["num_completions"] == 180 and bad["mean_length"] == task.max_new_tokens


def test_evaluate_sampling_arguments_and_pass_at_k():
    task = ReversalTask()
    problems = task.eval_set(10)

    class HalfRight(OraclePolicy):
        """Right on even rows, wrong answer on odd rows (so each problem's 2 samples: one right, one wrong)."""

        def sample(self, prompts, **kw):
            s = super().sample(prompts, **kw)
            comp = s.completions.clone()
            comp[1::2, 0] = torch.where(comp[1::2, 0] == 4, 5, 4)  # flip the first letter
            return Samples(s.prompts, comp, s.mask, s.log_probs, s.truncated)

    pol = HalfRight(task)
    res = evaluate(pol, task, problems, greedy=False, samples=2, temperature=0.7)
    assert res["accuracy"] == 0.5 and res["pass_at_k"] == 1.0
    assert res["reasons"] == {"ok": 0.5, "wrong answer": 0.5}
    assert pol.calls[0]["top_k"] is None and pol.calls[0]["temperature"] == 0.7 and pol.calls[0]["B"] == 20


def test_evaluate_validation():
    task = ReversalTask()
    problems = task.eval_set(4)
    pol = OraclePolicy(task)
    with pytest.raises(ValueError, match="greedy"):
        evaluate(pol, task, problems, samples=2)
    with pytest.raises(ValueError, match="sample"):
        evaluate(object(), task, problems)
    with pytest.raises(ValueError, match="Task"):
        evaluate(pol, "reverse", problems)
    with pytest.raises(ValueError, match="temperature"):
        evaluate(pol, task, problems, greedy=False, temperature=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(pol, task, problems, batch_size=0)
    with pytest.raises(ValueError, match="non-empty"):
        evaluate(pol, task, [])

    class Broken:
        def sample(self, prompts, **kw):
            return prompts

    with pytest.raises(ValueError, match="Samples"):
        evaluate(Broken(), task, problems)


# ---------------------------------------------------------------------------------------------------------
# exact enumeration
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", ALL_TASKS)
def test_exact_problem_shapes_and_rewards(make):
    task = make()
    problems = task.eval_set(6)
    L = max(len(p.answer) for p in problems) + 1
    ep = exact_problem(task, problems, L)
    b = len(task.answer_chars)
    K = sum(b**t for t in range(L)) + b**L
    assert ep.prompts.shape == (6, task.prompt_length) and torch.equal(ep.prompts, task.encode_prompts(problems))
    assert ep.completions.shape == (K, L) and ep.mask.shape == (K, L) and ep.rewards.shape == (6, K)
    allowed = {task.tokenizer.token_id(c) for c in task.answer_chars} | {task.tokenizer.eos_id}
    assert set(ep.completions.unique().tolist()) == allowed  # ids of the model's vocabulary
    assert torch.equal(ep.rewards.sum(1), torch.ones(6))  # exactly one correct completion per prompt
    comp, _ = task.target_completions(problems)
    idx = ep.completion_index(comp[:, :L])
    assert torch.equal(ep.rewards[torch.arange(6), idx], torch.ones(6))
    assert torch.equal(ep.rewards_for(torch.arange(6), comp[:, :L]), torch.ones(6))
    # every entry agrees with the batched reward function
    for i, p in enumerate(problems[:2]):
        assert torch.equal(ep.rewards[i], task.rewards([p] * K, ep.completions, ep.mask))


def test_exact_problem_restricted_alphabet_gives_exact_objective():
    """Left-out completions all have reward 0, so J and its gradient match the full-vocabulary enumeration."""
    task = AdditionTask()
    problems = [Problem("99+99=", "198"), Problem("03+04=", "7")]
    V = task.tokenizer.vocab_size
    full = exact_problem(task, problems, allowed_tokens=list(range(V)))
    small = exact_problem(task, problems)
    assert full.num_completions == sum(14**t for t in range(4)) + 14**4 and small.num_completions == 11_111
    model = ToyLM(V, task.max_new_tokens)
    with torch.no_grad():
        assert torch.allclose(full.probs(model).sum(1), torch.ones(2, dtype=torch.float64))
    J_full, J_small = full.objective(model), small.objective(model)
    assert J_small.item() == pytest.approx(J_full.item(), rel=1e-10, abs=1e-15) and J_full.item() > 0
    assert torch.allclose(small.gradient(model), full.gradient(model), rtol=1e-8, atol=1e-15)
    by_string = exact_problem(task, problems, allowed_tokens=[str(d) for d in range(10)] + ["<eos>"])
    assert torch.equal(by_string.completions, small.completions)


def test_exact_problem_validation():
    task = AdditionTask()
    problems = task.eval_set(3)
    with pytest.raises(ValueError, match="exceeds the limit"):
        exact_problem(task, task.eval_set(30))
    with pytest.raises(ValueError, match="too short"):
        exact_problem(task, [Problem("99+99=", "198")], 3)
    with pytest.raises(ValueError, match="missing"):
        exact_problem(task, [Problem("99+99=", "198")], allowed_tokens=["1", "9"])
    with pytest.raises(ValueError, match="duplicates"):
        exact_problem(task, problems, allowed_tokens=[4, 4])
    with pytest.raises(ValueError, match="neither"):
        exact_problem(task, problems, allowed_tokens=[99])
    with pytest.raises(ValueError, match="list"):
        exact_problem(task, problems, allowed_tokens="0123")
    with pytest.raises(ValueError, match="max_len"):
        exact_problem(task, problems, 0)
    with pytest.raises(ValueError, match="Task"):
        exact_problem("addition", problems)
