"""The book is read in a text column of about 665 px (the MyST book theme at a 1400 px window), so:

* notebook code lines and printed text lines are at most 80 characters (wider ones scroll sideways);
* the package's source, which the book shows with ``pg.show_source``, is at most 88 characters a line
  (the listings use a slightly smaller font), and its docstrings use one markup that reads well both in
  those listings and in ``help()``: Markdown-style backticks and plain Unicode math, no reST or MyST roles;
* chapter mentions in docstrings (``chapter 4 ("Heading")``) name a chapter and a heading that exist;
* the site has its own title and a favicon.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
SRC = ROOT / "src" / "policygrad"
CODE_WIDTH, OUTPUT_WIDTH, SOURCE_WIDTH = 80, 80, 88
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
ROLES = re.compile(r":(?:math|func|class|meth|mod|data|attr|ref|obj|exc):`|\{(?:ref|eq|doc|numref)\}`")


def _text(x) -> str:
    return "".join(x) if isinstance(x, list) else x


def _shows_source(source: str) -> bool:
    return "show_source(" in source


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_lines_fit_the_column(nb):
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    long = [
        (i, len(line), line[:60])
        for i, c in enumerate(cells)
        if c["cell_type"] == "code"
        for line in _text(c["source"]).split("\n")
        if len(line) > CODE_WIDTH
    ]
    assert not long, f"{nb.name}: code lines over {CODE_WIDTH} characters (cell, width, start): {long}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_printed_lines_fit_the_column(nb):
    """Stream and plain-text outputs, and code fences in Markdown outputs (rendered Markdown prose
    and tables reflow); a cell that shows package source may use the source's 88."""
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    long = []
    for i, c in enumerate(cells):
        if c["cell_type"] != "code":
            continue
        width = SOURCE_WIDTH if _shows_source(_text(c["source"])) else OUTPUT_WIDTH
        for out in c.get("outputs", []):
            data = out.get("data", {})
            if out["output_type"] == "stream":
                text = _text(out["text"])
            elif "text/markdown" in data:  # rendered Markdown reflows; a fenced listing does not
                fences = re.findall(r"```[^\n]*\n(.*?)```", _text(data["text/markdown"]), flags=re.S)
                text = "\n".join(fences)
            elif data and not set(data) & {"image/png", "image/svg+xml", "text/html"}:
                text = _text(data.get("text/plain", ""))
            else:
                continue
            long += [(i, len(line), line[:60]) for line in text.split("\n") if len(line) > width]
    assert not long, f"{nb.name}: printed lines over the column (cell, width, start): {long}"


def test_package_source_fits_the_listings():
    long = [
        f"{py.relative_to(ROOT)}:{n}: {len(line)}"
        for py in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(py.read_text(encoding="utf-8").splitlines(), 1)
        if len(line) > SOURCE_WIDTH
    ]
    assert not long, f"{len(long)} package lines over {SOURCE_WIDTH} characters, e.g. {long[:10]}"


def test_package_docstrings_use_no_rest_or_myst_roles():
    found = [
        f"{py.relative_to(ROOT)}:{n}"
        for py in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(py.read_text(encoding="utf-8").splitlines(), 1)
        if ROLES.search(line)
    ]
    assert not found, f"reST/MyST roles in the package (shown raw in the book and in help()): {found[:20]}"


def test_docstring_chapter_mentions_exist():
    """``chapter N ("Heading")`` in the package names book/NN-*.md and a heading of that page."""
    chapters = {int(p.name[:2]): p.read_text(encoding="utf-8") for p in BOOK.glob("[0-9][0-9]-*.md")}
    bad, seen = [], 0
    for py in sorted(SRC.rglob("*.py")):
        text = re.sub(r"\s*\n\s*", " ", py.read_text(encoding="utf-8"))  # mentions may wrap
        for num, heading in re.findall(r'chapter (\d+) \("([^"]+)"\)', text):
            seen += 1
            page = chapters.get(int(num))
            headings = re.findall(r"^#+\s+(.*?)\s*$", page or "", flags=re.M)
            if page is None or not any(heading.lower() in h.lower() for h in headings):
                bad.append(f"{py.relative_to(ROOT)}: chapter {num} (\"{heading}\")")
    assert seen > 0, "the package names no chapter: did the docstring format change?"
    assert not bad, f"docstrings name chapters or headings that do not exist: {bad}"


def test_site_has_its_title_and_a_favicon():
    site = yaml.safe_load((ROOT / "myst.yml").read_text(encoding="utf-8"))["site"]
    assert site.get("title") and "Made with MyST" not in site["title"]
    assert site["options"].get("logo_text")
    assert (ROOT / site["options"]["favicon"]).is_file()


def test_landing_page_shows_the_current_method_map():
    from policygrad.methods.map import method_map

    text = (BOOK / "index.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- method-map:start -->\n(.*?)\n<!-- method-map:end -->", text, re.S)
    assert m, "book/index.md lacks the method-map markers"
    assert m.group(1) == method_map(), "the landing page's map is stale: paste method_map()"


#: Figures are drawn at 150 dpi and at most `plotting.COLUMN_WIDTH` (6.6 in) wide, about 1000 px;
#: `bbox_inches="tight"` may add a little for labels outside the axes.
MAX_FIGURE_PX = 1100


def _png_size(b64: str) -> tuple[int, int]:
    import base64
    import struct

    raw = base64.b64decode(b64)
    return struct.unpack(">II", raw[16:24])


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_figures_are_made_for_the_column(nb):
    """Every figure comes from `pg.plotting.panels` (at most two panels a row, the column's width),
    is at most MAX_FIGURE_PX wide at 150 dpi, and has a caption (a Markdown cell right after it that
    starts with "*Figure.*")."""
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    problems = []
    for i, c in enumerate(cells):
        if c["cell_type"] != "code":
            continue
        src = _text(c["source"])
        if "plt.subplots(" in src or "plt.figure(" in src:
            problems.append((i, "uses plt.subplots/plt.figure instead of pg.plotting.panels"))
        pngs = [o["data"]["image/png"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        for png in pngs:
            w, _ = _png_size(png)
            if w > MAX_FIGURE_PX:
                problems.append((i, f"figure {w} px wide"))
        if pngs:
            nxt = cells[i + 1] if i + 1 < len(cells) else None
            if nxt is None or nxt["cell_type"] != "markdown" or not _text(nxt["source"]).lstrip().startswith("*Figure.*"):
                problems.append((i, "no '*Figure.*' caption right after the figure"))
    assert not problems, f"{nb.name}: {problems}"
