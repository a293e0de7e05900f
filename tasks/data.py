"""Data prep: build a benchmark split and store it as Parquet (cached across runs by Prefect)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

import registry
from infra.settings import settings
from tasks.io import read_rows, write_rows
from tasks.retry import transient


@task(cache_policy=INPUTS + TASK_SOURCE, retries=2, retry_delay_seconds=[1, 5], result_serializer="json",
      retry_condition_fn=transient, task_run_name="prepare {benchmark}:{split}")
def prepare_data(benchmark: str, params: dict[str, Any], split: str, data_key: str) -> str:
    """Build one split of a benchmark and write it to Parquet; returns the file path."""
    bench = registry.get(benchmark, family="benchmark").create(params)
    path = settings().data_dir / f"{bench.component_name}-{bench.fingerprint()}-{data_key or 'gen'}-{split}.parquet"
    if not path.exists():
        write_rows(bench.build(split), path)
    return str(path)


def benchmark_data(benchmark: Any, split: str = "eval") -> str:
    """Prepared Parquet path for a benchmark instance (re-prepared if a cached path vanished from disk)."""
    args = (benchmark.ref, benchmark.params(), split, benchmark.data_fingerprint())
    path = prepare_data(*args)
    if not Path(path).exists():
        path = prepare_data.with_options(refresh_cache=True)(*args)
    return path


def load_data(path: str) -> list[dict[str, Any]]:
    return read_rows(path)
