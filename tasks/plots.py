"""Figures people look at (matplotlib, Agg backend): comparison bars, breakdown lines and heatmaps."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def comparison_bars(table: dict[str, Any]) -> plt.Figure:
    """One panel per metric column, one bar per component (error bars = std over seeds)."""
    cols = table["columns"]
    n = len(cols)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    labels = table["rows"]
    for ax, col in zip(axes.flat, cols):
        means = [table["cells"][r][col]["mean"] if col in table["cells"][r] else float("nan") for r in labels]
        stds = [table["cells"][r][col].get("std", 0.0) if col in table["cells"][r] else 0.0 for r in labels]
        colors = ["#888888" if r.startswith("baseline") else f"C{i % 10}" for i, r in enumerate(labels)]
        ax.bar(range(len(labels)), means, yerr=stds, color=colors, capsize=3)
        arrow = "higher is better" if table["higher_is_better"].get(col, True) else "lower is better"
        ax.set_title(f"{col}\n({arrow})", fontsize=9)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{table.get('title', 'comparison')}", fontsize=10)
    fig.tight_layout()
    return fig


def breakdown_figure(name: str, spec: list[str], rows: list[dict[str, Any]], title: str) -> plt.Figure:
    """``spec`` = ("line", x, y) or ("heatmap", x, y, value)."""
    kind = spec[0]
    if kind == "line":
        x, y = spec[1], spec[2]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([r[x] for r in rows], [r[y] for r in rows], marker="o")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_ylim(-0.02, 1.02) if y in ("accuracy", "recall") else None
        ax.grid(alpha=0.3)
    elif kind == "heatmap":
        x, y, value = spec[1], spec[2], spec[3]
        xs = sorted({r[x] for r in rows})
        ys = sorted({r[y] for r in rows})
        grid = [[float("nan")] * len(xs) for _ in ys]
        for r in rows:
            grid[ys.index(r[y])][xs.index(r[x])] = r[value]
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(xs), 1.0 + 0.45 * len(ys)))
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels([f"{v:g}" if isinstance(v, float) else v for v in xs], fontsize=7)
        ax.set_yticks(range(len(ys)))
        ax.set_yticklabels([f"{v:g}" if isinstance(v, float) else v for v in ys], fontsize=7)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        fig.colorbar(im, ax=ax, label=value)
    else:
        raise ValueError(f"unknown figure kind {kind!r} for breakdown {name}")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def delta_bars(table: dict[str, Any]) -> plt.Figure:
    """Deltas vs the baseline, one panel per metric column, error bars = 95% CI (green: better, red: worse,
    grey: the interval contains 0 or there is no interval)."""
    cols = table["columns"]
    rows = list(table.get("deltas", {}))
    n = max(len(cols), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 1.6 + 0.45 * max(len(rows), 2) * nrows),
                             squeeze=False)
    for ax, col in zip(axes.flat, cols):
        higher = table["higher_is_better"].get(col, True)
        ds = [table["deltas"][r].get(col) for r in rows]
        vals = [d["delta"] if d else float("nan") for d in ds]
        errs = [d["ci"] if d and d["ci"] is not None else 0.0 for d in ds]
        colors = []
        for d in ds:
            if not d or d["ci"] is None or abs(d["delta"]) <= d["ci"]:
                colors.append("#999999")
            else:
                colors.append("#2ca02c" if (d["delta"] > 0) == higher else "#d62728")
        ax.barh(range(len(rows)), vals, xerr=errs, color=colors, capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([r if "@" in r else f"{r} @{table['versions'].get(r, '')}" for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{col}: delta vs {table.get('baseline')}\n({'higher' if higher else 'lower'} is better)",
                     fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    fig.suptitle(f"{table.get('title', '')}: 95% CI across seeds", fontsize=10)
    fig.tight_layout()
    return fig


def attention_profile_figure(sink_mass: list[float], uniform: float, induction: list[list[float]]) -> plt.Figure:
    """Left: mean attention to position 0 per layer (dashed: uniform attention); right: induction score heatmap."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.bar(range(len(sink_mass)), sink_mass, color="C0")
    ax1.axhline(uniform, color="k", ls="--", lw=1, label="uniform attention")
    ax1.set_xlabel("layer")
    ax1.set_ylabel("mean attention to position 0")
    ax1.set_xticks(range(len(sink_mass)))
    ax1.legend(fontsize=7)
    im = ax2.imshow(induction, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax2.set_xlabel("head")
    ax2.set_ylabel("layer")
    ax2.set_xticks(range(len(induction[0])))
    ax2.set_yticks(range(len(induction)))
    ax2.set_title("induction score", fontsize=9)
    fig.colorbar(im, ax=ax2)
    fig.tight_layout()
    return fig


def head_heatmap(selection: dict[str, Any]) -> plt.Figure:
    """Layer x head grid of a head search's gains over the unpatched model (diverging colours centred on 0;
    selected heads boxed; blank = not a candidate)."""
    n_layers, n_heads = selection["n_layers"], selection["n_heads"]
    grid = [[float("nan")] * n_heads for _ in range(n_layers)]
    for r in selection["gains"]:
        grid[r["layer"]][r["head"]] = r["gain"]
    span = max((abs(r["gain"]) for r in selection["gains"]), default=0.0) or 1e-9
    fig, ax = plt.subplots(figsize=(max(4.5, 1.8 + 0.45 * n_heads), max(2.6, 1.4 + 0.4 * n_layers)))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu", vmin=-span, vmax=span)
    for layer, head in selection["heads"]:
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    what = "entropy decrease" if selection["objective"] == "entropy" else "accuracy gain"
    fig.colorbar(im, ax=ax, label="gain")
    ax.set_title(f"{selection['method']}: {what} per head vs unpatched\n{len(selection['heads'])} selected (boxed)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def ratio_curves(rows: list[dict[str, Any]], title: str) -> plt.Figure:
    """kv-sweep: the metric against the compression ratio, one line per press (rows: press, ratio, value)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, press in enumerate(dict.fromkeys(r["press"] for r in rows)):
        pts = sorted((r["ratio"], r["value"]) for r in rows if r["press"] == press)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=press, color=f"C{i % 10}")
    ax.set_xlabel("compression ratio (fraction of the prefill removed)")
    ax.set_ylabel(rows[0]["metric"] if rows else "")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def safe_name(text: str) -> str:
    """A file-name-safe version of a label."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:120]


def to_png(fig: plt.Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def close(fig: plt.Figure) -> None:
    plt.close(fig)
