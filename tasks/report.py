"""Comparison tables: rows = components, columns = task/metric, mean (std, 95% CI) over seeds; the cross-run report
(``attnflow report``): the same table built from MLflow runs, with deltas vs the baseline and their confidence
intervals, rendered as Markdown and HTML."""

from __future__ import annotations

import base64
import html
import math
import re
import statistics
from collections import defaultdict
from typing import Any

from prefect import task


#: what ``±`` is in a comparison table (``spread``); a report's ``±`` is a 95% confidence interval instead
SPREAD_SEEDS = "standard deviation over seeds"


@task(task_run_name="comparison table")
def comparison_table(results: list[dict[str, Any]], title: str = "comparison",
                     spread: str = SPREAD_SEEDS) -> dict[str, Any]:
    """Aggregate evaluation results into a component x metric table; ``spread`` says what the cells' ``std`` is
    computed over (printed as the table's caption)."""
    rows: list[str] = []
    columns: list[str] = []
    values: dict[str, dict[str, list[float]]] = {}
    higher: dict[str, bool] = {}
    versions: dict[str, str] = {}
    variants: dict[str, set[str]] = defaultdict(set)
    for r in results:
        variants[r["benchmark"]["name"]].add(task_column(r["benchmark"]))
    for r in results:
        row = r["component"]["label"]
        versions[row] = r["component"]["version"]
        if row not in rows:
            rows.append(row)
        for metric, value in r["metrics"].items():
            if metric not in r["higher_is_better"] or metric.startswith("n_"):
                continue
            name = r["benchmark"]["name"]  # variants of one benchmark (n_pairs=8 / 16) get a column each
            col = f"{task_column(r['benchmark']) if len(variants[name]) > 1 else name}/{metric}"
            if col not in columns:
                columns.append(col)
            higher[col] = r["higher_is_better"][metric]
            values.setdefault(row, {}).setdefault(col, []).append(float(value))
    cells = {row: {col: summarize(v) for col, v in values.get(row, {}).items()} for row in rows}
    return {"title": title, "rows": rows, "columns": columns, "cells": cells, "higher_is_better": higher,
            "versions": versions, "spread": spread}


def task_column(bench: dict[str, Any]) -> str:
    """A benchmark's label without its data seed (results over seeds share a column and are averaged)."""
    label = re.sub(r"(?<=[(, ])seed=-?\d+(, )?", "", bench.get("label", bench["name"]))  # not data_seed=...
    return label.replace(", )", ")").replace("()", "")


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
    if any(c["n"] > 1 for r in table["cells"].values() for c in r.values()):
        lines += ["", f"± = {table.get('spread', SPREAD_SEEDS)}; (±x) = difference from the baseline row."]
    return "\n".join(lines)


def log_table(text: str) -> None:
    """Log a result table to the flow run's log (Prefect UI, a worker's console) marked as a table: ``attnflow``
    commands print their own, fitted to the terminal, and leave this one to the log file."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().info(text, extra={"attnflow_table": True})
    except MissingContextError:  # called outside a flow run
        print(text)


def log_run_link(run_id: str, experiment: str) -> None:
    """Log ``MLflow run: <id> (experiment '<name>')`` to the flow run's log (Prefect UI, a worker's console), marked
    as a link: ``attnflow`` commands print their own link to the MLflow runs table instead, so it shows once."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    text = f"MLflow run: {run_id} (experiment '{experiment}')"
    try:
        get_run_logger().info(text, extra={"attnflow_link": True})
    except MissingContextError:  # called outside a flow run
        print(text)


def to_csv_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for row in table["rows"]:
        for col, c in table["cells"][row].items():
            out.append({"component": row, "version": table["versions"].get(row, ""), "metric": col, **c})
    return out


# ------------------------------------------------------------------------------------------ statistics across seeds


def t_quantile(df: float, level: float = 0.95) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


