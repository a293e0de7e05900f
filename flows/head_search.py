"""head-search: which attention heads should a patch act on? One short evaluation per candidate (layer, head).

validate -> calibration split (the task's train split) -> load model -> baseline + every single-head patch, fanned
out as cached tasks -> select heads (ZeroTuning: then a gamma grid on the selected group) -> heads.json + heatmap in
MLflow. Pass the result to act, zerotuning or head_mask as ``heads=mlflow:<run_id>/heads.json``.
"""

from __future__ import annotations

from typing import Any, Literal

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import BatchSize, Dtype
from registry.specs import parse
from tasks.data import benchmark_data
from tasks.head_search import (gamma_grid, log_head_search, model_pool, pick_gamma, plan_search, score_candidate,
                               select_heads)
from tasks.models import load_model
from tasks.runs import tracked_run


@flow(name="head-search", log_prints=True)
def head_search(
    model: str = "demo",
    method: Literal["act", "zerotuning", "head_mask"] = "act",
    task: str = "icl_classification(n_examples=64)",
    params: dict[str, str] = {},  # noqa: B006 - a Prefect parameter default, never mutated
    layers: str = "all",
    objective: Literal["accuracy", "entropy"] = "accuracy",
    trial_gamma: float = 2.0,
    gammas: list[float] = [1.5, 2.0, 3.0, 4.0],  # noqa: B006
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
        model: Hub id, local model directory, or "demo".
        method: act (keep heads whose calibration beats the baseline), zerotuning (head profiling with a trial
            gamma, then a gamma grid on the dominant group) or head_mask (heads whose masking hurts most).
        task: Benchmark spec; its train split is the calibration set, e.g. "icl_classification(n_examples=64)".
        params: Other parameters of the method's component, e.g. {"beta": "0.4", "tau": "0.1"} for act.
        layers: Candidate heads as a head set, e.g. "all", "2-5:*", "0:1,3:2".
        objective: accuracy (supervised) or entropy (unsupervised: lower mean prediction entropy is better).
        trial_gamma: ZeroTuning's profiling gamma.
        gammas: ZeroTuning's gamma grid (reciprocals are used for a down-effective group).
        min_gain: A head must change the objective by more than this to be selected.
        top_k: Keep at most this many heads (0 = all that qualify).
        workers: Candidate evaluations run at once (each on its own model copy).
        batch_size: Evaluation batch size.
        experiment: MLflow experiment.
        dtype: float32, bfloat16 or float16.
        trust_remote_code: Allow model code from the hub (off by default).
    """
    # 1. Validate everything (method, parameters, task, candidate heads) before any weights are read.
    plan = plan_search(model, method, task, params, layers, objective, trial_gamma, trust_remote_code)
    # 2. The calibration split: the task's train split as Parquet (cached across runs).
    data = benchmark_data(parse(plan.benchmark).create("benchmark"), split="train")
    # 3. The model, plus copies when several candidates run at once.
    pool = model_pool(load_model(model, dtype=dtype, trust_remote_code=trust_remote_code), workers)
    # 4. Baseline and one cached evaluation per candidate head, fanned out to the task runner.
    base = score_candidate.submit(pool, plan.baseline, plan.benchmark, data, objective, batch_size)
    futures = [score_candidate.submit(pool, c, plan.benchmark, data, objective, batch_size) for c in plan.candidates]
    selection = select_heads(plan, base.result(), [f.result() for f in futures], min_gain, top_k)
    # 5. ZeroTuning: one gamma for the selected group, from a grid (also cached per spec).
    if method == "zerotuning":
        grid = gamma_grid(plan, selection, gammas)
        runs = [score_candidate.submit(pool, s, plan.benchmark, data, objective, batch_size) for s in grid]
        selection = pick_gamma(plan, selection, grid, [f.result() for f in runs])
    # 6. MLflow: heads.json, the layer x head gain heatmap, summary metrics.
    with tracked_run(experiment, f"{method} heads on {parse(plan.benchmark).name}",
                     tags={"attnflow.kind": "head-search", "attnflow.model": pool.loaded.name,
                           "attnflow.component": method, "attnflow.task": parse(plan.benchmark).name},
                     params={"model": model, "method": method, "task": plan.benchmark, "objective": objective,
                             "layers": layers, "params": plan.params, "min_gain": min_gain, "top_k": top_k}) as run_id:
        ref = log_head_search(run_id, selection)
    heads = ",".join(f"{lay}:{h}" for lay, h in selection["heads"]) or "none"
    print(f"{method}: {len(selection['heads'])} heads selected ({heads})"
          + (f", gamma={selection['gamma']}" if selection.get("gamma") else "") + f"\nuse: heads={ref}")
    return {"run_id": run_id, "ref": ref, "heads": selection["heads"], "gamma": selection.get("gamma"),
            "selection": selection}


if __name__ == "__main__":
    head_search()
