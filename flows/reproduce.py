"""reproduce: every method's headline claim as a measured check on one model, a verdict per claim.

validate (claim names, seeds, data paths, options, model; no compute) -> one nested MLflow run per claim (its
figures per seed and over seeds with 95% CIs, verdict tags, result.json, a per-seed figure) -> the parent run's
summary: claims.md / claims.json (one row per claim) and figures/claims.png (each claim's deciding effect with its
CI and threshold, coloured by verdict). Thresholds and the verdict rule: docs/reproduce.md.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import Dtype, Experiment, ModelName
from tasks.claims_report import collect, log_claim, log_summary, plan_claims, run_claim
from tasks.report import log_run_link, log_table
from tasks.runs import set_outcome, tracked_run

#: modules whose ``CLAIMS`` the flow runs; adding a module of claims is one line here
CLAIM_MODULES: tuple[str, ...] = ("tasks.claims_core", "tasks.claims_fewshot")


def available_claims() -> dict[str, Any]:
    return collect(CLAIM_MODULES)


@flow(name="reproduce", log_prints=True)
def reproduce(
    model: ModelName = "demo",
    claims: list[str] = [],  # noqa: B006 - a Prefect parameter default, never mutated
    seeds: list[int] = [0, 1, 2],  # noqa: B006
    data: dict[str, str] = {},  # noqa: B006
    options: dict[str, dict[str, Any]] = {},  # noqa: B006
    dtype: Dtype = "float32",
    experiment: Experiment = "reproduce",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the claims on a model; one MLflow run per claim nested under a parent with the summary table.

    Args:
        model: Hub id, local model directory, or "demo".
        claims: Claim names (default: all of them), e.g. ["sinks", "path_patching"].
        seeds: At least 3 seeds (data and random head draws); CIs are over seeds.
        data: Dataset key -> path (e.g. corpus, haystack, sst2); claims needing a missing key are inconclusive.
        options: Claim name -> its options, e.g. {"sinks": {"control_model": "/path/to/model", "n_samples": 32}}.
        dtype: float32, bfloat16 or float16.
        experiment: MLflow experiment name.
        progress: Show progress bars.
    """
    # 1. Validate everything before any compute.
    available = available_claims()
    names = plan_claims(available, model, claims, seeds, data, options)
    with tracked_run(experiment, f"reproduce {model}", tags={"attnflow.kind": "reproduce", "attnflow.model": model},
                     params={"model": model, "claims": ",".join(names), "seeds": ",".join(map(str, seeds)),
                             "data": data, "dtype": dtype}) as parent:
        # 2. Each claim: run, then log as a nested run.
        results = []
        for name in names:
            res = run_claim(available[name], name, model, seeds, data, dtype, progress, options.get(name, {}))
            log_claim(res, experiment, parent, options.get(name, {}), seeds)
            print(f"{name}: {res['verdict']} - {res['reason']}")
            results.append(res)
        # 3. The summary table and forest plot on the parent run.
        text = log_summary(parent, results, model)
        failed = [r["claim"] for r in results if r.get("error")]
        if failed:
            set_outcome(parent, "FAILED")
    log_table(text)
    log_run_link(parent, experiment)
    if failed:
        raise RuntimeError(f"claims {', '.join(failed)} failed (see their runs); the others are logged")
    return {"run_id": parent, "experiment": experiment, "results": results, "table": text}


if __name__ == "__main__":
    reproduce()
