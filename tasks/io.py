"""Atomic file writes and Parquet helpers: a crash never leaves a half-written file under its final name."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed to ``path`` (os.replace is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records to Parquet atomically (nested values are stored as JSON strings when needed)."""
    table = pa.Table.from_pylist([_flat(r) for r in rows])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def write_json(data: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))
    return Path(path)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        out[k] = json.dumps(v) if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)) else v
    return out
