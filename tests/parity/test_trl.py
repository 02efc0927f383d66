"""Parity with TRL 1.16 (``trl==1.16.*``, written against 1.16.0): TRL's trainer code as the oracle.

**What is compared.** A real ``trl.GRPOTrainer`` (and ``trl.RLOOTrainer``) is built around a tiny
float64 GPT-2 (from a config, no download) and an offline character-level tokenizer. On hand-built
inputs, ``GRPOTrainer._compute_loss`` (``trl/trainer/grpo_trainer.py:3020``) is compared with the
package's GRPO method / ``ppo_clip_loss`` + ``beta * kl_loss(kind="k3")``, value and gradient with
respect to every model parameter, for ``loss_type`` "grpo" (``seq-mean-token-mean``), "bnpo"
(``token-mean``), "dr_grpo" (``seq-mean-token-sum-norm`` with ``max_len=max_completion_length``),
"dapo" (``token-mean`` when ``num_items_in_batch`` is this batch's token count; ``token-sum /
num_items_in_batch`` otherwise) and "luspo" (``seq-mean-token-sum``), each with beta 0 and 0.04,
symmetric clip and clip-higher (``epsilon_high``), token and sequence importance sampling.
``RLOOTrainer._compute_loss`` is compared with ``ppo_clip_loss(level="sequence")``. The advantages
are TRL's own reward -> advantage code, run for real: ``_generate_and_score_completions`` samples
from the tiny model, a Python reward function scores the completions, and ``out["advantages"]`` is
compared with ``group_advantages`` (GRPO, ``scale_rewards`` "group" and "none") and
``group_leave_one_out_advantages`` (RLOO). Last, ``policygrad.methods.to_trl`` must give settings
that build a ``GRPOConfig`` whose trainer computes the method's loss.

**Two comparisons per loss.** TRL's fused LM head computes log-probabilities in float32 whatever the
model's dtype (``trl/kernels/chunked_logprob.py:235`` ``tile.float()``, float32 statistics at
340-346, float32 gradient accumulation at 405-453), so (1) the package's loss is evaluated on the
very log-probs TRL's loss used (captured by wrapping ``_get_per_token_logps_and_entropies``), value
to 1e-12 and per-token gradient to float32 rounding: the formula, isolated; (2) end to end, the
package's own float64 forward: value and parameter gradient to ``rtol = atol = 1e-6`` (the float32
head is ~3e-7 off).

**Deliberate differences, each pinned by a test.**

* ``use_bias_correction_kl`` defaults to **True** in TRL 1.16 (``grpo_config.py:972``): the k3
  term is multiplied by the (differentiable) importance ratio (``grpo_trainer.py:3104-3105``). The
  package has no such option: the loss tests set it False,
  ``test_bias_corrected_kl_is_trls_default`` pins the formula TRL then uses (in package pieces:
  ``aggregate(k3 * r)``), and ``test_to_trl_builds_a_grpo_config`` requires ``to_trl`` to turn it
  off when beta > 0.
* The package clamps log-ratios to ±``LOG_RATIO_CLAMP`` = 20 before ``exp``; TRL does not
  (``grpo_trainer.py:3095``). Likewise the package's k3 clamps its argument to ±20; TRL's k3 does
  not (``grpo_trainer.py:3100-3102``). Beyond the clamp the package's gradient is 0.
* ``dr_grpo`` divides by ``B * max_completion_length`` (``grpo_trainer.py:3164``); the package's
  ``seq-mean-token-sum-norm`` by ``B * max_len`` with ``max_len`` defaulting to the padded width T.
* ``dapo`` divides by ``num_items_in_batch`` (the generation batch's token count,
  ``grpo_trainer.py:3170-3174``), ``token-mean`` by this batch's own count.
* ``importance_sampling_level="sequence"`` (GSPO) is the *geometric mean* of the token ratios
  (``grpo_trainer.py:3086-3088``): the package's ``level="geometric"``, not its ``"sequence"`` (the
  product, which is what RLOOTrainer uses: ``rloo_trainer.py:1822-1828``).
* Group advantages: TRL divides by ``std + 1e-4`` (``grpo_trainer.py:2787``; the package's default
  eps is 1e-6) with a Bessel-corrected std (``trl/trainer/utils.py:1021`` ``nanstd``), and computes
  rewards in float32 (``grpo_trainer.py:1637``).
* RLOOTrainer sums the float32 token log-probs in float32 (``rloo_trainer.py:1822``): its loss is
  compared to 1e-6 even on its own log-probs. TRL's per-token log-probs are 0 on padding
  (``trl/trainer/utils.py:1660``); the package selects padding away (+3 garbage there is ignored).
* TRL scales the loss by ``1 / current_gradient_accumulation_steps`` (``grpo_trainer.py:3155``);
  it is set to 1 here (one optimiser step per batch, as the package).

**TRL features the package lacks (not tested).** For chapters 09-10: ``loss_type`` "cispo", "sapo",
"vespo"; ``delta`` (two-sided clip); ``top_entropy_quantile``; ``mask_truncated_completions``;
``off_policy_mask_threshold``; vLLM importance-sampling correction; ``use_bias_correction_kl``
(pinned, not expressible). For chapter 08: ``scale_rewards="batch"`` (group mean, batch std),
``multi_objective_aggregation="normalize_then_sum"``; RLOO's ``normalize_advantages`` (TRL
divides by ``std + 1e-4``) and its k1 KL-in-reward (``beta != 0``) are not compared either.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from _frameworks import require

trl = require("trl")

import datasets  # noqa: E402  (after the skip: these come with trl)
import transformers  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers  # noqa: E402
from tokenizers.models import WordLevel  # noqa: E402

import policygrad as pg  # noqa: E402
from policygrad.trajectory_side import (  # noqa: E402
    LOG_RATIO_CLAMP,
    aggregate,
    kl_estimate,
    kl_loss,
    log_ratios,
    ppo_clip_loss,
    safe_ratio,
    token_entropy,
    token_log_probs,
)

F64 = torch.float64
SEED = 1234
V = 24  # vocabulary: pad, eos, unk, 21 letters
G = 4  # completions per prompt
B, P, T = 8, 3, 7  # hand-built batch: rows, prompt width, completion width
MAX_LEN = 10  # max_completion_length of the loss trainer: > T, so dr_grpo's constant is visible
EPS, EPS_HIGH, BETA = 0.2, 0.28, 0.04
# package aggregation of each TRL loss_type (dapo: when num_items_in_batch is this batch's count)
AGG = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "token-mean",
    "luspo": "seq-mean-token-sum",
}
# Exact formula check: same float64 inputs, only the order of operations differs.
TIGHT = {"rtol": 1e-12, "atol": 1e-14}
# A gradient with respect to TRL's float32 log-probs is rounded to float32 on each path into them,
# before the paths are summed (k3 reads logp twice): relative 2^-23, and where the paths cancel an
# absolute few ulps of the largest path (<= 0.1 here, whose float32 ulp is 7.5e-9).
F32_ROUND = {"rtol": 2.0**-23, "atol": 2e-8}
# End to end: TRL's fused LM head is float32 (~3e-7 off the float64 forward).
E2E = {"rtol": 1e-6, "atol": 1e-6}


# --------------------------------------------------------------------------- setup


def _tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in "abcdefghijklmnopqrstu":
        vocab[c] = len(vocab)
    assert len(vocab) == V
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token a char
    tk.decoder = decoders.Fuse()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tok.padding_side = "left"  # prompts are left-padded, as TRL expects
    return tok


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A seeded tiny float64 GPT-2 saved locally: every trainer loads the same weights, and a
    trainer with ``beta > 0`` builds its reference model from this path (no download)."""
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=16,
        vocab_size=V,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = transformers.GPT2LMHeadModel(cfg).to(F64)
    path = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(path)
    return path


