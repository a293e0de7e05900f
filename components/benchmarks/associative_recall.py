"""Associative recall: single-token keys bound to single-token values, then one key is queried.

Prompt: ``Bindings: d=4, k=7, a=1, ... k=``; the answer is ``7`` (every key follows a space, so it tokenizes
the same in the context and in the query; 1.0.0 started the context with the first key). Keys are letters,
values digits; with more pairs than digits values repeat, so the model must bind each key to its value rather
than memorise a value set. The classic synthetic probe of in-context recall, solved by induction-style heads.

From Ba et al. 2016 ("Using Fast Weights to Attend to the Recent Past", arXiv 1610.06258) and the H3/Zoology
line (Fu et al. 2023, arXiv 2212.14052; Arora et al. 2023, arXiv 2312.04927). Deviations: one scored query per
sequence (Zoology's MQAR scores several; ``queries`` > 1 adds the others to the target for training), text
format rather than raw token ids.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import check_range
from components.benchmarks import _scoring
from components.benchmarks.base import Benchmark, EvalResult
from components.benchmarks.kv_retrieval import answer_matches, depth_table, value_spans
from registry import register


@register("associative_recall", version="1.1.0", family="benchmark", paper="arXiv:2312.04927",
          summary="Single-token key=value bindings, one key queried; accuracy by depth.")
@dataclass(frozen=True)
class AssociativeRecall(Benchmark):
    """Associative recall of single-token key-value bindings.

    Parameters
    ----------
    n_pairs : int
        Key-value pairs in the context (at most 26). Default 8.
    n_examples : int
        Examples per split. Default 100.
    queries : int
        Queried keys per example (1..n_pairs); the first is scored, the others extend the target
        (``... k=7, a=1, d=4``) for dense supervision when a model trains on the task. Default 1.
    seed : int
        Data seed. Default 0.
    """

    n_pairs: int = 8
    n_examples: int = 100
    queries: int = 1
    seed: int = 0

    metrics: ClassVar[dict[str, bool]] = {"accuracy": True}
    training_only_params: ClassVar[tuple[str, ...]] = ("queries",)
    primary_metric: ClassVar[str] = "accuracy"
    figures: ClassVar[dict[str, tuple[str, ...]]] = {"by_depth": ("line", "depth", "accuracy")}

    def __post_init__(self) -> None:
        check_range("associative_recall.n_pairs", self.n_pairs, 1, 26)
        check_range("associative_recall.n_examples", self.n_examples, 1)
        check_range("associative_recall.queries", self.queries, 1, self.n_pairs)

    def sample(self, rng: random.Random, index: int = 0) -> dict[str, Any]:
        keys = rng.sample(string.ascii_lowercase, self.n_pairs)
        values = [rng.choice(string.digits) for _ in keys]
        q = index % self.n_pairs
        context = ", ".join(f"{k}={v}" for k, v in zip(keys, values))
        prompt = f"Bindings: {context}. {keys[q]}="
        # extra queries from an RNG seeded by the prompt: the scored examples do not depend on `queries`
        more = random.Random(prompt).sample([i for i in range(self.n_pairs) if i != q], self.queries - 1)
        target = values[q] + "".join(f", {keys[i]}={values[i]}" for i in more)
        return {"prompt": prompt, "target": target, "answer": values[q],
                "depth": q / max(self.n_pairs - 1, 1)}

    def answer_spans(self, row: dict[str, Any]) -> list[tuple[int, int]]:
        """Each value with the ``,`` after it (the keys of extra queries are random: nothing to learn from them)."""
        return value_spans(row, "=")

    def evaluate(self, model, tokenizer, rows, *, session=None, batch_size=16, progress=False) -> EvalResult:
        conts = _scoring.greedy_continuations(
            model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=2, session=session,
            batch_size=batch_size, progress=progress, desc="associative_recall",
        )
        examples = [{"depth": r["depth"], "answer": r["answer"], "output": c,
                     "correct": answer_matches(c[:1], r["answer"])} for r, c in zip(rows, conts)]
        acc = sum(e["correct"] for e in examples) / len(examples)
        return EvalResult(metrics={"accuracy": acc}, examples=examples, breakdowns={"by_depth": depth_table(examples)})
