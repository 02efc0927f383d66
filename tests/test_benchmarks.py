"""The README's performance table is the last ``make bench`` run's, not figures typed in by hand."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _run_all():
    sys.path.insert(0, str(BENCH))  # run_all imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_readme_performance_table_is_the_saved_runs():
    run_all = _run_all()
    saved = json.loads((BENCH / "results.json").read_text(encoding="utf-8"))
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    a, b = text.find(run_all.START), text.find(run_all.END)
    assert 0 <= a < b, "README.md lacks the bench-table markers"
    assert text[a + len(run_all.START) : b].strip() == run_all.readme_table(saved).strip(), (
        "README's performance table is stale: run `python benchmarks/run_all.py --render-only`"
    )
    assert set(saved["results"]) == set(run_all.SCRIPTS), "results.json is not one full run of every benchmark"


def test_results_md_is_rendered_from_results_json():
    run_all = _run_all()
    saved = json.loads((BENCH / "results.json").read_text(encoding="utf-8"))
    md = run_all.render(saved["results"], saved["device"], saved["load_before"], saved["load_after"], saved["wall"],
                        saved.get("revision", "unknown"))
    assert (BENCH / "results.md").read_text(encoding="utf-8") == md