def _model(model_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(model_dir, dtype=F64)


def _zero_reward(prompts, completions, completion_ids, **kwargs):
    return [0.0] * len(prompts)


def _trainer(model_dir, tok, tmp_path_factory, *, rloo=False, reward=_zero_reward, **cfg):
    """A real trainer on the tiny model (CPU, float32/64 untouched, no logging, no saving)."""
    config_cls, trainer_cls = (
        (trl.RLOOConfig, trl.RLOOTrainer) if rloo else (trl.GRPOConfig, trl.GRPOTrainer)
    )
    base = dict(
        output_dir=str(tmp_path_factory.mktemp("trl_out")),
        report_to="none",
        use_cpu=True,
        bf16=False,
        logging_strategy="no",
        save_strategy="no",
        seed=SEED,
    )
    args = config_cls(**{**base, **cfg})
    prompts = datasets.Dataset.from_dict({"prompt": ["ab", "cd"]})
    trainer = trainer_cls(
        model=_model(model_dir),
        reward_funcs=reward,
        args=args,
        train_dataset=prompts,
        processing_class=tok,
    )
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; one step per batch
    assert trainer.model.dtype == F64
    return trainer


@pytest.fixture(scope="module")
def grpo_trainer(model_dir, tok, tmp_path_factory):
    """The loss trainer. ``_compute_loss`` reads trainer.loss_type, .beta, .epsilon_low,
    .epsilon_high, .importance_sampling_level, .max_completion_length (dr_grpo),
    .current_gradient_accumulation_steps, .args.use_bias_correction_kl (when beta != 0) and
    .args.steps_per_generation (dapo); the tests set those attributes per case (monkeypatch)."""
    return _trainer(
        model_dir,
        tok,
        tmp_path_factory,
        per_device_train_batch_size=B,
        num_generations=G,
        max_completion_length=MAX_LEN,
        beta=0.0,
        epsilon=EPS,
        loss_type="grpo",
        scale_rewards="group",
        use_bias_correction_kl=False,
    )


def _plain_logp(model, inputs):
    """The package's per-token log-probs: the model's ordinary forward (logits, float64), the logits
    at the positions that predict the completion, :func:`token_log_probs`."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    logits = model(input_ids=ids, attention_mask=attn).logits
    width = inputs["completion_ids"].shape[1]
    return token_log_probs(logits[:, -width - 1 : -1], inputs["completion_ids"])


@pytest.fixture(scope="module")
def hand(grpo_trainer):
    """Hand-built inputs for ``_compute_loss``: 2 groups of G, unequal completion lengths (right
    padding, arbitrary ids on padding), left-padded prompts, old log-probs = the model's own minus a
    per-row offset plus token noise (ratios far from 1, clipped on both sides with both advantage
    signs, at token and at sequence level), reference log-probs another perturbation, garbage (+3,
    not a log-probability) on every padded position of old and ref."""
    g = torch.Generator().manual_seed(SEED)
    prompt_ids = torch.randint(3, V, (B, P), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[0, 0] = prompt_mask[5, :2] = 0
    prompt_ids[prompt_mask == 0] = 0
    lengths = torch.tensor([7, 3, 5, 1, 6, 7, 2, 4])
    mask = (torch.arange(T) < lengths[:, None]).long()
    completion_ids = torch.randint(0, V, (B, T), generator=g)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": mask,
    }
    with torch.no_grad():
        lp0 = _plain_logp(grpo_trainer.model, inputs)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.1, 0.9, 0.3, 0.8], dtype=F64)
    adv = pg.reward_side.group_advantages(rewards, G, scale="std", unbiased=True, eps=1e-4)
    row = torch.tensor([0.45, 0.4, -0.4, -0.6, 0.35, -0.4, -0.45, -0.35], dtype=F64)
    noise = torch.rand(B, T, generator=g, dtype=F64) * 0.7 - 0.35
    delta = row[:, None] + noise  # log-ratio logp - old
    real = mask.bool()
    old = torch.where(real, lp0 - delta, 3.0)
    ref = torch.where(real, lp0 + torch.rand(B, T, generator=g, dtype=F64) - 0.5, 3.0)
    inputs.update(
        advantages=adv,
        old_per_token_logps=old,
        ref_per_token_logps=ref,
        num_items_in_batch=mask.sum(),
    )
    # the inputs exercise every branch of the clip, at both levels
    A = adv[:, None].expand(B, T)
    r = delta.exp()
    for level_r, sel in ((r, real), (delta.where(real, 0.0).sum(1).div(lengths).exp(), None)):
        a = A[:, 0] if sel is None else A[real]
        x = level_r if sel is None else level_r[real]
        for cond in (
            (a > 0) & (x > 1 + EPS_HIGH),
            (a > 0) & (x < 1 - EPS),
            (a < 0) & (x > 1 + EPS_HIGH),
            (a < 0) & (x < 1 - EPS),
        ):
            assert bool(cond.any())
    assert bool(((A > 0) & (r > 1 + EPS) & (r < 1 + EPS_HIGH) & real).any())  # clip-higher bites
    assert bool((old[real] < 0).all() and (ref[real] < 0).all())
    return SimpleNamespace(
        inputs=inputs, lp0=lp0, mask=mask, adv=adv, old=old, ref=ref, rewards=rewards
    )


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _flat(grads):
    return torch.cat([x.reshape(-1) for x in grads])


def _trl_loss(trainer, inputs, monkeypatch):
    """TRL's loss, its gradient w.r.t. the per-token log-probs it used (captured by wrapping TRL's
    own ``_get_per_token_logps_and_entropies``, which still runs), and w.r.t. every parameter."""
    seen = []
    original = trainer._get_per_token_logps_and_entropies

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out[0])
        return out

    with monkeypatch.context() as mp:
        mp.setattr(trainer, "_get_per_token_logps_and_entropies", spy)
        loss = trainer._compute_loss(trainer.model, inputs)
    (logp,) = seen
    grads = torch.autograd.grad(loss, [logp, *_params(trainer.model)])
    return SimpleNamespace(
        loss=loss.detach(), logp=logp.detach(), dlogp=grads[0], grad=_flat(grads[1:])
    )


def _batch(h, inputs=None):
    inputs = h.inputs if inputs is None else inputs
    return pg.RolloutBatch(
        prompts=inputs["prompt_ids"],
        completions=inputs["completion_ids"],
        mask=h.mask,
        loss_mask=h.mask,
        old_log_probs=inputs["old_per_token_logps"],
        ref_log_probs=inputs["ref_per_token_logps"],
        rewards=h.rewards,
        group_ids=torch.arange(B // G).repeat_interleave(G),
        truncated=h.mask.sum(1) == T,
    )


def _assert_parity(trl_out, package_loss, model, inputs, *, value=TIGHT, per_token=F32_ROUND):
    """(1) the package's loss on TRL's own log-probs: value to 1e-12, per-token gradient to float32
    rounding; (2) on the package's own float64 forward: value and parameter gradient to 1e-6."""
    x = trl_out.logp.to(F64).requires_grad_()
    loss = package_loss(x)
    (dx,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(loss.detach(), trl_out.loss, **value)
    torch.testing.assert_close(dx, trl_out.dlogp.to(F64), **per_token)
    logp = _plain_logp(model, inputs)
    loss = package_loss(logp)
    grad = _flat(torch.autograd.grad(loss, _params(model)))
    torch.testing.assert_close(loss.detach(), trl_out.loss, **E2E)
    torch.testing.assert_close(grad, trl_out.grad, **E2E)
    assert float(grad.abs().max()) > 1e-3  # a real gradient, not two zeros


def _configure(monkeypatch, trainer, **attrs):
    for name, value in attrs.items():
        target = trainer.args if name == "use_bias_correction_kl" else trainer
        assert hasattr(target, name)
        monkeypatch.setattr(target, name, value)


def _clip_kl(h, *, eps_high=None, level="token", aggregation, max_len=None, beta):
    """ppo_clip_loss + beta * k3 kl_loss, as a function of the log-probs."""

    def loss(logp):
        adv = pg.reward_side.broadcast_to_tokens(h.adv, h.mask)
        out, _ = ppo_clip_loss(
            logp,
            h.old,
            adv,
            h.mask,
            eps_low=EPS,
            eps_high=eps_high,
            aggregation=aggregation,
            max_len=max_len,
            level=level,
        )
        if beta:
            kl = kl_loss(logp, h.ref, h.mask, kind="k3", aggregation=aggregation, max_len=max_len)
            out = out + beta * kl
        return out

    return loss


# --------------------------------------------------------------------------- log-probs


def test_per_token_logps_match_trl(grpo_trainer, hand):
    """TRL's fused-head log-probs and entropies = the package's from the same forward's logits (to
    float32: TRL's head is float32 whatever the model's dtype); 0 on padding."""
    inputs = hand.inputs
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        trl_logp, trl_ent, _ = grpo_trainer._get_per_token_logps_and_entropies(
            grpo_trainer.model, ids, attn, T, compute_entropy=True
        )
        logits = grpo_trainer.model(input_ids=ids, attention_mask=attn).logits[:, -T - 1 : -1]
    real = hand.mask.bool()
    assert trl_logp.dtype == torch.float32  # pinned: the fused head is float32
    torch.testing.assert_close(trl_logp.to(F64)[real], hand.lp0[real], rtol=0, atol=1e-6)
    ent = token_entropy(logits)
    torch.testing.assert_close(trl_ent.to(F64)[real], ent[real], rtol=0, atol=1e-6)
    assert bool((trl_logp[~real] == 0).all())  # TRL zeroes padding; the package selects it away


# --------------------------------------------------------------------------- losses


@pytest.mark.parametrize("beta", [0.0, BETA])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"])
def test_grpo_loss_matches_trl(grpo_trainer, hand, monkeypatch, loss_type, beta):
    """Token-level PPO clip (symmetric) + beta * k3, every aggregation: the package's registered
    GRPO method where it can express the loss_type, ppo_clip_loss + kl_loss for dr_grpo
    (max_len)."""
    _configure(monkeypatch, grpo_trainer, loss_type=loss_type, beta=beta)
    trl_out = _trl_loss(grpo_trainer, hand.inputs, monkeypatch)
    if loss_type == "dr_grpo":
        package_loss = _clip_kl(hand, aggregation=AGG[loss_type], max_len=MAX_LEN, beta=beta)
    else:
        method = pg.methods.grpo(group_size=G, beta=beta, eps=EPS, aggregation=AGG[loss_type])
        batch = _batch(hand)
        adv = pg.reward_side.broadcast_to_tokens(hand.adv, hand.mask)

        def package_loss(logp):
            return method.loss(logp, batch, adv)[0]

    _assert_parity(trl_out, package_loss, grpo_trainer.model, hand.inputs)


@pytest.mark.parametrize("beta", [0.0, BETA])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_clip_higher_matches_trl(grpo_trainer, hand, monkeypatch, loss_type, beta):
    """DAPO's clip-higher: TRL's epsilon_high = the package's eps_high; a symmetric clip differs."""
    _configure(monkeypatch, grpo_trainer, loss_type=loss_type, beta=beta, epsilon_high=EPS_HIGH)
    trl_out = _trl_loss(grpo_trainer, hand.inputs, monkeypatch)
    opts = dict(aggregation=AGG[loss_type], max_len=MAX_LEN, beta=beta)
    _assert_parity(
        trl_out, _clip_kl(hand, eps_high=EPS_HIGH, **opts), grpo_trainer.model, hand.inputs
    )
    symmetric = _clip_kl(hand, **opts)(trl_out.logp.to(F64))
    assert abs(float(symmetric - trl_out.loss)) > 1e-4


@pytest.mark.parametrize("beta", [0.0, BETA])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "luspo"])
def test_sequence_level_matches_geometric_ratio(grpo_trainer, hand, monkeypatch, loss_type, beta):
    """GSPO: TRL's importance_sampling_level="sequence" is the geometric mean of the token ratios
    (grpo_trainer.py:3086-3088) = the package's level="geometric"; its level="sequence" (the product
    of the ratios) is another loss."""
    _configure(
        monkeypatch,
        grpo_trainer,
        loss_type=loss_type,
        beta=beta,
        importance_sampling_level="sequence",
    )
    trl_out = _trl_loss(grpo_trainer, hand.inputs, monkeypatch)
    opts = dict(aggregation=AGG[loss_type], max_len=MAX_LEN, beta=beta)
    geometric = _clip_kl(hand, level="geometric", **opts)
    _assert_parity(trl_out, geometric, grpo_trainer.model, hand.inputs)
    product = _clip_kl(hand, level="sequence", **opts)(trl_out.logp.to(F64))
    assert abs(float(product - trl_out.loss)) > 1e-3


