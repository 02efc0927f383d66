"""Tests for policygrad.lm.pretrained: the shipped SFT warm starts, their documentation and their regeneration."""

from __future__ import annotations

import math
import re

import pytest
import torch

import policygrad as pg
from policygrad.lm import pretrained
from policygrad.lm.pretrained import (
    EVAL_SIZE,
    WARM_STARTS,
    checkpoint_path,
    load_warm_start,
    supervised_loss,
    train_supervised,
    warm_start_table,
)
from policygrad.lm.tasks import evaluate, make_task

TASKS = list(WARM_STARTS)


def test_every_task_has_a_warm_start():
    assert set(TASKS) == set(pg.lm.tasks.TASKS)
    for name, spec in WARM_STARTS.items():
        assert spec.task == name and checkpoint_path(name).is_file()


@pytest.mark.parametrize("name", TASKS)
def test_warm_start_loads_matches_its_task_and_documented_accuracy(name):
    task = make_task(name)
    spec = WARM_STARTS[name]
    model, meta = load_warm_start(name)
    assert isinstance(model, pg.TinyGPT) and not model.training
    assert model.config.vocab_size == task.tokenizer.vocab_size
    assert model.config.block_size == task.prompt_length + task.max_new_tokens
    assert model.config == spec.config()
    assert model.head.weight is model.wte.weight  # tying survives the round trip
    assert set(meta) == {"task", "config", "recipe", "steps", "heldout_accuracy", "torch_version"}
    assert meta["task"] == name
    assert meta["recipe"] == {k: v for k, v in vars(spec).items() if k != "heldout_accuracy"}
    assert 1 <= meta["steps"] <= spec.max_steps and meta["steps"] % spec.check_every == 0  # stopped at a check
    payload = torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)  # no code unpickled
    assert payload["format"] == 1 and payload["heldout_accuracy"] == meta["heldout_accuracy"]
    acc = evaluate(model, task, task.eval_set(EVAL_SIZE))["accuracy"]
    assert acc == pytest.approx(spec.heldout_accuracy, abs=1.5 / EVAL_SIZE)
    assert acc == pytest.approx(meta["heldout_accuracy"], abs=1.5 / EVAL_SIZE)
    assert 0.30 <= acc <= 0.70  # partial: room for RL in both directions
    assert not model.training  # evaluate restored eval mode


def _docstring_table() -> dict[str, list[str]]:
    rows = {}
    for line in pretrained.__doc__.splitlines():
        cells = line.split()
        if cells and cells[0] in WARM_STARTS:
            rows[cells[0]] = cells[1:]
    return rows


def test_docstring_table_matches_the_recipes_and_the_checkpoints():
    doc = pretrained.__doc__
    assert f"held-out greedy accuracy ({EVAL_SIZE} problems)" in doc
    rows = _docstring_table()
    assert list(rows) == TASKS
    table = {r["task"]: r for r in warm_start_table()}
    for name, cells in rows.items():
        assert len(cells) == 4, cells
        params, steps, stop_at, acc = cells
        model, meta = load_warm_start(name)
        spec = WARM_STARTS[name]
        assert params == f"{model.num_parameters():,}" == f"{table[name]['parameters']:,}"
        assert int(steps) == meta["steps"] == table[name]["sft_steps"]
        assert float(stop_at) == spec.stop_at == table[name]["stop_at"]
        assert acc == f"{spec.heldout_accuracy:.4f}" == f"{meta['heldout_accuracy']:.4f}"
        assert spec.heldout_accuracy == meta["heldout_accuracy"] == table[name]["heldout_accuracy"]
        # accuracies are counts out of EVAL_SIZE
        assert abs(spec.heldout_accuracy * EVAL_SIZE - round(spec.heldout_accuracy * EVAL_SIZE)) < 1e-9
    assert re.search(r"^=+\s+=+\s+=+\s+=+\s+=+$", doc, re.M)  # an RST simple table


# -- errors --------------------------------------------------------------------------------------------------


