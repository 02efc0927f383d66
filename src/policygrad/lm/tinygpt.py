"""TinyGPT: a small decoder-only transformer that follows the package's policy protocol.

Written to be read top to bottom, in the spirit of nanoGPT: learned token and position
embeddings, `n_layer` pre-LayerNorm blocks (causal self-attention, then a GELU MLP, each
added to the residual stream), a final LayerNorm and a linear head that is tied to the
token embedding by default.

The policy protocol (see `policygrad.toy`) is the teacher-forced forward
`model(prompts, completions) -> logits (B, T, V)`, where position `t` holds the logits
of π_θ(· | x, y_<t). Because `policygrad.exact` uses nothing else,
`policygrad.ExactProblem` computes exact objectives and gradients for TinyGPT unchanged.
`TinyGPT.sample` draws completions autoregressively with a key/value cache. Introduced
in chapter 1 ("A language model is a policy over token sequences").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_device, check_positive_int, check_tensor
from ..rollout import Samples
from ..trajectory_side.logprobs import token_entropy, token_log_probs

__all__ = ["TinyGPTConfig", "TinyGPT", "KVCache", "TinyGPTCritic"]


@dataclass(frozen=True)
class TinyGPTConfig:
    """Sizes of a `TinyGPT`.

    * `vocab_size`: `V`;
    * `block_size`: the largest total length `P + T` (prompt plus completion) the model
      accepts, i.e. the number of learned positions;
    * `n_layer`, `n_head`, `n_embd`: depth, heads, width `C` (`C` must be divisible by
      `n_head`);
    * `tie_weights`: share the token embedding with the output head;
    * `init_std`: standard deviation of the normal initialisation (0.02 as in GPT-2;
      larger values give sharper, less uniform initial policies, handy for small
      experiments).

    There is no dropout: every forward is deterministic.
    """

    vocab_size: int
    block_size: int
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    tie_weights: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_positive_int(getattr(self, name), name)
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not isinstance(self.tie_weights, bool):
            raise ValueError(
                f"tie_weights must be True or False, got {self.tie_weights!r}"
            )
        std = self.init_std
        if (
            isinstance(std, bool)
            or not isinstance(std, (int, float))
            or not math.isfinite(std)
            or std <= 0
        ):
            raise ValueError(f"init_std must be a positive number, got {std!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head attention: position `i` sees positions `j <= i` (and all the cache).

    softmax(Q K^T / √d + M) V per head, with M_ij = -∞ for `j > i`.
    """

    def __init__(self, cfg: TinyGPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        # q, k and v projections in one matmul
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        causal = torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool).tril()
        # (block_size, block_size); True = may attend
        self.register_buffer("causal", causal, persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int = 0,
    ):
        """`x (B, L, C)` holds positions `start .. start+L-1`; returns `(B, L, C)`.

        With `cache` (this layer's key and value buffers, each `(B, H, capacity, d)`,
        filled below `start`) the new keys and values are written into it and the
        queries attend to all `start + L` positions; without it `start` must be 0.
        """
        B, L, C = x.shape
        H, d = self.n_head, C // self.n_head
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, L, C)
        q = q.view(B, L, H, d).transpose(1, 2)  # (B, H, L, d)
        k = k.view(B, L, H, d).transpose(1, 2)  # (B, H, L, d)
        v = v.view(B, L, H, d).transpose(1, 2)  # (B, H, L, d)
        if cache is not None:
            cache[0][:, :, start : start + L] = k
            cache[1][:, :, start : start + L] = v
            # (B, H, S, d) with S = start + L
            k, v = cache[0][:, :, : start + L], cache[1][:, :, : start + L]
        # scores q.k / sqrt(d): (B, H, L, S)
        att = (q * (1.0 / math.sqrt(d))) @ k.transpose(-2, -1)
        # a single new query may attend to every key, so decoding steps need no mask
        if L > 1:
            # j > i -> -inf
            att = att.masked_fill(
                ~self.causal[start : start + L, : start + L], float("-inf")
            )
        # softmax over keys, written out (torch's fused CPU softmax is very slow for
        # rows shorter than 16)
        att = (att - att.amax(-1, keepdim=True)).exp()
        att = att / att.sum(-1, keepdim=True)  # (B, H, L, S), each row sums to 1
        # the same weighted sum of values; on CPU B*H one-row matmuls are slow, a
        # broadcast is not
        if L == 1:
            # (B, H, S, 1) * (B, H, S, d) -> (B, H, 1, d)
            y = (att.transpose(-2, -1) * v).sum(2, keepdim=True)
        else:
            y = att @ v  # (B, H, L, d)
        y = y.transpose(1, 2).reshape(B, L, C)  # heads side by side again: (B, L, C)
        return self.proj(y)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`."""

    def __init__(self, cfg: TinyGPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
        )

    def forward(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int = 0,
    ):
        x = x + self.attn(self.ln1(x), cache, start)  # (B, L, C)
        return x + self.mlp(self.ln2(x))  # (B, L, C)


class KVCache:
    """Keys and values of every layer for the positions seen so far.

    Preallocated for `capacity` positions. `layers[i] = (keys, values)`, each
    `(B, H, capacity, C / H)`; positions `0 .. length-1` are filled.
    `TinyGPT.forward_tokens` writes the next positions into these buffers in place (no
    copy of the past at each step) and advances `length`. A cache belongs to one batch
    of sequences; it is for sampling and holds no gradient history. Make one with
    `TinyGPT.new_cache`.
    """

    def __init__(
        self,
        config: TinyGPTConfig,
        batch_size: int,
        capacity: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if not isinstance(config, TinyGPTConfig):
            raise ValueError(
                f"config must be a TinyGPTConfig, got {type(config).__name__}"
            )
        check_positive_int(batch_size, "batch_size")
        check_positive_int(capacity, "capacity")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(
                f"dtype must be a floating-point torch.dtype, got {dtype!r}"
            )
        device = check_device(device)
        if capacity > config.block_size:
            raise ValueError(
                f"capacity ({capacity}) cannot exceed block_size={config.block_size}"
            )
        shape = (batch_size, config.n_head, capacity, config.n_embd // config.n_head)
        self.layers = [
            (
                torch.empty(shape, dtype=dtype, device=device),
                torch.empty(shape, dtype=dtype, device=device),
            )
            for _ in range(config.n_layer)
        ]
        self.batch_size, self.capacity, self.length = batch_size, capacity, 0


class TinyGPT(nn.Module):
    """A decoder-only transformer policy π_θ(y_t | x, y_<t) over token sequences.

    `TinyGPT(TinyGPTConfig(vocab_size=16, block_size=32))` (2 layers, 4 heads, width 64,
    tied head) has 103,168 parameters. Prompts are token tensors `(B, P)` with `P >= 1`,
    and all prompts in a batch have the same length `P`: there is no left padding, so
    batch prompts of different lengths separately. Runs on whatever device its
    parameters are on (`model.to("cuda")`); CPU is the default. Introduced in chapter 1
    ("A language model is a policy over token sequences").
    """

    def __init__(
        self, config: TinyGPTConfig, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, TinyGPTConfig):
            raise ValueError(
                f"config must be a TinyGPTConfig, got {type(config).__name__}"
            )
        self.config = cfg = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # token embedding (V, C)
        # position embedding (block_size, C)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)  # (V, C) weight
        if cfg.tie_weights:
            self.head.weight = self.wte.weight
        # GPT-2 initialisation: N(0, std^2) weights, zero biases, residual projections
        # scaled by 1/sqrt(2 n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                deep = name.endswith("attn.proj.weight") or name.endswith(
                    "mlp.2.weight"
                )
                std = (
                    cfg.init_std / math.sqrt(2 * cfg.n_layer) if deep else cfg.init_std
                )
                nn.init.normal_(p, 0.0, std, generator=generator)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def num_parameters(self) -> int:
        """Number of trainable scalars (a tied head is counted once)."""
        return sum(p.numel() for p in self.parameters())

    # -- the transformer ---------------------------------------------------------------
    def _hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Unchecked core: tokens `(B, L)` -> final hidden states `(B, L, C)`.

        Without a cache the tokens are positions `0 .. L-1`; with one they continue it
        (and are added to it).
        """
        start = 0 if cache is None else cache.length
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)  # (L,)
        x = self.wte(idx) + self.wpe(pos)  # (B, L, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i], start)  # (B, L, C)
        if cache is not None:
            cache.length = start + idx.shape[1]
        return self.ln_f(x)

    def new_cache(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """An empty `KVCache` for `batch_size` sequences of up to `capacity` tokens.

        `capacity` defaults to `block_size`.
        """
        w = self.wte.weight
        capacity = self.config.block_size if capacity is None else capacity
        return KVCache(
            self.config, batch_size, capacity, dtype=w.dtype, device=w.device
        )

    @torch.no_grad()
    def forward_tokens(
        self, idx: torch.Tensor, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """Next-token logits for raw token ids with a key/value cache.

        `idx (B, L) -> (logits (B, L, V), cache)`.

        `logits[:, i]` predicts the token after `idx[:, i]`. Without `cache` a new one
        is made; with the cache of an earlier call, `idx` continues those sequences: its
        positions start at `cache.length`. The cache is updated in place and returned.
        Raises ValueError if `cache.length + L` exceeds `block_size` or the cache's
        capacity. Runs without gradients (it is the sampler's forward; training uses the
        teacher-forced forward).
        """
        idx = self._check_tokens(idx, "idx")
        if cache is None:
            cache = self.new_cache(idx.shape[0])
        elif not isinstance(cache, KVCache) or len(cache.layers) != self.config.n_layer:
            raise ValueError(
                f"cache must be a KVCache of this model ({self.config.n_layer} layers)"
            )
        elif cache.batch_size != idx.shape[0]:
            raise ValueError(
                f"cache holds {cache.batch_size} sequences "
                f"but idx has {idx.shape[0]} rows"
            )
        total = cache.length + idx.shape[1]
        self._check_length(total)
        if total > cache.capacity:
            raise ValueError(
                f"total length {total} exceeds the cache's capacity "
                f"of {cache.capacity} positions"
            )
        return self.head(self._hidden(idx, cache)), cache

    def forward(
        self, prompts: torch.Tensor, completions: torch.Tensor, *, group_size: int = 1
    ) -> torch.Tensor:
        """Teacher-forced next-token logits: prompts `(B, P)`, completions `(B, T)`.

        Returns `(B, T, V)`. Position `t` holds the logits of π_θ(· | x, y_<t): the
        transformer runs on `cat(prompts, completions[:, :-1])` (length `P + T - 1`) and
        its last `T` positions are kept. Requires `P + T <= block_size`.

        `group_size=G` declares that rows `i*G .. i*G+G-1` share one prompt (the layout
        of `sample(group_size=G)`): the prompt is then run once per group and its keys
        and values are shared by the group's completions, which gives the same logits
        (up to float round-off) for a fraction of the work — RL batches are exactly
        this shape. ValueError if the rows of a group differ.
        """
        # (B, T, V)
        return self.head(
            self.state_features(prompts, completions, group_size=group_size)
        )

    def state_features(
        self, prompts: torch.Tensor, completions: torch.Tensor, *, group_size: int = 1
    ) -> torch.Tensor:
        """The final hidden state of each state s_t = (x, y_<t): `(B, T, C)`.

        See `forward`. The policy head turns it into next-token logits; a value head
        (`TinyGPTCritic`) into V(s_t).
        """
        prompts = self._check_tokens(prompts, "prompts")
        completions = self._check_tokens(completions, "completions")
        if completions.shape[0] != prompts.shape[0]:
            raise ValueError(
                f"prompts has {prompts.shape[0]} rows "
                f"but completions has {completions.shape[0]}"
            )
        P, T = prompts.shape[1], completions.shape[1]
        self._check_length(P + T)
        G = check_positive_int(group_size, "group_size")
        if G == 1:
            idx = torch.cat([prompts, completions[:, :-1]], dim=1)  # (B, P + T - 1)
            return self._hidden(idx)[:, P - 1 :]  # (B, T, C)
        unique = self._group_prompts(prompts, G)  # (B / G, P)
        # (B / G, P, C), cache of B rows
        h_prompt, cache = self._shared_prefix(unique, G, P + T - 1)
        # (B, 1, C): the state s_0 = x
        first = h_prompt[:, -1:].repeat_interleave(G, dim=0)
        if T == 1:
            return first
        # (B, T - 1, C), attending to the shared prompt
        h = self._hidden(completions[:, :-1], cache)
        return torch.cat([first, h], dim=1)  # (B, T, C)

    logits = forward

    def token_log_probs_and_entropy(
        self, prompts: torch.Tensor, completions: torch.Tensor, *, group_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probabilities and entropies: two `(B, T)` tensors.

        log π_θ(y_t | x, y_<t) and the entropy of π_θ(· | x, y_<t).
        """
        logits = self(prompts, completions, group_size=group_size)
        return token_log_probs(logits, completions.to(logits.device)), token_entropy(
            logits
        )

    def _group_prompts(self, prompts: torch.Tensor, G: int) -> torch.Tensor:
        """The first row of each group of `G` identical prompt rows.

        `(B, P) -> (B / G, P)`.
        """
        B, P = prompts.shape
        if B % G:
            raise ValueError(f"group_size={G} does not divide the batch of {B} rows")
        unique = prompts[::G]  # (B / G, P)
        if not bool((prompts.view(B // G, G, P) == unique.unsqueeze(1)).all()):
            raise ValueError(
                f"with group_size={G}, rows i*G .. i*G+G-1 must hold the same prompt"
            )
        return unique

    def _shared_prefix(
        self, unique: torch.Tensor, G: int, capacity: int
    ) -> tuple[torch.Tensor, KVCache]:
        """Run `N` distinct prompts `(N, P)` once: their hidden states and a cache.

        Returns the hidden states `(N, P, C)` and a cache of `N * G` rows whose first
        `P` positions hold each prompt's keys and values, `G` times.

        Works with gradients: the copies into the cache are recorded by autograd.
        """
        N, P = unique.shape
        small = self.new_cache(N, P)
        h = self._hidden(unique, small)  # (N, P, C)
        cache = self.new_cache(N * G, capacity)
        for (k_small, v_small), (k, v) in zip(small.layers, cache.layers, strict=True):
            # autograd sums the G copies' gradients back (repeat_interleave)
            if torch.is_grad_enabled():
                k[:, :, :P] = k_small.repeat_interleave(G, dim=0)  # (N * G, H, P, d)
                v[:, :, :P] = v_small.repeat_interleave(G, dim=0)
            else:
                # the same values, broadcast into the cache without a repeated
                # copy first: (N, G, H, P, d)
                k.view(N, G, *k.shape[1:])[:, :, :, :P] = k_small.unsqueeze(1)
                v.view(N, G, *v.shape[1:])[:, :, :, :P] = v_small.unsqueeze(1)
        cache.length = P
        return h, cache

    # -- sampling ----------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        prompts: torch.Tensor,
        *,
        max_new_tokens: int,
        eos: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        pad: int | None = None,
        group_size: int = 1,
    ) -> Samples:
        """Sample `max_new_tokens` tokens after each prompt `(B, P)`.

        Returns a `Samples` of width `T`. Each step draws y_t ∝ exp(z_t / temperature)
        restricted to the `top_k` largest logits (ties with the k-th logit are kept). A
        row stops at its first `eos` (kept, mask 1); later positions hold `pad` (default
        `eos`) with mask 0 and log-prob 0. `truncated` is True for rows that never
        emitted `eos` (all False when `eos` is None, as for `TabularPolicy`).

        `log_probs` are log π_θ(y_t | x, y_<t) of the *policy*, i.e. at temperature 1
        and without top-k, whatever sampler drew the tokens: with `temperature != 1` or
        `top_k` the sampler is not the policy (a sampler/trainer mismatch, chapter
        10), and `sampler_log_probs` holds the log-probabilities under the tempered,
        truncated distribution the tokens were drawn from (None otherwise).

        `group_size=G` samples `G` completions per prompt (rows `i*G .. i*G+G-1` belong
        to prompt `i`); it is `prompts.repeat_interleave(G, 0)`. `use_cache=False`
        recomputes the whole prefix at every step (slow; the reference for the cache).
        Random numbers are drawn on the generator's device, so a CPU-seeded generator
        gives the same tokens on any device.
        """
        V = self.config.vocab_size
        prompts = self._check_tokens(prompts, "prompts")
        T = check_positive_int(max_new_tokens, "max_new_tokens")
        check_positive_int(group_size, "group_size")
        for name, tok in (("eos", eos), ("pad", pad)):
            if tok is not None and (
                isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok < V
            ):
                raise ValueError(
                    f"{name} must be a token id in [0, {V - 1}] or None, got {tok!r}"
                )
        t_ok = isinstance(temperature, (int, float)) and not isinstance(
            temperature, bool
        )
        if not t_ok or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(
                f"temperature must be a positive number, got {temperature!r}"
            )
        if top_k is not None:
            check_positive_int(top_k, "top_k")
        if not isinstance(use_cache, bool):
            raise ValueError(f"use_cache must be True or False, got {use_cache!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(
                "generator must be a torch.Generator or None, "
                f"got {type(generator).__name__}"
            )
        self._check_length(prompts.shape[1] + T)
        # the loop runs in inference mode (less bookkeeping per operation than no_grad);
        # its results are cloned out of it, so that autograd may use them later (train
        # feeds them to the training forward)
        out = self._draw(
            prompts, T, eos, pad, temperature, top_k, generator, use_cache, group_size
        )
        prompts, tokens, mask, logp, truncated = (x.clone() for x in out[:5])
        tempered = not (temperature == 1 and top_k is None)
        return Samples(
            prompts=prompts,
            completions=tokens,
            mask=mask,
            log_probs=logp,
            truncated=truncated,
            sampler_log_probs=out[5].clone() if tempered else None,
        )

    @torch.inference_mode()
    def _draw(
        self, prompts, T, eos, pad, temperature, top_k, generator, use_cache, group_size
    ):
        """The sampling loop of `sample` (arguments checked there): its five tensors and
        the sampler's log-probs (the policy's when it samples at temperature 1 without
        top-k)."""
        V = self.config.vocab_size
        unique, G = prompts, group_size
        if G > 1:
            prompts = prompts.repeat_interleave(G, dim=0)  # (B * G, P)

        B = prompts.shape[0]
        device = prompts.device
        gen_device = generator.device if generator is not None else device
        fill = eos if pad is None else pad
        tokens = torch.empty(B, T, dtype=torch.long, device=device)
        logp = torch.empty(B, T, dtype=self.wte.weight.dtype, device=device)
        logq = logp  # the sampler's log-probs: the policy's unless tempered/truncated
        # has the row emitted eos yet?
        ended = torch.zeros(B, dtype=torch.bool, device=device)
        width = T  # positions drawn (the loop stops early once every row has ended)

        # prefill: each distinct prompt once, its keys and values shared by its G rows
        if use_cache:
            # (B / G, P, C), cache of B rows
            h, cache = self._shared_prefix(unique, G, prompts.shape[1] + T)
            h = h[:, -1:].repeat_interleave(G, dim=0)  # (B, 1, C)
        else:
            h = self._hidden(prompts)  # (B, P, C)
        for t in range(T):
            z = self.head(h[:, -1])  # (B, V) logits of pi(. | x, y_<t)
            # (B, V) the policy's own log-probabilities
            logp_all = torch.log_softmax(z, dim=-1)
            if temperature == 1 and top_k is None:
                probs = logp_all.exp()
            else:  # the sampler: tempered and/or truncated to the top k
                zs = z / temperature
                if top_k is not None and top_k < V:
                    # (B, 1) k-th largest
                    kth = torch.topk(zs, top_k, dim=-1).values[:, -1:]
                    zs = zs.masked_fill(zs < kth, float("-inf"))
                logq_all = torch.log_softmax(zs, dim=-1)
                probs = logq_all.exp()
                if t == 0:
                    logq = torch.empty_like(logp)
            # (B, 1)
            tok = torch.multinomial(probs.to(gen_device), 1, generator=generator).to(
                device
            )
            # log pi(y_t | x, y_<t), temperature 1
            logp[:, t : t + 1] = logp_all.gather(1, tok)
            if logq is not logp:
                logq[:, t : t + 1] = logq_all.gather(1, tok)
            tokens[:, t : t + 1] = tok
            # rows that have ended keep drawing; those draws are masked out below
            if eos is not None:
                ended |= tok.squeeze(1) == eos
                if t + 1 < T and bool(ended.all()):
                    width = t + 1
                    break  # every row has ended; the rest is padding
            if t + 1 < T:
                if use_cache:
                    h = self._hidden(tok, cache)  # only the new token: (B, 1, C)
                else:
                    # (B, P + t + 1, C)
                    h = self._hidden(torch.cat([prompts, tokens[:, : t + 1]], dim=1))
        if eos is None:
            mask = torch.ones(B, T, dtype=logp.dtype, device=device)
            truncated = torch.zeros(B, dtype=torch.bool, device=device)
        else:
            # a row stops at its first eos: eos kept (mask 1), later positions padding
            # (mask 0, log-prob 0)
            drawn = tokens[:, :width]
            # eos strictly before each position
            after = (drawn == eos).cumsum(1) - (drawn == eos).long()
            keep = after == 0  # (B, width)
            mask = torch.zeros(B, T, dtype=logp.dtype, device=device)
            mask[:, :width] = keep.to(logp.dtype)
            tokens[:, :width] = drawn.masked_fill(~keep, fill)
            tokens[:, width:] = fill
            for lp in (logp, logq) if logq is not logp else (logp,):
                lp[:, :width] = lp[:, :width].masked_fill(~keep, 0.0)
                lp[:, width:] = 0.0
            truncated = ~ended
        return prompts, tokens, mask, logp, truncated, logq

    # -- validation --------------------------------------------------------------------
    def _check_tokens(self, x, name: str) -> torch.Tensor:
        """A `(B, L)` integer tensor of ids in `[0, V)` with `B, L >= 1`.

        Moved to the model's device.
        """
        check_tensor(x, name, 2)
        if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
            raise ValueError(f"{name} must hold integer token ids, got dtype {x.dtype}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(
                f"{name} must have at least one row and one token, "
                f"got shape {tuple(x.shape)}"
            )
        V = self.config.vocab_size
        lo, hi = torch.aminmax(x)
        if int(lo) < 0 or int(hi) >= V:
            raise ValueError(
                f"{name} must hold token ids in [0, {V - 1}] (the vocabulary)"
            )
        return x.to(device=self.wte.weight.device, dtype=torch.long)

    def _check_length(self, total: int) -> None:
        if total > self.config.block_size:
            raise ValueError(
                f"total length {total} (prompt + completion) exceeds "
                f"block_size={self.config.block_size}"
            )


class TinyGPTCritic(nn.Module):
    """A value model V_φ(s_t) for the token-level MDP: TinyGPT body, scalar head.

    `critic(prompts (B, P), completions (B, T)) -> (B, T)`: position `t` is the value of
    the state s_t = (x, y_<t) before token `t` is chosen, aligned with the policy's
    log-probabilities. RLHF-style PPO trains it by regression on returns
    (`policygrad.reward_side.clipped_value_loss`) and uses it in GAE. `from_policy`
    starts the body from a policy's weights (a common choice: the critic then starts
    with the policy's features); the value head starts at 0. Derived in chapter 6
    ("RLHF-style PPO: critic, GAE, KL in the reward").
    """

    def __init__(
        self, config: TinyGPTConfig, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.body = TinyGPT(config, generator=generator)
        self.value_head = nn.Linear(config.n_embd, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_policy(cls, policy: TinyGPT) -> TinyGPTCritic:
        """A critic whose body copies `policy` (same device), with a zero value head."""
        if not isinstance(policy, TinyGPT):
            raise ValueError(f"policy must be a TinyGPT, got {type(policy).__name__}")
        critic = cls(policy.config)
        critic.body.load_state_dict(policy.state_dict())
        return critic.to(policy.wte.weight.device)

    def forward(
        self, prompts: torch.Tensor, completions: torch.Tensor, *, group_size: int = 1
    ) -> torch.Tensor:
        # (B, T, C)
        h = self.body.state_features(prompts, completions, group_size=group_size)
        return self.value_head(h).squeeze(-1)  # (B, T)
