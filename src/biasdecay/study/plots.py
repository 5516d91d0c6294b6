"""The paper's figures as PNG files: sharpness vs accuracy, per-layer curves, decay decisions.

Every function draws on a fresh :class:`matplotlib.figure.Figure` with the Agg canvas and
never touches :mod:`matplotlib.pyplot`, so plotting needs no display, never changes the
backend of an interactive session that imports it (a notebook keeps its inline backend), and
leaves no figure registered anywhere. matplotlib is imported only when a function runs:
``import biasdecay`` works without it.

Each PNG is written to a temporary file beside its target and moved into place, so a report
never shows a half-written image, and parent directories are created. Values that cannot be
drawn (NaN, infinities, non-positive values on a log axis) are skipped, never fatal: figures
are made from runs that may have diverged.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biasdecay.atomic import write_bytes
from biasdecay.extras import import_extra
from biasdecay.study.stats import Correlation

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ScatterPanel",
    "curve_grid",
    "decision_heatmap",
    "paired_scatter",
    "sharpness_scatter",
]

DPI = 120
# Up to this many series a legend with their names beats a depth colorbar.
_MAX_LEGEND_SERIES = 6


@dataclass(frozen=True)
class ScatterPanel:
    """One measure's panel of :func:`sharpness_scatter`.

    Attributes:
        measure: axis label of the measure, e.g. ``"Tr(H)"``; the axis shows ``log <measure>``.
        x: the measure per run, not logged (the plot takes the natural log).
        y: test accuracy per run in [0, 1]; plotted in percent.
        labels: one short annotation per run, e.g. ``"bs 512"``.
        fit: the line and statistics of ``correlation(log(x), y)`` over the same runs, with
            ``y`` as a fraction (not percent); ``None`` draws the points only.
    """

    measure: str
    x: Sequence[float]
    y: Sequence[float]
    labels: Sequence[str]
    fit: Correlation | None = None


# --------------------------------------------------------------------------- infrastructure


def _matplotlib() -> Any:
    """The matplotlib module, or a MissingDependencyError that says how to install it."""
    return import_extra("matplotlib", "plot", "biasdecay plots")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    # Constrained layout keeps colorbars, legends and shared axes aligned, which tight_layout
    # does not.
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically and release it.

    Raises:
        FileWriteError: the file could not be written (it names ``path``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    # Rendered in memory, so the one atomic writer writes the bytes (and the figure is released
    # even when the disk is full).
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        fig.clear()
    write_bytes(path, buffer.getbuffer())
    return Path(path)


def _pairs(points: Sequence[tuple[float, float]], name: str) -> np.ndarray:
    """``points`` as a float array of shape (k, 2); k may be 0."""
    try:
        a = np.asarray(points, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a sequence of (x, y) pairs, shape (k, 2): {e}") from e
    if a.size == 0:
        return np.empty((0, 2))
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must be a sequence of (x, y) pairs, shape (k, 2), got {a.shape}")
    return a


def _drawable(a: np.ndarray, log: bool) -> np.ndarray:
    """Mask of values that can be placed on a linear (or, with ``log``, logarithmic) axis."""
    ok = np.isfinite(a)
    if log:
        ok &= a > 0
    return ok


def _note_hidden(ax: Any, hidden: int) -> None:
    if hidden:
        ax.text(
            0.98,
            0.02,
            f"{hidden} point(s) not shown",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.35",
        )


def _no_data(ax: Any, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.5")


# --------------------------------------------------------------------------- figures


def sharpness_scatter(
    panels: Sequence[ScatterPanel], path: str | os.PathLike[str], *, title: str
) -> Path:
    """Test accuracy against the log of each sharpness measure, one panel per measure.

    The paper's Figure 1: each point is a run, annotated with its label; when a panel has a
    fit its line is drawn and its R², τ and ρ are printed in the panel. Runs whose measure is
    non-positive or not finite (no log), or whose accuracy is not finite, are left out and
    counted in the panel as "k point(s) not shown".

    Args:
        panels: one :class:`ScatterPanel` per measure, drawn left to right.
        path: where the PNG goes; parent directories are created.
        title: the figure's title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``panels`` is empty, or a panel has no points, or its ``x``, ``y`` and
            ``labels`` differ in length.
    """
    _matplotlib()
    if len(panels) == 0:
        raise ValueError("panels is empty: expected at least one ScatterPanel")
    data = []
    for i, p in enumerate(panels):
        x = np.asarray(p.x, dtype=float).reshape(-1)
        y = np.asarray(p.y, dtype=float).reshape(-1)
        if x.size == 0 or x.size != y.size or len(p.labels) != x.size:
            raise ValueError(
                f"panels[{i}] ({p.measure!r}) must have x, y and labels of the same non-zero "
                f"length, got {x.size}, {y.size} and {len(p.labels)}"
            )
        data.append((x, y))

    fig = _figure(4.2 * len(panels) + 0.4, 4.0)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, p, (x, y) in zip(axes, panels, data, strict=True):
        shown = _drawable(x, log=True) & _drawable(y, log=False)
        lx = np.log(x[shown])
        acc = 100.0 * y[shown]
        ax.scatter(lx, acc, s=22, color="tab:blue", zorder=3)
        shown_labels = [lab for lab, s in zip(p.labels, shown, strict=True) if s]
        for u, v, label in zip(lx, acc, shown_labels, strict=True):
            ax.annotate(str(label), (u, v), xytext=(3, 3), textcoords="offset points", fontsize=6.5)
        panel_title = p.measure
        if p.fit is not None:
            if lx.size:
                line_x = np.linspace(lx.min(), lx.max(), 2)
                ax.plot(line_x, 100.0 * (p.fit.slope * line_x + p.fit.intercept), color="tab:red")
            # In the title rather than a text box, which would hide points in some corner.
            panel_title += "\n" + p.fit.describe()
        if not lx.size:
            _no_data(ax, "no plottable points")
        _note_hidden(ax, int(x.size - shown.sum()))
        ax.margins(0.08)
        ax.set_xlabel(f"log {p.measure}")
        ax.set_title(panel_title, fontsize=9.5)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(title)
    return _save(fig, path)


def curve_grid(
    grid: Mapping[str, Mapping[str, Mapping[str, Sequence[tuple[float, float]]]]],
    path: str | os.PathLike[str],
    *,
    title: str,
    x_label: str = "step",
    log_y: Mapping[str, bool] | None = None,
    legend_title: str = "layer depth: first → last",
) -> Path:
    """Per-layer curves: one row per quantity, one column per run or policy.

    ``grid[row][column][series]`` is a list of ``(x, y)`` points, e.g.
    ``grid["‖β_l‖"]["β decay"]["layer3.bias"] = [(step, value), ...]``. Series are layers in
    depth order and are coloured along viridis by their order of first appearance, so depth
    reads as colour; with more than a few series a single "layer depth" colorbar replaces the
    legend. Panels in a row share their y axis so that columns (policies) compare at a glance.
    A column missing from a row shows "no data".

    Args:
        grid: the curves, as above; rows top to bottom and columns left to right in the
            mappings' order (columns in order of first appearance over the rows).
        path: where the PNG goes; parent directories are created.
        title: the figure's title.
        x_label: label of the shared x quantity, shown under the bottom row.
        log_y: rows to draw on a log y scale (``{row: True}``); non-positive values are
            skipped there.
        legend_title: what the series are (their colour runs first → last along viridis).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``grid`` has no rows or no columns, or a series is not a sequence of
            ``(x, y)`` pairs.
    """
    _matplotlib()
    if len(grid) == 0:
        raise ValueError("grid is empty: expected grid[row][column][series] = [(x, y), ...]")
    rows = list(grid)
    columns: list[str] = []
    series_order: list[str] = []
    cells: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for r in rows:
        for c, cell in grid[r].items():
            if c not in columns:
                columns.append(c)
            cells[r, c] = {}
            for s, points in cell.items():
                if s not in series_order:
                    series_order.append(s)
                cells[r, c][s] = _pairs(points, f"grid[{r!r}][{c!r}][{s!r}]")
    if not columns:
        raise ValueError("grid has no columns: expected grid[row][column][series] = [(x, y), ...]")
    log_y = dict(log_y or {})

    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    # A line's colour is its depth; the top of viridis is too pale on white, so stop at 0.9.
    cmap = ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.9, 256)))
    depth = {s: i / max(1, len(series_order) - 1) for i, s in enumerate(series_order)}
    colour = {s: cmap(d) for s, d in depth.items()}

    fig = _figure(3.6 * len(columns) + 1.2, 2.8 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), len(columns), sharex=True, sharey="row", squeeze=False)
    for i, r in enumerate(rows):
        log = bool(log_y.get(r, False))
        for j, c in enumerate(columns):
            ax = axes[i, j]
            if i == 0:
                ax.set_title(c, fontsize=10)
            if j == 0:
                ax.set_ylabel(r)
            if i == len(rows) - 1:
                ax.set_xlabel(x_label)
            if (r, c) not in cells:
                _no_data(ax)
                continue
            drawn = 0
            for s, a in cells[r, c].items():
                ok = _drawable(a[:, 0], log=False) & _drawable(a[:, 1], log=log)
                if not ok.any():
                    continue
                # NaN, not deletion: a gap in the line shows where the values were unusable.
                ys = np.where(ok, a[:, 1], np.nan)
                ax.plot(a[:, 0], ys, color=colour[s], lw=1.2, label=s)
                drawn += 1
            if drawn == 0:
                _no_data(ax, "no drawable data")
            elif log:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)

    if 1 < len(series_order) <= _MAX_LEGEND_SERIES:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colour[s], lw=1.5) for s in series_order]
        fig.legend(
            handles,
            series_order,
            loc="upper left",
            bbox_to_anchor=(1.0, 0.95),
            fontsize=8,
            title=legend_title,
            title_fontsize=8,
        )
    elif len(series_order) > _MAX_LEGEND_SERIES:
        sm = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap)
        cbar = fig.colorbar(sm, ax=axes, shrink=0.6, aspect=30)
        cbar.set_ticks([0.0, 1.0], labels=["first", "last"])
        cbar.set_label(legend_title)
    fig.suptitle(title)
    return _save(fig, path)


def paired_scatter(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    *,
    title: str,
    x_label: str,
    y_label: str,
    log: bool = False,
) -> Path:
    """Scatter of ``(x, y)`` pairs with one colour per series.

    The paper's Figure 4 plots, per layer, the norm of γ_l against its connectivity sharpness
    C(γ_l), one colour per policy.

    Args:
        series: series name (e.g. a policy) -> its ``(x, y)`` points.
        path: where the PNG goes; parent directories are created.
        title: the figure's title.
        x_label: the x axis label.
        y_label: the y axis label.
        log: log scale on both axes; points with a non-positive coordinate are skipped.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``series`` is empty or a series is not a sequence of ``(x, y)`` pairs.
    """
    _matplotlib()
    if len(series) == 0:
        raise ValueError("series is empty: expected series[name] = [(x, y), ...]")
    data = {name: _pairs(points, f"series[{name!r}]") for name, points in series.items()}

    from matplotlib import colormaps

    palette = colormaps["tab10"]
    fig = _figure(5.6, 4.4)
    ax = fig.subplots()
    hidden = 0
    for k, (name, a) in enumerate(data.items()):
        ok = _drawable(a[:, 0], log) & _drawable(a[:, 1], log)
        hidden += int(a.shape[0] - ok.sum())
        ax.scatter(
            a[ok, 0],
            a[ok, 1],
            s=20,
            color=palette(k % palette.N),
            label=f"{name} ({int(ok.sum())})",
            alpha=0.85,
        )
    if hidden == sum(a.shape[0] for a in data.values()):
        _no_data(ax, "no plottable points")
    elif log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    _note_hidden(ax, hidden)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def decision_heatmap(
    steps: Sequence[int],
    layers: Sequence[str],
    ratio: Sequence[Sequence[float]],
    path: str | os.PathLike[str],
    *,
    title: str,
    threshold: float | None = None,
    decided: Sequence[Sequence[bool]] | None = None,
) -> Path:
    """The ratio r_l = C(β_l)/C(γ_l) per layer over training, and the decay decisions it drove.

    Layers run down the y axis (first layer on top), decision steps along x. Colour is
    r_l on a log scale: 0 is shown as the smallest positive ratio, +inf as the largest
    finite one, and NaN or negative values in grey. With ``threshold`` the decision
    threshold R is marked on the colorbar; with ``decided`` a second panel below shows which
    layers had their β decayed at each step.

    Args:
        steps: the training steps at which r_l was measured, length S.
        layers: layer names in depth order, length L.
        ratio: ``ratio[i][j]`` is r_l of ``layers[i]`` at ``steps[j]``, shape (L, S).
        path: where the PNG goes; parent directories are created.
        title: the figure's title.
        threshold: the decision threshold R, if any.
        decided: ``decided[i][j]`` is whether ``layers[i]``'s β was decayed at ``steps[j]``,
            shape (L, S).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``steps`` or ``layers`` is empty, or ``ratio`` or ``decided`` is not of
            shape (len(layers), len(steps)).
    """
    _matplotlib()
    n_steps, n_layers = len(steps), len(layers)
    if n_steps == 0:
        raise ValueError("steps is empty: expected at least one step")
    if n_layers == 0:
        raise ValueError("layers is empty: expected at least one layer")
    expected = (n_layers, n_steps)
    r = _grid(ratio, "ratio", expected, float)
    on = None if decided is None else _grid(decided, "decided", expected, bool)

    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.patches import Patch

    bad = np.isnan(r) | (r < 0)  # -inf included
    good = np.isfinite(r) & (r > 0)
    lo = float(r[good].min()) if good.any() else 1.0
    hi = float(r[good].max()) if good.any() else 1.0
    shown = np.where(r == 0, lo, np.where(r == np.inf, hi, r))
    shown = np.ma.masked_array(shown, mask=bad)
    vmin, vmax = lo, hi
    if threshold is not None and math.isfinite(threshold) and threshold > 0:
        # Keep R inside the colour range, so its mark shows where the data sit relative to it.
        vmin, vmax = min(vmin, threshold), max(vmax, threshold)
    if vmin == vmax:
        vmin, vmax = vmin / 10.0, vmax * 10.0

    cmap = colormaps["magma"].with_extremes(bad="0.75")
    # Beyond 60 layers the tick labels are thinned out, so the figure need not grow further.
    panel_h = max(2.2, 0.15 * min(n_layers, 60) + 1.0)
    fig = _figure(max(7.0, min(14.0, 0.25 * n_steps + 4.0)), panel_h * (1 if on is None else 2))
    axes = fig.subplots(1 if on is None else 2, 1, sharex=True, squeeze=False)[:, 0]

    im = axes[0].imshow(
        shown,
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        norm=LogNorm(vmin=vmin, vmax=vmax),
    )
    # A colorbar about 0.2 inch wide whatever the panel's height (the default scales with it).
    cbar = fig.colorbar(im, ax=axes[0], pad=0.02, aspect=max(12.0, panel_h / 0.2))
    cbar.set_label("r_l = C(β_l)/C(γ_l)")
    if threshold is not None and math.isfinite(threshold) and threshold > 0:
        cbar.ax.axhline(threshold, color="tab:cyan", lw=2.5)
        cbar.ax.text(
            -0.15,
            threshold,
            f"R = {threshold:g}",
            transform=cbar.ax.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=7,
            color="tab:blue",
        )
    axes[0].set_title("r_l per layer", loc="left")

    if on is not None:
        two = ListedColormap(["0.88", "tab:red"])
        axes[1].imshow(
            on.astype(int), aspect="auto", interpolation="nearest", cmap=two, vmin=0, vmax=1
        )
        label = (
            "β decayed (r_l ≥ R)" if threshold is None else f"β decayed (r_l ≥ R = {threshold:g})"
        )
        axes[1].legend(
            handles=[Patch(color="tab:red", label=label), Patch(color="0.88", label="not decayed")],
            # Above the panel, in place of a title, not beside it: a side legend would widen
            # the right margin of both panels (they stay aligned) and push the colorbar away.
            loc="lower left",
            bbox_to_anchor=(0.0, 1.0),
            ncol=2,
            fontsize=8,
            frameon=False,
            borderaxespad=0.2,
        )

    # Thin out tick labels so 50+ layers or hundreds of steps stay legible.
    y_every = max(1, math.ceil(n_layers / 60))
    x_every = max(1, math.ceil(n_steps / 12))
    y_font = 8 if n_layers <= 20 else 7 if n_layers <= 40 else 6
    for ax in axes:
        yt = np.arange(0, n_layers, y_every)
        ax.set_yticks(yt, labels=[str(layers[i]) for i in yt], fontsize=y_font)
        ax.set_ylabel("layer")
    xt = np.arange(0, n_steps, x_every)
    axes[-1].set_xticks(xt, labels=[_step_label(steps[j]) for j in xt], fontsize=8)
    axes[-1].set_xlabel("step")
    fig.suptitle(title)
    return _save(fig, path)


def _grid(values: Any, name: str, expected: tuple[int, int], dtype: type) -> np.ndarray:
    """``values`` as an array of ``expected`` shape (layers, steps), or a ValueError."""
    try:
        a = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{name} must have shape (len(layers), len(steps)) = {expected}, "
            f"but is ragged or not numeric: {e}"
        ) from e
    if a.shape != expected:
        raise ValueError(
            f"{name} must have shape (len(layers), len(steps)) = {expected}, got {a.shape}"
        )
    return a


def _step_label(step: Any) -> str:
    s = float(step)
    return str(int(s)) if s.is_integer() else f"{s:g}"
