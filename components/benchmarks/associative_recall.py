"""Associative recall: single-token keys bound to single-token values, then one key is queried.

Prompt: ``d=4, k=7, a=1, ... k=``; the answer is ``7``. Keys are letters, values digits; with more pairs than
digits values repeat, so the model must bind each key to its value rather than memorise a value set. The
classic synthetic probe of in-context recall, solved by induction-style heads.

From Ba et al. 2016 ("Using Fast Weights to Attend to the Recent Past", arXiv 1610.06258) and the H3/Zoology
line (Fu et al. 2023, arXiv 2212.14052; Arora et al. 2023, arXiv 2312.04927). Deviations: one query per
sequence (Zoology's MQAR asks several), text format rather than raw token ids.

Parameters
----------
n_pairs : int
    Key-value pairs in the context (at most 26). Default 8.
n_examples : int
    Examples per split. Default 100.
seed : int
    Data seed. Default 0.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import check_range
from components.benchmarks import _scoring
from components.benchmarks.base import Benchmark, EvalResult
from components.benchmarks.kv_retrieval import answer_matches, depth_table
from registry import register


@register("associative_recall", version="1.0.0", family="benchmark", paper="arXiv:2312.04927",
          summary="Single-token key=value bindings, one key queried; accuracy by depth.")
@dataclass(frozen=True)
class AssociativeRecall(Benchmark):
    """Associative recall of single-token key-value bindings."""

    n_pairs: int = 8
    n_examples: int = 100
    seed: int = 0

    metrics: ClassVar[dict[str, bool]] = {"accuracy": True}
    primary_metric: ClassVar[str] = "accuracy"
    figures: ClassVar[dict[str, tuple[str, ...]]] = {"by_depth": ("line", "depth", "accuracy")}

    def __post_init__(self) -> None:
        check_range("associative_recall.n_pairs", self.n_pairs, 1, 26)
        check_range("associative_recall.n_examples", self.n_examples, 1)

    def sample(self, rng: random.Random, index: int = 0) -> dict[str, Any]:
        keys = rng.sample(string.ascii_lowercase, self.n_pairs)
        values = [rng.choice(string.digits) for _ in keys]
        q = index % self.n_pairs
        context = ", ".join(f"{k}={v}" for k, v in zip(keys, values))
        return {"prompt": f"{context}. {keys[q]}=", "target": values[q], "answer": values[q],
                "depth": q / max(self.n_pairs - 1, 1)}

    def evaluate(self, model, tokenizer, rows, *, session=None, batch_size=16, progress=False) -> EvalResult:
        conts = _scoring.greedy_continuations(
            model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=2, session=session,
            batch_size=batch_size, progress=progress, desc="associative_recall",
        )
        examples = [{"depth": r["depth"], "answer": r["answer"], "output": c,
                     "correct": answer_matches(c[:1], r["answer"])} for r, c in zip(rows, conts)]
        acc = sum(e["correct"] for e in examples) / len(examples)
        return EvalResult(metrics={"accuracy": acc}, examples=examples, breakdowns={"by_depth": depth_table(examples)})
