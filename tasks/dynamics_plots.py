"""Figures of the training-dynamics flows (matplotlib, Agg backend): probe curves over training, sweep bars,
final values against the learning rate."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"sink1": "Sink_1 (%)", "alpha0": "alpha_0", "loss": "held-out loss", "max_attn_logit": "max attn logit",
          "log_z": "log Z"}


def _groups(results: list[dict[str, Any]], by: str, where: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if all(r["tags"].get(k) == v for k, v in where.items()):
            out[str(r["label"] if by == "label" else r["tags"].get(by))].append(r)
    return out


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def curves(results: list[dict[str, Any]], keys: list[str], by: str, where: dict[str, Any], title: str,
           log: bool = False) -> plt.Figure:
    """One panel per probe key; one line per group (mean over its runs, band = min..max)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (name, runs) in enumerate(sorted(_groups(results, by, where).items())):
            steps = sorted({row["step"] for r in runs for row in r["probes"]})
            rows = [[row.get(key) for r in runs for row in r["probes"] if row["step"] == s] for s in steps]
            keep = [(s, _finite(v)) for s, v in zip(steps, rows) if _finite(v)]
            if not keep:
                continue
            xs = [s for s, _ in keep]
            ax.plot(xs, [sum(v) / len(v) for _, v in keep], label=name, color=f"C{i % 10}")
            if any(len(v) > 1 for _, v in keep):
                ax.fill_between(xs, [min(v) for _, v in keep], [max(v) for _, v in keep], alpha=0.2,
                                color=f"C{i % 10}")
        ax.set_xlabel("step")
        ax.set_ylabel(LABELS.get(key, key))
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def train_curves(results: list[dict[str, Any]], by: str) -> plt.Figure:
    """Training loss (logged every few steps), mean over seeds per group."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, (name, runs) in enumerate(sorted(_groups(results, by, {}).items())):
        per_step: dict[int, list[float]] = defaultdict(list)
        for r in runs:
            for s, v in r["train_loss"]:
                per_step[s].append(v)
        xs = sorted(per_step)
        ax.plot(xs, [sum(per_step[s]) / len(per_step[s]) for s in xs], label=name, color=f"C{i % 10}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sweep_bars(results: list[dict[str, Any]], key: str, title: str) -> plt.Figure:
    """One panel per sweep: the final value at each swept setting."""
    sweeps = sorted({r["tags"]["sweep"] for r in results})
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4 * len(sweeps), 3.2), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        runs = sorted((r for r in results if r["tags"]["sweep"] == sweep), key=lambda r: r["tags"]["value"])
        ax.bar(range(len(runs)), [r["final"].get(key, math.nan) for r in runs], color="C0")
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels([f"{r['tags']['value']:g}" for r in runs], fontsize=8)
        ax.set_xlabel(sweep)
        ax.set_ylabel(LABELS.get(key, key))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def versus_lr(results: list[dict[str, Any]], key: str, ylabel: str, log: bool) -> plt.Figure:
    """Final value against LR: one panel per width, one line per (qk-LN, z-loss); diverged runs marked x."""
    widths = sorted({r["tags"]["width"] for r in results})
    fig, axes = plt.subplots(1, len(widths), figsize=(4.6 * len(widths), 3.6), squeeze=False)
    for ax, width in zip(axes[0], widths):
        settings = sorted({(r["tags"]["qkln"], r["tags"]["z"]) for r in results if r["tags"]["width"] == width})
        for i, (qk, z) in enumerate(settings):
            runs = [r for r in results if (r["tags"]["width"], r["tags"]["qkln"], r["tags"]["z"]) == (width, qk, z)]
            by_lr: dict[float, list[float]] = defaultdict(list)
            for r in runs:
                by_lr[r["tags"]["lr"]].append(r["final"].get(key, math.inf))
            lrs = sorted(by_lr)
            ys = [sum(_finite(by_lr[lr])) / len(_finite(by_lr[lr])) if _finite(by_lr[lr]) else math.nan
                  for lr in lrs]
            ax.plot(lrs, ys, marker="o", label=f"{'qk-LN' if qk else 'no qk-LN'}, z-loss {z:g}", color=f"C{i}")
            dead = [lr for lr in lrs if not _finite(by_lr[lr])]
            if dead:
                ax.scatter(dead, [min(_finite(ys) or [1.0])] * len(dead), marker="x", color=f"C{i}")
        ax.set_xscale("log")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(ylabel)
        ax.set_title(f"width {width}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
