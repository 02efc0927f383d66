"""Number-aware notebook comparison for nbval, used off the reference numeric path.

On the reference numeric path (``policygrad.numeric_path``: x86-64 with AVX2, torch 2.13, the pinned
kernel variables) nbval compares every stored output exactly. Elsewhere (Apple Silicon and other ARM
CPUs, no AVX2, another torch release, or a variable the user set) sums round differently in the last
bit, and results of training runs drift further. There the comparison becomes number-aware:

* text is compared exactly: every character outside the numbers must match;
* each number is compared with a tolerance: ``|test - stored| <= atol + rtol * |stored|``, and for a
  number printed with a decimal point or an exponent, also up to one unit in its last printed digit
  (last-digit noise). Integers printed without a point are compared exactly by the default tolerance;
* the default tolerance is tight (``rtol = atol = 1e-6``: float32 round-off), right for exact
  enumeration and closed forms. A cell that prints results of a training run states its own tolerance
  in its metadata, with the reason, e.g. in the MyST source::

      ```{code-cell} ipython3
      :nbval-tolerance: {atol: 0.05, why: "held-out accuracy after 150 RL steps; seed spread 0.03"}
      ```

A number outside its tolerance is left as it is, so nbval's own comparison fails and shows it.

``--numeric-comparison`` chooses: ``auto`` (default: strict on the reference path, tolerant elsewhere),
``strict`` or ``tolerant``. On the reference settings ``auto`` also runs ``tools/repro_probe.py`` once
(about 7 s) and stays strict only if it prints the recorded reference line. The pytest header says which
comparison was used and why.
"""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: A number as printed by Python: optional sign, digits with an optional point, optional exponent. Not
#: preceded by a letter, digit, underscore or point, so names such as ``k3`` or ``ch07`` stay text.
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")

METADATA_KEY = "nbval-tolerance"


@dataclass(frozen=True)
class Tolerance:
    """How far a recomputed number may be from the stored one (see the module docstring)."""

    rtol: float = 1e-6
    atol: float = 1e-6
    why: str = "exact computation: float round-off only"

    def __post_init__(self):
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{METADATA_KEY}: {name} must be a non-negative number, got {value!r}")

    def accepts(self, test: str, stored: str) -> bool:
        """Whether the printed number ``test`` is within tolerance of the printed number ``stored``."""
        if test == stored:
            return True
        a, b = float(test), float(stored)
        if not (math.isfinite(a) and math.isfinite(b)):
            return False
        slack = self.atol + self.rtol * abs(b)
        if _is_decimal(stored):
            slack += _last_digit_unit(stored)
        return abs(a - b) <= slack * (1 + 1e-12)


DEFAULT = Tolerance()


def _is_decimal(s: str) -> bool:
    return "." in s or "e" in s or "E" in s


def _last_digit_unit(s: str) -> float:
    """The value of one unit in the last printed digit of ``s`` (``"0.125"`` -> 0.001, ``"3.2e-05"`` ->
    1e-06)."""
    mantissa, _, exponent = s.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def cell_tolerance(cell) -> Tolerance:
    """The tolerance a cell states in its metadata (``nbval-tolerance``), else the tight default."""
    spec = cell.get("metadata", {}).get(METADATA_KEY)
    if spec is None:
        return DEFAULT
    if not isinstance(spec, dict) or not set(spec) <= {"rtol", "atol", "why"} or "why" not in spec:
        raise ValueError(f"{METADATA_KEY} must be a mapping with keys rtol and/or atol and a 'why', got {spec!r}")
    return Tolerance(rtol=spec.get("rtol", 0.0), atol=spec.get("atol", 0.0), why=str(spec["why"]))


def reconcile(test: str, stored: str, tol: Tolerance) -> tuple[str, list[tuple[str, str]]]:
    """Compare two printed texts number by number.

    Returns ``(text, misses)``. When the text outside the numbers is identical, ``text`` is ``test`` with
    every number that is within tolerance replaced by the stored one, and ``misses`` lists the
    ``(test, stored)`` pairs that are not; otherwise ``text`` is ``test`` unchanged and ``misses`` is
    ``[(test, stored)]`` (the texts differ, not just numbers).
    """
    test_parts, stored_parts = NUMBER.split(test), NUMBER.split(stored)
    test_nums, stored_nums = NUMBER.findall(test), NUMBER.findall(stored)
    if test_parts != stored_parts or len(test_nums) != len(stored_nums):
        return test, [(test, stored)]
    out, misses = [test_parts[0]], []
    for a, b, rest in zip(test_nums, stored_nums, test_parts[1:], strict=True):
        if tol.accepts(a, b):
            out.append(b)
        else:
            out.append(a)
            misses.append((a, b))
        out.append(rest)
    return "".join(out), misses


