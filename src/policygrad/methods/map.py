"""The map of the registered methods: which factor of J each one changes, and where
the book derives it. The book's landing page shows `method_map()`; a test keeps that
page current.
"""

from __future__ import annotations

from .base import get_method, method_names

__all__ = ["method_map"]


def method_map() -> str:
    """A Markdown table of every registered method, in registry order.

    Columns: the method's name, whether it changes the reward side (what multiplies
    the score) and the trajectory side (which samples, weights, ratios and clips), and
    a link to the section that derives it. A method that changes neither is the plain
    estimator of the gradient of J.
    """
    rows = [
        "| method | reward side | trajectory side | derived in |",
        "|---|---|---|---|",
    ]
    for name in method_names():
        m = get_method(name)
        reward = "changed" if "reward" in m.changes else "—"
        trajectory = "changed" if "trajectory" in m.changes else "—"
        where = f"[](#{m.section})" if m.section else "—"
        rows.append(f"| `{name}`: {m.title} | {reward} | {trajectory} | {where} |")
    return "\n".join(rows)
