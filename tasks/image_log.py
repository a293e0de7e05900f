"""MLflow logging of the generate-images and inpaint flows: a grid figure of the images (rows = component stacks,
columns = sources x prompts x seeds; inpainting adds a first row with the masked sources), a grid of the
cross-attention maps when recorded (rows = stack x word), and one child run per stack with its images, maps and the
mean of every metric over its images (seconds_per_image among them); the parent run gets the per-image table
(images.json), the summary (summary.md / summary.json) and each stack's means as ``<stack>/<metric>``.

Non-finite metric values (known_psnr of an exactly reproduced known region is +inf) are kept in images.json and
the summary and left out of the MLflow metrics, with a printed line saying so.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param
from prefect import task

from tasks import plots
from tasks.diffusion import ImagePlan
from tasks.image_cache import read_maps
from tasks.runs import ended
from tasks.tracking import RETRY, _flow_tags, client, experiment_id, metric_key

plt = plots.plt


def column_label(r: dict[str, Any]) -> str:
    src = f"{r['source']} | " if r.get("source") else ""
    prompt = r["prompt"] if len(r["prompt"]) <= 28 else r["prompt"][:27] + "…"
    return f"{src}{prompt}\nseed {r['seed']}"


def _columns(records: list[dict[str, Any]]) -> list[tuple[Any, int, int]]:
    return list(dict.fromkeys((r["source"], r["prompt_index"], r["seed"]) for r in records))


def image_grid(records: list[dict[str, Any]], title: str, with_sources: bool = False) -> plt.Figure:
    """Rows = stacks (in order), columns = (source, prompt, seed); a leading row of masked sources if asked."""
    from PIL import Image

    rows = list(dict.fromkeys(r["stack"] for r in records))
    cols = _columns(records)
    by_cell = {(r["stack"], (r["source"], r["prompt_index"], r["seed"])): r for r in records}
    first = {c: next(r for r in records if (r["source"], r["prompt_index"], r["seed"]) == c) for c in cols}
    n_rows = len(rows) + (1 if with_sources else 0)
    fig, axes = plt.subplots(n_rows, len(cols), figsize=(1.7 * len(cols) + 1.2, 1.8 * n_rows + 0.6), squeeze=False)
    for j, c in enumerate(cols):
        axes[0, j].set_title(column_label(first[c]), fontsize=6)
        if with_sources:
            axes[0, j].imshow(masked_source(first[c]["source_image"], first[c]["source_mask"]))
        for i, row in enumerate(rows, 1 if with_sources else 0):
            r = by_cell.get((row, c))
            if r is not None:
                with Image.open(r["png"]) as img:
                    axes[i, j].imshow(np.asarray(img.convert("RGB")))
    labels = (["source (mask)"] if with_sources else []) + rows
    for i, label in enumerate(labels):
        axes[i, 0].set_ylabel(label, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def masked_source(image_path: str, mask_path: str) -> np.ndarray:
    """The source with its fill region tinted (for the grid's first row)."""
    from PIL import Image

    with Image.open(image_path) as img, Image.open(mask_path) as m:
        src = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
        fill = np.asarray(m.convert("L").resize(img.size, resample=Image.Resampling.NEAREST)) >= 128  # (H, W)
    out = src.copy()
    out[fill] = 0.5 * src[fill] + 0.5 * np.array([1.0, 0.0, 1.0])
    return out


def maps_grid(records: list[dict[str, Any]], title: str) -> plt.Figure | None:
    """Rows = (stack, word), columns as ``image_grid``; None when no record has maps."""
    with_maps = [r for r in records if r.get("maps")]
    if not with_maps:
        return None
    maps = {r["key"]: read_maps(r["maps"]) for r in with_maps}
    words = list(dict.fromkeys(w for m in maps.values() for w in m))
    rows = [(s, w) for s in dict.fromkeys(r["stack"] for r in records) for w in words]
    cols = _columns(records)
    by_cell = {(r["stack"], (r["source"], r["prompt_index"], r["seed"])): r for r in with_maps}
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.7 * len(cols) + 1.2, 1.8 * len(rows) + 0.6),
                             squeeze=False)
    for j, c in enumerate(cols):
        first = next(r for r in records if (r["source"], r["prompt_index"], r["seed"]) == c)
        axes[0, j].set_title(column_label(first), fontsize=6)
        for i, (stack, word) in enumerate(rows):
            r = by_cell.get((stack, c))
            if r is not None and word in maps[r["key"]]:
                axes[i, j].imshow(maps[r["key"]][word], cmap="viridis")
    for i, (stack, word) in enumerate(rows):
        axes[i, 0].set_ylabel(f"{stack}\n\"{word}\"", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Stack -> metric -> mean over its images, plus n_images and n_cached. NaN means "does not apply to this image"
    (e.g. position for a prompt naming no cell) and is left out of the mean (NaN when no image has a value); +inf
    (known_psnr of an exact known region) makes the mean +inf."""
    out: dict[str, dict[str, float]] = {}
    for stack in dict.fromkeys(r["stack"] for r in records):
        rs = [r for r in records if r["stack"] == stack]
        names = list(dict.fromkeys(k for r in rs for k in r["metrics"]))
        row: dict[str, float] = {"n_images": float(len(rs)), "n_cached": float(sum(r["cached"] for r in rs))}
        for k in names:
            vals = [r["metrics"][k] for r in rs if k in r["metrics"] and not math.isnan(r["metrics"][k])]
            row[k] = float(np.mean(vals)) if vals else math.nan
        out[stack] = row
    return out


def summary_markdown(summary: dict[str, dict[str, float]]) -> str:
    cols = list(dict.fromkeys(k for row in summary.values() for k in row))
    lines = ["| stack | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for stack, row in summary.items():
        lines.append(f"| {stack} | " + " | ".join(f"{row[c]:.4g}" if c in row else "" for c in cols) + " |")
    return "\n".join(lines)


def _finite_metrics(values: dict[str, float], where: str) -> list[Metric]:
    out = []
    for k, v in values.items():
        if math.isfinite(v):
            out.append(Metric(metric_key(k), float(v), 0, 0))
        else:
            print(f"{where}: {k} = {v} is not finite; kept in the summary, not logged as an MLflow metric")
    return out


@task(**RETRY, task_run_name="log images")
def log_images(parent: str, experiment: str, plan: ImagePlan, records: list[dict[str, Any]], model_name: str,
               model_digest: str, versions: dict[str, str], kind: str) -> dict[str, dict[str, float]]:
    """Grids, per-stack child runs and the summary (module docstring); returns the summary."""
    c = client()
    exp = experiment_id(experiment)
    summary = summarize(records)
    title = f"{kind}: {model_name}, {plan.steps} steps, cfg {plan.cfg_scale:g}"
    fig = image_grid(records, title, with_sources=bool(plan.sources))
    c.log_figure(parent, fig, "grid.png")
    plots.close(fig)
    mfig = maps_grid(records, f"cross-attention maps: {title}")
    if mfig is not None:
        c.log_figure(parent, mfig, "maps_grid.png")
        plots.close(mfig)
    c.log_dict(parent, records, "images.json")
    c.log_dict(parent, summary, "summary.json")
    c.log_text(parent, summary_markdown(summary), "summary.md")
    parent_metrics = []
    for stack in plan.stacks:
        rs = [r for r in records if r["stack"] == stack.label]
        specs = stack.record()["components"]
        tags = {**_flow_tags(), "mlflow.parentRunId": parent, "attnflow.kind": kind,
                "attnflow.model": model_name, "attnflow.model_fingerprint": model_digest[:16],
                "attnflow.component_label": stack.label,
                "attnflow.components": json.dumps([s["spec"] for s in specs])[:5000],
                "attnflow.fingerprints": json.dumps([s["fingerprint"] for s in specs])[:5000],
                "attnflow.registry_versions": json.dumps(
                    [versions.get(f"{s['name']}@{s['version']}", "") for s in specs])[:5000]}
        run = c.create_run(exp, run_name=f"{stack.label}", tags=tags)
        rid = run.info.run_id
        with ended(rid):
            params = [Param("model", model_name), Param("steps", str(plan.steps)),
                      Param("cfg_scale", str(plan.cfg_scale))]
            params += [Param(f"{s['name']}.{k}", str(v)[:6000]) for s in specs for k, v in s["params"].items()]
            c.log_batch(rid, metrics=_finite_metrics(summary[stack.label], stack.label), params=params)
            with tempfile.TemporaryDirectory() as tmp:
                for r in rs:
                    stem = f"{r['source'] + '_' if r['source'] else ''}p{r['prompt_index']}_seed{r['seed']}"
                    c.log_artifact(rid, shutil.copyfile(r["png"], Path(tmp) / f"{stem}.png"), artifact_path="images")
                    c.log_dict(rid, r, f"images/{stem}.json")
                    if r["maps"]:
                        c.log_artifact(rid, shutil.copyfile(r["maps"], Path(tmp) / f"{stem}.npz"),
                                       artifact_path="maps")
        parent_metrics += _finite_metrics({f"{stack.label}/{k}": v for k, v in summary[stack.label].items()},
                                          "parent")
    c.log_batch(parent, metrics=parent_metrics[:1000])
    return summary
