"""Tasks of the analysis flows: validate an analyzer request, prepare its data, run it (cached), log it to MLflow,
and the retrieval-heads causal test's head selection and verdict."""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param
from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.context import TaskRunContext

import registry
from components import modeling
from components.analyzers.base import AnalysisResult
from infra.settings import settings
from registry.specs import Spec, parse, spec_text
from tasks import integrity, plots, tracking
from tasks.evaluate import component_record
from tasks.io import read_rows, write_rows
from tasks.models import LoadedModel, check_model
from tasks.plan import resolve_refs
from tasks.retry import transient
from tasks.runs import ended

#: names of the axes of logged arrays, by number of dimensions
AXES = {1: ("index",), 2: ("layer", "head"), 3: ("layer", "head", "position")}


@task(cache_policy=NO_CACHE, task_run_name="validate {analyzer}")
def plan_analysis(model: str, analyzer: str, params: dict[str, Any] | None = None,
                  trust_remote_code: bool = False) -> str:
    """Validate the analyzer spec, its parameters and the model (config only); returns the pinned spec."""
    base = parse(analyzer)
    given = {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for k, v in (params or {}).items()}
    spec = resolve_refs(Spec(base.name, base.version, {**base.params, **given}))
    comp = spec.create("analyzer")
    if comp.needs_images:  # a vision encoder (or a VLM, reads_decoders), loaded by tasks.vlm.load_vlm (no remote code)
        from components.attention.vision import UnsupportedVisionModelError
        from tasks.vlm import check_encoder, check_vision

        try:
            config = check_encoder(model)
        except UnsupportedVisionModelError:
            if not getattr(comp, "reads_decoders", False):
                raise
            config = check_vision(model)
        comp.check_model(config)
        return spec_text(comp)
    check_model(model, trust_remote_code=trust_remote_code)
    comp.check_model(modeling.load_config(model, trust_remote_code=trust_remote_code))
    return spec_text(comp)


@task(cache_policy=INPUTS + TASK_SOURCE, retries=2, retry_delay_seconds=[1, 5], result_serializer=integrity.CHECKED,
      retry_condition_fn=transient, task_run_name="prepare {analyzer}")
def prepare_analysis_data(analyzer: str, data_key: str) -> str:
    """Build an analyzer's rows and write them to Parquet; returns the file path."""
    comp = parse(analyzer).create("analyzer")
    path = settings().data_dir / f"{comp.component_name}-{comp.fingerprint()}-{data_key or 'gen'}.parquet"
    integrity.build_once(path, lambda p: write_rows(comp.build(), p))
    return str(path)


def analysis_data(analyzer: str) -> str:
    """Prepared Parquet path for an analyzer spec (re-prepared if the file vanished or fails its checksum)."""
    return integrity.prepared(prepare_analysis_data, (analyzer, parse(analyzer).create("analyzer").data_fingerprint()))


