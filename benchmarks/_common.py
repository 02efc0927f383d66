"""Helpers shared by the benchmark scripts: device choice, timing, machine info, JSON/markdown output.

Not part of the package (and not collected by pytest). The speed benchmarks run on this CPU's own
kernels, as a user's script does; ``bench_reinforce_addition.py``, whose accuracy gains the README
quotes, pins the book's reference numeric path itself before torch loads. Every model, task and training loop the benchmarks
time comes from :mod:`policygrad`; this file only measures and reports.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import policygrad as pg

HERE = Path(__file__).resolve().parent


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu (default, the reference) or cuda; cuda is skipped without a GPU")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return p


def setup(device: str, seed: int = 0) -> tuple[torch.device | None, str | None]:
    """Seed and pin one torch thread (``policygrad.seed_everything``); resolve the device.

    Returns ``(device, None)``, or ``(None, reason)`` when the device cannot be used (e.g. ``cuda`` without a
    GPU): the caller then reports the benchmark as skipped and exits 0.
    """
    pg.seed_everything(seed)  # seeds + torch.set_num_threads(1) + deterministic algorithms
    try:
        dev = pg.get_device(device)
    except ValueError as err:
        return None, str(err)
    return dev, None


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are honest (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """``(seconds, result)`` of one call of ``fn``, synchronised on GPU."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def repeat(fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return [timed(fn, device)[0] for _ in range(repeats)]


def med(xs) -> float:
    return float(statistics.median(xs))


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def machine_info(device: torch.device | None = None) -> dict:
    """What the figures were measured on (the numbers only make sense next to this)."""
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "policygrad": pg.__version__,
        "load_average_1_5_15min": load_average(),
        "numeric_path": pg.numeric_path.status().describe(),
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def status(measured: float, target: float, *, best: float | None = None, higher_is_better: bool = True) -> str:
    """``PASS`` if the median meets the target; ``PASS (best only)`` if only the best repeat does; else ``FAIL``."""

    def ok(x: float) -> bool:
        return x >= target if higher_is_better else x <= target

    if ok(measured):
        return "PASS"
    if best is not None and ok(best):
        return "PASS (best only)"
    return "FAIL"


def row(figure: str, target: str, measured: str, verdict: str) -> dict:
    """One line of a results table."""
    return {"figure": figure, "target": target, "measured": measured, "pass": verdict}


def emit(name: str, payload: dict, path: Path | None) -> None:
    """Write the script's figures as JSON (for ``run_all.py``)."""
    payload = {"benchmark": name, **payload}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=float), encoding="utf-8")


def skip(name: str, reason: str, path: Path | None) -> int:
    """Report a skipped benchmark (e.g. ``--device cuda`` without a GPU) and return exit status 0."""
    print(f"[{name}] skipped: {reason}")
    emit(name, {"skipped": reason, "machine": machine_info()}, path)
    return 0


def print_rows(rows: list[dict]) -> None:
    w = max(len(r["figure"]) for r in rows)
    for r in rows:
        print(f"  {r['figure']:<{w}}  measured {r['measured']:<28} target {r['target']:<14} {r['pass']}")


def header(title: str, device: torch.device) -> None:
    info = machine_info(device)
    print(f"== {title}")
    print(
        f"   {info['cpu']} ({info['cpu_count']} cores), torch {info['torch']} with {info['torch_threads']} thread(s), "
        f"device {device}, load average {info['load_average_1_5_15min']}"
    )
    sys.stdout.flush()


def profile_table(fn: Callable[[], object], *, rows: int = 15) -> str:
    """A torch.profiler table (top ops by self CPU time) of one call of ``fn``: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