def test_dapo_normalises_by_num_items_in_batch(grpo_trainer, hand, monkeypatch):
    """dapo divides by num_items_in_batch (the generation batch's tokens,
    grpo_trainer.py:3170-3174): = token-sum / num_items; token-mean only when num_items is this
    batch's count."""
    _configure(monkeypatch, grpo_trainer, loss_type="dapo", beta=BETA)
    n = 3 * int(hand.mask.sum())  # e.g. this batch is a third of the generation batch
    inputs = {**hand.inputs, "num_items_in_batch": torch.tensor(n)}
    trl_out = _trl_loss(grpo_trainer, inputs, monkeypatch)
    token_sum = _clip_kl(hand, aggregation="token-sum", beta=BETA)
    _assert_parity(trl_out, lambda logp: token_sum(logp) / n, grpo_trainer.model, inputs)
    token_mean = _clip_kl(hand, aggregation="token-mean", beta=BETA)(trl_out.logp.to(F64))
    torch.testing.assert_close(token_mean / 3, trl_out.loss, **TIGHT)


def test_dr_grpo_divides_by_max_completion_length(grpo_trainer, hand, monkeypatch):
    """Pinned: dr_grpo's constant is max_completion_length (grpo_trainer.py:3164); the GRPO method's
    seq-mean-token-sum-norm uses max_len = the padded width T (no max_len option on the method)."""
    _configure(monkeypatch, grpo_trainer, loss_type="dr_grpo", beta=BETA)
    trl_out = _trl_loss(grpo_trainer, hand.inputs, monkeypatch)
    method = pg.methods.grpo(group_size=G, beta=BETA, eps=EPS, aggregation=AGG["dr_grpo"])
    adv = pg.reward_side.broadcast_to_tokens(hand.adv, hand.mask)
    loss, _ = method.loss(trl_out.logp.to(F64), _batch(hand), adv)
    assert grpo_trainer.max_completion_length == MAX_LEN != T
    torch.testing.assert_close(loss * T / MAX_LEN, trl_out.loss, **TIGHT)
    assert abs(float(loss - trl_out.loss)) > 1e-4


