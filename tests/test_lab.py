"""The gradient lab (policygrad.exact.lab) against brute force, autograd and sampling."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

import policygrad as pg
from policygrad.exact import group as ge
from policygrad.exact import lab
from policygrad.methods import grpo

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def vl():
    """7 completions per prompt of lengths 1 and 2, 0/1 rewards."""
    problem, _ = pg.toy.variable_length_task(
        num_prompts=2, vocab_size=3, max_len=2, seed=0
    )
    policy = pg.TabularPolicy(
        2, 3, 2, eos=0, init_scale=1.0, generator=torch.Generator().manual_seed(1)
    ).double()
    return problem, policy


@pytest.fixture(scope="module")
def equal_len():
    """9 completions of length 2 per prompt, 0/1 rewards (exact match)."""
    problem, _ = pg.toy.target_sequence_task(
        num_prompts=3, vocab_size=3, length=2, reward="exact_match", seed=0
    )
    policy = pg.TabularPolicy(
        3, 3, 2, init_scale=1.0, generator=torch.Generator().manual_seed(2)
    ).double()
    return problem, policy


def _grad(obj, policy):
    return pg.exact.flat_grad(obj, pg.exact.flat_params(policy)).detach()


def _group_mean(G):
    return grpo(
        name="group_mean",
        group_size=G,
        beta=0.0,
        scale=None,
        aggregation="seq-mean-token-sum",
    )


@pytest.mark.parametrize("G", [2, 3])
@pytest.mark.parametrize("name", ["grpo", "reinforce_baseline", "group_mean"])
def test_batched_expectation_equals_brute_force(vl, name, G):
    problem, policy = vl
    method = _group_mean(G) if name == "group_mean" else name
    mom = lab.method_update_moments(problem, policy, method, group_size=G)
    brute = ge.enumerated_update(problem, policy, method, group_size=G)["update"]
    assert float((mom["mean"] - brute).abs().max()) < 1e-10
    assert float(brute.norm()) > 1e-3  # not a comparison of two zeros


def test_both_paths_are_exercised_and_ordered_groups_agree(vl):
    problem, policy = vl
    fast = lab.method_update_moments(problem, policy, "grpo", group_size=3)
    slow = lab.method_update_moments(
        problem, policy, "reinforce_baseline", group_size=3
    )
    assert fast["path"].startswith("batched")
    assert slow["path"].startswith("per group")
    ordered = lab.method_update_moments(
        problem, policy, "grpo", group_size=3, ordered=True
    )
    assert ordered["num_groups"] == 2 * 7**3 and fast["num_groups"] == 2 * 84
    assert float((ordered["mean"] - fast["mean"]).abs().max()) < 1e-12
    assert math.isclose(ordered["variance"], fast["variance"], rel_tol=1e-10)


def test_reinforce_and_leave_one_out_are_unbiased(vl):
    problem, policy = vl
    grad_J = problem.gradient(policy)
    for name, G in (("reinforce", 1), ("reinforce", 3), ("reinforce_baseline", 3)):
        mom = lab.method_update_moments(problem, policy, name, group_size=G)
        cmp = lab.compare_to_gradient(mom["mean"], grad_J)
        assert cmp["classification"] == "unbiased", (name, G, cmp)
        assert float((mom["mean"] - grad_J).abs().max()) < 1e-12
        obj = lab.implied_objective(name, problem, policy, group_size=G)
        assert float((_grad(obj, policy) - mom["mean"]).abs().max()) < 1e-12


def test_reinforce_variance_is_the_one_sample_variance(vl):
    """G = 1: the lab's variance is `estimator_moments` with weights R. G = 4 from
    one prompt: only the within-prompt part shrinks by 1/G,

        tr Cov[u] = E_x[tr Cov(R s | x)] / G + tr Cov_x(E[R s | x]),

    computed by hand from the per-sample gradients."""
    problem, policy = vl
    mom = lab.method_update_moments(problem, policy, "reinforce", group_size=1)
    R = problem.rewards.double()
    mean, var = problem.estimator_moments(policy, R)
    assert math.isclose(mom["variance_equal_samples"], var, rel_tol=1e-10)
    g = problem.per_sample_gradients(policy, R)  # (N, K, d)
    with torch.no_grad():
        p = problem.probs(policy)
    rho = problem.prompt_probs.double()
    g_x = (p.unsqueeze(-1) * g).sum(1)  # (N, d)
    within = (p * (g**2).sum(-1)).sum(-1) - (g_x**2).sum(-1)
    between = float((rho * (g_x**2).sum(-1)).sum() - (mean**2).sum())
    for G in (2, 4):
        momG = lab.method_update_moments(problem, policy, "reinforce", group_size=G)
        by_hand = float((rho * within).sum()) / G + between
        assert math.isclose(momG["variance"], by_hand, rel_tol=1e-10)
        assert math.isclose(momG["variance_equal_samples"], G * by_hand, rel_tol=1e-10)
    assert between > 1e-4  # the prompt part is there, so G * by_hand > var


@pytest.mark.parametrize("G", [2, 3, 4])
def test_group_mean_including_the_sample_is_scaled_by_g_minus_1_over_g(vl, G):
    problem, policy = vl
    mom = lab.method_update_moments(problem, policy, _group_mean(G))
    cmp = lab.compare_to_gradient(mom["mean"], problem.gradient(policy))
    assert cmp["classification"] == "scaled"
    assert abs(cmp["scale"] - (G - 1) / G) < 1e-12
    assert cmp["rel_bias"] < 1e-12
    obj = lab.implied_objective(_group_mean(G), problem, policy)
    assert float((_grad(obj, policy) - mom["mean"]).abs().max()) < 1e-12


@pytest.mark.parametrize("G", [2, 3, 4])
def test_grpo_with_0_1_rewards_ascends_the_arcsine_type_objective(equal_len, G):
    """Registered GRPO (std, 1/|o_i|, KL to a reference = the policy): the gradient
    of (1/L) Σ_x ρ Φ_G(p_x) (L = 2 tokens) is its expected update."""
    problem, policy = equal_len
    method = grpo(group_size=G)
    mom = lab.method_update_moments(problem, policy, method)
    obj = lab.implied_objective(method, problem, policy)
    p = problem.success_probability(policy)
    phi = ge.binary_objective(p, G)
    by_hand = (problem.prompt_probs.double() * phi).sum() / 2
    assert math.isclose(float(obj.detach()), float(by_hand.detach()), rel_tol=1e-12)
    assert float((_grad(obj, policy) - mom["mean"]).abs().max()) < 1e-12
    cmp = lab.compare_to_gradient(mom["mean"], problem.gradient(policy))
    # with the Bessel std every mixed group of 2 or 3 has one |advantage| per
    # reward, so w_G(p) is constant: a scaled gradient; from G = 4 it is not
    w = ge.binary_weight(p, G)
    if G <= 3:
        assert float(w.max() - w.min()) < 1e-12
        assert cmp["classification"] == "scaled"
        assert abs(cmp["scale"] - float(w[0]) / 2) < 1e-12
    else:
        assert float(w.max() - w.min()) > 1e-3
        assert cmp["classification"] == "biased"


def test_grpo_with_unequal_lengths_has_no_implied_objective(vl):
    problem, policy = vl
    assert lab.implied_objective("grpo", problem, policy) is None


@pytest.mark.parametrize("k", [1, 2, 5])
def test_passk_objective_gradient_is_k_one_minus_p_to_the_k_minus_1(equal_len, k):
    problem, policy = equal_len
    obj = lab.passk_objective(problem, policy, k)
    R = problem.rewards.double()
    p = (problem.probs(policy) * R).sum(-1)
    rho = problem.prompt_probs.double()
    by_hand = (rho * (1 - (1 - p) ** k)).sum()
    assert math.isclose(float(obj.detach()), float(by_hand.detach()), rel_tol=1e-12)
    weight = (rho * k * (1 - p.detach()) ** (k - 1) * p).sum()
    expected = _grad(weight, policy)
    grad = _grad(obj, policy)
    assert float((grad - expected).abs().max()) < 1e-12
    if k == 1:
        assert float((grad - problem.gradient(policy)).abs().max()) < 1e-12


def test_passk_objective_rejects_non_binary_rewards(equal_len):
    problem, policy = equal_len
    with pytest.raises(ValueError, match="0/1 rewards"):
        lab.passk_objective(problem.with_rewards(problem.rewards * 0.5), policy, 2)
    with pytest.raises(ValueError, match="k"):
        lab.passk_objective(problem, policy, 0)


def _sampled_group_updates(problem, policy, method, G, n, seed):
    """n per-group updates from groups drawn by sampling, each by the method's own
    loss on that group alone (independent of the lab's enumeration)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        probs = problem.probs(policy)
    params = pg.exact.flat_params(policy)
    out = []
    for x in problem.sample_prompts(n, gen).tolist():
        idx = torch.multinomial(probs[x], G, replacement=True, generator=gen)
        logp = problem.token_log_probs(policy)[x, idx]
        mask = problem.mask.double()[idx]
        batch = pg.RolloutBatch(
            prompts=problem.prompts[x].reshape(1, -1).expand(G, -1),
            completions=problem.completions[idx],
            mask=mask,
            loss_mask=mask,
            old_log_probs=logp.detach(),
            ref_log_probs=logp.detach(),
            rewards=problem.rewards.double()[x, idx],
            group_ids=torch.zeros(G, dtype=torch.long),
            truncated=torch.zeros(G, dtype=torch.bool),
        )
        loss, _ = method.loss(logp, batch, method.advantages(batch))
        out.append(-pg.exact.flat_grad(loss, params).detach())
    return torch.stack(out)


def test_variance_matches_monte_carlo_within_the_clt_tolerance(vl):
    """tr Cov of the per-group update from 1500 sampled groups (seed 0) against the
    lab's exact value, within 4 standard errors of the sample variance (the SE of a
    mean of the n values |u_j - mean|^2); the wrong convention (G tr Cov, the
    variance at equal samples, taken as the per-group variance) must fail it."""
    problem, policy = vl
    G, n = 2, 1500
    method = pg.methods.get_method("grpo")
    mom = lab.method_update_moments(problem, policy, method, group_size=G)
    u = _sampled_group_updates(problem, policy, method, G, n, seed=0)
    sq = ((u - mom["mean"]) ** 2).sum(-1)  # exact mean: unbiased for tr Cov
    est = float(sq.mean())
    se = float(sq.std()) / math.sqrt(n)
    assert abs(est - mom["variance"]) <= 4 * se, (est, mom["variance"], se)
    # negative control: the equal-samples variance is G times the per-group one
    assert abs(est - mom["variance_equal_samples"]) > 4 * se
    assert abs(est - 1.5 * mom["variance"]) > 4 * se


def test_compare_to_gradient_classifies_hand_vectors():
    g = torch.tensor([1.0, 0.0], dtype=torch.float64)
    same = lab.compare_to_gradient(torch.tensor([1.0, 1e-12], dtype=torch.float64), g)
    assert same["classification"] == "unbiased" and same["tol"] == 1e-8
    half = lab.compare_to_gradient(torch.tensor([0.5, 0.0], dtype=torch.float64), g)
    assert half["classification"] == "scaled" and half["scale"] == 0.5
    assert half["rel_error"] == 0.5 and half["rel_bias"] == 0
    off = lab.compare_to_gradient(torch.tensor([1.0, 1.0], dtype=torch.float64), g)
    assert off["classification"] == "biased"
    assert math.isclose(off["cosine"], 1 / math.sqrt(2))
    assert off["rel_bias"] == 1.0 and off["rel_error"] == 1.0
    with pytest.raises(ValueError, match="zero"):
        lab.compare_to_gradient(g, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="one shape"):
        lab.compare_to_gradient(g, torch.zeros(3, dtype=torch.float64))


def test_edge_cases_critic_too_large_g_and_partial_enumeration(vl):
    problem, policy = vl
    with pytest.raises(ValueError, match="critic"):
        lab.method_update_moments(problem, policy, "ppo_rlhf", group_size=2)
    with pytest.raises(ValueError, match="MAX_GROUPS"):
        lab.method_update_moments(problem, policy, "grpo", group_size=40)
    with pytest.raises(ValueError, match="MAX_GROUPS"):
        lab.method_update_moments(problem, policy, "grpo", group_size=6, ordered=True)
    partial = pg.exact.ExactProblem(
        problem.prompts,
        problem.prompt_probs,
        problem.completions[:5],
        problem.mask[:5],
        problem.rewards[:, :5],
    )
    with pytest.raises(ValueError, match="every completion"):
        lab.method_update_moments(partial, policy, "grpo", group_size=2)
    with pytest.raises(ValueError, match="group"):
        # batch leave-one-out needs two rows: a group of one is refused
        lab.method_update_moments(problem, policy, "reinforce_baseline", group_size=1)


def test_lab_table_has_a_row_per_method_and_the_plot_places_them(equal_len):
    problem, policy = equal_len
    rows = lab.lab_table(problem, policy, group_size=4)
    assert [r["method"] for r in rows] == pg.methods.method_names()
    by = {r["method"]: r for r in rows}
    assert "critic" in by["ppo_rlhf"]["skipped"]
    assert by["ppo_rlhf"]["variance"] is None
    assert by["reinforce"]["classification"] == "unbiased"
    assert by["reinforce_baseline"]["classification"] == "unbiased"
    assert by["grpo"]["classification"] == "biased"
    for name in ("reinforce", "reinforce_baseline", "grpo", "ppo_clip", "ppo_kl"):
        assert by[name]["confirmed"] is True, by[name]
    if "rloo" in by:  # registered by chapter 8's methods
        assert by["rloo"]["classification"] == "unbiased" and by["rloo"]["confirmed"]
    # ppo's token-mean over equal lengths L = 2 halves the step
    assert abs(by["ppo_clip"]["scale"] - 0.5) < 1e-12
    fig, ax = pg.plotting.panels(1, 1)
    lab.bias_variance_plot(ax, rows, colors=pg.plotting.COLORS)
    shown = [r for r in rows if r["skipped"] is None]
    # one marker per method; coinciding methods share one label that names them all
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(shown)
    assert len(ax.texts) == len(ax.collections) < len(shown)
    labels = " ".join(t.get_text() for t in ax.texts).replace("\n", " ")
    assert all(r["method"] in labels for r in shown)
    assert ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="no evaluated row"):
        lab.bias_variance_plot(ax, [by["ppo_rlhf"]])
    pg.plotting.close_all()


