"""scbench: SCBench's shared-context protocol: presses x ratios x tasks, multi-turn and multi-request.

validate presses, tasks (user files row by row) and the model -> load the model -> check every session fits the
context -> one cached point per (press, ratio, task): each context compressed once (reusable prefill cache on
disk), every turn answered in each mode -> one MLflow run per (point, mode) -> accuracy-per-turn figures and the
table on the parent run.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import Dtype, Experiment, ModelName, Specs
from infra.runners import task_runner
from tasks.kv_sweep import plan_presses
from tasks.models import check_model, load_model
from tasks.report import log_table
from tasks.runs import tracked_run
from tasks.scbench import check_lengths, log_scbench, plan_tasks, scbench_point
from tasks.sweep import map_calls

DEFAULT_PRESSES = ["snapkv", "streaming_llm", "h2o"]
DEFAULT_RATIOS = [0.0, 0.5, 0.875]
DEFAULT_TASKS = ["kv", "passkey"]
DEFAULT_MODES = ["multi_turn", "multi_request"]


@flow(name="scbench", log_prints=True, task_runner=task_runner())
def scbench(
    model: ModelName = "demo",
    presses: Specs = DEFAULT_PRESSES,
    ratios: list[float] = DEFAULT_RATIOS,  # noqa: B006 - a Prefect parameter default, never mutated
    tasks: Specs = DEFAULT_TASKS,
    modes: Specs = DEFAULT_MODES,
    experiment: Experiment = "scbench",
    dtype: Dtype = "float32",
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """SCBench's shared-context evaluation of KV-cache presses: one compressed context, several queries.

    Args:
        model: Hub id, local model directory, or "demo".
        presses: Press specs without ratio, e.g. "snapkv(window=32)" or "streaming_llm(n_sink=4)".
        ratios: Compression ratios (fraction of the context removed), each in [0, 1).
        tasks: SCBench tasks: "kv(n_pairs=40, n_queries=4)", "passkey(words=800, n_needles=4)",
            "text(source=essay.txt)", "file(source=data.jsonl)" or a .jsonl/.parquet path in SCBench's layout.
        modes: multi_turn (earlier turns with their reference answers precede each query) and/or
            multi_request (independent queries on the same context).
        experiment: MLflow experiment name.
        dtype: float32, bfloat16 or float16.
        trust_remote_code: Allow model code from the hub (off by default).
    """
    # 1. Validate everything before compute: presses x ratios, tasks (user rows and fields), the model reference.
    points = plan_presses(presses, ratios)
    sets = plan_tasks(tasks, modes)
    check_model(model, trust_remote_code=trust_remote_code)
    # 2. The model, once; every session must fit its context.
    loaded = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    lengths = check_lengths(loaded, sets, modes)
    with tracked_run(experiment, f"scbench {loaded.name}", tags={"attnflow.model": loaded.name,
                                                                  "attnflow.kind": "scbench"},
                     params={"model": model, "presses": presses, "ratios": ratios, "tasks": tasks,
                             "modes": modes, "dtype": dtype, "max_tokens": lengths}) as parent:
        # 3. One point per (press, ratio, task): contexts compressed once (prefill cache), every turn in each mode.
        results = map_calls(scbench_point, [dict(loaded=loaded, press=p, sessions=s, modes=modes)
                                            for s in sets for p in points])
        # 4. A run per (point, mode), the per-turn figures and the table on the parent.
        table = log_scbench(experiment, parent, results)
    log_table(table)
    print(f"MLflow run: {parent} (experiment '{experiment}')")
    return {"table": table, "run_id": parent, "experiment": experiment, "points": results}


if __name__ == "__main__":
    scbench()
