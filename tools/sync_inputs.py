"""Copy the inputs of each ``book/*.md`` into its executed ``.ipynb`` twin, keeping the stored outputs.

For edits that cannot change an output (prose, a renamed import path): the cells must correspond one
to one (same number, same types), else the notebook has to be re-executed with
``tools/execute_notebooks.py``. nbval then checks that the kept outputs are still what the code prints.

    python tools/sync_inputs.py [book/04-tiny-lm.md ...]
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import jupytext

BOOK = Path(__file__).resolve().parents[1] / "book"


def sync(md: Path) -> bool:
    """Sync one pair; returns whether the ``.ipynb`` changed. SystemExit if the cells do not correspond."""
    src = jupytext.read(md)
    twin = md.with_suffix(".ipynb")
    nb = jupytext.read(twin)
    if [c.cell_type for c in src.cells] != [c.cell_type for c in nb.cells]:
        raise SystemExit(f"{md.name}: cells were added, removed or retyped; re-execute it instead")
    changed = False
    for i, (a, b) in enumerate(zip(src.cells, nb.cells, strict=True)):
        if a.source != b.source or a.metadata != b.metadata:
            b.source, b.metadata = a.source, a.metadata
            changed = True
        b["id"] = hashlib.sha1(f"{i}:{b.source}".encode()).hexdigest()[:8]  # as execute_notebooks.py
    if changed:
        jupytext.write(nb, twin, fmt="ipynb")
    return changed


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted(BOOK.glob("[0-9A][0-9]-*.md"))
    for p in paths:
        print(f"{p.name}: {'updated' if sync(p) else 'unchanged'}")