# -- chapter 8: the implied objectives of the variants, the relative variance, the table


@pytest.mark.parametrize("G", [3, 4])
def test_passk_advantage_ascends_pass_at_G_exactly(equal_len, G):
    """verl's best-of-group advantage with 0/1 rewards trains only groups with one
    success, by a = 1/(σ₁ + 1e-6), σ₁ = 1/√G: E[u] = (a/G) ∇ pass@G."""
    problem, policy = equal_len
    mom = lab.method_update_moments(problem, policy, "grpo_passk", group_size=G)
    a = 1.0 / (1.0 / math.sqrt(G) + 1e-6)
    obj = (a / G) * lab.passk_objective(problem, policy, G)
    assert torch.allclose(
        lab.implied_objective("grpo_passk", problem, policy, group_size=G), obj
    )
    g = _grad(obj, policy)
    assert float((g - mom["mean"]).norm() / g.norm()) < 1e-10
    # and it is not the gradient of J, nor of pass@G at another scale by chance
    cmp = lab.compare_to_gradient(mom["mean"], problem.gradient(policy))
    assert cmp["classification"] == "biased" and cmp["rel_bias"] > 1e-3


def test_dr_grpo_constant_normaliser_is_a_scaled_gradient_with_unequal_lengths(vl):
    """seq-mean-token-sum-norm divides by the padded width T whatever the lengths:
    E[u] = (G−1)/(G T) ∇J exactly, even where 1/|o_i| would bias GRPO."""
    problem, policy = vl
    G, T = 3, problem.completions.shape[1]
    mom = lab.method_update_moments(problem, policy, "dr_grpo", group_size=G)
    grad_J = problem.gradient(policy)
    assert torch.allclose(mom["mean"], (G - 1) / (G * T) * grad_J, atol=1e-14)
    row = lab.lab_table(problem, policy, ["dr_grpo"], group_size=G)[0]
    assert row["classification"] == "scaled" and row["confirmed"] is True


