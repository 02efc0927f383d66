"""Compare the stored outputs of two executions of the book, number by number, cell by cell.

Usage: python tools/compare_outputs.py OTHER_DIR [--book book]

``OTHER_DIR`` holds ``.ipynb`` files executed elsewhere (``tools/execute_notebooks.py --out OTHER_DIR``,
e.g. with ``ATEN_CPU_CAPABILITY=default`` or on another CPU). For every code cell whose text outputs
differ, prints the largest absolute and relative difference of its numbers, the tolerance the cell
states (``nbval-tolerance``, see ``tools/nbval_numeric.py``) and whether the number-aware comparison
accepts it. This is how the stated tolerances are measured; exits 1 if any cell would fail.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbval_numeric import Tolerance, _text_fields, cell_tolerance, reconcile

EXACT = Tolerance(rtol=0.0, atol=0.0, why="exact")


def cell_differences(test_cell, stored_cell):
    """``(pairs, structural)``: the (test, stored) number pairs that differ at all, and whether any text
    outside the numbers differs."""
    pairs, structural = [], False
    test_fields, stored_fields = _text_fields(test_cell.outputs), _text_fields(stored_cell.outputs)
    if set(test_fields) != set(stored_fields):
        return pairs, True
    for key, places in stored_fields.items():
        others = test_fields[key]
        if len(others) != len(places):
            return pairs, True
        for (c, f), (sc, sf) in zip(others, places, strict=True):
            _, misses = reconcile(c[f], sc[sf], EXACT)
            for a, b in misses:
                if a == c[f] and b == sc[sf] and a != b:  # the texts differ beyond their numbers
                    structural = True
                else:
                    pairs.append((a, b))
    return pairs, structural


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("other", type=Path)
    parser.add_argument("--book", type=Path, default=Path(__file__).resolve().parents[1] / "book")
    args = parser.parse_args(argv)
    failed = 0
    for other in sorted(args.other.glob("*.ipynb")):
        stored = nbformat.read(args.book / other.name, as_version=4)
        test = nbformat.read(other, as_version=4)
        code = [(i, c) for i, c in enumerate(stored.cells) if c.cell_type == "code"]
        test_code = [c for c in test.cells if c.cell_type == "code"]
        if len(test_code) != len(code):
            print(f"{other.name}: {len(test_code)} code cells, the stored notebook has {len(code)} (another source?)")
            failed += 1
            continue
        for n, ((_, s_cell), t_cell) in enumerate(zip(code, test_code, strict=True)):
            pairs, structural = cell_differences(t_cell, s_cell)
            if not pairs and not structural:
                continue
            tol = cell_tolerance(s_cell)
            ok = not structural and all(tol.accepts(a, b) for a, b in pairs)
            failed += not ok
            absd = max((abs(float(a) - float(b)) for a, b in pairs), default=0.0)
            reld = max((abs(float(a) - float(b)) / max(abs(float(b)), 1e-300) for a, b in pairs), default=0.0)
            worst = max(pairs, key=lambda p: abs(float(p[0]) - float(p[1])), default=None)
            print(
                f"{other.name} cell {n}: {len(pairs)} numbers differ, max abs {absd:.3g}, max rel {reld:.3g}"
                f"{' (text differs too)' if structural else ''}; worst {worst}; "
                f"tolerance rtol={tol.rtol:g} atol={tol.atol:g}: {'accepted' if ok else 'FAILS'}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
