"""SCBench's two query modes on one compressed prefill (arXiv:2412.10319, microsoft/MInference ``scbench/``).

- ``multi_turn`` (SCBench's default): turn i is answered after the compressed context followed by the earlier
  turns with their reference answers (golden context, ``create_multiturn_prompt``), then query i.
- ``multi_request`` (``--same_context_different_query``): every query is answered after the compressed context
  alone; nothing a query writes into the cache is kept for the next one.

The context is compressed once, without any query (query-agnostic), and every turn of both modes decodes on a fresh
copy of that compressed cache (:func:`components.presses._reuse.answer`): the earlier turns of multi-turn mode are
re-read uncompressed each turn instead of being kept in a growing cache. Deviations from SCBench: its turn 1
compresses context + first query together (query-aware for that turn) and later turns extend one live cache; plain
text prompts instead of a chat template; the context and each turn's text are tokenized separately.

Scoring (``Format.metric``): ``first_word`` (the output's first word, cut at punctuation, equals the answer: the
``kv_retrieval``/``passkey`` rule), ``substring`` (the answer occurs in the output's first line, case-insensitive:
SCBench's rule for scbench_kv and English QA), ``prefix`` (the output's first words equal the answer's words,
case and punctuation ignored).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import torch

from components.base import ParamError
from components.benchmarks.kv_retrieval import answer_matches
from components.presses import _reuse
from components.presses.base import KVPress
from components.scbench.sessions import (FileSessions, Format, KVSessions, PasskeySessions, Session, SessionTask,
                                         TextSessions)

MODES = ("multi_turn", "multi_request")
TASKS: dict[str, type[SessionTask]] = {"kv": KVSessions, "passkey": PasskeySessions, "text": TextSessions,
                                       "file": FileSessions}
LAYOUT_SUFFIXES = (".jsonl", ".json", ".parquet")


def task_from_spec(text: str) -> SessionTask:
    """``kv(n_pairs=24)``, ``passkey``, ``text(source=essay.txt)``, ``file(source=x.jsonl)`` or a bare path to a
    file in SCBench's layout."""
    from registry.specs import parse

    if Path(text.strip()).suffix.lower() in LAYOUT_SUFFIXES and "(" not in text:
        return FileSessions.from_params({"source": text.strip()})
    spec = parse(text)
    if spec.name not in TASKS or spec.version:
        raise ParamError(f"unknown SCBench task {text!r}; tasks: {', '.join(TASKS)} (name(k=v, ...)) or a "
                         f"{'/'.join(LAYOUT_SUFFIXES)} file in SCBench's layout")
    return TASKS[spec.name].from_params(spec.params)


def follow_up(session: Session, fmt: Format, turn: int, mode: str) -> str:
    """The text written after the compressed context for ``turn`` (earlier turns + golden answers in multi-turn)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} must be one of {', '.join(MODES)}")
    text = ""
    if mode == "multi_turn":
        for t in session.turns[:turn]:
            text += fmt.query.replace("{input}", t.input) + fmt.answer.replace("{answer}", t.answers[0]) + fmt.sep
    return text + fmt.query.replace("{input}", session.turns[turn].input)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def score(output: str, answers: tuple[str, ...], metric: str) -> bool:
    """Whether ``output`` answers with any of ``answers`` under ``metric`` (see the module docstring)."""
    if metric == "first_word":
        return any(answer_matches(output, a) for a in answers)
    first_line = output.strip().split("\n", 1)[0].lower()
    if metric == "substring":
        return any(" ".join(a.lower().split()) in " ".join(first_line.split()) for a in answers)
    if metric == "prefix":
        out = _words(first_line)
        return any(_words(a) and out[: len(_words(a))] == _words(a) for a in answers)
    raise ValueError(f"unknown metric {metric!r}")


def context_ids(tokenizer: Any, context: str, device: Any = "cpu") -> torch.Tensor:
    """(1, Tc) token ids of a context (with the tokenizer's special tokens, e.g. BOS)."""
    return tokenizer(context, return_tensors="pt").input_ids.to(device)


def query_ids(tokenizer: Any, text: str, device: Any = "cpu") -> torch.Tensor:
    """(1, Tq) token ids of a turn's text (no special tokens: it continues the context)."""
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(device)


def run_session(model: torch.nn.Module, tokenizer: Any, press: KVPress, prefill: _reuse.CompressedPrefill,
                session: Session, fmt: Format, mode: str) -> list[dict[str, Any]]:
    """Answer every turn of ``session`` in ``mode`` on copies of ``prefill``; one record per turn (output, score,
    tokens appended after the context, seconds of the query + decoding)."""
    device = next(model.parameters()).device
    out = []
    for i, turn in enumerate(session.turns):
        ids = query_ids(tokenizer, follow_up(session, fmt, i, mode), device)
        start = time.perf_counter()
        new = _reuse.answer(model, press, prefill, ids, fmt.max_new_tokens)
        seconds = time.perf_counter() - start
        text = tokenizer.decode(new[0], skip_special_tokens=True)
        out.append({"session": session.id, "mode": mode, "turn": i + 1, "answer": turn.answers[0], "output": text,
                    "correct": score(text, turn.answers, fmt.metric), "query_tokens": int(ids.shape[1]),
                    "seconds": seconds})
    return out