def test_load_warm_start_errors(tmp_path):
    with pytest.raises(ValueError, match="no warm start for task 'nope'"):
        load_warm_start("nope")
    with pytest.raises(ValueError, match="does not exist"):
        load_warm_start("addition", path=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="warm start for task 'prefix', not 'addition'"):
        load_warm_start("addition", path=checkpoint_path("prefix"))  # another task's checkpoint
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a policygrad warm-start checkpoint"):
        load_warm_start("addition", path=tmp_path / "list.pt")
    torch.save({"format": 2, "task": "addition"}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="not a policygrad warm-start checkpoint"):
        load_warm_start("addition", path=tmp_path / "future.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_warm_start("addition", path=tmp_path)  # a directory


@pytest.mark.parametrize("content", ["text", "bare_dict"])
def test_load_warm_start_rejects_files_that_are_not_checkpoints(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content == "text":
        path.write_text("this is not a checkpoint\n", encoding="utf-8")
    else:
        torch.save({"format": 1, "task": "addition"}, path)
    with pytest.raises(ValueError, match="not a policygrad warm-start checkpoint"):
        load_warm_start("addition", path=path)


# -- supervised loss and training -----------------------------------------------------------------------------


def test_supervised_loss_is_the_masked_cross_entropy(tiny_gpt):
    task = make_task("prefix")  # answers of different lengths: the mask matters
    model = tiny_gpt(task, init_std=0.3)
    problems = task.sample_problems(6, torch.Generator().manual_seed(0))
    prompts = task.encode_prompts(problems)
    targets, mask = task.target_completions(problems)
    assert len(set(mask.sum(-1).tolist())) > 1
    loss = supervised_loss(model, prompts, targets, mask)
    # reference: an independent forward on the raw token sequence, cross-entropy summed over answer tokens
    P = prompts.shape[1]
    with torch.no_grad():
        logits, _ = model.forward_tokens(torch.cat([prompts, targets[:, :-1]], 1))
    total, count = 0.0, 0
    for i in range(len(problems)):
        for t in range(targets.shape[1]):
            if mask[i, t]:
                z = logits[i, P - 1 + t].double()
                total += (torch.logsumexp(z, 0) - z[targets[i, t]]).item()
                count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    assert loss.requires_grad
    unmasked = supervised_loss(model, prompts, targets, torch.ones_like(mask))
    assert abs(unmasked.item() - loss.item()) > 1e-3  # padding positions would change the value
    with pytest.raises(ValueError, match="selects no target token"):
        supervised_loss(model, prompts, targets, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="shape of targets"):
        supervised_loss(model, prompts, targets, mask[:, :-1])
    with pytest.raises(ValueError, match="targets"):
        supervised_loss(model, prompts, targets[0], mask)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"check_every": 2}, "both"),
        ({"stop_at": 0.5}, "both"),
        ({"check_every": 0, "stop_at": 0.5}, "check_every"),
        ({"check_every": 2, "stop_at": 0.0}, "stop_at"),
        ({"check_every": 2, "stop_at": 1.5}, "stop_at"),
    ],
)
def test_train_supervised_rejects_bad_arguments(kw, match, tiny_gpt):
    task = make_task("addition")
    with pytest.raises(ValueError, match=match):
        train_supervised(tiny_gpt(task, init_std=0.3), task, **{"steps": 1, **kw})


def test_train_supervised_rejects_a_non_task(tiny_gpt):
    task = make_task("addition")
    with pytest.raises(ValueError, match="task must be a Task"):
        train_supervised(tiny_gpt(task, init_std=0.3), "addition", steps=1)


@pytest.mark.parametrize("kw", [{"seed": 1.5}, {"seed": -1}, {"check_every": 2, "stop_at": "0.5"}])
def test_train_supervised_rejects_bad_seed_and_stop_at(kw, tiny_gpt):
    task = make_task("addition")
    with pytest.raises(ValueError):
        train_supervised(tiny_gpt(task, init_std=0.3), task, steps=1, batch_size=2, **kw)


def test_a_few_supervised_steps_lower_the_loss(tiny_gpt):
    task = make_task("addition")
    model = tiny_gpt(task, init_std=0.3)
    probe = task.sample_problems(64, torch.Generator().manual_seed(123))
    args = (task.encode_prompts(probe), *task.target_completions(probe))
    with torch.no_grad():
        before = supervised_loss(model, *args).item()
    log = train_supervised(model, task, steps=15, batch_size=32, lr=3e-3, seed=0)
    with torch.no_grad():
        after = supervised_loss(model, *args).item()
    assert log["steps"] == len(log["losses"]) == 15 and log["checks"] == []
    assert after < before - 0.5, (before, after)  # measured 3.45 -> 2.05 nats (log V = 2.7)
    assert all(math.isfinite(v) for v in log["losses"])


