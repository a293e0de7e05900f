"""QA data for the uncertainty flow: a user's JSONL / JSON / CSV / Parquet file (or a hub dataset) with a question
field and a reference-answers field, checked before any compute and prepared once as Parquet (sealed with its
sha256, so the generations cache is keyed by the prepared content).

References: a list field, or a text field split on ``separator`` (TruthfulQA's CSV: ``Correct Answers`` separated
by ``;``). Rows are shuffled once with a fixed seed and the first ``n_questions`` kept (0 = all).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from components import data as data_sources
from infra.settings import settings
from tasks import integrity
from tasks.io import read_rows, write_rows

_SHUFFLE_SEED = 1234
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _references(value: Any, separator: str) -> list[str]:
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    elif isinstance(value, str) and value.strip().startswith("["):
        try:
            items = [str(v) for v in json.loads(value)]
        except json.JSONDecodeError:
            items = value.split(separator) if separator else [value]
    else:
        items = str(value).split(separator) if separator else [str(value)]
    return [s.strip() for s in items if s and s.strip()]


def read_qa(source: str, question_field: str = "question", answers_field: str = "answers", separator: str = ";",
            n_questions: int = 0) -> list[dict[str, Any]]:
    """Rows ``{id, question, references}``; raises naming the source and the bad field before any compute."""
    if not str(source).strip():
        raise data_sources.DataSourceError("data: required (a .jsonl/.json/.csv/.parquet file or hf:<id>)")
    path = Path(str(source)).expanduser()
    if not str(source).startswith("hf:"):
        if not path.exists():
            raise FileNotFoundError(f"data file {source!r} does not exist")
        if path.is_file() and path.suffix.lower() not in SUFFIXES:
            raise data_sources.DataSourceError(f"data file {source!r}: expected one of {', '.join(SUFFIXES)}")
    if n_questions < 0:
        raise ValueError(f"n_questions must be >= 0 (0 = all), got {n_questions}")
    records = data_sources.read_records(str(source))
    if not records:
        raise data_sources.DataSourceError(f"{source!r} has no records")
    missing = [f for f in (question_field, answers_field) if f not in records[0]]
    if missing:
        raise data_sources.DataSourceError(f"{source!r}: records have no field {', '.join(map(repr, missing))}; "
                                           f"fields: {', '.join(map(str, records[0]))} (set question_field / "
                                           "answers_field)")
    rows = []
    for i, r in enumerate(records):
        q = str(r.get(question_field) or "").strip()
        refs = _references(r.get(answers_field) or "", separator)
        if q and refs:
            rows.append({"id": str(r.get("id", i)), "question": q, "references": refs})
    if not rows:
        raise data_sources.DataSourceError(f"{source!r}: no record has both a {question_field!r} and a non-empty "
                                           f"{answers_field!r}")
    random.Random(_SHUFFLE_SEED).shuffle(rows)
    return rows[:n_questions] if n_questions else rows


@task(cache_policy=NO_CACHE, retries=0, task_run_name="prepare qa {source}")
def prepare_qa(source: str, question_field: str = "question", answers_field: str = "answers", separator: str = ";",
               n_questions: int = 0) -> str:
    """Validate and write the QA rows as sealed Parquet under ATTNFLOW_HOME/data; returns its path."""
    rows = read_qa(source, question_field, answers_field, separator, n_questions)
    key = hashlib.sha256(json.dumps([data_sources.fingerprint(source), question_field, answers_field, separator,
                                     n_questions, _SHUFFLE_SEED]).encode()).hexdigest()[:16]
    path = settings().data_dir / f"qa-{key}.parquet"
    integrity.build_once(path, lambda p: write_rows(rows, p))
    return str(path)


def load_qa(path: str) -> list[dict[str, Any]]:
    """The prepared rows, after checking the file against its recorded checksum."""
    return read_rows(integrity.check(path))