def _analysis_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Same weights + same analyzer code/params + same data content -> same result."""
    comp = parse(parameters["analyzer"]).create("analyzer")
    key = [parameters["loaded"].fingerprint, comp.fingerprint(), integrity.content_key(parameters["data_path"])]
    return "analysis2-" + hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:24]


@task(cache_key_fn=_analysis_cache_key, result_serializer=integrity.CHECKED, task_run_name="analyze {analyzer}")
def run_analysis(loaded: LoadedModel, analyzer: str, data_path: str, progress: bool = True) -> dict[str, Any]:
    """Run an analyzer on the model and its prepared rows; plain JSON result (arrays as nested data)."""
    comp = parse(analyzer).create("analyzer")
    start = time.perf_counter()
    result = comp.analyze(loaded.model, loaded.tokenizer, read_rows(integrity.check(data_path)), progress=progress)
    seconds = time.perf_counter() - start
    print(f"{comp.label()} on {loaded.name} ({seconds:.1f}s): "
          + ", ".join(f"{k}={v:.4g}" for k, v in list(result.metrics.items())[:8]))
    return {"component": component_record(comp), "result": result.to_json(), "seconds": seconds,
            "primary_array": comp.primary_array, "model": loaded.name, "model_fingerprint": loaded.fingerprint}


def layer_head_figure(array: np.ndarray, title: str, label: str) -> Any:
    """Heatmap of an (L, H) array: layers on y, heads on x, values written in the cells."""
    plt = plots.plt
    n_layers, n_heads = array.shape
    signed = bool(np.nanmin(array) < 0)
    vmax = float(np.nanmax(np.abs(array))) or 1.0
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 0.55 * n_heads), 1.6 + 0.45 * n_layers))
    im = ax.imshow(array, aspect="auto", origin="lower", cmap="RdBu_r" if signed else "viridis",
                   vmin=-vmax if signed else 0.0, vmax=vmax)
    if n_layers * n_heads <= 400:
        for layer in range(n_layers):
            for head in range(n_heads):
                value = array[layer, head]
                ax.text(head, layer, "-" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                        fontsize=6, color="black" if signed else "white")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _array_rows(array: np.ndarray) -> list[dict[str, Any]]:
    axes = AXES.get(array.ndim, tuple(f"dim{i}" for i in range(array.ndim)))
    return [{**dict(zip(axes, map(int, idx))), "value": float(v)} for idx, v in np.ndenumerate(array)]


@task(**tracking.RETRY, task_run_name="log analysis {record[component][label]}")
def log_analysis(record: dict[str, Any], experiment: str, versions: dict[str, str],
                 parent_run_id: str | None = None) -> str:
    """One MLflow run: tags, params, metrics, arrays (.npy + Parquet), tables, head sets (heads/*.json), figures."""
    c = tracking.client()
    comp, result = record["component"], AnalysisResult.from_json(record["result"])
    tags = {**tracking._flow_tags(), "attnflow.kind": "analysis", "attnflow.component": comp["name"],
            "attnflow.component_version": comp["version"], "attnflow.fingerprint": comp["fingerprint"],
            "attnflow.code_fingerprint": comp["code_fingerprint"], "attnflow.paper": comp["paper"] or "",
            "attnflow.component_label": comp["label"], "attnflow.model": record["model"],
            "attnflow.model_fingerprint": record["model_fingerprint"],
            "attnflow.registry_version": versions.get(f"{comp['name']}@{comp['version']}", "")}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    exp = tracking.experiment_id(experiment)
    key = tracking.result_key(record["model_fingerprint"], comp, "analysis", result.metrics, record["seconds"])
    tags.update(tracking.cached_tags(c, exp, key))
    run = c.create_run(exp, run_name=f"{comp['label']} | {record['model']}", tags=tags)
    rid = run.info.run_id
    with ended(rid):
        metrics = [Metric(tracking.metric_key(k), float(v), 0, 0)
                   for k, v in result.metrics.items() if np.isfinite(v)]
        metrics.append(Metric("analysis_seconds", float(record["seconds"]), 0, 0))
        params = [Param(k, str(v)[:6000]) for k, v in comp["params"].items()] + [Param("model", record["model"])]
        c.log_batch(rid, metrics=metrics, params=params)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for sub in ("arrays", "tables", "heads"):
                (root / sub).mkdir()
            for name, array in result.arrays.items():
                np.save(root / "arrays" / f"{name}.npy", array, allow_pickle=False)
                write_rows(_array_rows(array), root / "arrays" / f"{name}.parquet")
            for name, rows in result.tables.items():
                if rows:
                    write_rows(rows, root / "tables" / f"{name}.parquet")
            for name, heads in result.heads.items():
                (root / "heads" / f"{name}.json").write_text(json.dumps({"heads": [list(p) for p in heads]}))
            c.log_artifacts(rid, str(root))
        heads = {k: [list(p) for p in v] for k, v in result.heads.items()}
        c.log_dict(rid, {"metrics": result.metrics, "heads": heads}, "summary.json")
        for name, spec in result.figures.items():
            title = f"{comp['label']}\n{record['model']}"
            if spec[0] == "layer_head":
                fig = layer_head_figure(result.arrays[spec[1]], title, spec[1])
            else:
                fig = plots.breakdown_figure(name, [spec[0], *spec[2:]], result.tables[spec[1]], title)
            c.log_figure(rid, fig, f"figures/{name}.png")
            plots.close(fig)
    return rid


def summary_text(record: dict[str, Any], top: int = 8, metrics: tuple[str, ...] | None = None) -> str:
    """A short human summary of an analysis result (metrics, or only ``metrics`` when given, and head sets)."""
    result = record["result"]
    lines = [f"{record['component']['label']} on {record['model']}:"]
    lines += [f"  {k} = {v:.4g}" for k, v in result["metrics"].items() if metrics is None or k in metrics]
    for name, heads in result["heads"].items():
        shown = ", ".join(f"{a}:{b}" for a, b in heads[:top]) + (" ..." if len(heads) > top else "")
        lines.append(f"  {name} ({len(heads)}): {shown or '-'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The retrieval-heads causal test
# ---------------------------------------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE, task_run_name="check head budget")
def check_head_budget(model: str, top_k: int, n_random: int, trust_remote_code: bool = False) -> None:
    """The causal test needs K top heads plus K other heads to draw from: fail before any compute otherwise."""
    from components.patches.base import model_shape

    n_layers, n_heads = model_shape(modeling.load_config(model, trust_remote_code=trust_remote_code))
    if top_k < 0 or n_random < 1:
        raise ValueError(f"retrieval-heads: top_k must be >= 0 (got {top_k}) and n_random >= 1 (got {n_random})")
    if 2 * top_k > n_layers * n_heads:
        raise ValueError(f"retrieval-heads: top_k={top_k} leaves fewer than {top_k} other heads to draw random heads "
                         f"from in a model with {n_layers} x {n_heads} heads")


@task(cache_policy=NO_CACHE, task_run_name="choose head sets")
def choose_head_sets(record: dict[str, Any], top_k: int, n_random: int, seed: int) -> dict[str, Any]:
    """Top-K heads by retrieval score (K = number of retrieval heads when top_k is 0) and ``n_random`` draws of K
    heads from the non-retrieval heads outside the top K."""
    heads = record["result"]["heads"]
    ranking = [tuple(p) for p in heads["ranking"]]
    retrieval = {tuple(p) for p in heads["retrieval_heads"]}
    k = top_k or len(retrieval)
    top = ranking[:k]
    pool = [p for p in ranking if p not in retrieval and p not in top]
    if k and len(pool) < k:
        raise ValueError(f"retrieval-heads: only {len(pool)} non-retrieval heads outside the top {k} to draw "
                         f"{k} random heads from; lower top_k")
    rng = random.Random(seed)
    draws = [sorted(rng.sample(pool, k)) for _ in range(n_random)] if k else []
    return {"k": k, "top": [list(p) for p in top], "random": [[list(p) for p in d] for d in draws],
            "n_retrieval_heads": len(retrieval)}


def head_mask_spec(heads: list[list[int]], mode: str, phase: str) -> str:
    """The pinned head_mask spec for a list of heads."""
    comp = registry.get("head_mask").create({"heads": ",".join(f"{a}:{b}" for a, b in heads), "mode": mode,
                                             "phase": phase})
    return spec_text(comp)


def relabel(result: dict[str, Any], label: str) -> dict[str, Any]:
    """A copy of an evaluation result whose component label is ``label`` (rows of the comparison table)."""
    return {**result, "component": {**result["component"], "label": label}}


@task(cache_policy=NO_CACHE, task_run_name="retrieval-heads verdict")
def retrieval_verdict(table: dict[str, Any], top_label: str, random_label: str) -> dict[str, Any]:
    """Compare with the paper's expectation per task: masking the top-K retrieval heads collapses retrieval
    (accuracy <= 50% of the unmasked model's), masking K random non-retrieval heads does not (>= 90%)."""
    rows, lines, verdicts = table["cells"], [], {}
    for col in table["columns"]:
        if not col.endswith("/accuracy"):
            continue
        base = rows["baseline"][col]["mean"]
        top, rnd = rows[top_label][col]["mean"], rows[random_label][col]
        if base <= 0:
            verdicts[col], text = "undetermined", "the unmasked model scores 0: nothing to collapse"
        else:
            collapse, spared = top <= 0.5 * base, rnd["mean"] >= 0.9 * base
            verdicts[col] = "as expected" if collapse and spared else "differs"
            text = (f"top-K heads {'collapse' if collapse else 'do not collapse'} it ({top / base:.0%} of baseline), "
                    f"random heads {'spare' if spared else 'also hurt'} it ({rnd['mean'] / base:.0%})")
        lines.append(f"- {col}: baseline {base:.3f}, top-K masked {top:.3f}, random masked {rnd['mean']:.3f} "
                     f"± {rnd['std']:.3f} (n={rnd['n']}): {verdicts[col]}; {text}")
    header = ("Paper expectation (Wu et al. 2024): masking the retrieval heads collapses needle retrieval, masking "
              "as many random non-retrieval heads does not. Criteria: top-K accuracy <= 50% of baseline and random "
              "accuracy >= 90% of baseline.")
    return {"verdicts": verdicts, "text": header + "\n" + "\n".join(lines)}


@task(**tracking.RETRY, task_run_name="log verdict")
def log_verdict(run_id: str, sets: dict[str, Any], verdict: dict[str, Any]) -> None:
    """The head sets (heads/top.json, heads/random_<i>.json) and the verdict (verdict.md, tags) on the parent run."""
    c = tracking.client()
    c.log_text(run_id, verdict["text"], "verdict.md")
    c.log_dict(run_id, {"heads": sets["top"]}, "heads/top.json")
    for i, draw in enumerate(sets["random"]):
        c.log_dict(run_id, {"heads": draw}, f"heads/random_{i}.json")
    for col, v in verdict["verdicts"].items():
        c.set_tag(run_id, tracking.metric_key(f"attnflow.verdict.{col}"), v)
