"""Data prep: build a benchmark split and store it as Parquet (cached across runs by Prefect), with its sha256
recorded beside it; a file that no longer matches is rebuilt (tasks/integrity.py)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

import registry
from infra.settings import settings
from tasks import integrity
from tasks.io import read_rows, write_rows
from tasks.retry import transient


@task(cache_policy=INPUTS + TASK_SOURCE, retries=2, retry_delay_seconds=[1, 5], result_serializer=integrity.CHECKED,
      retry_condition_fn=transient, task_run_name="prepare {benchmark}:{split}")
def prepare_data(benchmark: str, params: dict[str, Any], split: str, data_key: str) -> str:
    """Build one split of a benchmark and write it to Parquet; returns the file path."""
    bench = registry.get(benchmark, family="benchmark").create(params)
    path = settings().data_dir / f"{bench.component_name}-{bench.fingerprint()}-{data_key or 'gen'}-{split}.parquet"
    integrity.build_once(path, lambda p: write_rows(bench.build(split), p))
    return str(path)


def benchmark_data(benchmark: Any, split: str = "eval") -> str:
    """Prepared Parquet path for a benchmark instance (re-prepared if the file vanished or fails its checksum)."""
    return integrity.prepared(prepare_data, (benchmark.ref, benchmark.params(), split, benchmark.data_fingerprint()))


def load_data(path: str) -> list[dict[str, Any]]:
    """The rows of a prepared file, after checking it against its recorded checksum."""
    return read_rows(integrity.check(path))
