"""vlm-eval: attention patches x image benchmarks x data seeds on one vision-language model, runs in MLflow.

validate (config only) -> prep data (Parquet, cached) -> load the VLM and its processor -> one cached evaluation
per (patch, benchmark) with greedy decoding inside the patch scope (text benchmarks: text-only prompts, no image)
-> one MLflow run each (accuracy, POPE precision/recall/F1/yes ratio, hallucination rate on absent objects,
per-kind breakdowns) -> a comparison table and bar figure on the parent run.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import BatchSize, Dtype, Experiment, ModelName, Seeds, Specs
from infra.runners import task_runner
from tasks.data import benchmark_data
from tasks.report import comparison_table, log_run_link, log_table, to_markdown
from tasks.runs import tracked_run
from tasks.sweep import map_calls
from tasks.tracking import log_comparison, log_evaluation, publish_components
from tasks.vlm import load_vlm, plan_vlm_request, vlm_evaluate

DEFAULT_COMPONENTS = ["baseline", "visual_logit_boost(selection=all)", "vhr"]
DEFAULT_TASKS = ["vlm_scenes(strategy=random)", "vlm_scenes(strategy=popular)", "vlm_scenes(strategy=adversarial)"]


@flow(name="vlm-eval", log_prints=True, task_runner=task_runner())
def vlm_eval(
    model: ModelName,
    components: Specs = DEFAULT_COMPONENTS,
    tasks: Specs = DEFAULT_TASKS,
    seeds: Seeds = [0],  # noqa: B006 - a Prefect parameter default, never mutated
    batch_size: BatchSize = 8,
    experiment: Experiment = "vlm-eval",
    dtype: Dtype = "float32",
) -> dict[str, Any]:
    """Evaluate attention patches on image benchmarks for one vision-language model.

    Args:
        model: Local model directory or hub id of a LLaVA, Idefics3/SmolVLM or Qwen2-VL model (with its processor).
        components: Patch specs, e.g. "baseline", "vhr(alpha=2)", "var(sink_dims=507;247)".
        tasks: Image benchmark specs: "vlm_scenes(strategy=adversarial)" or "vlm_qa(source=questions.jsonl)";
            text benchmarks (e.g. "induction_copy") run text-only prompts (text-only accuracy), with the patches that
            run without images (baseline, wings).
        seeds: Data seeds for generated benchmarks; results report mean and std over seeds.
        batch_size: Prompts per generation batch.
        experiment: MLflow experiment name.
        dtype: float32, bfloat16 or float16.
    """
    # 1. Validate the patches, the benchmarks (user data: the source exists) and the model config.
    plan = plan_vlm_request(model, components, tasks, seeds)
    versions = publish_components(plan.refs)
    # 2. Data prep: every benchmark's rows as Parquet (user images checked row by row), cached.
    data = {b: benchmark_data(b.component) for b in plan.benchmarks}
    # 3. Load the model and its processor once.
    loaded = load_vlm(plan.model, dtype=dtype)
    grid = plan.pairs()  # image-only patches are not paired with text benchmarks
    with tracked_run(experiment, f"vlm-eval {plan.model}", tags={"attnflow.model": loaded.name,
                                                                 "attnflow.kind": "vlm-eval"},
                     params={"model": plan.model, "components": plan.texts("components"),
                             "tasks": plan.texts("benchmarks")}) as parent:
        # 4. One evaluation per (patch, benchmark), cached by model/patch/benchmark/data fingerprints.
        results = map_calls(vlm_evaluate, [dict(loaded=loaded, component=c, benchmark=b, data_path=data[b],
                                                batch_size=batch_size) for c, b in grid])
        # 5. One run per pair, then the table and the figure on the parent run.
        for r, (_, b) in zip(results, grid):
            log_evaluation(r, experiment, parent, versions, seed=plan.seeds.get(b))
        table = comparison_table(results, title=f"{experiment}: {loaded.name}")
        log_comparison(parent, table, results)
    log_table(to_markdown(table))
    log_run_link(parent, experiment)
    return {"table": table, "run_id": parent, "experiment": experiment}


if __name__ == "__main__":
    vlm_eval()
