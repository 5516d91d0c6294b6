"""Figures: each writes a readable PNG atomically, survives bad values, rejects bad shapes."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from biasdecay.study import plots  # noqa: E402
from biasdecay.study.plots import (  # noqa: E402
    ScatterPanel,
    curve_grid,
    decision_heatmap,
    paired_scatter,
    sharpness_scatter,
)
from biasdecay.study.stats import correlation  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_side=150):
    """A complete PNG that reads back, and nothing else (no temporary file) beside it."""
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= min_side and image.shape[1] >= min_side
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    return image


def panel(measure="Tr(H)", n=6, fit=True, seed=0):
    rng = np.random.default_rng(seed)
    x = np.exp(rng.normal(2.0, 1.0, n))
    y = 0.9 - 0.02 * np.log(x) + rng.normal(0, 0.005, n)
    return ScatterPanel(
        measure=measure,
        x=x.tolist(),
        y=y.tolist(),
        labels=[f"bs {2 ** (6 + i)}" for i in range(n)],
        fit=correlation(np.log(x), y) if fit else None,
    )


def layers(n, steps=8, scale=1.0):
    return {
        f"layer{i}.bias": [(float(s), scale * (i + 1) * math.exp(-s / 4)) for s in range(steps)]
        for i in range(n)
    }


# --------------------------------------------------------------------------- sharpness_scatter


def test_sharpness_scatter_writes_png_and_creates_parents(tmp_path):
    out = tmp_path / "figs" / "fig1" / "scatter.png"
    got = sharpness_scatter(
        [panel("Tr(H)"), panel("C(θ)", fit=False, seed=1)], str(out), title="Figure 1"
    )
    assert got == out
    image = assert_png(out)
    assert image.shape[1] > image.shape[0]  # panels side by side


def test_sharpness_scatter_skips_points_without_a_log(tmp_path):
    p = panel(n=5)
    x = list(p.x)
    x[0], x[1], x[2] = 0.0, -1.0, math.nan
    y = list(p.y)
    y[3] = math.inf
    partial = ScatterPanel(p.measure, x, y, p.labels, p.fit)
    nothing = ScatterPanel("λ_max", [0.0, math.inf], [0.5, 0.6], ["a", "b"], None)
    assert_png(sharpness_scatter([partial, nothing], tmp_path / "s.png", title="t"))


def test_sharpness_scatter_replaces_an_existing_file(tmp_path):
    out = tmp_path / "s.png"
    out.write_bytes(b"old")
    sharpness_scatter([panel()], out, title="t")
    assert_png(out)


@pytest.mark.parametrize(
    ("panels", "match"),
    [
        ([], "panels is empty"),
        ([ScatterPanel("m", [1.0, 2.0], [0.5], ["a", "b"], None)], r"panels\[0\].*2, 1 and 2"),
        ([ScatterPanel("m", [1.0], [0.5], [], None)], r"panels\[0\].*1, 1 and 0"),
        ([ScatterPanel("m", [], [], [], None)], r"panels\[0\].*non-zero"),
    ],
)
def test_sharpness_scatter_rejects_bad_panels(tmp_path, panels, match):
    with pytest.raises(ValueError, match=match):
        sharpness_scatter(panels, tmp_path / "s.png", title="t")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- curve_grid


def test_curve_grid_many_layers_missing_cell_and_log_row(tmp_path):
    norm = {"no bias decay": layers(20), "β decay": layers(20, scale=0.5)}
    sharp = layers(20)
    sharp["layer0.bias"] = [(0.0, 0.0), (1.0, -1.0), (2.0, math.nan), (3.0, math.inf), (4.0, 2.0)]
    grid = {"‖β_l‖": norm, "C_m(β_l)": {"β decay": sharp}}
    out = curve_grid(grid, tmp_path / "g.png", title="Figure 3", log_y={"C_m(β_l)": True})
    image = assert_png(out)
    assert image.shape[0] > 300


def test_curve_grid_few_layers_and_undrawable_cells(tmp_path):
    grid = {
        "‖β_l‖": {"a": layers(3), "b": {"layer0.bias": []}},
        "ratio": {"a": {"layer0.bias": [(0.0, -1.0), (1.0, 0.0)]}, "b": layers(1)},
    }
    assert_png(curve_grid(grid, tmp_path / "g.png", title="t", x_label="epoch", log_y={"ratio": 1}))


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ({}, "grid is empty"),
        ({"row": {}}, "grid has no columns"),
        ({"row": {"col": {"s": [(1.0, 2.0, 3.0)]}}}, r"grid\['row'\]\['col'\]\['s'\].*\(k, 2\)"),
        ({"row": {"col": {"s": [1.0, 2.0]}}}, r"grid\['row'\]\['col'\]\['s'\].*\(k, 2\)"),
        ({"row": {"col": {"s": [(1.0, 2.0), (3.0,)]}}}, r"grid\['row'\]\['col'\]\['s'\]"),
    ],
)
def test_curve_grid_rejects_bad_grids(tmp_path, grid, match):
    with pytest.raises(ValueError, match=match):
        curve_grid(grid, tmp_path / "g.png", title="t")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- paired_scatter


@pytest.mark.parametrize("log", [False, True])
def test_paired_scatter_with_unplottable_points(tmp_path, log):
    rng = np.random.default_rng(0)
    series = {
        "no bias decay": rng.random((10, 2)).tolist() + [(0.0, 1.0), (math.nan, 2.0)],
        "β decay": (10 * rng.random((10, 2))).tolist() + [(1.0, math.inf), (-1.0, -2.0)],
        "empty": [],
    }
    out = paired_scatter(
        series, tmp_path / "p.png", title="Figure 4", x_label="‖γ_l‖", y_label="C(γ_l)", log=log
    )
    assert_png(out)


def test_paired_scatter_nothing_plottable(tmp_path):
    out = paired_scatter(
        {"a": [(0.0, 0.0)]}, tmp_path / "p.png", title="t", x_label="x", y_label="y", log=True
    )
    assert_png(out)


@pytest.mark.parametrize(
    ("series", "match"),
    [({}, "series is empty"), ({"a": [(1.0, 2.0)], "b": [[1.0, 2.0, 3.0]]}, r"series\['b'\]")],
)
def test_paired_scatter_rejects_bad_series(tmp_path, series, match):
    with pytest.raises(ValueError, match=match):
        paired_scatter(series, tmp_path / "p.png", title="t", x_label="x", y_label="y")


# --------------------------------------------------------------------------- decision_heatmap


def test_decision_heatmap_fifty_layers_with_odd_values(tmp_path):
    rng = np.random.default_rng(0)
    n_layers, n_steps = 50, 30
    ratio = np.exp(rng.normal(0.0, 2.0, (n_layers, n_steps)))
    ratio[0, 0], ratio[1, 1], ratio[2, 2], ratio[3, 3], ratio[4, 4] = 0, np.inf, np.nan, -1, -np.inf
    out = decision_heatmap(
        [200 * j for j in range(n_steps)],
        [f"blocks.{i}.attn.proj.bias" for i in range(n_layers)],
        ratio.tolist(),
        tmp_path / "h.png",
        title="Adaptive β decay",
        threshold=2.0,
        decided=(ratio >= 2.0).tolist(),
    )
    image = assert_png(out)
    assert image.shape[0] > image.shape[1]  # two tall panels, one row per layer


@pytest.mark.parametrize(
    "ratio",
    [
        [[math.nan, math.nan]],
        [[0.0, math.inf]],
        [[0.0, 0.0]],
        [[3.0, 3.0]],
    ],
)
def test_decision_heatmap_degenerate_values(tmp_path, ratio):
    out = decision_heatmap(
        [0, 100], ["only.bias"], ratio, tmp_path / "h.png", title="t", threshold=1.0
    )
    assert_png(out, min_side=100)


def test_decision_heatmap_threshold_outside_data_and_non_integer_steps(tmp_path):
    out = decision_heatmap(
        [0.5, 1.5, 2.5],
        ["a", "b"],
        [[0.1, 0.2, 0.3], [0.2, 0.3, 0.4]],
        tmp_path / "h.png",
        title="t",
        threshold=100.0,
        decided=[[False] * 3, [False] * 3],
    )
    assert_png(out, min_side=100)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": []}, "steps is empty"),
        ({"layers": []}, "layers is empty"),
        ({"ratio": [[1.0, 2.0, 3.0]]}, r"ratio must have shape .*\(2, 3\), got \(1, 3\)"),
        ({"ratio": [[1.0, 2.0], [1.0, 2.0]]}, r"ratio must have shape .*\(2, 3\), got \(2, 2\)"),
        ({"ratio": [[1.0, 2.0, 3.0], [1.0]]}, r"ratio must have shape .*\(2, 3\).*ragged"),
        ({"decided": [[True, False, True]]}, r"decided must have shape .*\(2, 3\)"),
    ],
)
def test_decision_heatmap_rejects_bad_shapes(tmp_path, kwargs, match):
    args = {
        "steps": [0, 1, 2],
        "layers": ["a", "b"],
        "ratio": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
        "decided": None,
    } | kwargs
    with pytest.raises(ValueError, match=match):
        decision_heatmap(
            args["steps"],
            args["layers"],
            args["ratio"],
            tmp_path / "h.png",
            title="t",
            decided=args["decided"],
        )
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- infrastructure


def test_failed_save_leaves_no_temporary_file_and_keeps_the_old_figure(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    out = tmp_path / "s.png"
    out.write_bytes(b"previous figure")

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        sharpness_scatter([panel()], out, title="t")
    assert out.read_bytes() == b"previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'biasdecay\[plot\]'"):
        paired_scatter({"a": [(1.0, 2.0)]}, tmp_path / "p.png", title="t", x_label="x", y_label="y")


def test_importing_plots_does_not_import_matplotlib():
    code = (
        "import sys, biasdecay, biasdecay.study.plots, biasdecay.study.stats\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plotting_never_uses_pyplot(tmp_path):
    # pyplot would register figures globally and could switch an interactive session's backend.
    assert "pyplot" not in plots.__dict__
    code = (
        "import sys\n"
        "from biasdecay.study.plots import paired_scatter\n"
        f"paired_scatter({{'a': [(1.0, 2.0)]}}, {str(tmp_path / 'p.png')!r}, title='t',"
        " x_label='x', y_label='y')\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert_png(tmp_path / "p.png", min_side=100)
