"""Execute book notebooks from their MyST-markdown source into the paired .ipynb (outputs included).

Usage: python tools/execute_notebooks.py [book/NN-name.md ...]   (default: every paired notebook in book/)

Each notebook is read from its ``.md`` (the reviewed source), executed top to bottom with nbclient in
``book/`` with one thread (``OMP_NUM_THREADS=1``, no timing metadata), and written to the ``.ipynb`` twin.
The run time of each notebook is printed so the 90-second budget can be checked.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


def paired_sources() -> list[Path]:
    """Every ``book/*.md`` that is a notebook (has a jupytext header with a kernelspec)."""
    out = []
    for md in sorted(BOOK.glob("*.md")):
        head = md.read_text(encoding="utf-8")[:600]
        if head.startswith("---") and "kernelspec" in head:
            out.append(md)
    return out


def execute(md: Path, timeout: int = 600) -> float:
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    nb = jupytext.read(md)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(md.parent)}},
        record_timing=False,
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    # merge consecutive stream outputs: how the kernel chunks stdout depends on timing, not on the code
    for cell in nb.cells:
        merged = []
        for out in cell.get("outputs", []):
            if (
                merged
                and out.get("output_type") == "stream"
                and merged[-1].get("output_type") == "stream"
                and merged[-1].get("name") == out.get("name")
            ):
                merged[-1]["text"] += out["text"]
            else:
                merged.append(out)
        if cell.cell_type == "code":
            cell["outputs"] = merged
    # stable cell ids (nbformat draws random ones), so re-executing an unchanged notebook changes nothing
    for i, cell in enumerate(nb.cells):
        cell["id"] = hashlib.sha1(f"{i}:{cell.source}".encode()).hexdigest()[:8]
    # jupytext adds `default_lexer`, which MyST does not know (it warns on every page): drop it
    nb.metadata.get("jupytext", {}).pop("default_lexer", None)
    jupytext.write(nb, md.with_suffix(".ipynb"), fmt="ipynb")
    nbformat.validate(nbformat.read(md.with_suffix(".ipynb"), as_version=4))
    return elapsed


def main(argv: list[str]) -> int:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    os.environ["PYTHONHASHSEED"] = "0"
    targets = [Path(a).resolve() for a in argv] if argv else paired_sources()
    if not targets:
        print("no notebooks to execute", file=sys.stderr)
        return 1
    total = 0.0
    for md in targets:
        if md.suffix != ".md" or not md.exists():
            print(f"not a notebook source: {md}", file=sys.stderr)
            return 2
        t = execute(md)
        total += t
        print(f"{md.relative_to(ROOT)}: {t:.1f} s")
    print(f"total: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
