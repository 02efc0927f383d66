"""Chapter 10's registered methods (``policygrad.methods.off_policy``) against hand computations.

GSPO, GSPO-token and GMPO are checked in value and gradient against their formulas written out here in float64;
the corrections (TIS, masked IS, OPSM) against the per-token PPO loss times the weight computed by hand from the
trainer's and the sampler's log-probs. Framework parity is in tests/parity/test_off_policy_methods.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import policygrad as pg
from policygrad.methods import METHODS, off_policy, policy_loss
from policygrad.rollout import RolloutBatch

F64 = torch.float64
NEW = ("gspo", "gspo_token", "gmpo", "grpo_tis", "grpo_icepop", "grpo_opsm")


def _batch(seed=0, spread=0.6, rollout=True):
    """3 groups of 4, unequal lengths (one row of a single token), garbage on padding."""
    g = torch.Generator().manual_seed(seed)
    B, T, G = 12, 6, 4
    lengths = torch.tensor([6, 3, 1, 5, 6, 2, 4, 6, 3, 5, 6, 1])
    mask = (torch.arange(T) < lengths[:, None]).to(F64)
    old = -torch.rand(B, T, generator=g, dtype=F64) * 2 - 0.05
    ro = (old + spread * torch.randn(B, T, generator=g, dtype=F64)).clamp(max=-1e-3)
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 0], dtype=F64)
    junk = 1e3 * (1 - mask)
    batch = RolloutBatch(
        prompts=torch.zeros(B, 2, dtype=torch.long),
        completions=torch.ones(B, T, dtype=torch.long),
        mask=mask,
        loss_mask=mask,
        old_log_probs=old * mask - junk,
        ref_log_probs=None,
        rewards=rewards,
        group_ids=torch.arange(B) // G,
        truncated=torch.zeros(B, dtype=torch.bool),
        rollout_log_probs=(ro * mask - junk) if rollout else None,
    )
    logp = (old + 0.3 * torch.randn(B, T, generator=g, dtype=F64)) * mask + junk
    return batch, logp


def _value_and_grad(fn, logp):
    x = logp.clone().requires_grad_(True)
    loss = fn(x)[0] if isinstance(fn(x), tuple) else fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def _ppo_token_losses(logp, old, A, eps_lo=0.2, eps_hi=0.2):
    r = torch.exp(logp - old)
    return torch.maximum(-r * A, -torch.clamp(r, 1 - eps_lo, 1 + eps_hi) * A)


def _check(method, hand, batch, logp):
    A = method.advantages(batch)
    m = batch.mask
    ours = _value_and_grad(lambda x: policy_loss(method, x, batch, A), logp)
    want = _value_and_grad(lambda x: hand(torch.where(m > 0, x, torch.zeros_like(x)), A), logp)
    torch.testing.assert_close(ours[0], want[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours[1] * m, want[1] * m, rtol=1e-10, atol=1e-13)
    assert torch.isfinite(ours[1]).all()


def test_gspo_is_the_clipped_geometric_mean_ratio_per_sequence():
    batch, logp = _batch()
    m, old = batch.mask, torch.where(batch.mask > 0, batch.old_log_probs, 0.0)
    n = m.sum(-1)

    def hand(x, A):
        s = torch.exp(((x - old) * m).sum(-1) / n)
        a = A[:, 0]
        per_seq = torch.maximum(-s * a, -torch.clamp(s, 1 - 3e-4, 1 + 4e-4) * a)
        return per_seq.mean()  # seq-mean-token-mean of a row-constant per-token loss

    _check(METHODS["gspo"], hand, batch, logp)


def test_gspo_token_equals_gspo_for_row_advantages_and_takes_token_advantages():
    batch, logp = _batch(seed=1, spread=0.0)
    A = METHODS["gspo"].advantages(batch)
    a = _value_and_grad(lambda x: METHODS["gspo"].loss(x, batch, A), logp * 0.999 + batch.old_log_probs * 0.001)
    b = _value_and_grad(lambda x: METHODS["gspo_token"].loss(x, batch, A), logp * 0.999 + batch.old_log_probs * 0.001)
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a[1] * batch.mask, b[1] * batch.mask, rtol=1e-10, atol=1e-13)
    # per-token advantages: GSPO-token's gradient is s_i A_it grad l_it / |o_i| / B
    At = A * torch.linspace(0.5, 1.5, A.shape[1], dtype=F64)
    m = batch.mask
    x = torch.where(m > 0, batch.old_log_probs, 0.0)  # at the old policy: s = 1, no clip
    _, grad = _value_and_grad(lambda y: METHODS["gspo_token"].loss(y, batch, At), x)
    want = -At * m / m.sum(-1, keepdim=True) / m.shape[0]
    torch.testing.assert_close(grad * m, want, rtol=1e-12, atol=1e-14)


def test_gmpo_is_the_geometric_mean_of_log_clipped_token_ratios():
    batch, logp = _batch(seed=2)
    m, old = batch.mask, torch.where(batch.mask > 0, batch.old_log_probs, 0.0)
    n = m.sum(-1)

    def hand(x, A):
        lr = x - old
        a = A[:, 0]
        sg = torch.sign(a)[:, None]
        clipped = sg * torch.minimum(sg * lr, sg * lr.clamp(-0.4, 0.4))
        return (-a * torch.exp((clipped * m).sum(-1) / n)).mean()

    lr = (logp - batch.old_log_probs)[batch.mask > 0]
    assert bool((lr > 0.4).any() and (lr < -0.4).any())  # both bounds bind somewhere
    _check(METHODS["gmpo"], hand, batch, logp)


@pytest.mark.parametrize("name", ["grpo_tis", "grpo_icepop"])
def test_token_corrections_weight_each_tokens_ppo_loss_by_its_own_ratio(name):
    batch, logp = _batch(seed=3)
    m = batch.mask
    old = torch.where(m > 0, batch.old_log_probs, 0.0)
    rho = torch.exp(old - torch.where(m > 0, batch.rollout_log_probs, 0.0))
    if name == "grpo_tis":
        w = rho.clamp(max=2.0)
        assert bool((rho[m > 0] > 2).any())  # the cap binds
    else:
        w = torch.where((rho >= 0.5) & (rho <= 5.0), rho, 0.0)
        assert bool(((w == 0) & (m > 0)).any())  # some tokens are dropped

    def hand(x, A):
        return (_ppo_token_losses(x, old, A) * w * m).sum() / m.sum()  # token-mean, normaliser unchanged

    _check(METHODS[name], hand, batch, logp)
    st = policy_loss(METHODS[name], logp.clone().requires_grad_(True), batch, METHODS[name].advantages(batch))[1]
    assert st["is_weight_mean"] == pytest.approx(float((w * m).sum() / m.sum()), rel=1e-12)
    assert st["is_zero_frac"] == pytest.approx(float(((w == 0) & (m > 0)).sum() / m.sum()), rel=1e-12)


def test_sequence_level_corrections_use_the_product_of_token_ratios():
    batch, logp = _batch(seed=4, spread=0.3)
    base = METHODS["grpo_tis"]
    m = batch.mask
    old = torch.where(m > 0, batch.old_log_probs, 0.0)
    seq = torch.exp(((old - torch.where(m > 0, batch.rollout_log_probs, 0.0)) * m).sum(-1, keepdim=True))
    for kind, w in (
        ("tis", seq.clamp(max=2.0)),
        ("mis", torch.where((seq >= 0.5) & (seq <= 5.0), seq, 0.0)),
    ):
        method = off_policy.rollout_correction(off_policy._grpo_no_kl("g"), kind, level="sequence")

        def hand(x, A, w=w):
            return (_ppo_token_losses(x, old, A) * w * m).sum() / m.sum()

        _check(method, hand, batch, logp)
    assert base.extra["level"] == "token"


def test_opsm_drops_negative_sequences_that_drifted_past_delta():
    batch, logp = _batch(seed=5)
    method = off_policy.rollout_correction(off_policy._grpo_no_kl("g"), "opsm", delta=0.0)
    A = method.advantages(batch)
    m = batch.mask
    old = torch.where(m > 0, batch.old_log_probs, 0.0)
    ro = torch.where(m > 0, batch.rollout_log_probs, 0.0)
    x = torch.where(m > 0, logp, 0.0)
    kl = ((ro - x) * m).sum(-1) / m.sum(-1)
    keep = ((A[:, 0] >= 0) | (kl <= 0.0)).to(F64)[:, None]
    assert 0 < float(keep.sum()) < keep.numel()  # some dropped, some kept

    def hand(y, A):
        return (_ppo_token_losses(y, old, A) * keep * m).sum() / m.sum()

    _check(method, hand, batch, logp)


def test_without_a_separate_sampler_tis_and_mis_are_the_base_loss_and_opsm_watches_old():
    batch, logp = _batch(seed=6, rollout=False)
    base = off_policy._grpo_no_kl("g")
    A = base.advantages(batch)
    want = _value_and_grad(lambda x: base.loss(x, batch, A), logp)
    for name in ("grpo_tis", "grpo_icepop"):
        got = _value_and_grad(lambda x, n=name: METHODS[n].loss(x, batch, A), logp)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1] * batch.mask, want[1] * batch.mask)
    # OPSM without a sampler's log-probs measures the drift from pi_old (TRL's fallback)
    with_old = dataclasses.replace(batch, rollout_log_probs=batch.old_log_probs)
    a = _value_and_grad(lambda x: METHODS["grpo_opsm"].loss(x, batch, A), logp)
    b = _value_and_grad(lambda x: METHODS["grpo_opsm"].loss(x, with_old, A), logp)
    assert torch.equal(a[0], b[0])


def test_on_policy_every_new_method_is_grpo_without_kl():
    """At ratio 1 (the first minibatch) GSPO, GSPO-token and GMPO give GRPO's seq-mean-token-mean gradient, and the
    corrections with a sampler equal to the trainer give the token-mean one."""
    batch, _ = _batch(seed=7)
    on = dataclasses.replace(batch, rollout_log_probs=batch.old_log_probs)
    x = torch.where(batch.mask > 0, batch.old_log_probs, 0.0)
    seq = pg.methods.grpo("s", beta=0.0)
    tok = off_policy._grpo_no_kl("t")
    A = seq.advantages(batch)
    g_seq = _value_and_grad(lambda y: seq.loss(y, on, A), x)[1]
    g_tok = _value_and_grad(lambda y: tok.loss(y, on, A), x)[1]
    for name in NEW:
        got = _value_and_grad(lambda y, n=name: METHODS[n].loss(y, on, A), x)[1]
        want = g_tok if name.startswith("grpo_") else g_seq
        torch.testing.assert_close(got * batch.mask, want * batch.mask, rtol=1e-12, atol=1e-15)


def test_overflowing_ratios_and_empty_rows_stay_finite():
    batch, logp = _batch(seed=8)
    m = batch.mask.clone()
    m[2] = 0  # an empty row
    ro = torch.where(m > 0, batch.old_log_probs - 80.0, 0.0).clamp(max=-1e-3)  # rho = e^80 on every token
    b = dataclasses.replace(batch, mask=m, loss_mask=m, rollout_log_probs=ro)
    for name in NEW:
        method = METHODS[name]
        A = method.advantages(b)
        loss, grad = _value_and_grad(lambda x, mm=method, AA=A: policy_loss(mm, x, b, AA), logp + 50 * m)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), name


@pytest.mark.parametrize("kw, match", [
    (dict(kind="nope"), "correction"), (dict(kind="tis", level="row"), "level"),
    (dict(kind="tis", cap=0.0), "cap"), (dict(kind="tis", cap=None, floor=None), "bound"),
    (dict(kind="mis", lo=3.0, hi=2.0), "lo"), (dict(kind="opsm", delta=-1.0), "delta"),
    (dict(kind="opsm", delta=float("nan")), "delta"),
])  # fmt: skip
def test_bad_correction_settings_are_value_errors_at_build_time(kw, match):
    with pytest.raises(ValueError, match=match):
        off_policy.rollout_correction(off_policy._grpo_no_kl("g"), **kw)


def test_corrections_refuse_losses_they_cannot_weight():
    with pytest.raises(ValueError, match="GMPO"):
        off_policy.rollout_correction(METHODS["gmpo"], "tis")
    ok = off_policy.rollout_correction(METHODS["gspo"], "tis", level="token")
    assert ok.name == "gspo_tis" and ok.extra["correction"] == "tis"
    with pytest.raises(ValueError, match="Method"):
        off_policy.rollout_correction("grpo", "tis")
    for bad in (dict(eps=1.0), dict(eps_high=-0.1), dict(eps=True)):
        with pytest.raises(ValueError, match="eps"):
            off_policy.gspo(**bad)
    with pytest.raises(ValueError, match="clip_low"):
        off_policy.gmpo(clip_low=25.0)


def test_recipes_name_the_frameworks_settings():
    trl = pg.methods.to_trl(METHODS["grpo_tis"])
    assert trl["vllm_importance_sampling_mode"] == "token_truncate"
    assert trl["vllm_importance_sampling_clip_max"] == 2.0 and trl["vllm_importance_sampling_clip_min"] is None
    assert pg.methods.to_trl(METHODS["grpo_icepop"])["vllm_importance_sampling_mode"] == "token_mask"
    assert pg.methods.to_trl(METHODS["grpo_opsm"])["off_policy_mask_threshold"] == 0.5
    assert pg.methods.to_trl(METHODS["gspo"])["importance_sampling_level"] == "sequence"
    verl = pg.methods.to_verl(METHODS["grpo_icepop"])
    assert "algorithm.rollout_correction.rollout_is=token" in verl
    assert "algorithm.rollout_correction.rollout_is_threshold=0.5_5.0" in verl
    assert isinstance(METHODS["grpo_opsm"].verl, pg.methods.Unsupported)
    assert isinstance(METHODS["gspo_token"].trl, pg.methods.Unsupported)
    assert METHODS["gmpo"].trl.trainer == "trl.experimental.gmpo.GMPOTrainer"
    floor = off_policy.rollout_correction(off_policy._grpo_no_kl("g"), "tis", floor=0.1)
    assert isinstance(floor.verl, pg.methods.Unsupported)  # verl's TIS has no floor


def test_a_corrected_method_trains_on_a_bfloat16_sampler():
    task = pg.lm.tasks.make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    h = pg.train.train(
        policy, task, "grpo_tis", steps=2, prompts_per_step=4, lr=1e-4, eval_every=None, seed=0,
        sampler_dtype=torch.bfloat16,
    )  # fmt: skip
    assert all(torch.isfinite(torch.tensor(h["loss"]))) and all(x > 0 for x in h["rollout_kl"])


def _exact_setup(L=4):
    problem, _ = pg.toy.tasks.target_sequence_task(1, 2, L, reward="fraction", seed=0)
    g = torch.Generator().manual_seed(0)
    pol = pg.toy.policies.TabularPolicy(1, 2, L, init_scale=0.5, generator=g)
    samp = pg.toy.policies.TabularPolicy(1, 2, L, init_scale=0.5, generator=g)
    return problem, pol, samp


def test_estimator_moments_with_a_sampler_are_sums_under_the_sampler():
    """E_mu[g] by hand over all 2^L completions; the full sequence weight makes the estimate exactly unbiased and
    its variance is E_mu[|g|^2] - |E g|^2; without a sampler the log-ratios are 0 and the moments unchanged."""
    problem, pol, samp = _exact_setup()
    off = pg.exact.EstimatorMoments(problem, pol, samp)
    on = pg.exact.EstimatorMoments(problem, pol)
    assert torch.equal(on.log_ratios, torch.zeros_like(on.log_ratios))
    with torch.no_grad():
        lp, lq = problem.token_log_probs(pol).double(), problem.token_log_probs(samp).double()
        q = problem.probs(samp).double()
        J = float(problem.objective(pol))
    torch.testing.assert_close(off.log_ratios, (lp - lq) * problem.mask.double(), rtol=0, atol=1e-6)
    A = (problem.rewards.double() - J)[..., None] * problem.mask.double()
    rho = torch.exp(off.log_ratios.sum(-1, keepdim=True))
    g = torch.einsum("mkt,mktd->mkd", A * rho, off.scores)
    want = torch.einsum("mk,mkd->d", q, g)
    torch.testing.assert_close(off.mean(A * rho), want, rtol=1e-12, atol=1e-15)
    bias, var = off(A * rho)
    assert bias < 1e-6 * float(off.gradient.norm())
    second = float(torch.einsum("mk,mk->", q, (g**2).sum(-1)))
    assert var == pytest.approx(second - float((want**2).sum()), rel=1e-10)
    b_un, _ = off(A)  # uncorrected: biased by the mismatch
    assert b_un > 0.05 * float(off.gradient.norm())
    assert on(A) == pytest.approx(pg.exact.EstimatorMoments(problem, pol, None)(A))
    with pytest.raises(ValueError, match="sampler"):
        pg.exact.EstimatorMoments(problem, pol, "mu")


def test_sampler_mismatch_is_zero_for_the_policy_itself_and_positive_for_a_tempered_sampler():
    task = pg.lm.tasks.make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    same = pg.diagnostics.sampler_mismatch(policy, task, prompts=4, group_size=2)
    assert abs(same["token_kl_k1"]) < 1e-5 and same["log_ratio_max_abs"] < 1e-4
    hot = pg.diagnostics.sampler_mismatch(policy, task, prompts=4, group_size=2, temperature=0.7)
    assert hot["token_kl_k3"] > 1e-3 and hot["log_ratio_std"] > 1e-2 and hot["length"] >= 1
    bf = pg.diagnostics.sampler_mismatch(policy, task, prompts=4, group_size=2, sampler_dtype=torch.bfloat16)
    assert bf["log_ratio_std"] > 1e-4
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    for kw, match in ((dict(sampler="x"), "sampler"), (dict(sampler_dtype=torch.int32), "sampler_dtype"),
                      (dict(prompts=0), "prompts"), (dict(seed=1.5), "seed")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            pg.diagnostics.sampler_mismatch(policy, task, **kw)
    with pytest.raises(ValueError, match="task"):
        pg.diagnostics.sampler_mismatch(policy, "addition")
