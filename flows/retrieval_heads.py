"""retrieval-heads: find the retrieval heads, then test that they are causal (Wu et al. 2024, arXiv 2404.15574).

retrieval_score on needle tests -> mask the top-K retrieval heads vs K random non-retrieval heads (several random
draws) -> needle / passkey / kv_retrieval accuracy of the unmasked model, the top-K-masked model and the
random-masked models side by side -> the verdict against the paper's expectation (masking retrieval heads
collapses retrieval, masking random heads does not), all in one MLflow parent run.
"""

from __future__ import annotations

from typing import Any, Literal

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import BatchSize, Count, Dtype, Experiment, ModelName, Positive, Specs
from registry.specs import parse, resolved
from tasks.analysis import (analysis_data, check_head_budget, choose_head_sets, head_mask_spec, log_analysis,
                            log_verdict, plan_analysis, relabel, retrieval_verdict, run_analysis, summary_text)
from tasks.data import benchmark_data
from tasks.evaluate import evaluate
from tasks.models import load_model
from tasks.plan import plan_request
from tasks.report import comparison_table, log_run_link, log_table, to_markdown
from tasks.runs import tracked_run
from tasks.tracking import log_comparison, log_evaluation, publish_components

DEFAULT_TASKS = ["needle", "passkey", "kv_retrieval"]


@flow(name="retrieval-heads", log_prints=True)
def retrieval_heads(
    model: ModelName = "demo",
    detect: dict[str, Any] = {},  # noqa: B006 - a Prefect parameter default, never mutated
    top_k: Count = 0,
    n_random: Positive = 3,
    seed: int = 0,
    tasks: Specs = DEFAULT_TASKS,
    mask_mode: Literal["uniform", "zero"] = "uniform",
    mask_phase: Literal["all", "prefill", "decode"] = "all",
    batch_size: BatchSize = 16,
    experiment: Experiment = "retrieval-heads",
    dtype: Dtype = "float32",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Detect retrieval heads and compare masking them with masking as many random non-retrieval heads.

    Args:
        model: Hub id, local model directory, or "demo".
        detect: retrieval_score parameters (key -> value), e.g. {"lengths": "60,120", "needles": "passkey"}.
        top_k: Heads to mask; 0 = every retrieval head (score > threshold).
        n_random: Random draws of K non-retrieval heads.
        seed: Seed of the random draws.
        tasks: Retrieval benchmarks to score, e.g. "needle", "passkey(lengths=60;120)", "kv_retrieval".
        mask_mode: uniform (zero logits, the paper's masking) or zero (zero head output).
        mask_phase: Mask on every forward (all), the prompt only (prefill) or generated tokens only (decode).
        batch_size: Evaluation batch size.
        experiment: MLflow experiment name.
        dtype: float32, bfloat16 or float16.
        trust_remote_code: Allow model code from the hub (off by default).
        progress: Show progress bars.
    """
    # 1. Validate the detector, the tasks and the model before any compute.
    spec = plan_analysis(model, "retrieval_score", detect, trust_remote_code=trust_remote_code)
    plan = plan_request(model, ["baseline"], tasks, [seed], trust_remote_code=trust_remote_code)
    check_head_budget(model, top_k, n_random, trust_remote_code=trust_remote_code)
    versions = publish_components([parse(spec).ref, "head_mask", *plan.refs])
    # 2. Detect: retrieval scores on needle tests (cached), logged as a child run.
    loaded = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    record = run_analysis(loaded, spec, analysis_data(spec), progress=progress)
    with tracked_run(experiment, f"retrieval-heads {loaded.name}",
                     tags={"attnflow.model": loaded.name, "attnflow.kind": experiment},
                     params={"model": model, "detector": spec, "top_k": top_k, "n_random": n_random, "seed": seed,
                             "tasks": plan.texts("benchmarks"), "mask_mode": mask_mode,
                             "mask_phase": mask_phase}) as parent:
        log_analysis(record, experiment, versions, parent)
        print(summary_text(record))
        # 3. The head sets: top-K by score, and K random non-retrieval heads per draw.
        sets = choose_head_sets(record, top_k, n_random, seed)
        if not sets["k"]:
            print("no retrieval heads found (no head scored above the threshold): nothing to mask; "
                  "pass top_k > 0 to mask the best-scoring heads anyway")
            return {"run_id": parent, "experiment": experiment, "sets": sets, "table": None, "verdict": None}
        top_label, random_label = f"mask top-{sets['k']} retrieval heads", f"mask {sets['k']} random heads"
        arms = [("baseline", "baseline"), (head_mask_spec(sets["top"], mask_mode, mask_phase), top_label)]
        arms += [(head_mask_spec(d, mask_mode, mask_phase), random_label) for d in sets["random"]]
        # 4. Evaluate every arm on every task (cached), one MLflow run each.
        data = {b: benchmark_data(b.component) for b in plan.benchmarks}
        results = []
        for comp, label in ((resolved(c, "patch"), label) for c, label in arms):  # each arm built once
            for b in plan.benchmarks:
                r = evaluate(loaded, comp, b, data[b], batch_size=batch_size, progress=progress)
                log_evaluation(r, experiment, parent, versions, seed=plan.seeds.get(b))
                results.append(relabel(r, label))
        # 5. Side by side (random arms: mean ± std over draws) and the verdict against the paper's expectation.
        table = comparison_table(results, title=f"retrieval heads: {loaded.name}",
                                 spread="standard deviation over seeds and, for the random arms, over head draws")
        log_comparison(parent, table, results)
        verdict = retrieval_verdict(table, top_label, random_label)
        log_verdict(parent, sets, verdict)
    log_table(to_markdown(table))
    log_table(verdict["text"])  # the command prints the table and the verdict itself
    log_run_link(parent, experiment)
    return {"run_id": parent, "experiment": experiment, "sets": sets, "table": table, "verdict": verdict}


if __name__ == "__main__":
    retrieval_heads()
