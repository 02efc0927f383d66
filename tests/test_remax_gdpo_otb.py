"""ReMax, GDPO and the optimal token baseline: the batch fields, method flags, task, loop and lab they need.

* ``RolloutBatch``'s optional ``greedy_rewards``, ``reward_components`` and ``sum_pi_squared``: validated,
  carried by ``select`` and ``from_samples``;
* ``optimal_token_baseline_advantages`` against hand values and a plain Python loop over groups and steps,
  the logit-gradient identity ‖e_y − π‖² = 1 − 2π_y + Σπ² against autograd;
* ``FormatAdditionTask`` on hand-built completions;
* ``train``: the greedy completions ReMax reads (own generator: the run's draws are unchanged), Σπ² from
  the training forward, the reward components of a two-component task, the ``greedy_samples`` column;
* the gradient lab: ReMax's and the optimal token baseline's exact expected update against a brute-force
  loop over every ordered group; ReMax is unbiased.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

import policygrad as pg
from policygrad import reward_side as rs
from policygrad.exact import flat_grad, flat_params, lab
from policygrad.lm.tasks import AdditionTask, FormatAdditionTask, make_task
from policygrad.methods import Method, get_method
from policygrad.rollout import RolloutBatch
from policygrad.train import METRICS, train

F64 = torch.float64


def _batch(B=4, T=3, G=2, **fields):
    mask = torch.ones(B, T, dtype=F64)
    mask[1, 2] = 0
    return RolloutBatch(
        prompts=torch.zeros(B, 1, dtype=torch.long),
        completions=torch.zeros(B, T, dtype=torch.long),
        mask=mask,
        loss_mask=mask,
        old_log_probs=-torch.ones(B, T, dtype=F64) * mask,
        ref_log_probs=None,
        rewards=torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=F64)[:B],
        group_ids=torch.arange(B) // G,
        truncated=torch.zeros(B, dtype=torch.bool),
        **fields,
    )


# -- the batch fields ------------------------------------------------------------------------------------------


def test_new_fields_default_to_none_and_are_carried_by_select_and_from_samples():
    b = _batch()
    assert (
        b.greedy_rewards is None
        and b.reward_components is None
        and b.sum_pi_squared is None
    )
    greedy = torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=F64)
    comps = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], dtype=F64)
    spsq = torch.full((4, 3), 0.5, dtype=F64)
    spsq[1, 2] = float("nan")  # padding may hold anything
    full = _batch(greedy_rewards=greedy, reward_components=comps, sum_pi_squared=spsq)
    sub = full.select(torch.tensor([2, 3]))
    assert torch.equal(sub.greedy_rewards, greedy[2:]) and torch.equal(
        sub.reward_components, comps[2:]
    )
    assert torch.equal(sub.sum_pi_squared, spsq[2:])
    s = pg.rollout.Samples(
        prompts=full.prompts,
        completions=full.completions,
        mask=full.mask,
        log_probs=full.old_log_probs,
        truncated=full.truncated,
    )
    fb = RolloutBatch.from_samples(
        s,
        full.rewards,
        group_size=2,
        greedy_rewards=greedy,
        reward_components=comps,
        sum_pi_squared=spsq,
    )
    assert torch.equal(fb.greedy_rewards, greedy) and torch.equal(
        fb.reward_components, comps
    )
    assert fb.sum_pi_squared is not None and torch.equal(fb.sum_pi_squared[0], spsq[0])


@pytest.mark.parametrize(
    "fields, match",
    [
        (
            {"greedy_rewards": torch.zeros(3, dtype=F64)},
            "greedy_rewards must be a floating-point tensor of shape",
        ),
        ({"greedy_rewards": torch.zeros(4, dtype=torch.long)}, "greedy_rewards"),
        (
            {"greedy_rewards": torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=F64)},
            "same on every row of a group",
        ),
        (
            {"greedy_rewards": torch.tensor([float("nan")] * 4, dtype=F64)},
            "greedy_rewards",
        ),
        ({"reward_components": torch.zeros(4, dtype=F64)}, "reward_components"),
        ({"reward_components": torch.zeros(4, 0, dtype=F64)}, "at least one column"),
        (
            {"reward_components": torch.tensor([[float("inf")]] * 4, dtype=F64)},
            "reward_components",
        ),
        ({"sum_pi_squared": torch.zeros(4, 2, dtype=F64)}, "sum_pi_squared"),
        ({"sum_pi_squared": torch.full((4, 3), 1.5, dtype=F64)}, r"\[0, 1\]"),
        (
            {"sum_pi_squared": torch.full((4, 3), float("nan"), dtype=F64)},
            "sum_pi_squared",
        ),
    ],
)
def test_new_fields_are_validated(fields, match):
    with pytest.raises(ValueError, match=match):
        _batch(**fields)


def test_method_flags_are_booleans_and_off_by_default():
    base = {"name": "m", "title": "t", "advantages": len, "loss": len}
    m = Method(**base)
    assert m.greedy_baseline is False and m.needs_sum_pi_squared is False
    for flag in ("greedy_baseline", "needs_sum_pi_squared"):
        with pytest.raises(ValueError, match=flag):
            Method(**base, **{flag: 1})
    for name in pg.methods.method_names():
        mm = get_method(name)
        assert mm.greedy_baseline == (name == "remax")
        assert mm.needs_sum_pi_squared == (name == "optimal_token_baseline")


# -- the optimal token baseline --------------------------------------------------------------------------------


def _otb_loop(rewards, mask, old, spsq, G, zero_tail=True, eps=1e-8):
    """A plain Python loop over groups and steps (floats), the definition in the docstring."""
    N, T = mask.shape
    m, lp, sq = mask.tolist(), old.tolist(), spsq.tolist()
    if rewards.dim() == 1:
        ret = [[rewards[i].item() * m[i][t] for t in range(T)] for i in range(N)]
    else:
        r = rewards.tolist()
        ret = [
            [sum(r[i][j] * m[i][j] for j in range(t, T)) * m[i][t] for t in range(T)]
            for i in range(N)
        ]
    W = []
    for i in range(N):
        acc, row = 0.0, []
        for t in range(T):
            if m[i][t]:
                acc += 1 - 2 * math.exp(lp[i][t]) + sq[i][t]
            row.append(acc)
        W.append(row)
    out = [[0.0] * T for _ in range(N)]
    for g0 in range(0, N, G):
        rows = range(g0, g0 + G)
        lengths = [sum(m[i]) for i in rows]
        srt = sorted(lengths)
        tail_row = None
        if lengths.count(srt[-1]) == 1 and srt[-1] > srt[-2]:
            tail_row = g0 + lengths.index(srt[-1])
        for t in range(T):
            num = sum(ret[i][t] * W[i][t] * m[i][t] for i in rows)
            den = sum(W[i][t] * m[i][t] for i in rows) + eps
            for i in rows:
                b = 0.0 if (zero_tail and i == tail_row and t >= srt[-2]) else num / den
                out[i][t] = (ret[i][t] - b) * m[i][t]
    return torch.tensor(out, dtype=F64)


def test_optimal_token_baseline_by_hand():
    """One group of two, lengths 2 and 1, π = 1/2 everywhere, Σπ² = 1/2: w = 1 − 1 + 1/2 = 1/2,
    W = [[1/2, 1], [1/2, 1/2]]. Step 0: b = (1·1/2 + 0·1/2)/(1/2 + 1/2) = 1/2. Step 1: only row 0
    (the unique longest) is left; its baseline there would be its own return, the zero tail sets it to 0."""
    R = torch.tensor([1.0, 0.0], dtype=F64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=F64)
    old = torch.full((2, 2), math.log(0.5), dtype=F64) * mask
    spsq = torch.full((2, 2), 0.5, dtype=F64) * mask
    adv = rs.optimal_token_baseline_advantages(R, mask, old, spsq, 2, eps=0.0)
    torch.testing.assert_close(
        adv, torch.tensor([[0.5, 1.0], [-0.5, 0.0]], dtype=F64), rtol=0, atol=1e-15
    )
    no_tail = rs.optimal_token_baseline_advantages(
        R, mask, old, spsq, 2, eps=0.0, handle_zero_tail=False
    )
    torch.testing.assert_close(
        no_tail, torch.tensor([[0.5, 0.0], [-0.5, 0.0]], dtype=F64), rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("per_step", [False, True])
@pytest.mark.parametrize("zero_tail", [True, False])
def test_optimal_token_baseline_matches_a_python_loop(per_step, zero_tail):
    g = torch.Generator().manual_seed(0)
    G, M, T = 4, 3, 6
    N = G * M
    lengths = torch.tensor(
        [6, 3, 5, 1, 4, 4, 2, 4, 6, 6, 3, 2]
    )  # group 2: a tie for the longest
    mask = (torch.arange(T) < lengths[:, None]).to(F64)
    mask[0, 1] = 0  # a hole in the loss mask (a token the policy did not choose)
    old = -2 * torch.rand(N, T, generator=g, dtype=F64)
    spsq = old.exp() ** 2 + (1 - old.exp() ** 2) * torch.rand(
        N, T, generator=g, dtype=F64
    )
    old_dirty = torch.where(mask > 0, old, torch.full_like(old, float("nan")))
    spsq_dirty = torch.where(mask > 0, spsq, torch.full_like(spsq, float("inf")))
    R = (
        torch.randn(N, T, generator=g, dtype=F64) * mask
        if per_step
        else torch.randn(N, generator=g, dtype=F64)
    )
    got = rs.optimal_token_baseline_advantages(
        R, mask, old_dirty, spsq_dirty, G, handle_zero_tail=zero_tail
    )
    want = _otb_loop(R, mask, old, spsq, G, zero_tail)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.dtype == F64 and bool((got[mask == 0] == 0).all())


def test_optimal_token_baseline_rejects_bad_input():
    R = torch.ones(4, dtype=F64)
    m = torch.ones(4, 3, dtype=F64)
    lp = -torch.ones(4, 3, dtype=F64)
    sq = torch.full((4, 3), 0.5, dtype=F64)
    f = rs.optimal_token_baseline_advantages
    with pytest.raises(ValueError, match="group_size"):
        f(R, m, lp, sq, 1)
    with pytest.raises(ValueError, match="old_log_probs"):
        f(R, m, lp[:, :2], sq, 2)
    with pytest.raises(ValueError, match="sum_pi_squared"):
        f(R, m, lp, sq.long(), 2)
    with pytest.raises(ValueError, match="per-step rewards"):
        f(torch.ones(4, 2, dtype=F64), m, lp, sq, 2)
    with pytest.raises(ValueError, match="old_log_probs"):
        f(R, m, torch.full_like(lp, float("nan")), sq, 2)
    with pytest.raises(ValueError, match="handle_zero_tail"):
        f(R, m, lp, sq, 2, handle_zero_tail="yes")


def test_logit_gradient_norm_is_one_minus_two_pi_plus_sum_pi_squared():
    """‖∂ log softmax(z)_y / ∂z‖² = ‖e_y − π‖² = 1 − 2π_y + Σ_v π_v², by autograd, for every y."""
    z = torch.randn(
        7, generator=torch.Generator().manual_seed(4), dtype=F64, requires_grad=True
    )
    pi = torch.softmax(z, -1).detach()
    for y in range(7):
        (grad,) = torch.autograd.grad(torch.log_softmax(z, -1)[y], z)
        assert math.isclose(
            float(grad @ grad), float(1 - 2 * pi[y] + (pi**2).sum()), rel_tol=1e-12
        )


# -- the methods' advantages -----------------------------------------------------------------------------------


def test_method_advantages_read_the_new_fields():
    greedy = torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=F64)
    comps = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], dtype=F64)
    spsq = torch.full((4, 3), 0.4, dtype=F64)
    b = _batch(greedy_rewards=greedy, reward_components=comps, sum_pi_squared=spsq)
    tok = rs.broadcast_to_tokens
    torch.testing.assert_close(
        get_method("remax").advantages(b),
        tok(b.rewards - greedy, b.loss_mask),
        rtol=0,
        atol=0,
    )
    gd = rs.gdpo_advantages(comps, 2, eps=1e-4, batch_eps=1e-4)
    torch.testing.assert_close(
        get_method("gdpo").advantages(b), tok(gd, b.loss_mask), rtol=0, atol=0
    )
    single = rs.gdpo_advantages(b.rewards.unsqueeze(1), 2, eps=1e-4, batch_eps=1e-4)
    torch.testing.assert_close(
        get_method("gdpo").advantages(_batch()),
        tok(single, b.loss_mask),
        rtol=0,
        atol=0,
    )
    otb = rs.optimal_token_baseline_advantages(
        b.rewards, b.loss_mask, b.old_log_probs, spsq, 2
    )
    torch.testing.assert_close(
        get_method("optimal_token_baseline").advantages(b), otb, rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="greedy_rewards"):
        get_method("remax").advantages(_batch())
    with pytest.raises(ValueError, match="sum_pi_squared"):
        get_method("optimal_token_baseline").advantages(_batch())


# -- the two-component task -------------------------------------------------------------------------------------


def test_format_addition_task_scores_hand_built_completions():
    task = FormatAdditionTask()
    base = AdditionTask()
    assert task.reward_names == ("correct", "format") and base.reward_names == (
        "correct",
    )
    assert (
        task.problem_space() == base.problem_space()
        and task.tokenizer == base.tokenizer
    )
    assert task.eval_set(40) == base.eval_set(40) and task.name == "addition_format"
    assert isinstance(
        make_task("addition_format", format_weight=0.5), FormatAdditionTask
    )
    p42, p7 = pg.lm.Problem("20+22=", "42"), pg.lm.Problem("03+04=", "7")
    enc = task.tokenizer.encode
    cases = [  # problem, completion text, (correct, format)
        (p42, "42<eos>", (1.0, 1.0)),
        (p42, "43<eos>", (0.0, 1.0)),
        (p42, "042<eos>", (0.0, 0.0)),  # right number, wrong number of digits
        (p42, "4<eos>", (0.0, 0.0)),
        (p42, "4242", (0.0, 0.0)),  # no EOS within the 4 tokens
        (p42, "<eos>", (0.0, 0.0)),  # empty
        (p42, "4+<eos>", (0.0, 0.0)),  # two characters, not a number
        (p7, "7<eos><eos>", (1.0, 1.0)),  # nothing after EOS is read
        (p7, "9<eos>", (0.0, 1.0)),
    ]
    T = 4
    comp = torch.full((len(cases), T), task.tokenizer.eos_id, dtype=torch.long)
    for i, (_, text, _) in enumerate(cases):
        ids = enc(text)[:T]
        comp[i, : len(ids)] = torch.tensor(ids)
    probs = [c[0] for c in cases]
    want = torch.tensor([c[2] for c in cases])
    torch.testing.assert_close(
        task.reward_components(probs, comp), want, rtol=0, atol=0
    )
    torch.testing.assert_close(
        task.rewards(probs, comp), want[:, 0] + 0.2 * want[:, 1], rtol=0, atol=1e-7
    )
    assert task.reward_with_reason(p42, comp[1])[1] == "wrong answer"
    # the base class: one column, the reward itself
    torch.testing.assert_close(
        base.reward_components(probs, comp), base.rewards(probs, comp).unsqueeze(1)
    )
    with pytest.raises(ValueError, match="format_weight"):
        FormatAdditionTask(format_weight=float("nan"))
    with pytest.raises(ValueError, match="unknown task"):
        make_task("addition_fmt")


def test_evaluate_counts_exact_matches_on_the_two_component_task():
    task, base = FormatAdditionTask(), AdditionTask()
    policy, _ = pg.load_warm_start("addition")
    probs = base.eval_set(48)
    a, b = pg.lm.evaluate(policy, task, probs), pg.lm.evaluate(policy, base, probs)
    assert a["accuracy"] == b["accuracy"] > 0 and a["mean_reward"] > b["mean_reward"]


# -- the training loop -----------------------------------------------------------------------------------------


def _recording(name, seen):
    m = get_method(name)

    def loss(logp, batch, adv):
        seen.append(batch)
        return m.loss(logp, batch, adv)

    return Method(
        **{
            **{f: getattr(m, f) for f in m.__dataclass_fields__},
            "name": f"rec_{name}",
            "loss": loss,
        }
    )


def test_train_gives_remax_the_greedy_rewards_without_touching_the_runs_draws():
    task = make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    start = copy.deepcopy(policy)
    seen_remax, seen_reinforce = [], []
    h = train(
        policy,
        task,
        _recording("remax", seen_remax),
        steps=2,
        prompts_per_step=8,
        eval_every=None,
        seed=3,
    )
    train(copy.deepcopy(start), task, _recording("reinforce", seen_reinforce), steps=1, prompts_per_step=8,
          eval_every=None, seed=3)  # fmt: skip
    b, r = seen_remax[0], seen_reinforce[0]
    assert torch.equal(b.completions, r.completions) and torch.equal(
        b.prompts, r.prompts
    )  # same draws from g
    assert (
        r.greedy_rewards is None
        and r.sum_pi_squared is None
        and r.reward_components is None
    )
    with (
        torch.no_grad()
    ):  # the greedy completions of the policy before its first update
        greedy = start.sample(
            b.prompts,
            max_new_tokens=task.max_new_tokens,
            eos=task.tokenizer.eos_id,
            top_k=1,
        )
    # the prompts' problems: the first step's draw from a generator seeded like train's
    problems = task.sample_problems(8, torch.Generator().manual_seed(3))
    assert torch.equal(task.encode_prompts(problems), b.prompts)
    want = task.rewards(problems, greedy.completions, greedy.mask)
    assert torch.equal(b.greedy_rewards, want)
    assert float(want.sum()) > 0 and float((want == 0).sum()) > 0  # both outcomes occur
    assert h["greedy_samples"] == [8, 16] and h["samples"] == [8, 16]
    assert "greedy_samples" in METRICS


def test_train_fills_sum_pi_squared_from_the_training_forward():
    task = make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    start = copy.deepcopy(policy)
    seen = []
    train(policy, task, _recording("optimal_token_baseline", seen), steps=1, prompts_per_step=2, eval_every=None,
          seed=1)  # fmt: skip
    b = seen[0]
    with torch.no_grad():
        logits = start(b.prompts, b.completions)
    want = torch.softmax(logits, -1).square().sum(-1)
    m = b.mask != 0
    torch.testing.assert_close(b.sum_pi_squared[m], want[m], rtol=1e-6, atol=1e-7)
    assert torch.equal(b.sum_pi_squared[~m], torch.zeros(int((~m).sum())))
    assert (
        float(b.sum_pi_squared[m].min()) > 0 and float(b.sum_pi_squared[m].max()) <= 1
    )


def test_train_puts_the_reward_components_of_a_two_component_task_in_the_batch():
    task = FormatAdditionTask(format_weight=0.2)
    policy, _ = pg.load_warm_start("addition")
    seen = []
    h = train(
        policy,
        task,
        _recording("gdpo", seen),
        steps=1,
        prompts_per_step=4,
        eval_every=None,
        seed=0,
    )
    b = seen[0]
    assert b.reward_components.shape == (32, 2)
    torch.testing.assert_close(
        b.rewards, b.reward_components @ torch.tensor([1.0, 0.2]), rtol=0, atol=1e-6
    )
    assert "greedy_samples" not in h.columns


# -- the gradient lab ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vl():
    problem, _ = pg.toy.variable_length_task(
        num_prompts=2, vocab_size=3, max_len=2, seed=0
    )
    policy = pg.TabularPolicy(
        2, 3, 2, eos=0, init_scale=1.0, generator=torch.Generator().manual_seed(1)
    ).double()
    return problem, policy


def _greedy_by_logits(problem, policy, x):
    """The greedy completion of prompt x by walking the policy's logits (argmax over the whole vocabulary)."""
    comps, mask = problem.completions, problem.mask
    prefix = []
    for t in range(comps.shape[1]):
        k = next(
            k
            for k in range(comps.shape[0])
            if comps[k, :t].tolist() == prefix and mask[k, t] != 0
        )
        with torch.no_grad():
            logits = policy(problem.prompts[x : x + 1], comps[k : k + 1])[0, t]
        v = int(logits.argmax())
        prefix.append(v)
        if v == policy.eos:
            break
    return next(k for k in range(comps.shape[0]) if comps[k, : len(prefix)].tolist() == prefix
                and int(mask[k].sum()) == len(prefix))  # fmt: skip