def test_remax_and_equal_length_opo_objectives(equal_len, vl):
    problem, policy = equal_len
    rows = {
        r["method"]: r
        for r in lab.lab_table(problem, policy, ["remax", "opo"], group_size=4)
    }
    assert rows["remax"]["objective"] == "J" and rows["remax"]["confirmed"] is True
    assert rows["opo"]["objective"] == "0.75 J" and rows["opo"]["confirmed"] is True
    # with unequal lengths OPO's length-weighted mean is not the group mean: no
    # objective is claimed
    vl_problem, vl_policy = vl
    row = lab.lab_table(vl_problem, vl_policy, ["opo"], group_size=4)[0]
    assert row["objective"] == "—" and row["confirmed"] is None
    assert row["classification"] == "biased"


def test_relative_variance_and_batch_coupling(equal_len):
    problem, policy = equal_len
    names = ["grpo", "dr_grpo", "rloo", "grpo_batch_std", "gpg"]
    rows = {r["method"]: r for r in lab.lab_table(problem, policy, names, 4)}
    gJ = problem.gradient(policy).double()
    for r in rows.values():
        expected = r["variance"] / (r["scale"] ** 2 * float(gJ @ gJ))
        assert r["rel_variance"] == pytest.approx(expected, rel=1e-12)
    # a scaled gradient has the variance of the unscaled one, once the scale is
    # divided out: Dr.GRPO's advantage is (G-1)/G times RLOO's, token for token
    assert rows["dr_grpo"]["rel_variance"] == pytest.approx(
        rows["rloo"]["rel_variance"], rel=1e-10
    )
    assert rows["dr_grpo"]["variance"] < rows["rloo"]["variance"]
    for name in ("grpo", "dr_grpo", "rloo"):
        assert rows[name]["batch_coupled"] is False
    for name in ("grpo_batch_std", "gpg"):
        assert rows[name]["batch_coupled"] is True


