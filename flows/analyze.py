"""analyze: run any analyzer (sink metric, retrieval score, head importance, path patching...) on a model.

validate -> publish the analyzer version -> prepare its data (Parquet, cached) -> load the model -> analyze
(cached by model, analyzer and data fingerprints) -> one MLflow run with arrays (.npy + Parquet), tables, head sets
(heads/*.json, usable as ``head_mask(heads=mlflow:<run_id>/heads/<name>.json)``) and figures.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import Dtype, Experiment, ModelName
from registry.specs import parse
from tasks.analysis import analysis_data, log_analysis, plan_analysis, run_analysis, summary_text
from tasks.models import load_model
from tasks.vlm import load_vlm
from tasks.report import log_run_link
from tasks.tracking import publish_components


@flow(name="analyze", log_prints=True)
def analyze(
    model: ModelName = "demo",
    analyzer: str = "sink_metric",
    params: dict[str, Any] = {},  # noqa: B006 - a Prefect parameter default, never mutated
    experiment: Experiment = "analyze",
    dtype: Dtype = "float32",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one analyzer on one model and log its arrays, tables, head sets and figures to MLflow.

    Args:
        model: Hub id, local model directory, or "demo".
        analyzer: Analyzer spec, e.g. "sink_metric", "retrieval_score(lengths=60;120)" or "path_patching@1".
        params: Analyzer parameters (key -> value), merged over the spec's.
        experiment: MLflow experiment name.
        dtype: float32, bfloat16 or float16.
        trust_remote_code: Allow model code from the hub (off by default).
        progress: Show progress bars.
    """
    # 1. Validate the analyzer, its parameters and the model before any compute.
    spec = plan_analysis(model, analyzer, params, trust_remote_code=trust_remote_code)
    # 2. Publish the analyzer version to the MLflow registry (once).
    versions = publish_components([parse(spec).ref])
    # 3. Data prep: the analyzer's rows as Parquet, cached across runs.
    data_path = analysis_data(spec)
    # 4. Load the model and run the analysis (cached by fingerprints).
    if parse(spec).create("analyzer").needs_images:  # vision encoders (e.g. attention_distance)
        loaded = load_vlm(model, dtype=dtype)
    else:
        loaded = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    record = run_analysis(loaded, spec, data_path, progress=progress)
    # 5. Log everything to one MLflow run.
    run_id = log_analysis(record, experiment, versions)
    print(f"\n{summary_text(record)}")
    log_run_link(run_id, experiment)
    return {"run_id": run_id, "experiment": experiment, "spec": spec, "metrics": record["result"]["metrics"],
            "heads": record["result"]["heads"]}


if __name__ == "__main__":
    analyze()
