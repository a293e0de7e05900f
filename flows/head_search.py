"""head-search: which attention heads should a patch act on? One short evaluation per candidate (layer, head).

validate -> calibration split (the task's train split) -> load model -> baseline + every single-head patch, fanned
out as cached tasks -> select heads -> (when the patch declares a grid) every grid point on the selected heads ->
heads.json + heatmap in MLflow. The flow runs any patch that declares a head search (``head_search`` on its class,
see components/search.py) and knows no method: trial parameters, selection rule and grid come from the patch. Pass
the result to the patch as ``heads=mlflow:<run_id>/heads.json``.
"""

from __future__ import annotations

from typing import Any, Literal

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import BatchSize, Dtype
from tasks.data import benchmark_data
from tasks.head_search import (log_head_search, model_pool, pick_refined, plan_search, refine_grid, score_candidate,
                               select_heads)
from tasks.models import load_model
from tasks.runs import tracked_run


@flow(name="head-search", log_prints=True)
def head_search(
    method: str,
    model: str = "demo",
    task: str = "icl_classification(n_examples=64)",
    params: dict[str, str] = {},  # noqa: B006 - a Prefect parameter default, never mutated
    layers: str = "all",
    objective: Literal["accuracy", "entropy"] = "accuracy",
    grid: dict[str, list[float | int | str]] = {},  # noqa: B006
    min_gain: float = 0.0,
    top_k: int = 0,
    workers: int = 1,
    batch_size: BatchSize = 16,
    experiment: str = "head-search",
    dtype: Dtype = "float32",
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Search the heads a patch should act on; the head set is logged to MLflow as heads.json.

    Args:
        method: A patch that declares a head search (docs/training-free-patches.md lists them); its class says
            how single-head trials are set up, scored and turned into a head set.
        model: Hub id, local model directory, or "demo".
        task: Benchmark spec; its train split is the calibration set, e.g. "icl_classification(n_examples=64)".
        params: Parameters of the patch for every trial (over the trial parameters its head search declares).
        layers: Candidate heads as a head set, e.g. "all", "2-5:*", "0:1,3:2".
        objective: accuracy (supervised) or entropy (unsupervised: lower mean prediction entropy is better).
        grid: Values of parameters searched on the selected heads, name -> list of values; replaces the patch's
            own grid for the names given (a name with an empty list is not searched).
        min_gain: A head must change the objective by more than this to be selected.
        top_k: Keep at most this many heads (0 = all that qualify).
        workers: Candidate evaluations run at once (each on its own model copy).
        batch_size: Evaluation batch size.
        experiment: MLflow experiment.
        dtype: float32, bfloat16 or float16.
        trust_remote_code: Allow model code from the hub (off by default).
    """
    # 1. Validate everything (method, parameters, grid, task, candidate heads) before any weights are read.
    plan = plan_search(model, method, task, params, layers, objective, grid, trust_remote_code)
    # 2. The calibration split: the task's train split as Parquet (cached across runs).
    data = benchmark_data(plan.spec(plan.benchmark).component, split="train")
    # 3. The model, plus copies when several candidates run at once.
    pool = model_pool(load_model(model, dtype=dtype, trust_remote_code=trust_remote_code), workers)
    # 4. Baseline and one cached evaluation per candidate head, fanned out to the task runner.
    def score(specs: Any) -> list[dict[str, Any]]:
        futures = [score_candidate.submit(pool, plan.spec(s), plan.spec(plan.benchmark), data, objective,
                                          batch_size, plan.method) for s in specs]
        return [f.result() for f in futures]

    base, *scores = score([plan.baseline, *plan.candidates])
    selection = select_heads(plan, base, scores, min_gain, top_k)
    # 5. The patch's grid (if it declares one) on the selected heads, also cached per spec; the best point is kept
    #    only if it beats the unpatched model.
    points = refine_grid(plan, selection)
    if points:
        selection = pick_refined(plan, selection, points, score(points))
    # 6. MLflow: heads.json, the layer x head gain heatmap, summary metrics.
    name, bench = selection["method"], plan.spec(plan.benchmark).name
    with tracked_run(experiment, f"{name} heads on {bench}",
                     tags={"attnflow.kind": "head-search", "attnflow.model": pool.loaded.name,
                           "attnflow.component": name, "attnflow.task": bench},
                     params={"model": model, "method": plan.method, "task": plan.benchmark, "objective": objective,
                             "layers": layers, "params": plan.params, "grid": plan.grid, "min_gain": min_gain,
                             "top_k": top_k}) as run_id:
        ref = log_head_search(run_id, selection)
    heads = ",".join(f"{lay}:{h}" for lay, h in selection["heads"]) or "none"
    refined = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in (selection["refined"] or {}).items())
    print(f"{name}: {len(selection['heads'])} heads selected ({heads})" + (f", {refined}" if refined else "")
          + f"\nuse: heads={ref}")
    return {"run_id": run_id, "ref": ref, "heads": selection["heads"], "refined": selection["refined"],
            "selection": selection}


if __name__ == "__main__":
    head_search()