def _brute_force(problem, policy, name, G):
    """Σ over prompts and every *ordered* group of G completions of ρ(x) Π p(y_i|x) · (−∇ loss(group))."""
    method = get_method(name)
    with torch.no_grad():
        probs = problem.probs(policy)
    lp_all = problem.token_log_probs(policy)
    K = problem.num_completions
    total = 0.0
    for x in range(problem.num_prompts):
        greedy_r = problem.rewards.double()[x, _greedy_by_logits(problem, policy, x)]
        for idx in itertools.product(range(K), repeat=G):
            idx = torch.tensor(idx)
            mask = problem.mask.double()[idx]
            logp = lp_all[x, idx]
            with torch.no_grad():
                logits = policy(problem.prompts[x].expand(G), problem.completions[idx])
                spsq = torch.softmax(logits, -1).square().sum(-1) * mask
            batch = RolloutBatch(
                prompts=problem.prompts[x].reshape(1, -1).expand(G, -1),
                completions=problem.completions[idx],
                mask=mask,
                loss_mask=mask,
                old_log_probs=logp.detach(),
                ref_log_probs=logp.detach(),
                rewards=problem.rewards.double()[x, idx],
                group_ids=torch.zeros(G, dtype=torch.long),
                truncated=torch.zeros(G, dtype=torch.bool),
                greedy_rewards=greedy_r.expand(G).clone(),
                sum_pi_squared=spsq,
            )
            loss, _ = method.loss(logp, batch, method.advantages(batch))
            total = total + problem.prompt_probs[x] * probs[x, idx].prod() * loss
    return -flat_grad(total, flat_params(policy)).detach()


