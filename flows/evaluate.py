"""evaluate: one component on one task (the single-cell version of ``compare``)."""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.compare import run_plan
from flows.params import BatchSize, Dtype, Experiment, ModelName, Seeds
from infra.runners import task_runner
from registry.specs import Spec, parse
from tasks.plan import plan_request


@flow(name="evaluate", log_prints=True, task_runner=task_runner())
def evaluate(
    model: ModelName = "demo",
    component: str = "baseline",
    params: dict[str, str] = {},  # noqa: B006 - a Prefect parameter default, never mutated
    task: str = "kv_retrieval",
    task_params: dict[str, str] = {},  # noqa: B006
    seeds: Seeds = [0],  # noqa: B006
    batch_size: BatchSize = 16,
    experiment: Experiment = "evaluate",
    dtype: Dtype = "float32",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate one component (name[@version] plus params) on one task.

    Args:
        model: Hub id, local model directory, or "demo".
        component: Component name or name@version.
        params: Component parameters (key -> value).
        task: Benchmark name or spec.
        task_params: Benchmark parameters (key -> value).
        seeds: Data seeds.
        batch_size: Evaluation batch size.
        experiment: MLflow experiment name.
        dtype: float32, bfloat16 or float16.
        trust_remote_code: Allow model code from the hub (off by default).
        progress: Show progress bars.
    """
    comp = parse(component)
    bench = parse(task)
    comp = Spec(comp.name, comp.version, {**comp.params, **params})
    bench = Spec(bench.name, bench.version, {**bench.params, **task_params})
    plan = plan_request(model, [comp], [bench], seeds, trust_remote_code=trust_remote_code)
    return run_plan(plan, experiment=experiment, run_name=f"evaluate {comp.name} on {bench.name}", dtype=dtype,
                    batch_size=batch_size, trust_remote_code=trust_remote_code, progress=progress)


if __name__ == "__main__":
    evaluate()
