"""compare: every component on every task, one model, side by side in MLflow.

prep data -> load model -> apply each component -> evaluate each task -> log runs -> comparison table + plot.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import BatchSize, Dtype, Experiment, ModelName, Seeds, Specs
from infra.runners import task_runner
from tasks.data import benchmark_data
from tasks.evaluate import evaluate
from tasks.models import load_model
from tasks.plan import Plan, plan_request
from tasks.report import comparison_table, log_run_link, log_table, to_markdown
from tasks.runs import tracked_run
from tasks.sweep import map_calls
from tasks.tracking import log_comparison, log_evaluation, publish_components

DEFAULT_COMPONENTS = ["baseline", "zerotuning(gamma=2)", "head_mask(heads=0:0;1:1)"]
DEFAULT_TASKS = ["kv_retrieval", "perplexity"]


def run_plan(plan: Plan, *, experiment: str, run_name: str, dtype: str, batch_size: int,
             trust_remote_code: bool, progress: bool) -> dict[str, Any]:
    """The shared recipe of ``compare`` and ``evaluate``."""
    # 1. Publish the component and benchmark versions (once each) to the MLflow registry.
    versions = publish_components(plan.refs)
    # 2. Data prep: Parquet per benchmark, cached across runs (+ train splits for components fitted on them).
    data = {b: benchmark_data(b.component) for b in plan.benchmarks}
    fitted = {c for c in plan.components if c.component.needs_fit}
    train = {b: benchmark_data(b.component, split="train") for b in plan.benchmarks} if fitted else {}
    # 3. Load the model once.
    loaded = load_model(plan.model, dtype=dtype, trust_remote_code=trust_remote_code)
    with tracked_run(experiment, run_name, tags={"attnflow.model": loaded.name, "attnflow.kind": experiment},
                     params={"model": plan.model, "components": plan.texts("components"),
                             "tasks": plan.texts("benchmarks")}) as parent:
        # 4. Evaluate every component on every task (cached by model/component/benchmark fingerprints); all at once
        #    when the flow's task runner is a process runner (ATTNFLOW_TASK_RUNNER=dask).
        #    A cell may hold a prompt component, which rewrites the rows before the patch scores them.
        results = map_calls(evaluate, [dict(loaded=loaded, component=c, benchmark=b, data_path=data[b],
                                             batch_size=batch_size, progress=progress,
                                             **({"train_path": train[b]} if c in fitted else {}),
                                             **({"prompt": p} if p is not None else {}))
                                        for p, c in plan.cells for b in plan.benchmarks])
        # 5. Log one run per evaluation, then the comparison.
        for r, (c, b) in zip(results, [(c, b) for c in plan.components for b in plan.benchmarks]):
            log_evaluation(r, experiment, parent, versions, seed=plan.seeds.get(b))
        table = comparison_table(results, title=f"{experiment}: {loaded.name}")
        log_comparison(parent, table, results)
    log_table(to_markdown(table))
    log_run_link(parent, experiment)
    return {"table": table, "run_id": parent, "experiment": experiment}


@flow(name="compare", log_prints=True, task_runner=task_runner())
def compare(
    model: ModelName = "demo",
    components: Specs = DEFAULT_COMPONENTS,
    tasks: Specs = DEFAULT_TASKS,
    seeds: Seeds = [0],  # noqa: B006 - a Prefect parameter default, never mutated
    batch_size: BatchSize = 16,
    experiment: Experiment = "compare",
    dtype: Dtype = "float32",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Compare components (rows) on tasks (columns) for one model.

    Args:
        model: Hub id, local model directory, or "demo".
        components: Component specs, e.g. "zerotuning@1(gamma=4)" or "head_mask(heads=0:1;2:3)"; a prompt
            component ("pgi", "sca", "rag(corpus=...)") alone or joined to a patch with "+" ("pgi+zerotuning").
        tasks: Benchmark specs, e.g. "kv_retrieval(n_pairs=16)" or "perplexity(source=data.txt)".
        seeds: Data seeds for benchmarks that have one; results report mean and std over seeds.
        batch_size: Evaluation batch size.
        experiment: MLflow experiment name.
        dtype: float32, bfloat16 or float16.
        trust_remote_code: Allow model code from the hub (off by default).
        progress: Show progress bars.
    """
    plan = plan_request(model, components, tasks, seeds, trust_remote_code=trust_remote_code)
    return run_plan(plan, experiment=experiment, run_name=f"compare {plan.model}", dtype=dtype,
                    batch_size=batch_size, trust_remote_code=trust_remote_code, progress=progress)


if __name__ == "__main__":
    compare()
