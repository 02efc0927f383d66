"""One figure style for the whole book.

Learning curves with seed bands, convergence plots, the map.

The book's text column is about 665 px wide. Figures are drawn at 150 dpi and at most
`COLUMN_WIDTH` inches wide (about 1000 px, shown at two thirds of their size, so that a
10-point label is still about 14 px on the page), with at most two panels per row
(`panels`). Every band says what it is (`band_text`).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "set_style",
    "COLORS",
    "COLUMN_WIDTH",
    "DPI",
    "panels",
    "seed_band",
    "band_text",
    "loglog_with_slope",
    "two_factor_map",
]

#: Width in inches of a figure that fills the book's text column.
COLUMN_WIDTH = 6.6

#: Resolution of every figure of the book.
DPI = 150

#: The bands `seed_band` draws, and how a caption or legend names them.
BANDS = {
    "minmax": "min–max over seeds",
    "se": "± 1 standard error of the mean over seeds",
    "std": "± 1 standard deviation over seeds",
}

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
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
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


def panels(nrows: int = 1, ncols: int = 2, *, height: float = 2.9, **kwargs) -> tuple:
    """A figure for the text column: `nrows` × `ncols` panels, at most two per row.

    Returns `(fig, axes)` as `plt.subplots` does; the figure is `COLUMN_WIDTH` wide
    and `height` inches per row. `kwargs` go to `plt.subplots` (e.g. `sharex`).
    """
    if not (isinstance(nrows, int) and isinstance(ncols, int)):
        raise ValueError(f"nrows and ncols must be integers, got {nrows!r}, {ncols!r}")
    if nrows < 1 or ncols not in (1, 2):
        raise ValueError(
            "a figure has at least one row and one or two panels per row (the "
            f"text column is {COLUMN_WIDTH} in wide), got {nrows} x {ncols}"
        )
    if not height > 0:
        raise ValueError(f"height must be positive, got {height!r}")
    width = COLUMN_WIDTH if ncols == 2 else 0.75 * COLUMN_WIDTH
    return plt.subplots(nrows, ncols, figsize=(width, height * nrows), **kwargs)


def band_text(band: str, n_seeds: int) -> str:
    """How a caption names `seed_band`'s line and band, e.g. for a legend title.

    `band_text("minmax", 5)` is `"mean of 5 seeds, band min–max over seeds"`.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {sorted(BANDS)}, got {band!r}")
    if not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"n_seeds must be a positive integer, got {n_seeds!r}")
    return f"mean of {n_seeds} seeds, band {BANDS[band]}"


def seed_band(
    ax,
    x,
    curves,
    *,
    label: str | None = None,
    color=None,
    band: str = "minmax",
    marker: str | None = None,
):
    """Plot the mean of `curves (S, T)` over seeds with a shaded band.

    `band` is `"minmax"` (min–max over the seeds), `"se"` (± 1 standard error of the
    mean, `std / sqrt(S)` with the unbiased std) or `"std"` (± 1 standard deviation).
    Sparse curves (at most 15 points) get markers unless `marker` says otherwise
    (`""` for none).
    """
    ys = np.asarray(curves, dtype=float)
    if ys.ndim != 2:
        raise ValueError(f"curves must be 2-D (seeds, steps), got shape {ys.shape}")
    if band not in BANDS:
        raise ValueError(f"band must be one of {sorted(BANDS)}, got {band!r}")
    x = np.asarray(x)
    if x.shape != ys.shape[1:]:
        raise ValueError(
            f"x has shape {x.shape} but curves have {ys.shape[1]} points per seed"
        )
    if band == "se" and ys.shape[0] < 2:
        raise ValueError("band='se' needs at least two seeds")
    mean = ys.mean(0)
    if band == "minmax":
        lo, hi = ys.min(0), ys.max(0)
    elif band == "se":
        se = ys.std(0, ddof=1) / np.sqrt(ys.shape[0])
        lo, hi = mean - se, mean + se
    else:
        lo, hi = mean - ys.std(0), mean + ys.std(0)
    if marker is None:
        marker = "o" if ys.shape[1] <= 15 else ""
    (line,) = ax.plot(
        x, mean, label=label, color=color, marker=marker or None, markersize=4
    )
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