def test_format_lab_table_fits_the_column_and_marks_rows(equal_len):
    problem, policy = equal_len
    names = ["reinforce", "ppo_rlhf", "grpo", "grpo_batch_std", "grpo_passk"]
    rows = lab.lab_table(problem, policy, names, group_size=4)
    text = lab.format_lab_table(rows)
    lines = text.splitlines()
    assert len(lines) == len(rows) + 1
    assert all(len(line) <= 80 for line in lines)
    by = {line.split()[0]: line for line in lines[1:]}
    assert "skipped: needs a critic" in by["ppo_rlhf"]
    assert "†" in by["grpo_batch_std"] and "†" not in by["grpo"]
    assert by["grpo"].rstrip().endswith("✓") and "pass@4 ✓" in by["grpo_passk"]
    for bad in ([{"method": "x"}], "rows", [1]):
        with pytest.raises(ValueError):
            lab.format_lab_table(bad)


def test_rule_probes_include_groups_with_a_signal():
    """Regression: on this toy the 12 evenly spread probe groups all have equal rewards (zero
    coefficients), which used to 'confirm' the first rule (per-group mean) for every method. The
    probes now include groups whose rewards differ: token-sum is found to be a sum over groups, and
    equals G times seq-mean-token-sum's update exactly; token-mean is a per-token mean."""
    problem, _ = pg.toy.variable_length_task(3, 3, 4, seed=0)
    policy = pg.TabularPolicy(3, 3, 4, eos=0, init_scale=0.0).double()
    G = 3

    def moments(agg):
        m = grpo(name="g_" + agg.replace("-", "_"), group_size=G, beta=0.0, aggregation=agg)
        return lab.method_update_moments(problem, policy, m)

    s, seq, tok = moments("token-sum"), moments("seq-mean-token-sum"), moments("token-mean")
    assert s["path"] == "batched (sum)" and tok["path"] == "batched (per-token mean)"
    assert torch.allclose(s["mean"], G * seq["mean"], rtol=1e-12, atol=1e-15)
