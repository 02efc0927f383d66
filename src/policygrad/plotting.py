"""One figure style for the whole book.

Learning curves with seed bands, convergence plots, the map.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["set_style", "COLORS", "seed_band", "loglog_with_slope", "two_factor_map"]

#: Colour cycle used by every figure (colour-blind friendly, Okabe–Ito).
COLORS = [
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#F0E442",
    "#000000",
]


def set_style() -> None:
    """Apply the book's matplotlib style (call once at the top of a notebook)."""
    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 3.6),
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": mpl.cycler(color=COLORS),
            "font.size": 10,
            "axes.titlesize": 11,
            "legend.frameon": False,
            "svg.hashsalt": "policygrad",
        }
    )


def seed_band(
    ax, x, curves, *, label: str | None = None, color=None, band: str = "minmax"
):
    """Plot the mean of `curves (S, T)` over seeds with a shaded band.

    `band` is `"minmax"` or `"std"`.
    """
    ys = np.asarray(curves, dtype=float)
    if ys.ndim != 2:
        raise ValueError(f"curves must be 2-D (seeds, steps), got shape {ys.shape}")
    if band not in ("minmax", "std"):
        raise ValueError(f"band must be 'minmax' or 'std', got {band!r}")
    x = np.asarray(x)
    mean = ys.mean(0)
    if band == "minmax":
        lo, hi = ys.min(0), ys.max(0)
    else:
        lo, hi = mean - ys.std(0), mean + ys.std(0)
    (line,) = ax.plot(x, mean, label=label, color=color)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def loglog_with_slope(
    ax,
    ns,
    values,
    *,
    label: str | None = None,
    slope: float = -0.5,
    ref_label: bool = True,
):
    """Plot `values` against `ns` on log–log axes.

    Also draws a dashed reference line of the given `slope`.
    """
    ns = np.asarray(ns, dtype=float)
    vals = np.asarray(values, dtype=float)
    if ns.shape != vals.shape or ns.ndim != 1 or len(ns) < 2:
        raise ValueError(
            "ns and values must be 1-D arrays of the same length (at least 2)"
        )
    (line,) = ax.loglog(ns, vals, "o-", label=label)
    ref = vals[0] * (ns / ns[0]) ** slope
    ax.loglog(
        ns, ref, "--", color="gray", label=f"slope {slope:g}" if ref_label else None
    )
    return line


def two_factor_map(
    ax, entries: Sequence[tuple[str, float, float]], *, title: str | None = None
):
    """The book's map: each entry `(name, reward_side, trajectory_side)` on two axes.

    Coordinates say how much a method changes each factor (0 = leaves it as in
    REINFORCE).
    """
    for k, (name, xr, yt) in enumerate(entries):
        ax.scatter([xr], [yt], color=COLORS[k % len(COLORS)], zorder=3)
        ax.annotate(name, (xr, yt), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel(r"reward side: what multiplies $\nabla\log\pi_\theta$")
    ax.set_ylabel(r"trajectory side: which samples, which scores")
    ax.set_xlim(-0.3, 3.3)
    ax.set_ylim(-0.3, 3.3)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def close_all() -> None:
    """Close every open figure (keeps long notebooks light)."""
    plt.close("all")
