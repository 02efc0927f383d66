"""Tests for the number-aware notebook comparison (tools/nbval_numeric.py) and the numeric path.

The comparator must pass last-digit noise and drift within a cell's stated tolerance, and fail on a
real change of a result, on any change of text, and on a changed integer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import nbval_numeric as nn
import numeric_env
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from policygrad import numeric_path

ROOT = Path(__file__).resolve().parents[1]


# -- numbers and tolerances --------------------------------------------------------------------------


def test_numbers_are_found_but_names_with_digits_are_text():
    text = "ch07 k3 loss=-0.125 acc 45.2 % step 150 err 3.2e-05 x1 (0.5) .25"
    assert nn.NUMBER.findall(text) == ["-0.125", "45.2", "150", "3.2e-05", "0.5", ".25"]


@pytest.mark.parametrize(
    "s, unit", [("0.125", 1e-3), ("3.2e-05", 1e-6), ("12.", 1.0), ("1e-3", 1e-3), ("4.50E+02", 1.0)]
)
def test_last_digit_unit(s, unit):
    assert nn._last_digit_unit(s) == pytest.approx(unit)


def test_default_tolerance_passes_last_digit_noise_and_round_off_only():
    tol = nn.DEFAULT
    assert tol.accepts("0.1235", "0.1234")  # one unit in the last printed digit
    assert not tol.accepts("0.1236", "0.1234")  # two units: a real change
    assert tol.accepts("1.0000001", "1.0000000")  # float32 round-off
    assert tol.accepts("2.2e-16", "1.1e-16")  # residuals at round-off level
    assert not tol.accepts("0.82", "0.80")
    assert not tol.accepts("151", "150")  # integers exactly
    assert not tol.accepts("-0.5", "0.5")


def test_a_stated_tolerance_accepts_drift_within_it_and_refuses_beyond():
    tol = nn.Tolerance(atol=0.02, why="held-out accuracy of a training run")
    assert tol.accepts("0.800", "0.804")
    assert tol.accepts("0.785", "0.804")  # 0.019 + last digit
    assert not tol.accepts("0.700", "0.804")
    rel = nn.Tolerance(rtol=0.1, why="a count from a training run")
    assert rel.accepts("55", "50") and not rel.accepts("56", "50")


@pytest.mark.parametrize("bad", [{"rtol": -1, "why": "x"}, {"atol": "big", "why": "x"}, {"rtol": True, "why": "x"}])
def test_bad_tolerances_are_refused(bad):
    with pytest.raises(ValueError, match="nbval-tolerance"):
        nn.cell_tolerance({"metadata": {"nbval-tolerance": bad}})


@pytest.mark.parametrize("bad", [{"atol": 0.1}, [0.1], {"atol": 0.1, "why": "x", "extra": 1}])
def test_a_tolerance_must_say_why_and_use_known_keys(bad):
    with pytest.raises(ValueError, match="'why'"):
        nn.cell_tolerance({"metadata": {"nbval-tolerance": bad}})


def test_cell_tolerance_reads_the_metadata():
    assert nn.cell_tolerance({"metadata": {}}) is nn.DEFAULT
    tol = nn.cell_tolerance({"metadata": {"nbval-tolerance": {"atol": 0.05, "why": "training"}}})
    assert (tol.rtol, tol.atol, tol.why) == (0.0, 0.05, "training")


# -- texts ---------------------------------------------------------------------------------------------


def test_reconcile_replaces_accepted_numbers_by_the_stored_ones():
    stored = "reinforce 0 0.420 0.804 H=0.575\n"
    text, misses = nn.reconcile("reinforce 0 0.421 0.800 H=0.575\n", stored, nn.Tolerance(atol=0.01, why="t"))
    assert text == stored and misses == []


def test_reconcile_keeps_a_number_out_of_tolerance_and_reports_it():
    text, misses = nn.reconcile("acc 0.600 ent 0.575", "acc 0.804 ent 0.575", nn.Tolerance(atol=0.01, why="t"))
    assert text == "acc 0.600 ent 0.575" and misses == [("0.600", "0.804")]


@pytest.mark.parametrize(
    "test",
    [
        "REINFORCE wins: 0.804",  # a word changed
        "reinforce wins:  0.804",  # spacing changed
        "reinforce wins: 0.804 0.1",  # an extra number
    ],
)
def test_any_change_of_text_is_a_difference(test):
    stored = "reinforce wins: 0.804"
    text, misses = nn.reconcile(test, stored, nn.Tolerance(rtol=1.0, atol=1.0, why="loose"))
    assert text == test and misses == [(test, stored)]


def test_reconcile_outputs_pairs_streams_and_rich_outputs_like_nbval():
    stored = [
        new_output("stream", name="stdout", text="mean 0.5000\n"),
        new_output("execute_result", data={"text/plain": "0.2500"}, execution_count=1),
    ]
    test = [
        new_output("stream", name="stdout", text="mean 0.5001\n"),
        new_output("execute_result", data={"text/plain": "0.2600"}, execution_count=1),
    ]
    out = nn.reconcile_outputs(test, stored, nn.DEFAULT)
    assert out[0]["text"] == "mean 0.5000\n"  # last-digit noise: replaced by the stored text
    assert out[1]["data"]["text/plain"] == "0.2600"  # a real change: kept, so nbval fails on it
    assert test[0]["text"] == "mean 0.5001\n"  # the input is not modified


# -- the plugin, end to end through nbval ---------------------------------------------------------------


def _notebook(path: Path, cells: list[tuple[str, str, dict]]) -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for source, stored, metadata in cells:
        cell = new_code_cell(source, metadata=metadata, execution_count=1)
        cell.outputs = [new_output("stream", name="stdout", text=stored)]
        nb.cells.append(cell)
    nbformat.write(nb, path)


def _run_nbval(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tools")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "nbval_numeric", "--nbval", "-p", "no:cacheprovider",
         f"--numeric-comparison={mode}", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip


def test_nbval_is_strict_or_number_aware_as_asked(tmp_path):
    train_tol = {"nbval-tolerance": {"atol": 0.05, "why": "a training result"}}
    _notebook(
        tmp_path / "book.ipynb",
        [
            ('print("exact 0.12346")', "exact 0.12345\n", {}),  # last-digit noise
            ('print("accuracy 0.800")', "accuracy 0.804\n", train_tol),  # drift within 0.05
        ],
    )
    strict = _run_nbval(tmp_path, "strict")
    assert strict.returncode == 1 and "2 failed" in strict.stdout, strict.stdout
    tolerant = _run_nbval(tmp_path, "tolerant")
    assert tolerant.returncode == 0 and "2 passed" in tolerant.stdout, tolerant.stdout
    assert "notebook comparison: number-aware (forced)" in tolerant.stdout


def test_number_aware_nbval_fails_on_an_edited_training_result(tmp_path):
    train_tol = {"nbval-tolerance": {"atol": 0.05, "why": "a training result"}}
    _notebook(tmp_path / "book.ipynb", [('print("accuracy 0.800")', "accuracy 0.900\n", train_tol)])
    run = _run_nbval(tmp_path, "tolerant")
    assert run.returncode == 1 and "1 failed" in run.stdout
    assert "numbers compared with rtol=0, atol=0.05 (a training result)" in run.stdout


# -- the numeric path --------------------------------------------------------------------------------


def test_pin_sets_only_what_the_environment_does_not_set():
    env = {"ATEN_CPU_CAPABILITY": "default"}
    changed = numeric_path.pin(env)
    assert env["MKL_CBWR"] == "COMPATIBLE" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["OMP_NUM_THREADS"] == "1" and env["ATEN_CPU_CAPABILITY"] == "default"  # the user's value wins
    assert changed == {"ATEN_CPU_CAPABILITY": "default"}
    assert numeric_path.overridden({**numeric_path.REFERENCE_ENV}) == {}


def test_the_loader_gives_the_package_module_without_torch():
    code = "import sys, numeric_env; m = numeric_env.load(); print(sorted(m.REFERENCE_ENV), 'torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tools")},
    ).stdout
    assert out.strip() == f"{sorted(numeric_path.REFERENCE_ENV)} False"
    assert numeric_env.load().REFERENCE_ENV == numeric_path.REFERENCE_ENV


def test_status_explains_why_a_process_is_off_the_reference_path():
    code = textwrap.dedent(
        """
        import policygrad.numeric_path as p
        s = p.status()
        print(s.reference, s.capability)
        print(s.describe())
        """
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AUTO"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
    first, line = out.splitlines()
    assert first == "False DEFAULT"
    assert "ATEN_CPU_CAPABILITY='default'" in line and "MKL_CBWR='AUTO'" in line
    assert "torch uses DEFAULT CPU kernels" in line


def test_this_test_run_is_pinned_unless_the_user_chose_otherwise():
    """conftest.py pins before torch is imported: every variable is in the environment, with its reference
    value or one the user set (then the header says the comparison is number-aware)."""
    for key in {**numeric_path.REFERENCE_ENV, **numeric_path.THREAD_ENV}:
        assert key in os.environ


def test_strict_comparison_only_where_the_probe_reproduces_the_reference_line(request):
    """tools/repro_probe.py (plain torch, no policygrad) prints one checksum of a small training loop. The
    auto comparison of this very run is strict exactly when the settings select the reference path and the
    probe printed the line recorded on an AVX2-only AMD EPYC; otherwise it is number-aware."""
    if request.config.getoption("--numeric-comparison") != "auto":
        pytest.skip("the comparison mode was forced")
    header = request.config._numeric_comparison
    if not numeric_path.status().reference:
        assert header.startswith("number-aware with stated tolerances: not the reference numeric path")
        return
    printed, expected = request.config._numeric_probe
    assert expected.startswith("repro-probe 2.13.0+cpu AVX2 loss=")
    assert nn.probe_line() == (printed, expected)  # deterministic: a second run prints the same
    if printed == expected:
        assert header.startswith("strict: reference numeric path")
    else:
        assert "does not reproduce tools/repro_probe.expected" in header and printed in header
