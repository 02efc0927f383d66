"""Execute book notebooks from their MyST-markdown source into the paired .ipynb (outputs included).

Usage: python tools/execute_notebooks.py [--out DIR] [--allow-off-path] [book/NN-name.md ...]
(default: every paired notebook in book/)

Each notebook is read from its ``.md`` (the reviewed source), executed top to bottom with nbclient in
``book/`` with one thread (``OMP_NUM_THREADS=1``, no timing metadata), and written to the ``.ipynb`` twin,
or into ``--out DIR`` (to compare another machine's outputs with the stored ones). The run time of each
notebook is printed so the 90-second budget can be checked.

The kernels run on the book's reference numeric path (``policygrad.numeric_path``, pinned here before
any kernel starts; variables already set in the environment win). Outputs stored in ``book/`` must come
from that path, so writing them from anywhere else is refused unless ``--allow-off-path`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numeric_env

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


def execute(md: Path, out_dir: Path | None = None, timeout: int = 600) -> float:
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
    target = md.with_suffix(".ipynb") if out_dir is None else out_dir / md.with_suffix(".ipynb").name
    jupytext.write(nb, target, fmt="ipynb")
    nbformat.validate(nbformat.read(target, as_version=4))
    return elapsed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="*", type=Path, help="book/NN-name.md files (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="write the executed notebooks here")
    parser.add_argument("--allow-off-path", action="store_true", help="store outputs in book/ off the reference path")
    args = parser.parse_args(argv)
    numeric_env.pin()
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    path = numeric_env.load().status()  # imports torch here, after the pin, as the kernels will
    print(path.describe())
    if args.out is None and not path.reference and not args.allow_off_path:
        print(
            "refusing to store outputs in book/ off the reference numeric path (they would fail the strict "
            "comparison there); use --out DIR, or --allow-off-path if you mean it",
            file=sys.stderr,
        )
        return 2
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    os.environ["PYTHONHASHSEED"] = "0"
    targets = [a.resolve() for a in args.sources] if args.sources else paired_sources()
    if not targets:
        print("no notebooks to execute", file=sys.stderr)
        return 1
    total = 0.0
    for md in targets:
        if md.suffix != ".md" or not md.exists():
            print(f"not a notebook source: {md}", file=sys.stderr)
            return 2
        t = execute(md, args.out)
        total += t
        print(f"{md.relative_to(ROOT)}: {t:.1f} s")
    print(f"total: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
