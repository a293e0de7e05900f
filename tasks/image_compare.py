"""Seed-level comparison of component stacks in the generate-images and inpaint flows.

Per stack and metric: the mean over a seed's images (every prompt and source; NaN = not applicable, skipped) gives
one value per seed (a metric with no finite value, such as the +inf PSNR of an exact known region, is left
out); the stack's figure is the mean of those with a 95 % Student-t interval over seeds, and the
paired difference to the reference stack (``baseline`` when present, else the first) per seed gives Δ with its
interval. Same seeds = same initial noise, so the pairing removes the noise's share of the variance. This is the
statistic of bench/diffusion_claims.py, inside the flows, logged to the parent MLflow run as ``comparison.md`` /
``comparison.json`` and the metrics ``<stack>/delta/<metric>`` and ``<stack>/delta_lo|hi/<metric>``.
"""

from __future__ import annotations

import math
from typing import Any

from mlflow.entities import Metric
from prefect import task

from tasks.claims_stats import mean, t_interval
from tasks.tracking import RETRY, client, metric_key

SKIP = {"seconds_per_image"}  # wall time is reported per image in the summary, not compared per seed


def per_seed(records: list[dict[str, Any]], stack: str, metric: str, seeds: list[int]) -> list[float]:
    """The metric's mean over the stack's images of each seed (NaN when no image of that seed has a value)."""
    out = []
    for s in seeds:
        vals = [r["metrics"][metric] for r in records if r["stack"] == stack and r["seed"] == s
                and metric in r["metrics"] and not math.isnan(r["metrics"][metric])]
        out.append(mean(vals) if vals else math.nan)
    return out


def _stat(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if math.isfinite(v)]
    lo, hi = t_interval(vals) if len(vals) >= 2 else (math.nan, math.nan)
    return {"mean": mean(vals) if vals else math.nan, "ci95": [lo, hi], "per_seed": values}


def compare_over_seeds(records: list[dict[str, Any]]) -> dict[str, Any]:
    """{"reference", "seeds", "stacks": {stack: {metric: {"mean", "ci95", "per_seed", "delta": {...}}}}} (the
    reference stack has no "delta"); empty "stacks" with fewer than 2 seeds."""
    stacks = list(dict.fromkeys(r["stack"] for r in records))
    seeds = sorted({r["seed"] for r in records})
    ref = "baseline" if "baseline" in stacks else (stacks[0] if stacks else "")
    out: dict[str, Any] = {"reference": ref, "seeds": seeds, "stacks": {}}
    if len(seeds) < 2:
        return out
    metrics = [m for m in dict.fromkeys(k for r in records for k in r["metrics"]) if m not in SKIP]
    for stack in stacks:
        row = {}
        for m in metrics:
            vals = per_seed(records, stack, m, seeds)
            if not any(math.isfinite(v) for v in vals):  # not applicable, or +inf (an exact known region)
                continue
            row[m] = _stat(vals)
            if stack != ref:
                base = per_seed(records, ref, m, seeds)
                row[m]["delta"] = _stat([a - b for a, b in zip(vals, base)])
        out["stacks"][stack] = row
    return out


def comparison_markdown(comp: dict[str, Any]) -> str:
    """A table: one row per stack, one column per metric, "mean [lo, hi]" and "Δ mean [lo, hi]"."""
    if not comp["stacks"]:
        return f"(one seed: no interval over seeds; seeds {comp['seeds']})"
    cols = list(dict.fromkeys(m for row in comp["stacks"].values() for m in row))

    def cell(s: dict[str, Any]) -> str:
        text = f"{s['mean']:.3g} [{s['ci95'][0]:.3g}, {s['ci95'][1]:.3g}]"
        if "delta" in s:
            d = s["delta"]
            text += f" Δ{d['mean']:+.3g} [{d['ci95'][0]:+.3g}, {d['ci95'][1]:+.3g}]"
        return text

    lines = [f"95 % t intervals over {len(comp['seeds'])} seeds; Δ = paired difference to {comp['reference']!r}",
             "", "| stack | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for stack, row in comp["stacks"].items():
        lines.append(f"| {stack} | " + " | ".join(cell(row[c]) if c in row else "" for c in cols) + " |")
    return "\n".join(lines)


@task(**RETRY, task_run_name="compare stacks over seeds")
def log_comparison(parent: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """``compare_over_seeds`` logged to the parent run (module docstring); returns it."""
    comp = compare_over_seeds(records)
    c = client()
    c.log_dict(parent, comp, "comparison.json")
    c.log_text(parent, comparison_markdown(comp), "comparison.md")
    metrics = []
    for stack, row in comp["stacks"].items():
        for m, s in row.items():
            d = s.get("delta")
            for name, v in ((f"{stack}/delta/{m}", d and d["mean"]), (f"{stack}/delta_lo/{m}", d and d["ci95"][0]),
                            (f"{stack}/delta_hi/{m}", d and d["ci95"][1])):
                if v is not None and math.isfinite(v):
                    metrics.append(Metric(metric_key(name), float(v), 0, 0))
    for i in range(0, len(metrics), 900):
        c.log_batch(parent, metrics=metrics[i : i + 900])
    return comp
