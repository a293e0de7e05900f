"""kv-sweep: KV-cache presses x compression ratios x tasks on one model, accuracy-vs-ratio curves in MLflow.

validate -> prep data -> load model -> one cached evaluation per (press, ratio, task) -> one MLflow run per point
(metrics, measured cache bytes, seconds) -> per-task curves (a line per press) and a table on the parent run.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import BatchSize, Dtype, Experiment, ModelName, Specs
from infra.runners import task_runner
from tasks.data import benchmark_data
from tasks.kv_sweep import check_sweep_modes, log_kv_curves, plan_presses, press_point
from tasks.models import load_model
from tasks.plan import plan_request
from tasks.report import log_table
from tasks.runs import tracked_run
from tasks.sweep import map_calls
from tasks.tracking import log_evaluation, publish_components

DEFAULT_PRESSES = ["streaming_llm", "knorm", "snapkv", "tova", "h2o", "pyramidkv", "adakv"]
DEFAULT_RATIOS = [0.0, 0.25, 0.5, 0.75, 0.875]
DEFAULT_TASKS = ["kv_retrieval", "needle"]  # query-agnostic by default: every task must split context/question


@flow(name="kv-sweep", log_prints=True, task_runner=task_runner())
def kv_sweep(
    model: ModelName = "demo",
    presses: Specs = DEFAULT_PRESSES,
    ratios: list[float] = DEFAULT_RATIOS,  # noqa: B006 - a Prefect parameter default, never mutated
    tasks: Specs = DEFAULT_TASKS,
    batch_size: BatchSize = 8,
    experiment: Experiment = "kv-sweep",
    dtype: Dtype = "float32",
    trust_remote_code: bool = False,
    progress: bool = False,
    query_aware: bool = False,
    patch: str = "",
) -> dict[str, Any]:
    """Sweep KV-cache presses over compression ratios on tasks for one model.

    Args:
        model: Hub id, local model directory, or "demo".
        presses: Press specs without ratio, e.g. "snapkv(window=32)" or "streaming_llm(n_sink=4)".
        ratios: Compression ratios (fraction of the prefill removed), each in [0, 1).
        tasks: Benchmark specs, e.g. "needle(lengths=512,1024)" or "kv_retrieval(n_pairs=16)".
        batch_size: Evaluation batch size.
        experiment: MLflow experiment name.
        dtype: float32, bfloat16 or float16.
        trust_remote_code: Allow model code from the hub (off by default).
        progress: Show progress bars.
        query_aware: Compress the whole prompt, question included (default: the context is prefilled and
            compressed alone, then the question and answer run on the compressed cache, as kvpress evaluates).
        patch: An attention patch spec applied at every point inside the press, e.g. "zerotuning(gamma=2)".
    """
    # 1. Validate everything before compute: presses x ratios, tasks (split into context + question unless
    #    query-aware), the patch, the model reference.
    points = plan_presses(presses, ratios)
    plan = plan_request(model, [patch or "baseline"], tasks, [0], trust_remote_code=trust_remote_code)
    patch_spec = plan.components[0] if patch else None
    check_sweep_modes(plan.benchmarks, query_aware, patch_spec)
    versions = publish_components([p.ref for p in points] + [b.ref for b in plan.benchmarks]
                                  + ([patch_spec.ref] if patch_spec else []))
    # 2. Data prep (Parquet per benchmark, cached) and the model, once.
    data = {b: benchmark_data(b.component) for b in plan.benchmarks}
    loaded = load_model(plan.model, dtype=dtype, trust_remote_code=trust_remote_code)
    grid = [(p, b) for b in plan.benchmarks for p in points]
    with tracked_run(experiment, f"kv-sweep {plan.model}", tags={"attnflow.model": loaded.name,
                                                                   "attnflow.kind": "kv-sweep"},
                     params={"model": plan.model, "presses": presses, "ratios": ratios,
                             "tasks": plan.texts("benchmarks"), "query_aware": query_aware,
                             "patch": patch_spec.text if patch_spec else ""}) as parent:
        # 3. One evaluation per point, cached by model/press/benchmark fingerprints.
        results = map_calls(press_point, [dict(loaded=loaded, press=p, benchmark=b, data_path=data[b],
                                               batch_size=batch_size, progress=progress, query_aware=query_aware,
                                               patch=patch_spec) for p, b in grid])
        # 4. One run per point, then the curves on the parent.
        children = [log_evaluation(r, experiment, parent, versions) for r in results]
        table = log_kv_curves(parent, results, children)
    log_table(table)
    print(f"MLflow run: {parent} (experiment '{experiment}')")
    return {"table": table, "run_id": parent, "experiment": experiment, "points": len(results)}


if __name__ == "__main__":
    kv_sweep()