def test_greedy_completions_walk_the_argmax_path(vl):
    problem, policy = vl
    got = lab.greedy_completions(problem, policy)
    assert got.tolist() == [
        _greedy_by_logits(problem, policy, x) for x in range(problem.num_prompts)
    ]


@pytest.mark.parametrize(
    "name, G", [("remax", 1), ("remax", 2), ("optimal_token_baseline", 2)]
)
def test_lab_expectation_equals_a_brute_force_loop(vl, name, G):
    problem, policy = vl
    mom = lab.method_update_moments(problem, policy, name, group_size=G)
    brute = _brute_force(problem, policy, name, G)
    assert float((mom["mean"] - brute).abs().max()) < 1e-12
    assert float(brute.norm()) > 1e-3


def test_remax_is_unbiased_in_the_lab_and_the_optimal_token_baseline_is_not(vl):
    """ReMax's baseline, the greedy completion's reward, depends on the prompt only: E[u] = ∇J exactly,
    at every G. The optimal token baseline includes the sample's own return: biased."""
    problem, policy = vl
    grad_J = problem.gradient(policy)
    for G in (1, 3):
        mom = lab.method_update_moments(problem, policy, "remax", group_size=G)
        assert (
            lab.compare_to_gradient(mom["mean"], grad_J)["classification"] == "unbiased"
        )
        assert float((mom["mean"] - grad_J).abs().max()) < 1e-12
    rows = {
        r["method"]: r
        for r in lab.lab_table(
            problem, policy, ["remax", "gdpo", "optimal_token_baseline"], 3
        )
    }
    assert (
        rows["remax"]["classification"] == "unbiased"
        and rows["remax"]["skipped"] is None
    )
    assert rows["optimal_token_baseline"]["classification"] == "biased"
    assert rows["gdpo"]["skipped"] is None and rows["gdpo"]["variance"] > 0
