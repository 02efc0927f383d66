"""The reward side of RLHF-style PPO: terminal rewards on the last token, KL-in-reward shaping, whitening,
the clipped value loss, and the TinyGPT critic. Each checked against hand-computed values or an exact identity."""

import pytest
import torch

import policygrad as pg
from policygrad.lm.tinygpt import TinyGPTCritic
from policygrad.reward_side import (
    clipped_value_loss,
    gae,
    kl_shaped_rewards,
    terminal_to_steps,
    whiten,
)

MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])


def test_terminal_to_steps_puts_the_reward_on_the_last_real_token():
    out = terminal_to_steps(torch.tensor([2.0, -1.0, 5.0]), MASK)
    expected = torch.tensor([[0.0, 0.0, 2.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(out, expected)  # the empty row earns nothing
    with pytest.raises(ValueError, match="NaN"):
        terminal_to_steps(torch.tensor([float("nan"), 0.0, 0.0]), MASK)
    with pytest.raises(ValueError, match="rows"):
        terminal_to_steps(torch.zeros(2), MASK)
    with pytest.raises(ValueError, match="0 and 1"):
        terminal_to_steps(torch.zeros(3), MASK * 2)


def test_kl_shaped_rewards_subtract_beta_times_the_estimate_on_real_tokens_only():
    logp = torch.tensor([[-0.5, -1.0, -0.2, -3.0], [-0.1, -9.0, -9.0, -9.0], [-1.0, -1.0, -1.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[-0.7, -0.4, -0.2, -1.0], [-0.3, -1.0, -1.0, -1.0], [-2.0, -2.0, -2.0, -2.0]])
    R = torch.tensor([1.0, 0.0, 1.0])
    out = kl_shaped_rewards(R, logp, ref, MASK, beta=0.5, kind="k1")
    x = (logp.detach() - ref) * MASK
    expected = terminal_to_steps(R, MASK) - 0.5 * x * MASK
    assert torch.allclose(out, expected, atol=1e-7)
    assert not out.requires_grad  # a reward is a constant
    k3 = kl_shaped_rewards(R, logp, ref, MASK, beta=1.0, kind="k3")
    assert torch.allclose(k3, terminal_to_steps(R, MASK) - (torch.expm1(-x) + x) * MASK, atol=1e-7)
    assert torch.equal(kl_shaped_rewards(R, logp, ref, MASK, beta=0.0), terminal_to_steps(R, MASK))
    with pytest.raises(ValueError, match="beta"):
        kl_shaped_rewards(R, logp, ref, MASK, beta=-1.0)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_shaped_rewards(R, logp, ref, MASK, beta=1.0, kind="k4")


def test_whiten_over_masked_tokens_and_its_edge_cases():
    v = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, -7.0, -7.0, -7.0], [9.0, 9.0, 9.0, 9.0]])
    w = whiten(v, MASK)  # the package default: Bessel-corrected std (unbiased=True), as TRL and verl
    sel = w[MASK.bool()]
    assert abs(sel.mean().item()) < 1e-6 and abs(sel.std(unbiased=True).item() - 1.0) < 1e-6
    assert torch.equal(w * (1 - MASK), torch.zeros_like(w))  # padding stays 0
    vals = torch.tensor([1.0, 2.0, 3.0, 5.0])
    assert torch.allclose(sel, (vals - vals.mean()) / vals.std(unbiased=True), atol=1e-6)
    scaled = whiten(v, MASK, shift_mean=False)[MASK.bool()]
    assert torch.allclose(scaled, vals / vals.std(unbiased=True), atol=1e-6)  # signs kept
    pop = whiten(v, MASK, unbiased=False)[MASK.bool()]  # the population std on request
    assert abs(pop.std(unbiased=False).item() - 1.0) < 1e-6
    assert torch.allclose(pop, (vals - vals.mean()) / vals.std(unbiased=False), atol=1e-6)
    const = whiten(torch.full((3, 4), 0.7), MASK)
    assert torch.equal(const, torch.zeros(3, 4))  # all equal: no signal, never NaN
    assert torch.equal(whiten(v, torch.zeros(3, 4)), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="shape"):
        whiten(v, MASK[:, :3])


def test_clipped_value_loss_hand_values_and_where_the_gradient_stops():
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    G = torch.tensor([[1.0, 1.0, -1.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    v = torch.tensor([[0.5, 1.5, 0.1, 0.0]], requires_grad=True)
    loss = clipped_value_loss(v, old, G, m, clip=0.2)
    # token 0: V=0.5 moved past the clip towards G: unclipped (0.25) < clipped (V_c=0.2: 0.64) -> 0.64, no grad
    # token 1: V=1.5 overshoots: unclipped 0.25, clipped V_c=0.2 -> 0.64 -> 0.64, no grad
    # token 2: V=0.1 inside the clip: both (1.1)^2 = 1.21, grad 2(V-G)/2/4
    # token 3: V=0=G: 0
    expected = 0.5 * (0.64 + 0.64 + 1.21 + 0.0) / 4
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    assert torch.allclose(v.grad, torch.tensor([[0.0, 0.0, 2 * 1.1 / 2 / 4, 0.0]]), atol=1e-6)
    v2 = v.detach().clone().requires_grad_()
    mse = clipped_value_loss(v2, old, G, m, clip=None)
    assert abs(mse.item() - 0.5 * ((v2.detach() - G) ** 2).mean().item()) < 1e-7
    assert clipped_value_loss(v2, old, G, torch.zeros_like(m)).item() == 0.0
    with pytest.raises(ValueError, match="clip"):
        clipped_value_loss(v2, old, G, m, clip=0.0)
    with pytest.raises(ValueError, match="returns"):
        clipped_value_loss(v2, old, G[:, :2], m)


def test_token_level_gae_with_the_reward_at_the_end_telescopes_to_R_minus_V():
    """gamma = lambda = 1: A_t = sum_k delta_{t+k} = R - V(s_t) for any critic (the LM MDP of chapter 3)."""
    g = pg.make_generator(0)
    V = torch.randn(3, 4, generator=g, dtype=torch.float64)
    R = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    m = MASK.double()
    A = gae(terminal_to_steps(R, m), V * m, m, gamma=1.0, lam=1.0)
    assert torch.allclose(A, (R.unsqueeze(1) - V) * m, atol=1e-12)
    A0 = gae(terminal_to_steps(R, m), V * m, m, gamma=1.0, lam=0.0)  # TD residuals
    assert not torch.allclose(A0, A)  # negative control: lambda matters with an imperfect critic


def test_tinygpt_critic_shapes_init_copy_grouping_and_regression():
    cfg = pg.TinyGPTConfig(vocab_size=8, block_size=12, n_layer=1, n_head=2, n_embd=16, init_std=0.2)
    policy = pg.TinyGPT(cfg, generator=pg.make_generator(0))
    critic = TinyGPTCritic.from_policy(policy)
    for a, b in zip(critic.body.parameters(), policy.parameters(), strict=True):
        assert torch.equal(a, b) and a is not b
    prompts = torch.randint(0, 8, (3, 5), generator=pg.make_generator(1)).repeat_interleave(2, 0)
    completions = torch.randint(0, 8, (6, 4), generator=pg.make_generator(2))
    v = critic(prompts, completions)
    assert v.shape == (6, 4) and torch.equal(v, torch.zeros(6, 4))  # zero value head
    torch.nn.init.normal_(critic.value_head.weight, generator=pg.make_generator(3))
    assert torch.allclose(critic(prompts, completions, group_size=2), critic(prompts, completions), atol=1e-5)
    # causal: the value of s_t does not depend on y_t or later
    changed = completions.clone()
    changed[:, 2] = (changed[:, 2] + 1) % 8
    a, b = critic(prompts, completions), critic(prompts, changed)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) and not torch.allclose(a[:, 3], b[:, 3])
    target = torch.linspace(-1, 1, 24).reshape(6, 4)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = clipped_value_loss(critic(prompts, completions), torch.zeros(6, 4), target, torch.ones(6, 4), clip=None)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    with pytest.raises(ValueError, match="TinyGPT"):
        TinyGPTCritic.from_policy(torch.nn.Linear(2, 2))