def test_bias_corrected_kl_is_trls_default(grpo_trainer, hand, monkeypatch):
    """Pinned: GRPOConfig's use_bias_correction_kl defaults to True (grpo_config.py:972); TRL then
    weighs each token's k3 by its importance ratio r (with gradient, grpo_trainer.py:3104-3105):
    L = clip + beta * aggregate(k3 * r). The package's kl_loss has no such weight."""
    assert trl.GRPOConfig.__dataclass_fields__["use_bias_correction_kl"].default is True
    _configure(monkeypatch, grpo_trainer, loss_type="bnpo", beta=BETA, use_bias_correction_kl=True)
    trl_out = _trl_loss(grpo_trainer, hand.inputs, monkeypatch)
    clip = _clip_kl(hand, aggregation="token-mean", beta=0.0)

    def corrected(logp):
        k3 = kl_estimate(logp, hand.ref, "k3")
        ratio = safe_ratio(log_ratios(logp, hand.old, hand.mask))
        return clip(logp) + BETA * aggregate(k3 * ratio, hand.mask, "token-mean")

    _assert_parity(trl_out, corrected, grpo_trainer.model, hand.inputs)
    plain = _clip_kl(hand, aggregation="token-mean", beta=BETA)(trl_out.logp.to(F64))
    assert abs(float(plain - trl_out.loss)) > 1e-4


