"""SCBench's record layout (``{id?, context, multi_turns: [{input, answer}]}``, HF ``microsoft/SCBench``) as sessions,
read from a JSONL/JSON/Parquet file and checked row by row: the first bad row raises naming the row (and the line of
a JSONL file) and the field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import data as data_sources


class SessionDataError(ValueError):
    """A user dataset row that does not follow SCBench's layout (the message names the row and the field)."""


@dataclass(frozen=True)
class Turn:
    input: str
    answers: tuple[str, ...]  # acceptable answers; the first is the golden one written into later turns


@dataclass(frozen=True)
class Session:
    id: str
    context: str
    turns: tuple[Turn, ...]

    def record(self) -> dict[str, Any]:
        """SCBench's layout (a list answer when there are several)."""
        return {"id": self.id, "context": self.context,
                "multi_turns": [{"input": t.input, "answer": t.answers[0] if len(t.answers) == 1 else list(t.answers)}
                                for t in self.turns]}


def read_layout(source: str) -> list[Session]:
    """Sessions of a JSONL/JSON/Parquet file in SCBench's layout; the first bad row raises
    :class:`SessionDataError` naming the row (and the line of a JSONL file) and the field."""
    path = Path(source).expanduser()
    records: list[tuple[str, Any]] = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{source} row {len(records)} (line {n})"
            try:
                records.append((where, json.loads(line)))
            except json.JSONDecodeError as e:
                raise SessionDataError(f"{where}: not valid JSON ({e.msg})") from None
    else:
        records = [(f"{source} row {i}", r) for i, r in enumerate(data_sources.read_records(source))]
    if not records:
        raise SessionDataError(f"{source}: no records")
    out, seen = [], {}
    for i, (where, r) in enumerate(records):
        session = _session(where, r, i)
        if session.id in seen:
            raise SessionDataError(f"{where}: field 'id' = {session.id!r} repeats {seen[session.id]}")
        seen[session.id] = where
        out.append(session)
    return out


def _session(where: str, r: Any, index: int) -> Session:
    if not isinstance(r, dict):
        raise SessionDataError(f"{where}: expected an object with 'context' and 'multi_turns', got {type(r).__name__}")
    context = r.get("context")
    if not isinstance(context, str) or not context.strip():
        raise SessionDataError(f"{where}: field 'context' must be a non-empty string"
                               + ("" if "context" in r else " (missing)"))
    turns = r.get("multi_turns")
    if isinstance(turns, str):  # Parquet/CSV writers may store nested lists as JSON text
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            pass
    if not isinstance(turns, list) or not turns:
        raise SessionDataError(f"{where}: field 'multi_turns' must be a non-empty list of {{input, answer}}"
                               + ("" if "multi_turns" in r else " (missing)"))
    out = []
    for j, t in enumerate(turns):
        at = f"{where}, multi_turns[{j}]"
        if not isinstance(t, dict):
            raise SessionDataError(f"{at}: expected an object with 'input' and 'answer'")
        if not isinstance(t.get("input"), str) or not t["input"].strip():
            raise SessionDataError(f"{at}: field 'input' must be a non-empty string"
                                   + ("" if "input" in t else " (missing)"))
        ans = t.get("answer")
        answers = [ans] if isinstance(ans, (str, int, float)) and not isinstance(ans, bool) else ans
        if not isinstance(answers, list) or not answers or any(
                not isinstance(a, (str, int, float)) or isinstance(a, bool) or not str(a).strip() for a in answers):
            raise SessionDataError(f"{at}: field 'answer' must be a non-empty string or a list of them"
                                   + ("" if "answer" in t else " (missing)"))
        out.append(Turn(t["input"], tuple(str(a).strip() for a in answers)))
    sid = r.get("id")
    return Session(str(sid) if sid not in (None, "") else f"row{index}", context, tuple(out))


__all__ = ["Session", "SessionDataError", "Turn", "read_layout"]
