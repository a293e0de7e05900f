"""Shared plumbing of the benchmarks built from users' labelled data (classification, multiple choice).

Splits: the rows of ``source`` are shuffled once with a fixed seed (so every run seed sees the same evaluation
rows); the first ``n_examples`` are the ``eval`` split and the rest the ``train`` pool, unless ``train_source`` is
given, which then is the train pool. Demonstrations for k-shot prompts come from the train pool, drawn with the
run ``seed`` (different seeds = different demonstrations, as ACT and ZeroTuning average over demo seeds); the
``train`` split's queries are train-pool rows with demonstrations drawn from the other train-pool rows. Scoring:
the option whose tokens get the highest log-probability after the prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from components import data as data_sources
from components.base import ParamError, check_range, unescape
from components.benchmarks import _scoring
from components.benchmarks.base import Benchmark, EvalResult

_SHUFFLE_SEED = 1234
MAX_ROWS = 100_000


def check_source(name: str, source: str, required: bool = True) -> None:
    """Fail at construction (before any compute) on an empty or missing local source."""
    if not source.strip():
        if required:
            raise ParamError(f"{name}: required (a .jsonl/.json/.csv/.parquet file, a dataset directory or "
                             "hf:<id>[:<config>[:<split>]])")
        return
    if source.startswith(("hf:", "builtin:")):
        return
    if not Path(source).expanduser().exists():
        raise ParamError(f"{name}: {source!r} does not exist")


@dataclass(frozen=True)
class UserDataBenchmark(Benchmark):
    """Fields and checks shared by the user-data benchmarks (documented in each benchmark's module)."""

    source: str = ""
    template: str = ""
    shots: int = 2
    separator: str = "\\n\\n"
    train_source: str = ""
    n_examples: int = 200
    seed: int = 0

    placeholder: ClassVar[str] = ""  # the field name the template must contain
    accepts_prompts: ClassVar[bool] = True  # rows carry query + content; score_options reads prompt variants
    metrics: ClassVar[dict[str, bool]] = {"accuracy": True}
    primary_metric: ClassVar[str] = "accuracy"

    def __post_init__(self) -> None:
        name = self.component_name
        check_source(f"{name}.source", self.source)
        check_source(f"{name}.train_source", self.train_source, required=False)
        check_range(f"{name}.shots", self.shots, 0, 64)
        check_range(f"{name}.n_examples", self.n_examples, 1)
        if "{" + self.placeholder + "}" not in unescape(self.template):
            raise ParamError(f"{name}.template must contain {{{self.placeholder}}}")

    def data_fingerprint(self) -> str:
        return data_sources.fingerprint(self.source) + data_sources.fingerprint(self.train_source or "-")


def read(source: str, fields: list[str]) -> list[dict[str, Any]]:
    """Records of ``source`` that have every field (a clear error naming a missing field)."""
    records = data_sources.read_records(source, limit=MAX_ROWS)
    if not records:
        raise data_sources.DataSourceError(f"{source!r} has no records")
    missing = [f for f in fields if f not in records[0]]
    if missing:
        raise data_sources.DataSourceError(f"{source!r}: records have no field {', '.join(map(repr, missing))}; "
                                           f"fields: {', '.join(records[0])}")
    return [r for r in records if all(r.get(f) not in (None, "") for f in fields)]


def split_rows(bench: Any, fields: list[str], split: str) -> tuple[list[dict], list[dict]]:
    """(queries, demonstration pool) of one split."""
    bench.check_split(split)
    rows = read(bench.source, fields)
    random.Random(_SHUFFLE_SEED).shuffle(rows)
    if bench.train_source:
        pool = read(bench.train_source, fields)
        evals = rows[: bench.n_examples]
    else:
        evals, pool = rows[: bench.n_examples], rows[bench.n_examples:]
    if split == "eval":
        return evals, pool
    if len(pool) < 2:
        raise data_sources.DataSourceError(f"{bench.component_name}: no train rows left in {bench.source!r} after "
                                           f"{bench.n_examples} evaluation rows; lower n_examples or give train_source")
    return pool[: bench.n_examples], pool


def few_shot_rows(bench: Any, split: str, fields: list[str],
                  make: Callable[[dict], tuple[str, str, list[str], str]]) -> list[dict[str, Any]]:
    """Rows ``{prompt, target, answer, choices}``: k demonstrations (prompt + correct option) then the query.
    ``make(record) -> (prompt, target, choices, answer)``."""
    queries, pool = split_rows(bench, fields, split)
    if bench.shots and len(pool) < bench.shots + (split == "train"):
        raise data_sources.DataSourceError(f"{bench.component_name}: {bench.shots} shots need at least that many "
                                           f"train rows, {bench.source!r} leaves {len(pool)}")
    rng = random.Random(bench.split_seed(split))
    out = []
    for rec in queries:
        others = [r for r in pool if r is not rec]
        demos = rng.sample(others, bench.shots) if bench.shots else []
        prefix = "".join(p + t + unescape(bench.separator) for p, t, _, _ in map(make, demos))
        prompt, target, choices, answer = make(rec)
        out.append({"prompt": prefix + prompt, "target": target, "answer": answer, "choices": choices,
                    "query": prompt, "content": str(rec[fields[0]])})
    return out


def score_options(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, session: Any, batch_size: int,
                  progress: bool, normalize: bool = False) -> EvalResult:
    """Accuracy of the highest-log-probability option (``normalize``: mean per token instead of the sum).

    Rows rewritten by a prompt component may hold ``prompt_variants`` (several prompts for one question): every
    option is scored after every variant, ``variant_prior`` (log-weights) is added, and the variants are combined
    per option by ``variant_combine`` (``max`` or ``logsumexp``; see ``components/prompts/base.py``)."""
    flat = [(i, p) for i, r in enumerate(rows) for p in r.get("prompt_variants") or [r["prompt"]]]  # (row, prompt)
    flat_scores = _scoring.choice_logprobs(model, tokenizer, [p for _, p in flat],
                                           [rows[i]["choices"] for i, _ in flat],
                                           session=session, batch_size=batch_size, progress=progress)
    per_row: list[list[list[float]]] = [[] for _ in rows]  # row -> variant -> option scores
    for (i, _), s in zip(flat, flat_scores):
        per_row[i].append(s)
    examples = []
    for r, variants in zip(rows, per_row):
        if normalize:
            lens = [max(len(tokenizer(c, add_special_tokens=False)["input_ids"]), 1) for c in r["choices"]]
            variants = [[v / n for v, n in zip(s, lens)] for s in variants]
        s = combine_variants(variants, r.get("variant_prior"), r.get("variant_combine", "max"))
        pred = r["choices"][max(range(len(s)), key=s.__getitem__)]
        examples.append({"answer": r["answer"], "prediction": pred.strip(), "correct": pred == r["target"]})
    acc = sum(e["correct"] for e in examples) / len(examples)
    return EvalResult(metrics={"accuracy": acc}, examples=examples)


def combine_variants(scores: list[list[float]], prior: list[float] | None, how: str) -> list[float]:
    """Option scores of one question from its per-variant scores (variants x options): ``max`` over variants of
    score + prior, or ``logsumexp`` (the mixture sum_v exp(prior_v) p(option | variant v)). One variant and no
    prior: the scores unchanged."""
    import math

    if len(scores) == 1 and not prior:
        return list(scores[0])
    prior = list(prior) if prior else [0.0] * len(scores)
    if len(prior) != len(scores):
        raise ValueError(f"variant_prior has {len(prior)} entries for {len(scores)} prompt variants")
    table = [[v + w for v in s] for s, w in zip(scores, prior)]  # (variants, options)
    if how == "max":
        return [max(col) for col in zip(*table)]
    if how == "logsumexp":
        out = []
        for col in zip(*table):
            m = max(col)
            out.append(m + math.log(sum(math.exp(v - m) for v in col)))
        return out
    raise ValueError(f"variant_combine must be max or logsumexp, got {how!r}")
