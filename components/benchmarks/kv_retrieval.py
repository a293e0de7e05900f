"""Key-value retrieval: find the value of a queried key among key:value pairs in the context.

Prompt: ``Pairs: k1:v1 k2:v2 ... kN:vN. kq:`` with 3-letter keys and 3-digit values; the answer is ``vq``. Scored
by exact match of the greedy continuation's first token-run (stripped) with the value. Every key follows a space,
so it tokenizes the same way in the context and in the query (1.0.0 started the context with the first key, which
a BPE tokenizer split differently from the queried copy). The queried pair's position in the context ("depth") is
spread evenly over the examples so accuracy can be broken down by depth, the way needle-in-a-haystack and the
Lost-in-the-Middle studies report it.

A synthetic associative-recall task in the style of the in-context retrieval literature (e.g. Olsson et al. 2022,
"In-context learning and induction heads", arXiv 2209.11895; Arora et al. 2023, "Zoology", arXiv 2312.04927).

Parameters
----------
n_pairs : int
    Key-value pairs per prompt (context length grows linearly). Default 8.
n_examples : int
    Examples per split. Default 100.
queries : int
    Queried pairs per example (1..n_pairs). The first is the scored query; the others extend the target
    (``... kq:vq kr:vr ks:vs``), which gives a language model trained on the task one supervised value per query
    instead of one per sequence (the dense supervision of multi-query associative recall, Arora et al. 2023).
    Scoring is unchanged: only the first value is checked. Default 1.
seed : int
    Data seed; train and eval splits use disjoint derived seeds. Default 0.
"""

from __future__ import annotations

import random
import string
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import check_range
from components.benchmarks import _scoring
from components.benchmarks.base import Benchmark, EvalResult
from registry import register


def answer_matches(continuation: str, answer: str) -> bool:
    """Exact match of the first whitespace-delimited run of the continuation (punctuation stripped)."""
    words = continuation.strip().split()
    return bool(words) and words[0].strip(".,;:!?\"'") == answer


def depth_table(examples: list[dict[str, Any]], n_bins: int = 5) -> list[dict[str, Any]]:
    """Accuracy per depth bin (depth in [0, 1])."""
    agg: dict[int, list[int]] = defaultdict(list)
    for ex in examples:
        agg[min(int(ex["depth"] * n_bins), n_bins - 1)].append(int(ex["correct"]))
    return [{"depth": (b + 0.5) / n_bins, "accuracy": sum(v) / len(v), "n": len(v)} for b, v in sorted(agg.items())]


@register("kv_retrieval", version="1.1.0", family="benchmark", paper=None,
          summary="Synthetic in-context key:value lookup; accuracy of the greedy answer, by depth.")
@dataclass(frozen=True)
class KVRetrieval(Benchmark):
    """Synthetic key-value retrieval from the context."""

    n_pairs: int = 8
    n_examples: int = 100
    queries: int = 1
    seed: int = 0

    metrics: ClassVar[dict[str, bool]] = {"accuracy": True}
    training_only_params: ClassVar[tuple[str, ...]] = ("queries",)
    primary_metric: ClassVar[str] = "accuracy"
    figures: ClassVar[dict[str, tuple[str, ...]]] = {"by_depth": ("line", "depth", "accuracy")}

    def __post_init__(self) -> None:
        check_range("kv_retrieval.n_pairs", self.n_pairs, 1, 500)
        check_range("kv_retrieval.n_examples", self.n_examples, 1)
        check_range("kv_retrieval.queries", self.queries, 1, self.n_pairs)

    def sample(self, rng: random.Random, index: int = 0) -> dict[str, Any]:
        keys: list[str] = []  # a list, not a set: set order varies between processes (hash randomisation)
        while len(keys) < self.n_pairs:
            key = "".join(rng.choices(string.ascii_lowercase, k=3))
            if key not in keys:
                keys.append(key)
        pairs = [(k, f"{rng.randrange(1000):03d}") for k in keys]
        q = index % self.n_pairs  # depth spread evenly over the examples
        context = " ".join(f"{k}:{v}" for k, v in pairs)
        prompt = f"Pairs: {context}. {pairs[q][0]}:"
        # extra queries from an RNG seeded by the prompt: the scored examples do not depend on `queries`
        more = random.Random(prompt).sample([i for i in range(self.n_pairs) if i != q], self.queries - 1)
        return {
            "prompt": prompt,
            "target": pairs[q][1] + "".join(f" {pairs[i][0]}:{pairs[i][1]}" for i in more),
            "answer": pairs[q][1],
            "depth": q / max(self.n_pairs - 1, 1),
            "n_pairs": self.n_pairs,
        }

    def evaluate(self, model, tokenizer, rows, *, session=None, batch_size=16, progress=False) -> EvalResult:
        conts = _scoring.greedy_continuations(
            model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=6, session=session,
            batch_size=batch_size, progress=progress, desc="kv_retrieval",
        )
        examples = [
            {"depth": r["depth"], "answer": r["answer"], "output": c, "correct": answer_matches(c, r["answer"])}
            for r, c in zip(rows, conts)
        ]
        acc = sum(e["correct"] for e in examples) / len(examples)
        return EvalResult(metrics={"accuracy": acc}, examples=examples, breakdowns={"by_depth": depth_table(examples)})
