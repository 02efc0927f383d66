"""Tests for policygrad.plotting on the non-interactive Agg backend."""

import matplotlib

matplotlib.use("Agg")

import matplotlib as mpl  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import policygrad as pg  # noqa: E402
from policygrad import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_rcparams():
    with mpl.rc_context():
        yield
    plt.close("all")


def test_set_style():
    plotting.set_style()
    assert mpl.rcParams["axes.grid"] is True
    assert mpl.rcParams["axes.spines.top"] is False
    assert mpl.rcParams["svg.hashsalt"] == "policygrad"
    colors = [c["color"] for c in mpl.rcParams["axes.prop_cycle"]]
    assert [c.lower() for c in colors] == [c.lower() for c in plotting.COLORS]
    assert len(set(plotting.COLORS)) == len(plotting.COLORS) == 8


@pytest.mark.parametrize("band", ["minmax", "std", "se"])
def test_seed_band(band):
    curves = np.array([[0.0, 1.0, 2.0], [2.0, 3.0, 6.0]])
    fig, ax = plt.subplots()
    line = plotting.seed_band(ax, [0, 1, 2], curves, label="run", band=band)
    assert np.allclose(line.get_ydata(), [1.0, 2.0, 4.0])
    assert line.get_label() == "run"
    (poly,) = ax.collections
    verts = poly.get_paths()[0].vertices
    half = {
        "std": curves.std(0),
        # two seeds: the standard error of the mean is |a - b| / 2
        "se": np.abs(curves[0] - curves[1]) / 2,
    }
    lo, hi = (
        (curves.min(0), curves.max(0))
        if band == "minmax"
        else (curves.mean(0) - half[band], curves.mean(0) + half[band])
    )
    # the band's outline passes through the lower and upper curves
    for x, y_lo, y_hi in zip([0, 1, 2], lo, hi, strict=True):
        ys = verts[np.isclose(verts[:, 0], x), 1]
        assert np.isclose(ys.min(), y_lo) and np.isclose(ys.max(), y_hi)


def test_seed_band_markers_on_sparse_curves():
    fig, ax = plt.subplots()
    sparse = plotting.seed_band(ax, np.arange(4), np.ones((3, 4)))
    dense = plotting.seed_band(ax, np.arange(40), np.ones((3, 40)))
    none = plotting.seed_band(ax, np.arange(4), np.ones((3, 4)), marker="")
    assert sparse.get_marker() == "o"
    assert dense.get_marker() in ("None", None, "")
    assert none.get_marker() in ("None", None, "")


def test_panels_fit_the_column():
    plotting.set_style()
    assert plt.rcParams["figure.dpi"] >= 150 and plt.rcParams["savefig.dpi"] >= 150
    fig, axes = plotting.panels(2, 2)
    assert axes.shape == (2, 2)
    assert fig.get_figwidth() == plotting.COLUMN_WIDTH
    fig, ax = plotting.panels(1, 1)
    assert fig.get_figwidth() < plotting.COLUMN_WIDTH
    for bad in [(1, 3), (0, 1), (1, 0)]:
        with pytest.raises(ValueError, match="two panels per row"):
            plotting.panels(*bad)
    with pytest.raises(ValueError, match="height"):
        plotting.panels(1, 2, height=0)


def test_band_text():
    assert plotting.band_text("minmax", 5) == "mean of 5 seeds, band min–max over seeds"
    assert "standard error" in plotting.band_text("se", 5)
    with pytest.raises(ValueError, match="band"):
        plotting.band_text("iqr", 5)
    with pytest.raises(ValueError, match="n_seeds"):
        plotting.band_text("se", 0)


def test_seed_band_validation():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="points per seed"):
        plotting.seed_band(ax, [0, 1, 2], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="two seeds"):
        plotting.seed_band(ax, [0, 1], [[1.0, 2.0]], band="se")
    with pytest.raises(ValueError, match="2-D"):
        plotting.seed_band(ax, [0, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="band"):
        plotting.seed_band(ax, [0, 1], [[1.0, 2.0]], band="iqr")


def test_loglog_with_slope():
    fig, ax = plt.subplots()
    ns = [1, 10, 100]
    line = plotting.loglog_with_slope(ax, ns, [1.0, 0.3, 0.1], label="est", slope=-0.5)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert line.get_label() == "est"
    ref = ax.get_lines()[1]
    assert np.allclose(ref.get_ydata(), [1.0, 10**-0.5, 0.1])
    assert ref.get_label() == "slope -0.5"
    fig, ax = plt.subplots()
    plotting.loglog_with_slope(ax, ns, [4.0, 0.4, 0.04], slope=-1.0, ref_label=False)
    assert np.allclose(ax.get_lines()[1].get_ydata(), [4.0, 0.4, 0.04])
    assert ax.get_lines()[1].get_label().startswith("_")  # no legend entry


@pytest.mark.parametrize("ns, values", [([1, 2, 3], [1.0, 2.0]), ([1], [1.0]), ([[1, 2], [3, 4]], [[1, 2], [3, 4]])])
def test_loglog_with_slope_validation(ns, values):
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="same length"):
        plotting.loglog_with_slope(ax, ns, values)


def test_two_factor_map():
    fig, ax = plt.subplots()
    entries = [("REINFORCE", 0.0, 0.0), ("PPO", 1.0, 2.0), ("GRPO", 2.0, 1.0)]
    out = plotting.two_factor_map(ax, entries, title="the map")
    assert out is ax
    assert [t.get_text() for t in ax.texts] == ["REINFORCE", "PPO", "GRPO"]
    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    assert np.allclose(offsets, [[0.0, 0.0], [1.0, 2.0], [2.0, 1.0]])
    assert ax.get_title() == "the map"
    assert "reward side" in ax.get_xlabel() and "trajectory side" in ax.get_ylabel()


def test_two_factor_map_rejects_malformed_entries():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError):
        plotting.two_factor_map(ax, [("PPO", 1.0)])


def test_close_all():
    plt.subplots()
    plotting.close_all()
    assert plt.get_fignums() == []
    assert pg.plotting is plotting
