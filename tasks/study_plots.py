"""Figure helpers of the study flows (matplotlib, Agg): PNG bytes, line panels with error bars, heatmap grids."""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def png(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes (and closed)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def panels(n: int, ncols: int = 3, size: tuple[float, float] = (4.2, 3.2)) -> tuple[plt.Figure, list[Any]]:
    """A figure with ``n`` axes in a grid (unused cells hidden)."""
    ncols = max(1, min(n, ncols))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def heatmap_grid(cells: Sequence[Sequence[tuple[str, Any]]], title: str, scale: float = 2.0) -> plt.Figure:
    """Rows of (title, matrix) heatmaps on a diverging map centred at 0, each cell with its own colour bar."""
    nrows, ncols = len(cells), max(len(r) for r in cells)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * 1.35 * ncols, scale * nrows + 0.4), squeeze=False)
    for i, row in enumerate(cells):
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(row):
                ax.axis("off")
                continue
            name, mat = row[j]
            m = np.atleast_2d(np.asarray(mat, dtype=float))
            lim = float(np.abs(m).max()) or 1.0
            im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
            ax.set_title(name, fontsize=8)
            ax.set_xticks(range(m.shape[1]))
            ax.set_yticks(range(m.shape[0]))
            ax.tick_params(labelsize=6)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    return fig


def errorbar_lines(ax: Any, x: Sequence[float], series: dict[str, tuple[Sequence[float], Sequence[float]]],
                   xlabel: str, ylabel: str, title: str = "") -> None:
    """One line per series with symmetric error bars (NaN bars are drawn as none)."""
    for i, (name, (mean, err)) in enumerate(series.items()):
        err = [0.0 if e != e else e for e in err]
        ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, label=name, color=f"C{i}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def curve(ax: Any, points: Sequence[Sequence[float]], label: str, color: str | None = None, **kw: Any) -> None:
    """Plot ``[[step, value], ...]``."""
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=label, color=color, **kw)