def test_early_stopping_uses_training_problems_and_stops_at_the_first_check_that_reaches_the_target(monkeypatch, tiny_gpt):
    task = make_task("addition")
    scripted = iter([0.1, 0.35, 0.4, 0.9])
    seen = []

    def fake_evaluate(model, task_, problems):
        seen.append(list(problems))
        return {"accuracy": next(scripted)}

    monkeypatch.setattr(pretrained, "evaluate", fake_evaluate)
    log = train_supervised(tiny_gpt(task, init_std=0.3), task, steps=20, batch_size=4, seed=0, check_every=3, stop_at=0.4)
    assert log["steps"] == 9 and len(log["losses"]) == 9
    assert log["checks"] == [(3, 0.1), (6, 0.35), (9, 0.4)]  # 0.4 >= stop_at: stop there
    assert len(seen[0]) == 256 and all(p == seen[0] for p in seen)  # one fixed probe ...
    assert not any(task.is_heldout(p) for p in seen[0])  # ... of training problems: held-out never used
    scripted = iter([0.0] * 10)
    log = train_supervised(tiny_gpt(task, init_std=0.3), task, steps=7, batch_size=4, seed=0, check_every=3, stop_at=1.0)
    assert log["steps"] == 7 and [s for s, _ in log["checks"]] == [3, 6]  # never reached: runs every step


# -- regeneration ----------------------------------------------------------------------------------------------


def test_regenerating_addition_reproduces_the_shipped_checkpoint(capsys):
    """On the reference numeric path the rebuild is bitwise identical to the shipped file; elsewhere (another
    CPU, another torch) it must land within the stated tolerance of the documented accuracy."""
    from policygrad import numeric_path

    assert pretrained.main(["addition", "--check"]) == 0
    out = capsys.readouterr().out
    assert "addition:" in out and "DIFFERENT" not in out
    if numeric_path.status().reference:
        assert "OK, bitwise identical" in out
    else:
        assert f"OK within {pretrained.OFF_PATH_TOLERANCE}" in out


def test_shipped_checkpoints_match_their_recorded_hashes(tmp_path, monkeypatch):
    import hashlib
    import shutil

    for name in TASKS:
        assert hashlib.sha256(checkpoint_path(name).read_bytes()).hexdigest() == pretrained.CHECKPOINT_SHA256[name]
    # a changed shipped file is refused (simulated by pointing the package at a copy with one byte changed)
    fake = tmp_path / "checkpoints"
    shutil.copytree(pretrained.CHECKPOINT_DIR, fake)
    data = bytearray((fake / "prefix.pt").read_bytes())
    data[-30] ^= 1
    (fake / "prefix.pt").write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "CHECKPOINT_DIR", fake)
    with pytest.raises(ValueError, match="does not match its recorded SHA-256"):
        load_warm_start("prefix")
    load_warm_start("reverse")  # untouched files still load


def test_regenerate_refuses_to_overwrite_shipped_files_off_the_reference_path(monkeypatch, capsys):
    from policygrad import numeric_path

    off = numeric_path.PathStatus(False, ("a test",), "x86_64", "2.13.0", "DEFAULT")
    monkeypatch.setattr(numeric_path, "status", lambda: off)
    monkeypatch.setattr(pretrained, "build_warm_start", lambda spec: pytest.fail("must not train"))
    assert pretrained.main(["prefix"]) == 2
    assert "refusing to overwrite the shipped checkpoints" in capsys.readouterr().err


def test_regenerated_checkpoint_is_written_and_loads(tmp_path, capsys):
    assert pretrained.main(["prefix", "--out", str(tmp_path)]) == 0
    path = tmp_path / "prefix.pt"
    assert path.is_file() and str(path) in capsys.readouterr().out
    model, meta = load_warm_start("prefix", path=path)
    spec = WARM_STARTS["prefix"]
    assert meta["heldout_accuracy"] == pytest.approx(spec.heldout_accuracy, abs=1.5 / EVAL_SIZE)
    _, shipped = load_warm_start("prefix")
    assert meta["recipe"] == shipped["recipe"] and meta["config"] == shipped["config"]
    task = make_task("prefix")
    acc = evaluate(model, task, task.eval_set(EVAL_SIZE))["accuracy"]
    assert acc == meta["heldout_accuracy"]


def test_regenerate_rejects_an_unknown_task():
    with pytest.raises(SystemExit):
        pretrained.main(["nope", "--check"])