def _one_token_off(h, trl_logp, key, by):
    """A copy of the inputs with old or ref log-prob of one real token (row 1, A < 0) set to the
    log-prob TRL computes there minus ``by``."""
    i, t = 1, 2
    assert h.adv[i] < 0 and h.mask[i, t] == 1
    value = h.inputs[key].clone()
    value[i, t] = trl_logp[i, t].to(F64) - by
    return {**h.inputs, key: value}, (i, t)


def test_log_ratio_clamp_differs_from_trl(grpo_trainer, hand, monkeypatch):
    """Pinned: a log-ratio of 25 (> LOG_RATIO_CLAMP = 20). TRL exponentiates it
    (grpo_trainer.py:3095); the package clamps to 20 first: its loss is smaller by
    (e^25 - e^20)|A|/N on that token and its gradient there is 0 (TRL's: -e^25 A/N)."""
    _configure(monkeypatch, grpo_trainer, loss_type="bnpo", beta=0.0)
    trl_lp = _trl_loss(grpo_trainer, hand.inputs, monkeypatch).logp
    inputs, (i, t) = _one_token_off(hand, trl_lp, "old_per_token_logps", 25.0)
    trl_out = _trl_loss(grpo_trainer, inputs, monkeypatch)
    h = SimpleNamespace(**{**vars(hand), "old": inputs["old_per_token_logps"]})
    x = trl_out.logp.to(F64).requires_grad_()
    loss = _clip_kl(h, aggregation="token-mean", beta=0.0)(x)
    (dx,) = torch.autograd.grad(loss, x)
    n = hand.mask.sum().to(F64)
    lr = trl_out.logp[i, t].to(F64) - inputs["old_per_token_logps"][i, t]
    a = hand.adv[i]
    assert float(lr) > LOG_RATIO_CLAMP
    gap = -(lr.exp() - math.exp(LOG_RATIO_CLAMP)) * a / n
    torch.testing.assert_close(trl_out.loss - loss.detach(), gap, rtol=1e-10, atol=0)
    assert float(dx[i, t]) == 0.0
    torch.testing.assert_close(trl_out.dlogp[i, t].to(F64), -lr.exp() * a / n, rtol=1e-6, atol=0)
    others = torch.ones_like(hand.mask, dtype=torch.bool)
    others[i, t] = False
    torch.testing.assert_close(dx[others], trl_out.dlogp.to(F64)[others], **F32_ROUND)


