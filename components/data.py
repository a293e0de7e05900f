"""Reading text records from the sources users bring: txt / JSONL / JSON / CSV / Parquet files, Hugging Face hub
datasets (``hf:<id>[:<config>[:<split>]]``, or a local dataset directory), and ``builtin:stories``.

Every reader returns plain dicts; errors name the source and what is wrong with it before any model work starts.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from components.benchmarks import _text

FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")


class DataSourceError(ValueError):
    """A data source that does not exist or cannot be read as records."""


def _hub_parts(source: str) -> tuple[str, str | None, str]:
    parts = source[3:].split(":")
    if not parts[0]:
        raise DataSourceError(f"{source!r}: expected hf:<dataset id>[:<config>[:<split>]]")
    name = parts[0]
    config = parts[1] or None if len(parts) > 1 else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return name, config, split


def read_records(source: str, *, limit: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Records from ``source`` (at most ``limit``)."""
    source = str(source).strip()
    if source.startswith("builtin:"):
        kind = source.split(":", 1)[1]
        if kind != "stories":
            raise DataSourceError(f"unknown built-in source {source!r}; available: builtin:stories")
        return [{"text": t} for t in _text.stories(seed, limit or 200)]
    if source.startswith("hf:"):
        return _read_hub(source, limit)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_hub("hf:" + str(path), limit)
    if not path.is_file():
        raise DataSourceError(f"data source {source!r} does not exist (a file, a dataset directory, hf:<id>, "
                              "or builtin:stories)")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataSourceError(f"data source {source!r}: unsupported file type {suffix!r}; use one of "
                              f"{', '.join(FILE_SUFFIXES)}")
    rows = list(_read_file(path, suffix))
    return rows[:limit] if limit is not None else rows


def _read_file(path: Path, suffix: str) -> Iterable[dict[str, Any]]:
    if suffix == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace")
        for para in text.split("\n\n"):
            if para.strip():
                yield {"text": para.strip()}
    elif suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataSourceError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = data.get("data", data.get("rows", data))
        if not isinstance(data, list):
            raise DataSourceError(f"{path}: expected a JSON list of records (or {{'data': [...]}})")
        yield from data
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh)
    else:
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()


def _read_hub(source: str, limit: int | None) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataSourceError("reading hub datasets needs the `datasets` package") from None
    name, config, split = _hub_parts(source)
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; report them uniformly
        raise DataSourceError(f"could not load dataset {name!r} (config={config}, split={split}): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [dict(r) for r in ds]


def texts(records: list[dict[str, Any]], field: str, source: str) -> list[str]:
    """The ``field`` of each record as text; a clear error when the field is missing."""
    if records and field not in records[0]:
        raise DataSourceError(f"{source!r}: records have no field {field!r}; fields: {', '.join(records[0])}")
    return [str(r[field]) for r in records if r.get(field) not in (None, "")]


def fingerprint(source: str) -> str:
    """Content hash of a file source; the source string itself for hub ids and built-ins."""
    path = Path(str(source)).expanduser()
    h = hashlib.sha256(str(source).encode())
    if path.is_file():
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
