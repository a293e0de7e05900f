"""Scale-out: a compare sweep on a Dask cluster of 2 local worker processes equals the sequential run."""

from __future__ import annotations

import pytest
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

from flows.compare import compare
from infra.runners import is_parallel, local_cluster_kwargs, task_runner
from tests.flows.test_compare import task_states

COMPONENTS = ["baseline", "zerotuning(gamma=2)", "zerotuning(gamma=5)", "head_mask(heads=0:1;1:0)"]
TASKS = ["kv_retrieval(n_examples=12)", "perplexity(max_tokens=300)"]


def test_dask_sweep_runs_on_two_workers_and_equals_sequential(tiny_llama_dir):
    distributed = pytest.importorskip("distributed")
    kw = dict(model=str(tiny_llama_dir), components=COMPONENTS, tasks=TASKS, seeds=[0], progress=False)
    sequential = compare(**kw, experiment="scale-sequential", return_state=True)
    assert sequential.is_completed(), sequential

    with distributed.LocalCluster(**local_cluster_kwargs(2)) as cluster, distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        runner = task_runner("dask://" + cluster.scheduler_address.removeprefix("tcp://"))
        assert is_parallel(runner)
        # refresh_cache: the evaluations really run on the workers instead of coming from the sequential run's cache
        with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}), distributed.get_task_stream(client) as stream:
            parallel = compare.with_options(task_runner=runner)(**kw, experiment="scale-dask", return_state=True)
    assert parallel.is_completed(), parallel

    evaluations = [t for t in stream.data if t["key"].startswith("evaluate")]
    assert len(evaluations) == len(COMPONENTS) * len(TASKS)
    assert len({t["worker"] for t in evaluations}) == 2  # both worker processes evaluated cells
    states = task_states(parallel.state_details.flow_run_id)
    assert all(s == "Completed" for n, s in states.items() if n.startswith("evaluate")), states
    assert parallel.result()["table"] == sequential.result()["table"] | {"title": parallel.result()["table"]["title"]}