def test_k3_clamp_differs_from_trl(grpo_trainer, hand, monkeypatch):
    """Pinned: logp - ref = 25 on one token. TRL's k3 is e^-25 + 25 - 1 there (grpo_trainer.py:
    3100-3102); the package clamps the argument to 20: beta (5 - e^-20 + e^-25)/N less, and no KL
    gradient on that token (TRL's: beta (1 - e^-25)/N)."""
    _configure(monkeypatch, grpo_trainer, loss_type="bnpo", beta=BETA)
    trl_lp = _trl_loss(grpo_trainer, hand.inputs, monkeypatch).logp
    inputs, (i, t) = _one_token_off(hand, trl_lp, "ref_per_token_logps", 25.0)
    trl_out = _trl_loss(grpo_trainer, inputs, monkeypatch)
    h = SimpleNamespace(**{**vars(hand), "ref": inputs["ref_per_token_logps"]})
    x = trl_out.logp.to(F64).requires_grad_()
    loss = _clip_kl(h, aggregation="token-mean", beta=BETA)(x)
    (dx,) = torch.autograd.grad(loss, x)
    n = hand.mask.sum().to(F64)
    d = trl_out.logp[i, t].to(F64) - inputs["ref_per_token_logps"][i, t]
    assert float(d) > LOG_RATIO_CLAMP
    k3 = torch.exp(-d) + d - 1
    k3_clamped = math.exp(-LOG_RATIO_CLAMP) + LOG_RATIO_CLAMP - 1
    gap = BETA * (k3 - k3_clamped) / n
    torch.testing.assert_close(trl_out.loss - loss.detach(), gap, rtol=1e-9, atol=0)
    kl_grad = BETA * (1 - torch.exp(-d)) / n
    torch.testing.assert_close(trl_out.dlogp[i, t].to(F64) - dx[i, t], kl_grad, **F32_ROUND)


