"""Cross-machine reproducibility probe: a small transformer-shaped training loop in plain torch.

Prints one checksum line. It runs under the book's reference numeric path (``policygrad.numeric_path``,
pinned before torch is imported; variables set in the environment win). Equal lines on two machines mean
the two CPUs take the same floating-point path for the operations the book uses (matmul, softmax,
log_softmax, layer norm, GELU, sums, Adam); ``tools/repro_probe.expected`` holds the reference line.

    python tools/repro_probe.py
"""
import numeric_env

numeric_env.pin()

import torch  # noqa: E402

torch.manual_seed(0)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
V, D, T, B = 16, 64, 12, 256
emb = torch.nn.Embedding(V, D)
att = torch.nn.MultiheadAttention(D, 4, batch_first=True)
mlp = torch.nn.Sequential(torch.nn.LayerNorm(D), torch.nn.Linear(D, 4 * D), torch.nn.GELU(), torch.nn.Linear(4 * D, D))
head = torch.nn.Linear(D, V)
params = [p for m in (emb, att, mlp, head) for p in m.parameters()]
opt = torch.optim.Adam(params, lr=1e-3)
mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
x = torch.randint(0, V, (B, T))
for _step in range(60):
    h = emb(x)
    a, _ = att(h, h, h, attn_mask=mask, need_weights=False)
    h = h + a
    h = h + mlp(h)
    logp = torch.log_softmax(head(h), -1)
    reward = (x[:, 1:] == (x[:, :-1] + 1) % V).float()
    tok = logp[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1)
    loss = -(tok * (reward - reward.mean())).mean() - 0.01 * (logp.exp() * logp).sum(-1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
total = sum(p.double().sum().item() for p in params)
print(f"repro-probe {torch.__version__} {torch.backends.cpu.get_cpu_capability()} loss={loss.item():.17g} params={total:.17g}")
