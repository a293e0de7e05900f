"""Comparison tables: rows = components, columns = task/metric, mean (and std) over seeds."""

from __future__ import annotations

import statistics
from typing import Any

from prefect import task


@task(task_run_name="comparison table")
def comparison_table(results: list[dict[str, Any]], title: str = "comparison") -> dict[str, Any]:
    """Aggregate evaluation results into a component x metric table."""
    rows: list[str] = []
    columns: list[str] = []
    values: dict[str, dict[str, list[float]]] = {}
    higher: dict[str, bool] = {}
    versions: dict[str, str] = {}
    for r in results:
        row = r["component"]["label"]
        versions[row] = r["component"]["version"]
        if row not in rows:
            rows.append(row)
        for metric, value in r["metrics"].items():
            if metric not in r["higher_is_better"] or metric.startswith("n_"):
                continue
            col = f"{r['benchmark']['name']}/{metric}"
            if col not in columns:
                columns.append(col)
            higher[col] = r["higher_is_better"][metric]
            values.setdefault(row, {}).setdefault(col, []).append(float(value))
    cells = {
        row: {
            col: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}
            for col, v in values.get(row, {}).items()
        }
        for row in rows
    }
    return {"title": title, "rows": rows, "columns": columns, "cells": cells, "higher_is_better": higher,
            "versions": versions}


def to_markdown(table: dict[str, Any]) -> str:
    """Render the table; the best value per column is bold, deltas vs baseline in parentheses."""
    cols = table["columns"]
    base = next((r for r in table["rows"] if r.startswith("baseline")), None)
    header = "| component | version | " + " | ".join(cols) + " |"
    lines = [header, "|" + "---|" * (len(cols) + 2)]
    best: dict[str, float] = {}
    for col in cols:
        vals = [table["cells"][r][col]["mean"] for r in table["rows"] if col in table["cells"][r]]
        if vals:
            best[col] = max(vals) if table["higher_is_better"][col] else min(vals)
    for row in table["rows"]:
        cells = []
        for col in cols:
            c = table["cells"][row].get(col)
            if c is None:
                cells.append("-")
                continue
            text = f"{c['mean']:.4g}" + (f" ± {c['std']:.2g}" if c["n"] > 1 else "")
            if base and row != base and col in table["cells"][base]:
                delta = c["mean"] - table["cells"][base][col]["mean"]
                text += f" ({delta:+.3g})"
            if c["mean"] == best.get(col) and len(table["rows"]) > 1:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {row} | {table['versions'].get(row, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_csv_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for row in table["rows"]:
        for col, c in table["cells"][row].items():
            out.append({"component": row, "version": table["versions"].get(row, ""), "metric": col, **c})
    return out