def test_rloo_loss_matches_trl_sequence_ratio(model_dir, tok, tmp_path_factory, hand, monkeypatch):
    """RLOOTrainer's loss clips the exact sequence ratio exp(sum_t log r) and averages over rows
    (rloo_trainer.py:1822-1833) = ppo_clip_loss(level="sequence",
    aggregation="seq-mean-token-mean")
    TRL sums the float32 token log-probs in float32 (rloo_trainer.py:1822), so even on TRL's own
    log-probs the comparison is to float32 round-off of a sum (~1e-6 relative)."""
    trainer = _trainer(
        model_dir,
        tok,
        tmp_path_factory,
        rloo=True,
        per_device_train_batch_size=B,
        num_generations=G,
        max_completion_length=MAX_LEN,
        beta=0.0,
        epsilon=EPS,
        epsilon_high=EPS_HIGH,
    )
    lengths = hand.mask.sum(1, keepdim=True).to(F64)
    # sequence log-ratios = the token means of the hand batch's token log-ratios
    delta = (hand.lp0 - hand.old) / lengths
    old = torch.where(hand.mask.bool(), hand.lp0 - delta, 3.0)
    old_seq = (old * hand.mask).sum(1)
    inputs = {
        k: hand.inputs[k]
        for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
    }
    inputs.update(old_logps=old_seq, advantages=hand.adv)
    trl_out = _trl_loss(trainer, inputs, monkeypatch)
    adv = pg.reward_side.broadcast_to_tokens(hand.adv, hand.mask)

    def package_loss(logp):
        opts = dict(eps_low=EPS, eps_high=EPS_HIGH, aggregation="seq-mean-token-mean")
        return ppo_clip_loss(logp, old, adv, hand.mask, level="sequence", **opts)[0]

    _assert_parity(trl_out, package_loss, trainer.model, inputs, value=E2E, per_token=E2E)


# --------------------------------------------------------------------------- advantages

PROMPTS = ["ab", "cd", "ef", "gh"]


class Recorder:
    """A deterministic reward of the completion ids, recording what TRL asked and got."""

    __name__ = "recorded_reward"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        rewards = []
        for p, ids in zip(prompts, completion_ids, strict=True):
            if p == "ab":  # an ordinary spread
                r = float(sum(ids) % 7) / 3
            elif p == "cd":  # depends on the prompt only: a group with all-equal rewards
                r = 0.75
            elif p == "ef":  # a low spread (std ~ 1e-3, small values: float32 keeps every digit)
                r = 1e-3 * (ids[0] % 4 + len(ids) % 2)
            else:
                r = len(ids) + (ids[-1] % 5) / 4
            rewards.append(r)
        self.calls.append((list(prompts), [list(x) for x in completion_ids], rewards))
        return rewards


@pytest.fixture(scope="module")
def recorder():
    return Recorder()


@pytest.fixture(scope="module")
def adv_trainer(model_dir, tok, tmp_path_factory, recorder):
    """Reads trainer.scale_rewards and .num_generations in _generate_and_score_completions."""
    return _trainer(
        model_dir,
        tok,
        tmp_path_factory,
        reward=recorder,
        per_device_train_batch_size=len(PROMPTS) * G,
        num_generations=G,
        max_completion_length=6,
        beta=0.0,
        scale_rewards="group",
    )


def _generate(trainer, recorder):
    """One real generate-and-score step: prompts repeated G times in a row (what TRL's sampler
    yields), completions sampled from the tiny model (seeded), rewards from ``recorder``."""
    torch.manual_seed(SEED)
    batch = [{"prompt": p} for p in PROMPTS for _ in range(G)]
    out = trainer._generate_and_score_completions(batch)
    prompts, ids, rewards = recorder.calls[-1]
    assert prompts == [x["prompt"] for x in batch]
    rows = zip(out["completion_ids"], out["completion_mask"], strict=True)
    got = [row[m.bool()].tolist() for row, m in rows]
    assert got == ids  # the rewards belong to these rows
    # TRL turns the rewards into float32 (grpo_trainer.py:1637): give the package the same numbers
    r = torch.tensor(rewards, dtype=torch.float32).to(F64)
    groups = r.view(-1, G)
    spread = groups.amax(1) - groups.amin(1)
    assert float(spread[1]) == 0.0  # the prompt-only group
    assert 5e-4 < float(spread[2]) < 1e-2 and float(spread[[0, 3]].min()) > 0.1
    assert out["advantages"].dtype == torch.float32
    return out, r


@pytest.mark.parametrize("scale_rewards", ["group", "none"])
def test_group_advantages_match_trl(adv_trainer, recorder, monkeypatch, scale_rewards):
    """TRL's reward -> advantage code (grpo_trainer.py:2765-2787) = group_advantages(scale="std",
    unbiased=True, eps=1e-4) for scale_rewards="group", scale=None for "none"; 0 on the constant
    group. atol 1e-5: TRL computes mean and std in float32 (round-off ~1e-7 of values of order
    1)."""
    monkeypatch.setattr(adv_trainer, "scale_rewards", scale_rewards)
    out, r = _generate(adv_trainer, recorder)
    scale = "std" if scale_rewards == "group" else None
    ours = pg.reward_side.group_advantages(r, G, scale=scale, unbiased=True, eps=1e-4)
    torch.testing.assert_close(out["advantages"].to(F64), ours, rtol=0, atol=1e-5)
    assert bool((out["advantages"][G : 2 * G] == 0).all()) and bool((ours[G : 2 * G] == 0).all())
    assert float(ours.abs().max()) > 0.5


