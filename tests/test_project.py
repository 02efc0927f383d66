"""Project-level checks: dependency lists agree, notebook pairs agree, the book check has teeth,
and every book label the package's docstrings point to exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

CONDA_TO_PYPI = {"pytorch": "torch"}
NOT_PYTHON_PACKAGES = {"python", "nodejs", "pip"}


def _split_requirement(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    assert m, f"cannot parse requirement {req!r}"
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def _pyproject_requirements() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    reqs = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["dev"]
    return dict(_split_requirement(r) for r in reqs)


def _environment_requirements() -> dict[str, str]:
    out = {}
    section = None
    in_pip = False
    for line in (ROOT / "environment.yml").read_text(encoding="utf-8").splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        top = re.match(r"^(\w+):", stripped)
        if top:
            section = top.group(1)
            continue
        if re.match(r"^\s*- pip:\s*$", stripped):
            in_pip = True
            continue
        m = re.match(r"^  - (\S.*)$", stripped)  # top-level dependency entries only
        if m and section == "dependencies" and not in_pip:
            name, spec = _split_requirement(m.group(1))
            if name not in NOT_PYTHON_PACKAGES:
                out[CONDA_TO_PYPI.get(name, name)] = spec
    return out


def test_environment_yml_matches_pyproject():
    py = _pyproject_requirements()
    env = _environment_requirements()
    assert env == py, (
        "environment.yml and pyproject.toml disagree:\n"
        f"  only in pyproject: {sorted(set(py) - set(env))}\n"
        f"  only in environment.yml: {sorted(set(env) - set(py))}\n"
        f"  different bounds: {sorted(k for k in set(py) & set(env) if py[k] != env[k])}"
    )


def test_environment_yml_installs_the_package():
    assert re.search(r"^\s+- -e \.\s*$", (ROOT / "environment.yml").read_text(), flags=re.M)


def test_no_exact_pins_in_pyproject():
    for name, spec in _pyproject_requirements().items():
        assert "==" not in spec, f"{name} is pinned with == in pyproject.toml; use a lower bound"


def _notebook_sources() -> list[Path]:
    """Chapters ``NN-name.md`` then appendices ``AN-name.md``, in toc order."""
    return sorted(p for p in BOOK.glob("*.md") if re.match(r"(\d\d|A\d)-", p.name))


def _toc_files() -> list[str]:
    return re.findall(r"^\s*-?\s*file:\s*(\S+)\s*$", (ROOT / "myst.yml").read_text(), flags=re.M)


def test_every_notebook_is_a_pair_with_identical_inputs():
    import jupytext
    from jupytext.compare import compare_notebooks

    sources = _notebook_sources()
    assert sources, "no notebooks found in book/"
    for md in sources:
        nb_path = md.with_suffix(".ipynb")
        assert nb_path.exists(), f"{md.name} has no executed twin {nb_path.name}"
        compare_notebooks(jupytext.read(md), jupytext.read(nb_path), fmt="md:myst", compare_outputs=False)
    for nb_path in BOOK.glob("*.ipynb"):
        assert nb_path.with_suffix(".md").exists(), f"{nb_path.name} has no .md source"


def test_toc_lists_every_notebook_twin_in_order():
    toc = _toc_files()
    listed = [f for f in toc if f.endswith(".ipynb")]
    expected = [f"book/{md.stem}.ipynb" for md in _notebook_sources()]
    assert listed == expected, f"myst.yml toc lists {listed}, book/ has {expected}"
    assert not any(f.endswith(".md") and re.match(r"book/(\d\d|A\d)-", f) for f in toc), "toc must list .ipynb twins"


def test_stored_notebooks_are_executed_and_clean():
    for md in _notebook_sources():
        nb = json.loads(md.with_suffix(".ipynb").read_text(encoding="utf-8"))
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code, f"{md.name} has no code"
        for i, cell in enumerate(code):
            assert cell.get("execution_count") is not None, f"{md.name}: code cell {i} was not executed"
            assert "execution" not in cell.get("metadata", {}), f"{md.name}: cell {i} carries timing metadata"
            for out in cell.get("outputs", []):
                assert out["output_type"] != "error", f"{md.name}: code cell {i} stored an error"
                if out["output_type"] == "stream" and out["name"] == "stderr":
                    text = "".join(out["text"])
                    raise AssertionError(f"{md.name}: code cell {i} wrote to stderr: {text[:300]}")


def _mini_book(tmp_path: Path, body: str) -> Path:
    (tmp_path / "book").mkdir()
    shutil.copy(BOOK / "references.bib", tmp_path / "book" / "references.bib")
    (tmp_path / "myst.yml").write_text(
        "version: 1\nproject:\n  title: check\n  bibliography:\n    - book/references.bib\n"
        "  error_rules:\n    - rule: reference-target-resolves\n      severity: error\n"
        "    - rule: identifier-is-unique\n      severity: error\n"
        "  toc:\n    - file: book/index.md\nsite:\n  template: book-theme\n",
        encoding="utf-8",
    )
    (tmp_path / "book" / "index.md").write_text(body, encoding="utf-8")
    return tmp_path


def _run_check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_book.py"), "--root", str(root)],
        capture_output=True, text=True, timeout=300, check=False,
    )


GOOD_PAGE = (
    "# Page\n\n(sec-a)=\n## A\n\n```{math}\n:label: eq-a\nx = 1\n```\n\n"
    "See [](#sec-a), [](#eq-a) and [@williams1992].\n"
)


@pytest.mark.parametrize(
    "broken, needle",
    [
        ("See [](#sec-does-not-exist).\n", "sec-does-not-exist"),
        ("See [@no-such-paper-2099].\n", "no-such-paper-2099"),
        ("(sec-a)=\n## Duplicate\n", "sec-a"),
        ("```{no-such-directive}\nx\n```\n", "no-such-directive"),
    ],
    ids=["reference", "citation", "duplicate-label", "unknown-directive"],
)
def test_book_check_fails_on_broken_book(tmp_path, broken, needle):
    result = _run_check(_mini_book(tmp_path, GOOD_PAGE + "\n" + broken))
    assert result.returncode != 0, result.stdout
    assert needle in result.stdout, result.stdout


def test_book_check_passes_on_a_correct_book(tmp_path):
    result = _run_check(_mini_book(tmp_path, GOOD_PAGE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_docstring_maths_is_escaped():
    """A LaTeX command in a non-raw string (``"\\theta"``) silently becomes a tab, newline, ... at run time."""
    import io
    import tokenize

    bad = []
    for py in sorted((ROOT / "src" / "policygrad").glob("*.py")):
        for tok in tokenize.generate_tokens(io.StringIO(py.read_text(encoding="utf-8")).readline):
            if tok.type != tokenize.STRING:
                continue
            prefix = re.match(r"^[A-Za-z]*", tok.string).group(0).lower()
            if "r" in prefix:
                continue
            body = tok.string.replace("\\\\", "")
            m = re.search(r"\\[A-Za-z]{2,}", body)
            if m:
                bad.append(f"{py.name}:{tok.start[0]}: {m.group(0)}")
    assert not bad, "unescaped LaTeX in non-raw strings (use \\\\ or an r-string): " + ", ".join(bad)


def test_parity_extra_is_pinned_and_in_environment_yml():
    """The parity oracles are the one pinned dependency (name==X.Y.*), installed by make test and conda."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    parity = data["project"]["optional-dependencies"]["parity"]
    assert {r.split("==")[0] for r in parity} == {"trl", "verl"}
    env = (ROOT / "environment.yml").read_text(encoding="utf-8")
    for req in parity:
        assert re.fullmatch(r"[a-z]+==\d+\.\d+\.\*", req), f"parity pin {req!r} is not name==X.Y.*"
        assert re.search(rf"^\s+- {re.escape(req)}\s*$", env, flags=re.M), f"environment.yml lacks {req}"
    assert '".[dev,parity]"' in (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "POLICYGRAD_REQUIRE_PARITY=1" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
