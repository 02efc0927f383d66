"""Tests for :mod:`policygrad.exact.kl`: KL estimators and KL-penalty gradients against exact enumeration.

Every reference number is computed by an *independent brute force*: the completions are enumerated by a
recursion of this file (not :func:`policygrad.enumerate_completions`), the next-token distribution of every
state :math:`s = (x, y_{<t})` is obtained by one forward of the policy on that prefix alone, and sums are
taken state by state. All problems are float64 and exact identities are checked to 1e-10. Each identity
comes with a negative control: a plausible wrong variant that the same check rejects. The problems are a
tabular policy with variable-length completions (EOS) and a tiny TinyGPT over its whole vocabulary (a KL
needs every completion, so no restricted alphabet), the way chapter 4 builds an ExactProblem for TinyGPT.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import policygrad as pg
from policygrad.exact import ExactProblem, flat_grad, flat_params
from policygrad.exact.kl import (
    PENALTY_FORMS,
    gradient_table,
    kl_estimator_stats,
    kl_penalty_gradients,
    kl_penalty_weights,
    state_kl,
)

F64 = torch.float64
EXACT = {"atol": 1e-10, "rtol": 0.0}
KINDS = ("k1", "k2", "k3")
K_BY_HAND = {  # the estimators written out independently of policygrad.trajectory_side.kl_estimate
    "k1": lambda x: x,
    "k2": lambda x: 0.5 * x * x,
    "k3": lambda x: math.exp(-x) - 1.0 + x,
}


# ==========================================================================================================
# problems and the brute force
# ==========================================================================================================
class Setup:
    """An ExactProblem with its policy and reference, plus what the brute force needs to know."""

    def __init__(self, prob, pol, ref, V, L, eos):
        self.prob, self.pol, self.ref, self.V, self.L, self.eos = prob, pol, ref, V, L, eos


def _tab(N, V, L, seed, scale=1.0):
    return pg.TabularPolicy(N, V, L, init_scale=scale, generator=torch.Generator().manual_seed(seed)).double()


def tabular_setup(L, eos=0, V=3):
    """Two prompts, V = 3, completions of at most L tokens ending at EOS; policy and reference differ a lot."""
    comp, mask = pg.enumerate_completions(V, L, eos=eos)
    prob = ExactProblem(torch.arange(2), torch.tensor([0.3, 0.7], dtype=F64), comp, mask.to(F64),
                        torch.zeros(2, comp.shape[0], dtype=F64))
    return Setup(prob, _tab(2, V, L, seed=11), _tab(2, V, L, seed=12), V, L, eos)


def tinygpt_setup(sigma=0.1):
    """A TinyGPT over its whole 5-token vocabulary (EOS = 0), 3 two-token prompts, L = 3: 85 completions each.

    The reference is a random TinyGPT with init_std 0.5 (sharp, non-uniform distributions); the policy is the
    reference with every parameter moved by N(0, sigma^2), a policy that has drifted from its reference.
    """
    V, L = 5, 3
    comp, mask = pg.enumerate_completions(V, L, eos=0)
    prompts = torch.randint(1, V, (3, 2), generator=torch.Generator().manual_seed(3))
    prob = ExactProblem(prompts, torch.tensor([0.2, 0.3, 0.5], dtype=F64), comp, mask.to(F64),
                        torch.zeros(3, comp.shape[0], dtype=F64))
    cfg = pg.TinyGPTConfig(vocab_size=V, block_size=5, n_layer=1, n_head=2, n_embd=16, init_std=0.5)
    ref = pg.TinyGPT(cfg, generator=torch.Generator().manual_seed(0)).double()
    pol = copy.deepcopy(ref)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(sigma * torch.randn(p.shape, generator=gen, dtype=F64))
    return Setup(prob, pol, ref, V, L, 0)


def _completions(V, L, eos):
    """Every completion as a tuple, by recursion: it ends at its first EOS or after L tokens."""
    out = []

    def grow(prefix):
        for v in range(V):
            y = prefix + (v,)
            if v == eos or len(y) == L:
                out.append(y)
            else:
                grow(y)

    grow(())
    return out


def _state_log_probs(s: Setup, module, grad=False):
    """{(prompt index, prefix): log pi(. | x, prefix) of shape (V,)}, one forward on each prefix alone."""
    pad = 0 if s.eos is None else s.eos
    table = {}
    with torch.set_grad_enabled(grad):
        for i in range(s.prob.num_prompts):
            for y in _completions(s.V, s.L, s.eos):
                for t in range(len(y)):
                    key = (i, y[:t])
                    if key not in table:
                        logits = module(s.prob.prompts[i].unsqueeze(0), torch.tensor([list(y[:t]) + [pad]]))
                        table[key] = torch.log_softmax(logits[0, t], -1)
    return table


def brute_values(s: Setup):
    """Per kind: E[K], Var[K] (x ~ rho, y ~ p_theta), P(K < 0), and the exact E_x KL, all in Python floats."""
    q = {k: v.tolist() for k, v in _state_log_probs(s, s.pol).items()}
    r = {k: v.tolist() for k, v in _state_log_probs(s, s.ref).items()}
    rho = s.prob.prompt_probs.tolist()
    rows = {kind: [] for kind in KINDS}  # (probability, K)
    kl = 0.0
    for i in range(s.prob.num_prompts):
        for y in _completions(s.V, s.L, s.eos):
            xs = [q[(i, y[:t])][y[t]] - r[(i, y[:t])][y[t]] for t in range(len(y))]
            w = rho[i] * math.exp(sum(q[(i, y[:t])][y[t]] for t in range(len(y))))
            kl += w * sum(xs)  # KL(p || q) = E_p[log p - log q]
            for kind in KINDS:
                rows[kind].append((w, sum(K_BY_HAND[kind](x) for x in xs)))
    out = {}
    for kind, pairs in rows.items():
        mean = sum(w * k for w, k in pairs)
        out[kind] = {
            "mean": mean,
            "variance": sum(w * (k - mean) ** 2 for w, k in pairs),
            "frac_negative": sum(w for w, k in pairs if k < 0),
            "total_probability": sum(w for w, _ in pairs),
        }
    return out, kl


def brute_state_objectives(s: Setup):
    """Scalars with gradient in the policy, summed over every state s with visit probability d(s):

    * ``sequence``: sum_x rho sum_s d(s) KL(pi_theta(.|s) || pi_ref(.|s)) with d depending on theta — the
      sequence KL by the chain rule of KL, so its gradient is the exact gradient;
    * ``frozen_reverse``: the same with d held fixed;
    * ``frozen_forward``: sum_x rho sum_s d(s) KL(pi_ref(.|s) || pi_theta(.|s)) with d held fixed.
    """
    q = _state_log_probs(s, s.pol, grad=True)
    r = _state_log_probs(s, s.ref)
    rho = s.prob.prompt_probs
    seq = frozen_rev = frozen_fwd = torch.zeros((), dtype=F64)
    for (i, prefix), lq in q.items():
        d = torch.ones((), dtype=F64)
        for t in range(len(prefix)):
            d = d * q[(i, prefix[:t])][prefix[t]].exp()
        lr = r[(i, prefix)]
        rev = (lq.exp() * (lq - lr)).sum()
        fwd = (lr.exp() * (lr - lq)).sum()
        seq = seq + rho[i] * d * rev
        frozen_rev = frozen_rev + rho[i] * d.detach() * rev
        frozen_fwd = frozen_fwd + rho[i] * d.detach() * fwd
    return {"sequence": seq, "frozen_reverse": frozen_rev, "frozen_forward": frozen_fwd}


def brute_state_kl(s: Setup):
    """{(prompt index, prefix): (reverse KL, forward KL)} at every state, as floats."""
    q, r = _state_log_probs(s, s.pol), _state_log_probs(s, s.ref)
    return {key: (float((q[key].exp() * (q[key] - r[key])).sum()), float((r[key].exp() * (r[key] - q[key])).sum()))
            for key in q}


def brute_gradients(s: Setup):
    """Gradients of the objectives of :func:`brute_state_objectives` (a fresh graph for each)."""
    params = flat_params(s.pol)
    return {name: flat_grad(brute_state_objectives(s)[name], params) for name in ("sequence", "frozen_reverse", "frozen_forward")}


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def tiny():
    return tinygpt_setup()


# ==========================================================================================================
# 1. the brute force itself
# ==========================================================================================================
def test_brute_force_enumerates_the_same_completions():
    for L, eos in ((1, 0), (3, 0), (3, None)):
        comp, mask = pg.enumerate_completions(3, L, eos=eos)
        mine = sorted(_completions(3, L, eos))
        theirs = sorted(tuple(row[: int(m.sum())]) for row, m in zip(comp.tolist(), mask, strict=True))
        assert mine == theirs


# ==========================================================================================================
# 2. the value of k1 / k2 / k3
# ==========================================================================================================
SETUPS = {
    "tabular-L1": lambda: tabular_setup(1),
    "tabular-L3": lambda: tabular_setup(3),
    "tabular-L3-fixed-length": lambda: tabular_setup(3, eos=None),
}


@pytest.mark.parametrize("name", [*SETUPS, "tinygpt"])
def test_estimator_values_against_brute_force(name, tiny):
    """k1 and k3 are unbiased for the sequence KL; k2 is not; every variance and P(K < 0) is the brute force's.

    Why k3 is unbiased: at each state E_{pi_theta}[e^{-l} - 1] = sum_v pi_ref(v) - 1 = 0, so
    E[sum_t k3_t] = E[sum_t l_t] = E[log p_theta - log p_ref] = KL. k3 = e^{-l} - 1 + l >= 0 (convexity), so no
    estimate is ever negative, while k1 = l is negative on every completion the reference prefers.
    """
    s = tiny if name == "tinygpt" else SETUPS[name]()
    stats = kl_estimator_stats(s.prob, s.pol, s.ref)
    brute, kl = brute_values(s)
    assert brute["k1"]["total_probability"] == pytest.approx(1.0, abs=1e-12)
    assert kl > 0.1
    for kind in KINDS:
        st = stats[kind]
        assert st["exact"] == pytest.approx(kl, abs=1e-10)
        assert st["mean"] == pytest.approx(brute[kind]["mean"], abs=1e-10)
        assert st["bias"] == pytest.approx(brute[kind]["mean"] - kl, abs=1e-10)
        assert st["variance"] == pytest.approx(brute[kind]["variance"], abs=1e-10)
        assert st["frac_negative"] == pytest.approx(brute[kind]["frac_negative"], abs=1e-12)
        assert st["mse"] == pytest.approx(st["variance"] + st["bias"] ** 2, abs=1e-10)
        # the law of total variance: variance = E_x Var[K|x] + Var_x E[K|x]
        rho = s.prob.prompt_probs
        between = float((rho * (st["mean_per_prompt"] - st["mean"]) ** 2).sum())
        assert st["variance"] == pytest.approx(st["variance_within"] + between, abs=1e-10)
        assert st["variance_within"] == pytest.approx(float((rho * st["variance_per_prompt"]).sum()), abs=1e-12)
    for kind in ("k1", "k3"):
        assert abs(stats[kind]["bias"]) < 1e-10
        torch.testing.assert_close(stats[kind]["mean_per_prompt"], stats[kind]["exact_per_prompt"], **EXACT)
    assert stats["k2"]["bias"] > 1e-3  # negative control: k2's value is biased
    assert stats["k3"]["frac_negative"] == 0.0
    assert stats["k1"]["frac_negative"] > 0.01
    assert stats["k2"]["frac_negative"] == 0.0


@pytest.mark.parametrize("name", [*SETUPS, "tinygpt"])
def test_per_token_values_chain_rule(name, tiny):
    """Per state, E[k1] = E[k3] = KL(pi_theta(.|s) || pi_ref(.|s)) and E[k2] != it; summing over the visited
    states with the completion probabilities gives the sequence numbers (chain rule of KL; tower property)."""
    s = tiny if name == "tinygpt" else SETUPS[name]()
    stats = kl_estimator_stats(s.prob, s.pol, s.ref, kinds=("k1", "k2", "k3", "k3+"))
    p = s.prob.probs(s.pol).detach()
    m = s.prob.mask
    # token_exact against the brute force's per-state KL, at every (prompt, completion, position)
    by_state = brute_state_kl(s)
    tok = stats["k1"]["token_exact"]
    for i in range(s.prob.num_prompts):
        for k, (row, mk) in enumerate(zip(s.prob.completions.tolist(), m.tolist(), strict=True)):
            for t in range(len(row)):
                want = by_state[(i, tuple(row[:t]))][0] if mk[t] else 0.0
                assert tok[i, k, t].item() == pytest.approx(want, abs=1e-12)
    for kind in ("k1", "k2", "k3", "k3+"):
        st = stats[kind]
        torch.testing.assert_close((p * st["token_exact"].sum(-1)).sum(-1), st["exact_per_prompt"], **EXACT)
        torch.testing.assert_close((p * st["token_mean"].sum(-1)).sum(-1), st["mean_per_prompt"], **EXACT)
    for kind in ("k1", "k3", "k3+"):
        torch.testing.assert_close(stats[kind]["token_mean"], stats[kind]["token_exact"], **EXACT)
    assert (stats["k2"]["token_mean"] - stats["k2"]["token_exact"]).abs().max() > 1e-3
    # state_kl returns the same per-state KL (and is differentiable)
    torch.testing.assert_close(state_kl(s.prob, s.pol, s.ref).detach(), tok, **EXACT)


def test_identical_policies_give_zero_everywhere():
    s = tabular_setup(3)
    stats = kl_estimator_stats(s.prob, s.pol, s.pol)
    for kind in KINDS:
        assert stats[kind]["mean"] == 0.0 and stats[kind]["variance"] == 0.0 and stats[kind]["frac_negative"] == 0.0
    grads = kl_penalty_gradients(s.prob, s.pol, copy.deepcopy(s.pol))
    for g in grads.values():
        assert g.abs().max() < 1e-14


# ==========================================================================================================
# 3. the gradient: KL as a loss term vs KL as reward shaping
# ==========================================================================================================
def test_penalty_gradients_on_a_bandit():
    """One token per completion (L = 1): states are the prompts, frozen or not, so
    loss_k2 = grad E_x KL (per state E_pi[l grad log pi] = sum_v grad pi(v) l(v) = grad KL);
    loss_k3 = grad of the forward KL(pi_ref || pi_theta); loss_k1 = 0; reward_k1 = reward_k1_rtg = exact."""
    s = tabular_setup(1)
    g = kl_penalty_gradients(s.prob, s.pol, s.ref)
    assert list(g) == ["exact", *PENALTY_FORMS]
    b = brute_gradients(s)
    assert g["exact"].norm() > 0.1
    torch.testing.assert_close(g["exact"], b["sequence"], **EXACT)
    torch.testing.assert_close(g["loss_k2"], g["exact"], **EXACT)
    torch.testing.assert_close(g["reward_k1"], g["exact"], **EXACT)
    torch.testing.assert_close(g["reward_k1_rtg"], g["exact"], **EXACT)
    assert g["loss_k1"].abs().max() < 1e-12
    torch.testing.assert_close(g["loss_k3"], b["frozen_forward"], **EXACT)
    assert _rel(g["loss_k3"], g["exact"]) > 0.05  # negative control: k3's loss gradient is not grad KL
    torch.testing.assert_close(g["reward_k3"], g["exact"] - g["loss_k3"], **EXACT)


@pytest.mark.parametrize("name", ["tabular-L3", "tabular-L3-fixed-length", "tinygpt"])
def test_penalty_gradients_on_sequences(name, tiny):
    """Each penalty form's expected gradient equals what the derivation says (kl_penalty_gradients' docstring):

    * reward_k1 = reward_k1_rtg = grad of the sequence KL (score function of log p/p_ref; E[grad log p] = 0;
      causality for the reward-to-go);
    * loss_k1 = 0 (E[grad log pi | s_t] = 0);
    * loss_k2 = grad of sum_s d(s) KL(pi_theta(.|s)||pi_ref(.|s)) with d frozen — not grad KL: it drops
      sum_s grad d(s) KL_s, how earlier tokens change which states are visited;
    * loss_k3 = grad of sum_s d(s) KL(pi_ref(.|s)||pi_theta(.|s)) with d frozen: per state
      E_pi[(1 - pi_ref/pi) grad log pi] = -sum_v pi_ref(v) grad log pi(v);
    * reward_k3 = exact - loss_k3: sum_t k3_t = sum_t l_t + sum_t (r_t - 1), and only the s = t terms of
      E[grad log pi_t (r_s - 1)] survive.
    """
    s = tiny if name == "tinygpt" else SETUPS[name]()
    g = kl_penalty_gradients(s.prob, s.pol, s.ref)
    b = brute_gradients(s)
    exact = g["exact"]
    assert exact.norm() > 0.1
    torch.testing.assert_close(exact, b["sequence"], **EXACT)
    torch.testing.assert_close(g["reward_k1"], exact, **EXACT)
    torch.testing.assert_close(g["reward_k1_rtg"], exact, **EXACT)
    assert g["loss_k1"].abs().max() < 1e-12
    torch.testing.assert_close(g["loss_k2"], b["frozen_reverse"], **EXACT)
    torch.testing.assert_close(g["loss_k3"], b["frozen_forward"], **EXACT)
    torch.testing.assert_close(g["reward_k3"], exact - g["loss_k3"], **EXACT)
    # negative controls: the state-distribution term matters, and forward != reverse
    assert _rel(g["loss_k2"], exact) > 0.05
    assert _rel(b["frozen_reverse"], exact) > 0.05
    assert _rel(g["loss_k3"], exact) > 0.05
    assert _rel(g["loss_k3"], b["frozen_reverse"]) > 0.05
    assert _rel(g["loss_k2"], b["frozen_forward"]) > 0.05
    assert _rel(g["reward_k3"], exact) > 0.05


@pytest.mark.parametrize("name", ["tabular-L1", "tabular-L3"])
def test_penalty_weights_are_the_per_sample_gradients(name):
    """The score-function weights reproduce each form's mean through ExactProblem.estimator_moments
    (an independent per-sample Jacobian), and they are what the derivation says: k1' = 1, k2' = l, k3' = 1 - e^{-l},
    and the (reward-to-go) sums of k1 / k3 for the reward forms."""
    s = SETUPS[name]()
    w = kl_penalty_weights(s.prob, s.pol, s.ref)
    g = kl_penalty_gradients(s.prob, s.pol, s.ref)
    assert list(w) == list(PENALTY_FORMS)
    for form in PENALTY_FORMS:
        mean, var = s.prob.estimator_moments(s.pol, w[form])
        torch.testing.assert_close(mean, g[form], **EXACT)
        assert var >= 0
    with torch.no_grad():
        m = s.prob.mask
        ell = s.prob.token_log_probs(s.pol) - s.prob.token_log_probs(s.ref)
    torch.testing.assert_close(w["loss_k1"], m.expand_as(ell), **EXACT)
    torch.testing.assert_close(w["loss_k2"], ell, **EXACT)
    torch.testing.assert_close(w["loss_k3"], (1 - torch.exp(-ell)) * m, **EXACT)
    k3 = (torch.exp(-ell) - 1 + ell) * m
    torch.testing.assert_close(w["reward_k1"], ell.sum(-1, keepdim=True) * m, **EXACT)
    torch.testing.assert_close(w["reward_k3"], k3.sum(-1, keepdim=True) * m, **EXACT)
    rtg = torch.stack([ell[..., t:].sum(-1) for t in range(ell.shape[-1])], -1) * m
    torch.testing.assert_close(w["reward_k1_rtg"], rtg, **EXACT)


def test_reward_shaping_gradient_matches_kl_shaped_rewards():
    """The reward forms are REINFORCE on the rewards of reward_side.kl_shaped_rewards (sign flipped)."""
    s = tabular_setup(3)
    N, K, L = s.prob.num_prompts, s.prob.num_completions, s.L
    with torch.no_grad():
        lq = s.prob.token_log_probs(s.pol).reshape(N * K, L)
        lr = s.prob.token_log_probs(s.ref).reshape(N * K, L)
    mask = s.prob.mask.repeat(N, 1)
    w = kl_penalty_weights(s.prob, s.pol, s.ref)
    for kind in ("k1", "k3"):
        shaped = pg.reward_side.kl_shaped_rewards(torch.zeros(N * K, dtype=F64), lq, lr, mask, beta=1.0, kind=kind)
        ret = shaped.sum(-1, keepdim=True) * mask
        torch.testing.assert_close(w[f"reward_{kind}"], -ret.reshape(N, K, L), **EXACT)
        rtg = pg.reward_side.returns_to_go(shaped, mask)
        if kind == "k1":
            torch.testing.assert_close(w["reward_k1_rtg"], -rtg.reshape(N, K, L), **EXACT)


def test_gradient_table(tiny):
    g = kl_penalty_gradients(tiny.prob, tiny.pol, tiny.ref)
    rows = gradient_table(g)
    assert [r["name"] for r in rows] == list(PENALTY_FORMS)
    by = {r["name"]: r for r in rows}
    assert by["reward_k1"]["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert by["reward_k1"]["relative_error"] < 1e-10
    assert math.isnan(by["loss_k1"]["cosine"]) and by["loss_k1"]["relative_error"] == pytest.approx(1.0, abs=1e-12)
    for name in ("loss_k2", "loss_k3", "reward_k3"):
        r = by[name]
        ex, gn = g["exact"], g[name]
        assert r["cosine"] == pytest.approx(float(ex @ gn / (ex.norm() * gn.norm())), abs=1e-12)
        assert r["relative_error"] == pytest.approx(_rel(gn, ex), abs=1e-12)
        assert r["norm_ratio"] == pytest.approx(float(gn.norm() / ex.norm()), abs=1e-12)
        assert r["relative_error"] > 0.05
    with pytest.raises(ValueError, match="exact"):
        gradient_table({"a": g["exact"]})
    with pytest.raises(ValueError, match="non-zero"):
        gradient_table({"exact": torch.zeros(3, dtype=F64), "a": torch.ones(3, dtype=F64)})
    with pytest.raises(ValueError, match="shape"):
        gradient_table({"exact": torch.ones(3, dtype=F64), "a": torch.ones(4, dtype=F64)})


# ==========================================================================================================
# 4. bad inputs
# ==========================================================================================================
def test_bad_inputs():
    s = tabular_setup(3)
    fns = [
        lambda prob, pol, ref: kl_estimator_stats(prob, pol, ref),
        kl_penalty_gradients,
        kl_penalty_weights,
        state_kl,
    ]
    for fn in fns:
        with pytest.raises(ValueError, match="ExactProblem"):
            fn("not a problem", s.pol, s.ref)
        with pytest.raises(ValueError):  # a policy with fewer prompts than the problem
            fn(s.prob, _tab(1, 3, 3, seed=0), s.ref)
        with pytest.raises(ValueError):  # a policy for shorter completions
            fn(s.prob, _tab(2, 3, 2, seed=0), s.ref)
        with pytest.raises(ValueError, match="share a vocabulary"):
            fn(s.prob, s.pol, _tab(2, 4, 3, seed=0))
        with pytest.raises(ValueError, match="whole distribution"):  # a restricted enumeration (V = 4 policies)
            fn(s.prob, _tab(2, 4, 3, seed=0), _tab(2, 4, 3, seed=1))
        with pytest.raises(ValueError, match="Module"):
            fn(s.prob, s.pol, "reference")
    for kinds in (("k4",), "k1", (), ("k1", "k1")):
        with pytest.raises(ValueError):
            kl_estimator_stats(s.prob, s.pol, s.ref, kinds=kinds)
    with pytest.raises(ValueError, match="direction"):
        state_kl(s.prob, s.pol, s.ref, direction="sideways")