def test_trl_advantage_eps_and_bessel(adv_trainer, recorder, monkeypatch):
    """Pinned: TRL's eps is 1e-4 (grpo_trainer.py:2787): the package's default 1e-6 is ~9% off on
    the low-spread group (std ~ 1e-3) and agrees elsewhere; TRL's std is Bessel-corrected
    (utils.py:1021 nanstd): unbiased=False is off by sqrt(G/(G-1)) on every group."""
    monkeypatch.setattr(adv_trainer, "scale_rewards", "group")
    out, r = _generate(adv_trainer, recorder)
    trl_adv = out["advantages"].to(F64)
    default_eps = pg.reward_side.group_advantages(r, G)  # eps=1e-6
    low = slice(2 * G, 3 * G)
    assert float((default_eps[low] - trl_adv[low]).abs().max()) > 1e-2
    idx = torch.cat([torch.arange(0, G), torch.arange(3 * G, 4 * G)])
    torch.testing.assert_close(default_eps[idx], trl_adv[idx], rtol=0, atol=1e-3)
    population = pg.reward_side.group_advantages(r, G, unbiased=False, eps=1e-4)
    bessel = math.sqrt(G / (G - 1))  # 1/G std = sqrt((G-1)/G) x the 1/(G-1) std
    torch.testing.assert_close(population[idx], trl_adv[idx] * bessel, rtol=0, atol=1e-3)
    assert float((population[idx] - trl_adv[idx]).abs().max()) > 0.05


def test_rloo_advantages_match_trl(model_dir, tok, tmp_path_factory, recorder):
    """RLOOTrainer's inline leave-one-out (rloo_trainer.py:1682-1690: R - (sum_g - R)/(G - 1), no
    normalisation, beta 0) = group_leave_one_out_advantages. atol 1e-5: float32 in TRL."""
    trainer = _trainer(
        model_dir,
        tok,
        tmp_path_factory,
        rloo=True,
        reward=recorder,
        per_device_train_batch_size=len(PROMPTS) * G,
        num_generations=G,
        max_completion_length=6,
        beta=0.0,
        normalize_advantages=False,
    )
    out, r = _generate(trainer, recorder)
    group_ids = torch.arange(len(PROMPTS)).repeat_interleave(G)
    ours = pg.reward_side.group_leave_one_out_advantages(r, group_ids)
    torch.testing.assert_close(out["advantages"].to(F64), ours, rtol=0, atol=1e-5)
    assert bool((out["advantages"][G : 2 * G] == 0).all())
    grpo_style = pg.reward_side.group_advantages(r, G, scale=None)  # the mean includes R_i itself
    assert float((grpo_style - ours).abs().max()) > 0.1


# --------------------------------------------------------------------------- recipes


def _recipe_methods():
    """The registered GRPO (beta 0.04, G 8) and a beta-0 GRPO per aggregation TRL can express."""
    aggs = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm", "seq-mean-token-sum"]
    custom = [pg.methods.grpo(group_size=G, beta=0.0, eps=EPS, aggregation=a) for a in aggs]
    return [pytest.param(pg.get_method("grpo"), id="registered-grpo")] + [
        pytest.param(m, id=f"beta0-{a}") for m, a in zip(custom, aggs, strict=True)
    ]


@pytest.mark.parametrize("method", _recipe_methods())
def test_to_trl_builds_a_grpo_config(model_dir, tok, tmp_path_factory, hand, monkeypatch, method):
    """``GRPOConfig(**to_trl(method))`` builds, its trainer holds those settings, and its
    ``_compute_loss`` is the method's loss on the hand-built batch (max_completion_length = T, the
    method's max_len; a real reference model is built from the saved tiny model when beta > 0)."""
    settings = pg.methods.to_trl(method)
    trainer = _trainer(
        model_dir,
        tok,
        tmp_path_factory,
        per_device_train_batch_size=B,
        max_completion_length=T,
        **settings,
    )
    assert trainer.loss_type == settings["loss_type"]
    assert trainer.beta == settings["beta"] == method.extra["beta"]
    assert trainer.epsilon_low == trainer.epsilon_high == method.extra["eps"]
    assert trainer.num_generations == method.group_size
    assert trainer.scale_rewards == ("group" if method.extra["scale"] == "std" else "none")
    assert trainer.importance_sampling_level == "token"
    assert (trainer.ref_model is not None) == (method.extra["beta"] > 0)
    trl_out = _trl_loss(trainer, hand.inputs, monkeypatch)
    batch = _batch(hand)
    adv = pg.reward_side.broadcast_to_tokens(hand.adv, hand.mask)
    kl_weighted = trainer.beta != 0 and trainer.args.use_bias_correction_kl
    assert not kl_weighted, (
        "to_trl leaves GRPOConfig.use_bias_correction_kl at TRL's default True: TRL then "
        "weighs the k3 term by the importance ratio (grpo_trainer.py:3104-3105), which the "
        "method does not; the recipe needs use_bias_correction_kl=False"
    )
    _assert_parity(
        trl_out, lambda logp: method.loss(logp, batch, adv)[0], trainer.model, hand.inputs
    )