def summarize(values: list[float]) -> dict[str, Any]:
    """mean, std, n and the half-width of the 95% t confidence interval of the mean (0 when n = 1)."""
    n = len(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    ci = t_quantile(n - 1) * std / math.sqrt(n) if n > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": n, "ci": ci}


def delta(values: dict[Any, float], base: dict[Any, float]) -> dict[str, Any] | None:
    """Difference of means vs the baseline with a 95% CI: paired by seed when both have the same >= 2 seeds,
    otherwise Welch's interval; ``ci`` is None when either side has a single value."""
    if not values or not base:
        return None
    common = sorted(set(values) & set(base), key=str)
    if len(common) >= 2 and set(values) == set(base):
        diffs = [values[s] - base[s] for s in common]
        d = summarize(diffs)
        return {"delta": d["mean"], "ci": d["ci"], "n": d["n"], "paired": True}
    x, b = list(values.values()), list(base.values())
    d = statistics.fmean(x) - statistics.fmean(b)
    if len(x) < 2 or len(b) < 2:
        return {"delta": d, "ci": None, "n": min(len(x), len(b)), "paired": False}
    vx, vb = statistics.variance(x) / len(x), statistics.variance(b) / len(b)
    se = math.sqrt(vx + vb)
    if se == 0:
        return {"delta": d, "ci": 0.0, "n": min(len(x), len(b)), "paired": False}
    df = (vx + vb) ** 2 / (vx ** 2 / (len(x) - 1) + vb ** 2 / (len(b) - 1))
    return {"delta": d, "ci": t_quantile(df) * se, "n": min(len(x), len(b)), "paired": False}


# ------------------------------------------------------------------------------------------ the cross-run report


def seedless(task_label: str) -> str:
    """``kv_retrieval(n_examples=8, seed=1)`` -> ``kv_retrieval(n_examples=8)`` (seeds are the replicates)."""
    out = re.sub(r"(,\s*)?\bseed=[^,)]*", "", task_label).replace("(, ", "(")
    return out.replace("()", "")


def flag_disagreements(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs that share one fingerprint (``identity``: weights, component, task, data) must agree; each record whose
    metrics differ from another run of its fingerprint gets ``disagreements``: [{run_id, metrics}] of the others.
    Returns the records flagged."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("identity"):
            groups[r["identity"]].append(r)
    flagged = []
    for group in groups.values():
        for r in group:
            others = [{"run_id": o["run_id"], "metrics": o["metrics"]} for o in group
                      if o is not r and not _same_metrics(o["metrics"], r["metrics"])]
            if others:
                r["disagreements"] = others
                flagged.append(r)
    return flagged


def _same_metrics(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12)
                                        or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@task(task_run_name="report tables")
def report_tables(records: list[dict[str, Any]], baseline: str = "baseline") -> list[dict[str, Any]]:
    """One table per model: rows = component (split by version, and by code fingerprint when the code changed
    without a version bump), columns = task/metric; cells with mean and 95% CI across seeds, deltas vs the
    baseline row. ``records`` come from ``tasks.tracking.evaluation_runs``."""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_model[r["model"]].append(r)
    tables = []
    for model, recs in by_model.items():
        identities = defaultdict(set)
        for r in recs:
            identities[r["component"]].add((r["version"], r["code_fingerprint"]))
        versions_of = defaultdict(set)
        for label, ids in identities.items():
            for v, _ in ids:
                versions_of[label].add(v)
        results, values, names, disagreements = [], defaultdict(dict), {}, []
        for r in sorted(recs, key=lambda r: (r["start_time"], r["run_id"])):
            row = r["component"]
            if len(identities[row]) > 1:
                row += f" @{r['version']}"
                if len(identities[r["component"]]) > len(versions_of[r["component"]]):
                    row += f"+{r['code_fingerprint'][:6]}"
            names[row] = r["name"]
            for other in r.get("disagreements", ()):
                disagreements.append({"component": row, "task": r["task"], "seed": r["seed"], "run_id": r["run_id"],
                                      "metrics": r["metrics"], "other_run_id": other["run_id"],
                                      "other_metrics": other["metrics"]})
            results.append({"component": {"label": row, "version": r["version"]}, "benchmark": {"name": r["task"]},
                            "metrics": r["metrics"], "higher_is_better": r["higher_is_better"]})
            for metric, value in r["metrics"].items():
                values[(row, f"{r['task']}/{metric}")][r["seed"]] = value
        table = comparison_table.fn(results, title=f"{model}")
        table["rows"].sort(key=lambda row: (names[row] != baseline, row))  # baseline first, then by label/version
        table["model"] = model
        table["runs"] = len(recs)
        table["disagreements"] = disagreements
        table["seeds"] = sorted({r["seed"] for r in recs}, key=str)
        base = next((row for row in table["rows"] if names.get(row) == baseline), None)
        table["baseline"] = base
        table["deltas"] = {
            row: {col: delta(values[(row, col)], values[(base, col)]) for col in table["columns"]
                  if (row, col) in values and (base, col) in values}
            for row in table["rows"] if base and row != base
        }
        tables.append(table)
    return tables


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _cell_text(c: dict[str, Any]) -> str:
    return _fmt(c["mean"]) + (f" ± {c['ci']:.2g}" if c["n"] > 1 else "") + f" (n={c['n']})"


def _delta_text(d: dict[str, Any] | None, higher_is_better: bool) -> str:
    if d is None:
        return "-"
    if d["ci"] is None:
        return f"{d['delta']:+.3g} (n=1, no CI)"
    lo, hi = d["delta"] - d["ci"], d["delta"] + d["ci"]
    mark = ""
    if lo > 0 or hi < 0:
        mark = " ▲" if (lo > 0) == higher_is_better else " ▼"
    return f"{d['delta']:+.3g} [{lo:+.3g}, {hi:+.3g}]{mark}"


def _arrow(table: dict[str, Any], col: str) -> str:
    return "↑" if table["higher_is_better"].get(col, True) else "↓"


def report_markdown(experiment: str, tables: list[dict[str, Any]], figures: dict[str, str] | None = None) -> str:
    """The report as Markdown: per model, the values (mean ± 95% CI) and the deltas vs baseline."""
    lines = [f"# attnflow report: experiment `{experiment}`", ""]
    if not tables:
        return "\n".join(lines + ["No evaluation runs found."])
    for t in tables:
        cols = t["columns"]
        lines += [f"## model `{t['model']}`", "",
                  f"{t['runs']} evaluation runs; seeds {', '.join(map(str, t['seeds']))}; "
                  "values are mean ± half-width of the 95% t-interval across seeds.", "",
                  "| component | version | " + " | ".join(f"{c} {_arrow(t, c)}" for c in cols) + " |",
                  "|" + "---|" * (len(cols) + 2)]
        for row in t["rows"]:
            cells = [_cell_text(t["cells"][row][c]) if c in t["cells"][row] else "-" for c in cols]
            lines.append(f"| {row} | {t['versions'].get(row, '')} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += _disagreement_lines(t)
        if t["baseline"] is None:
            lines += ["No baseline row in these runs: deltas omitted.", ""]
        elif t["deltas"]:
            lines += [f"Deltas vs `{t['baseline']}` (95% CI; paired by seed when both rows have the same seeds; "
                      "▲ better / ▼ worse when the interval excludes 0):", "",
                      "| component | version | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
            for row, ds in t["deltas"].items():
                cells = [_delta_text(ds.get(c), t["higher_is_better"].get(c, True)) for c in cols]
                lines.append(f"| {row} | {t['versions'].get(row, '')} | " + " | ".join(cells) + " |")
            lines.append("")
    for name in figures or {}:
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def _disagreement_lines(t: dict[str, Any]) -> list[str]:
    """A warning per run whose metrics differ from another run of the same fingerprint (should be identical)."""
    if not t.get("disagreements"):
        return []
    lines = ["**Warning: runs with one fingerprint (same weights, component, task and data) report different "
             "metrics; a stored result was corrupted or the computation is not deterministic. Check these before "
             "trusting the table:**", ""]
    for d in t["disagreements"]:
        diff = ", ".join(f"{k} {_fmt(v)} vs {_fmt(d['other_metrics'].get(k, math.nan))}"
                         for k, v in d["metrics"].items() if d["other_metrics"].get(k) != v)
        lines.append(f"- ⚠ {d['component']} on {d['task']} (seed {d['seed']}): run `{d['run_id']}` vs "
                     f"`{d['other_run_id']}`: {diff}")
    return lines + [""]


def report_html(experiment: str, tables: list[dict[str, Any]], figures: dict[str, bytes]) -> str:
    """A self-contained HTML page (tables + figures inlined) that MLflow's artifact view renders."""
    parts = [f"<h1>attnflow report: experiment <code>{html.escape(experiment)}</code></h1>"]
    for t in tables:
        cols = t["columns"]
        parts.append(f"<h2>model <code>{html.escape(t['model'])}</code></h2><p>{t['runs']} evaluation runs; seeds "
                     f"{html.escape(', '.join(map(str, t['seeds'])))}; mean ± 95% CI across seeds.</p>")
        head = "".join(f"<th>{html.escape(c)} {_arrow(t, c)}</th>" for c in cols)
        rows = "".join(
            f"<tr><td>{html.escape(r)}</td><td>{html.escape(t['versions'].get(r, ''))}</td>"
            + "".join(f"<td>{html.escape(_cell_text(t['cells'][r][c]) if c in t['cells'][r] else '-')}</td>"
                      for c in cols)
            + "</tr>" for r in t["rows"])
        parts.append(f"<table><tr><th>component</th><th>version</th>{head}</tr>{rows}</table>")
        warn = _disagreement_lines(t)
        if warn:
            parts.append("<p><strong>" + html.escape(warn[0].strip("*")) + "</strong></p><ul>"
                         + "".join(f"<li>{html.escape(w[2:])}</li>" for w in warn[2:-1]) + "</ul>")
        if t["deltas"]:
            rows = "".join(
                f"<tr><td>{html.escape(r)}</td><td>{html.escape(t['versions'].get(r, ''))}</td>"
                + "".join(f"<td>{html.escape(_delta_text(ds.get(c), t['higher_is_better'].get(c, True)))}</td>"
                          for c in cols) + "</tr>" for r, ds in t["deltas"].items())
            parts.append(f"<h3>Deltas vs <code>{html.escape(t['baseline'])}</code> (95% CI)</h3>"
                         f"<table><tr><th>component</th><th>version</th>"
                         + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + f"</tr>{rows}</table>")
    for name, png in figures.items():
        parts.append(f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" '
                     f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:0.5em 0 1.5em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}")
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{style}</style></head><body>" \
           + "".join(parts) + "</body></html>"


def primary_columns(table: dict[str, Any]) -> dict[str, Any]:
    """The table narrowed to each benchmark's primary metric (accuracy, ppl, ...), columns named by the benchmark:
    a summary that fits a terminal (every metric stays in the full table and in MLflow)."""
    import registry

    keep: dict[str, str] = {}
    for col in table["columns"]:
        task, _, metric = col.rpartition("/")
        name = task.split("(")[0]
        try:
            primary = registry.get(name).cls.primary_metric
        except LookupError:
            continue
        if metric == primary:
            keep[col] = task
    return {**table, "columns": list(keep.values()),
            "cells": {r: {keep[c]: v for c, v in cells.items() if c in keep} for r, cells in table["cells"].items()},
            "higher_is_better": {keep[c]: v for c, v in table["higher_is_better"].items() if c in keep}}
