"""Results you can trust (issue 17, items 2 and 3): prepared data is checked against its recorded checksum and
rebuilt when it fails; evaluations are keyed by the data's content; a corrupted cached result is detected and
recomputed, never used (tests/unit/test_task_caching.py: every cached task persists checksummed results)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.settings import get_current_settings

from infra.hashing import hash_file
from registry.specs import parse
from tasks import integrity
from tasks.data import benchmark_data, load_data
from tasks.evaluate import _eval_cache_key, evaluate
from tasks.io import write_rows
from tasks.models import load_model

BENCH = "kv_retrieval(n_examples=6, seed=3)"


def _flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@flow
def _eval_flow(model_dir: str) -> tuple[str, float]:
    loaded = load_model(model_dir)
    path = benchmark_data(parse(BENCH).create("benchmark"))
    return path, evaluate(loaded, "baseline", BENCH, path, progress=False)["metrics"]["accuracy"]


def test_corrupted_or_truncated_prepared_data_is_rebuilt(tiny_llama_dir, capsys):
    path, acc = _eval_flow(str(tiny_llama_dir))
    path = Path(path)
    good = hash_file(path)
    assert integrity.sidecar(path).read_text().strip() == good
    capsys.readouterr()

    _flip_bit(path, path.stat().st_size // 2)  # one bit in the data pages
    with pytest.raises(integrity.CorruptDataError, match="failed its checksum"):
        load_data(str(path))  # never read silently
    path2, acc2 = _eval_flow(str(tiny_llama_dir))
    assert f"prepared data {path} failed its checksum; rebuilding" in capsys.readouterr().out
    assert path2 == str(path) and hash_file(path) == good and acc2 == acc

    path.write_bytes(path.read_bytes()[:100])  # truncated
    _, acc3 = _eval_flow(str(tiny_llama_dir))
    assert "failed its checksum; rebuilding" in capsys.readouterr().out
    assert hash_file(path) == good and acc3 == acc


def test_evaluation_cache_is_keyed_by_data_content(tiny_llama_dir, tmp_path):
    loaded = load_model.fn(str(tiny_llama_dir))
    data = tmp_path / "rows.parquet"
    rows = parse(BENCH).create("benchmark").build("eval")
    write_rows(rows, data)
    params = {"loaded": loaded, "component": "baseline", "benchmark": BENCH, "data_path": str(data), "batch_size": 16}
    first = _eval_cache_key(None, params)
    write_rows(rows[:-1], data)  # same path, other content
    assert _eval_cache_key(None, params) != first
    write_rows(rows, data)  # restored: the original key (and so the original, correct result)
    assert _eval_cache_key(None, params) == first


CALLS: list[int] = []


@task(cache_key_fn=lambda ctx, p: p["key"], result_serializer=integrity.CHECKED, persist_result=True)
def _scored(key: str) -> dict:
    CALLS.append(1)
    return {"accuracy": 1.0}


@flow
def _scored_flow(key: str) -> dict:
    return _scored(key)


def test_a_corrupted_cached_result_is_recomputed_not_used(capsys):
    key = f"integrity-{uuid.uuid4().hex}"
    CALLS.clear()
    assert _scored_flow(key) == {"accuracy": 1.0} and len(CALLS) == 1
    assert _scored_flow(key) == {"accuracy": 1.0} and len(CALLS) == 1  # cached
    stored = Path(get_current_settings().results.local_storage_path) / key  # where Prefect stores results now
    raw = stored.read_bytes()
    offset = raw.index(b"1.0", raw.index(b"accuracy"))
    _flip_bit(stored, offset)  # accuracy 1.0 -> 0.0 in the stored payload
    assert b"0.0" in stored.read_bytes()
    capsys.readouterr()
    assert _scored_flow(key) == {"accuracy": 1.0} and len(CALLS) == 2  # detected, recomputed
    assert "failed its checksum" in capsys.readouterr().out
    assert _scored_flow(key) == {"accuracy": 1.0} and len(CALLS) == 2  # the recomputed result replaced it