def _text_fields(outputs) -> dict[str, list[tuple[object, str]]]:
    """Where each comparable text sits, grouped as nbval groups them: stream outputs by stream name, rich
    outputs by MIME type; each entry is ``(container, key)``."""
    fields: dict[str, list[tuple[object, str]]] = {}
    for out in outputs:
        if out.get("output_type") == "stream":
            fields.setdefault(out["name"], []).append((out, "text"))
        elif "data" in out:
            for mime, value in out["data"].items():
                if mime.startswith("text/") and isinstance(value, str):
                    fields.setdefault(mime, []).append((out["data"], mime))
    return fields


def reconcile_outputs(test_outputs, stored_outputs, tol: Tolerance):
    """A copy of a cell's recomputed outputs in which every number within tolerance of the stored one is
    replaced by it (so an exact comparison afterwards fails only on real changes)."""
    test_outputs = copy.deepcopy(test_outputs)
    test_fields, stored_fields = _text_fields(test_outputs), _text_fields(stored_outputs)
    for key, places in test_fields.items():
        stored = stored_fields.get(key, [])
        if len(stored) != len(places):
            continue
        for (container, field), (s_container, s_field) in zip(places, stored, strict=True):
            container[field] = reconcile(container[field], s_container[s_field], tol)[0]
    return test_outputs


# -- the pytest plugin ----------------------------------------------------------------------------------


def pytest_addoption(parser):
    parser.addoption(
        "--numeric-comparison",
        choices=("auto", "strict", "tolerant"),
        default="auto",
        help="notebook outputs: strict on the reference numeric path and number-aware elsewhere (auto), "
        "or force one (see tools/nbval_numeric.py)",
    )


PROBE = Path(__file__).resolve().parent / "repro_probe.py"


def probe_line() -> tuple[str, str]:
    """``(printed, expected)``: what ``tools/repro_probe.py`` prints in a child process with this
    environment, and the reference line of ``tools/repro_probe.expected``."""
    expected = next(
        line
        for line in PROBE.with_suffix(".expected").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    run = subprocess.run([sys.executable, str(PROBE)], capture_output=True, text=True, timeout=600)
    printed = run.stdout.strip() if run.returncode == 0 else f"(the probe failed: {run.stderr.strip()[-200:]})"
    return printed, expected


def _decide(config) -> tuple[bool, str]:
    """``(tolerant, header line)``. ``auto`` is strict only where the settings select the reference path
    *and* this CPU reproduces the probe's reference line: a machine where the pinned variables still do
    not give the reference arithmetic is another platform, compared with tolerances."""
    choice = config.getoption("--numeric-comparison")
    import numeric_env

    path = numeric_env.load().status()
    if choice == "strict":
        return False, f"strict (forced); {path.describe()}"
    if choice == "tolerant":
        return True, f"number-aware (forced); {path.describe()}"
    if not path.reference:
        return True, f"number-aware with stated tolerances: {path.describe()}"
    printed, expected = probe_line()
    config._numeric_probe = (printed, expected)
    if printed != expected:
        return True, (
            f"number-aware with stated tolerances: the reference settings are in place ({path.describe()}) "
            f"but this CPU does not reproduce tools/repro_probe.expected: it printed {printed!r}"
        )
    return False, f"strict: {path.describe()}; repro probe reproduced"


def pytest_configure(config):
    tolerant, line = _decide(config)
    config._numeric_comparison = line
    if not tolerant:
        return
    from nbval.plugin import IPyNbCell

    if getattr(IPyNbCell.compare_outputs, "_number_aware", False):
        return
    exact = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        tol = cell_tolerance(self.cell)
        same = exact(self, reconcile_outputs(test, ref, tol), ref, skip_compare)
        if not same:
            self.comparison_traceback.insert(
                0, f"numbers compared with rtol={tol.rtol:g}, atol={tol.atol:g} ({tol.why}); text exactly"
            )
        return same

    compare_outputs._number_aware = True
    IPyNbCell.compare_outputs = compare_outputs


def pytest_report_header(config):
    return f"notebook comparison: {getattr(config, '_numeric_comparison', 'strict')}"
