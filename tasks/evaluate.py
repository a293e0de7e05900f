"""Evaluation: run a benchmark on a model with a patch applied (cached by fingerprints)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from registry.specs import ResolvedSpec, resolved
from tasks.data import load_data
from tasks.integrity import CHECKED, content_key
from tasks.models import LoadedModel


def _eval_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Same model weights + same component code/params + same benchmark code/params/data content -> same result
    (the data files are keyed by their content, not their path)."""
    loaded: LoadedModel = parameters["loaded"]
    comp = resolved(parameters["component"], "patch")
    bench = resolved(parameters["benchmark"], "benchmark")
    key = [loaded.fingerprint, comp.fingerprint, bench.fingerprint, content_key(parameters["data_path"]),
           parameters.get("batch_size"), bench.code_fingerprint]
    if parameters.get("prompt") is not None:  # a prompt component in the cell (rows rewritten before scoring)
        prompt = resolved(parameters["prompt"], "prompt")
        key += [prompt.fingerprint, prompt.component.data_fingerprint()]
    if parameters.get("train_path"):  # components fitted on the train split (needs_fit)
        key.append(content_key(parameters["train_path"]))
    return "eval2-" + hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:24]


@task(cache_key_fn=_eval_cache_key, result_serializer=CHECKED, retries=0,
      task_run_name="evaluate {component} on {benchmark}")
def evaluate(loaded: LoadedModel, component: ResolvedSpec | str, benchmark: ResolvedSpec | str, data_path: str,
             batch_size: int = 16, progress: bool = True, train_path: str | None = None,
             prompt: ResolvedSpec | str | None = None) -> dict[str, Any]:
    """Apply ``component`` to the model and score ``benchmark`` on the prepared rows (components with
    ``needs_fit`` are first fitted on the rows of ``train_path``). Both are resolved specs (a plan's) or spec
    strings. ``prompt`` (a ``prompt`` component) first rewrites the rows with the unpatched model; the patch then
    scores the rewritten rows."""
    spec, bench_spec = resolved(component, "patch"), resolved(benchmark, "benchmark")
    comp, bench = spec.component, bench_spec.component
    rows = load_data(data_path)
    start = time.perf_counter()
    prompt_spec = resolved(prompt, "prompt") if prompt is not None else None
    if prompt_spec is not None:
        rows = prompt_spec.component.rewrite(loaded.model, loaded.tokenizer, rows, progress=progress)
    fit: dict[str, Any] = {}
    record = spec.record()
    if comp.needs_fit:
        if not train_path:
            raise ValueError(f"{comp.component_name} must be fitted on a train split; none was prepared for "
                             f"{bench.component_name}")
        comp = comp.fit(loaded.model, loaded.tokenizer, load_data(train_path))
        fit = comp.fit_record()
        record = component_record(comp)
        print(f"fitted {comp.label()} on {train_path}: fingerprint {fit.get('fingerprint')}")
    with comp.applied(loaded.model) as session:
        result = bench.evaluate(loaded.model, loaded.tokenizer, rows, session=session, batch_size=batch_size,
                                progress=progress)
    seconds = time.perf_counter() - start
    if prompt_spec is not None:
        record = cell_record(prompt_spec, record)
    print(f"{record['label']} on {bench_spec.label}: "
          + ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()) + f" ({seconds:.1f}s)")
    table, figure = fit.pop("table", None), fit.pop("figure", None)
    return {
        "component": record,
        "benchmark": bench_spec.record(),
        "metrics": result.metrics,
        "higher_is_better": {k: bench.metrics.get(k, True) for k in result.metrics},
        "primary_metric": bench.primary_metric,
        "examples": result.examples,
        "breakdowns": {**result.breakdowns, **({"fit": table} if table else {})},
        "figures": {**{k: list(v) for k, v in bench.figures.items()}, **({"fit": list(figure)} if figure else {})},
        "fit": fit,
        "seconds": seconds,
        "model": loaded.name,
        "model_fingerprint": loaded.fingerprint,
        "data_fingerprint": (content_key(data_path) or "")[:16],
    }


def cell_label(prompt_label: str | None, patch_label: str) -> str:
    """The row label of a compare cell: ``prompt+patch``, or the prompt alone when the patch is the baseline."""
    if not prompt_label:
        return patch_label
    return prompt_label if patch_label == "baseline" else f"{prompt_label}+{patch_label}"


def cell_record(prompt: ResolvedSpec, patch_record: dict[str, Any]) -> dict[str, Any]:
    """The patch's record labelled with the cell (prompt + patch), the prompt's own record under ``prompt``; the
    cell's fingerprint combines both."""
    both = hashlib.sha256(f"{prompt.fingerprint}+{patch_record['fingerprint']}".encode()).hexdigest()[:16]
    return {**patch_record, "label": cell_label(prompt.label, patch_record["label"]), "prompt": prompt.record(),
            "spec": f"{prompt.text}+{patch_record['spec']}", "fingerprint": both}


def component_record(comp: Any) -> dict[str, Any]:
    """Identity of a component instance as plain data."""
    return ResolvedSpec.of(comp).record()
