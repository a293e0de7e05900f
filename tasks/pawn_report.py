"""Detection results to MLflow: one run per detector (tags, params, metrics, per-domain/per-generator metrics,
FPR per human source and per group as MLflow tables and figures, training curves, ROC curve and score histogram
figures, test scores as Parquet, the fitted state, the reasons for metrics left out) and a parent run with the
comparison table, all ROC curves in one figure and the feature-cache manifests."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from prefect import task  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from tasks import tracking  # noqa: E402
from tasks.io import write_rows  # noqa: E402
from tasks.pawn_metrics import finite  # noqa: E402
from tasks.runs import ended  # noqa: E402

COLUMNS = ("auroc", "macro_f1", "macro_recall", "recall_at_1fpr", "recall_at_5fpr")
#: decisions at the threshold calibrated for the target FPR on human validation texts
DECISION_COLUMNS = ("fpr", "fpr_ci_high", "recall_at_target_fpr", "accuracy_at_target_fpr")
LOWER_IS_BETTER = ("fpr", "fpr_ci_high")


def comparison(results: list[dict[str, Any]], title: str) -> dict[str, Any]:
    """Detectors x test metrics, in the table format of tasks/report.py (printable and loggable the same way);
    a metric left out for a detector (see its ``omitted``) is an empty cell, never NaN."""
    rows = [r["fit"]["component"]["label"] for r in results]
    cols = [c for c in COLUMNS + DECISION_COLUMNS if any(c in r["test"]["metrics"] for r in results)]
    cells = {row: {c: {"mean": r["test"]["metrics"][c], "std": 0.0, "n": 1} for c in cols
                   if c in r["test"]["metrics"]} for row, r in zip(rows, results)}
    return {"title": title, "rows": rows, "columns": cols, "cells": cells,
            "higher_is_better": {c: c not in LOWER_IS_BETTER for c in cols},
            "versions": {row: r["fit"]["component"]["version"] for row, r in zip(rows, results)}}


def roc_figure(results: list[dict[str, Any]], title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for r in results:
        labels, scores = np.array(r["test"]["labels"]), np.array(r["test"]["scores"])
        if len(set(labels.tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{r['fit']['component']['label']} ({r['test']['metrics']['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
    ax.set_xlabel("false-positive rate (human flagged)")
    ax.set_ylabel("recall of machine text")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def histogram_figure(result: dict[str, Any]) -> plt.Figure:
    labels, scores = np.array(result["test"]["labels"]), np.array(result["test"]["scores"])
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    bins = np.histogram_bin_edges(scores, bins=40)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="human", color="C0")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="machine", color="C3")
    ax.axvline(result["threshold"], color="k", lw=1, ls="--", label="macro-F1 threshold (validation)")
    if result.get("fpr_threshold") is not None:
        ax.axvline(result["fpr_threshold"], color="C2", lw=1, ls=":",
                   label=f"{result['target_fpr']:.0%}-FPR threshold (human validation)")
    sign = "" if result["higher_is_machine"] else " (negated native score)"
    ax.set_xlabel(f"score, higher = machine{sign}")
    ax.set_ylabel("texts")
    ax.set_title(f"{result['fit']['component']['label']}: test scores", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fpr_figure(table: dict[str, Any], title: str) -> plt.Figure:
    """FPR per group with 95% Clopper-Pearson intervals (bars) and the ratio to the lowest group (labels)."""
    rows, col = table["rows"], table["column"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(rows) + 2.5), 3.6))
    x = np.arange(len(rows))
    fpr = np.array([r["fpr"] for r in rows])
    err = np.array([[r["fpr"] - r["fpr_ci_low"] for r in rows], [r["fpr_ci_high"] - r["fpr"] for r in rows]])
    ax.bar(x, fpr, yerr=err.reshape(2, -1), capsize=3, color="C0")
    for i, r in enumerate(rows):
        ratio = f"x{r['ratio_to_lowest']:.1f}" if "ratio_to_lowest" in r else ""
        ax.text(i, r["fpr_ci_high"], f"{int(r['n_flagged'])}/{int(r['n_human'])}\n{ratio}", ha="center",
                va="bottom", fontsize=6)
    ax.set_xticks(x)
    ax.set_xticklabels([r[col] for r in rows], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("FPR (human texts flagged)")
    ax.set_title(f"{title}\nper {col}, {table['threshold_kind']}", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _metrics(result: dict[str, Any]) -> list[Metric]:
    out = [Metric(f"test/{k}", v, 0, 0) for k, v in finite(result["test"]["metrics"]).items()]
    out += [Metric(f"valid/{k}", v, 0, 0) for k, v in finite(result["valid"]["metrics"]).items()]
    out.append(Metric("threshold", float(result["threshold"]), 0, 0))
    for kind, key in (("by_domain", "domain"), ("by_generator", "generator")):
        for row in result["test"][kind]:
            out += [Metric(tracking.metric_key(f"test/{key}/{row[key]}/{k}"), v, 0, 0)
                    for k, v in finite({k: row.get(k) for k in COLUMNS + DECISION_COLUMNS
                                        + ("recall_machine",)}).items()]
    for col, table in result["test"].get("fpr_by", {}).items():
        for row in table["rows"]:
            out += [Metric(tracking.metric_key(f"test/fpr_by/{col}/{row[col]}/{k}"), v, 0, 0)
                    for k, v in finite({k: row.get(k) for k in ("fpr", "fpr_ci_low", "fpr_ci_high", "n_human",
                                                                 "ratio_to_lowest")}).items()]
    for rec in result["fit"]["info"].get("history", []):
        out += [Metric(f"train/{k}", float(v), 0, int(rec["epoch"])) for k, v in rec.items()
                if k not in ("epoch", "best") and isinstance(v, (int, float))]
    return out


def _log_figure(c: Any, run_id: str, fig: plt.Figure, path: str) -> None:
    c.log_figure(run_id, fig, path)
    plt.close(fig)


@task(**tracking.RETRY, task_run_name="log detector runs")
def log_detection(results: list[dict[str, Any]], experiment: str, parent_run_id: str, versions: dict[str, str],
                  model: dict[str, str], manifests: dict[str, dict[str, Any]], title: str) -> dict[str, Any]:
    """One child run per detector, then the comparison on the parent run; returns the table."""
    c = tracking.client()
    exp = tracking.experiment_id(experiment)
    child_ids = {}
    for r in results:
        comp = r["fit"]["component"]
        tags = {**tracking.component_tags(comp, versions), "attnflow.model": model["name"],
                "attnflow.model_fingerprint": model["fingerprint"], "attnflow.task": "ai-text-detection",
                "attnflow.cache_key": r["fit"]["cache_key"], "mlflow.parentRunId": parent_run_id,
                **{f"attnflow.{k}": v for k, v in r["notes"].items()}}
        run = c.create_run(exp, run_name=f"{comp['label']} | {model['name']}", tags=tags)
        rid = child_ids[comp["label"]] = run.info.run_id
        with ended(rid, finish=False):  # an error while logging ends the run FAILED, not RUNNING
            params = [Param(k, str(v)[:6000]) for k, v in comp["params"].items()] + [Param("model", model["name"])]
            params += [Param("target_fpr", str(r.get("target_fpr"))), Param("fpr_calibrated_on",
                                                                             str(r.get("calibrated_on")))]
            c.log_batch(rid, metrics=_metrics(r), params=params)
            c.log_dict(rid, {k: r["test"].get(k) for k in ("by_domain", "by_generator", "fpr_by")},
                       "breakdowns.json")
            omitted = {"test": r["test"]["metrics"].get("omitted", {}),
                       "valid": r["valid"]["metrics"].get("omitted", {})}
            if omitted["test"] or omitted["valid"]:
                c.log_dict(rid, omitted, "omitted_metrics.json")  # each metric left out, and why
            for col, table in r["test"].get("fpr_by", {}).items():
                if table["rows"]:
                    cols = list(dict.fromkeys(k for row in table["rows"] for k in row))
                    c.log_table(rid, data={k: [row.get(k) for row in table["rows"]] for k in cols},
                                artifact_file=f"fpr_by_{col}.json")
                    _log_figure(c, rid, fpr_figure(table, f"{comp['label']}: FPR"), f"figures/fpr_by_{col}.png")
            c.log_dict(rid, r["fit"]["info"], "fit_info.json")
            with tempfile.TemporaryDirectory() as tmp:
                keys = [k for k in ("ids", "labels", "scores", "domain", "generator", "source", "group")
                        if k in r["test"]]
                rows = [dict(zip(keys, v)) for v in zip(*(r["test"][k] for k in keys))]
                write_rows(rows, Path(tmp) / "test_scores.parquet")
                c.log_artifact(rid, str(Path(tmp) / "test_scores.parquet"))
            if Path(r["fit"]["state_dir"], "state.safetensors").is_file():
                c.log_artifacts(rid, r["fit"]["state_dir"], "state")
            _log_figure(c, rid, roc_figure([r], f"{comp['label']}: ROC on test"), "figures/roc.png")
            _log_figure(c, rid, histogram_figure(r), "figures/score_histogram.png")
            c.set_terminated(rid)
    table = comparison(results, title)
    tracking.log_comparison.fn(parent_run_id, table, results)
    _log_figure(c, parent_run_id, roc_figure(results, title), "roc.png")
    for name, manifest in manifests.items():
        c.log_dict(parent_run_id, manifest, f"feature_cache/{name}-manifest.json")
    return {"table": table, "child_runs": child_ids}
