"""Key-value retrieval: find the value of a queried key among key-value pairs in the context.

Two vocabularies (``vocab``):

- ``words`` (default): ``Pairs: k1 v1, k2 v2, ..., kN vN. kq`` with 2N distinct words drawn from the built-in
  91-word story vocabulary (animals, things, places, colours, ...); the answer is the word ``vq``. Each value is the
  word right after its key (no separator token between them), the pattern an induction head copies, and every word
  is one token for a tokenizer that knows English words (the demo model's, GPT-2's, Llama's).
- ``letters``: ``Pairs: k1:v1 k2:v2 ... kN:vN. kq:`` with random 3-letter keys and 3-digit values (the prompts of
  1.1.0). A small BPE tokenizer splits a key into several tokens and a value into digits, and the ``:`` sits
  between key and value, so retrieval needs a multi-token match and a multi-token copy: a much harder task for a
  small model.

Scored by exact match of the greedy continuation's first word with the value, the word cut at the first stop
character (``,`` ``;`` ``:`` ``!`` ``?`` quotes) and stripped of periods (2.0.1; 2.0.0 only stripped punctuation
at the ends, so a model that answered ``small,`` and kept going without a space, ``small,9``, was scored wrong;
the prompts are unchanged). The queried pair's position in the context ("depth") is spread evenly over the
examples so accuracy can be broken down by depth, the way needle-in-a-haystack and the Lost-in-the-Middle studies
report it.

A synthetic associative-recall task in the style of the in-context retrieval literature (Olsson et al. 2022,
"In-context learning and induction heads", arXiv 2209.11895; multi-query associative recall, Arora et al. 2023,
"Zoology", arXiv 2312.04927). Deviation from MQAR: text with words instead of raw token ids, one scored query.
"""

from __future__ import annotations

import random
import re
import string
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import ParamError, check_range
from components.benchmarks import _scoring
from components.benchmarks.base import Benchmark, EvalResult
from components.benchmarks.induction_copy import WORDS
from registry import register


_STOP = re.compile(r"[,;:!?\"']")


def answer_matches(continuation: str, answer: str) -> bool:
    """Exact match of the continuation's first answer: its first whitespace-delimited run, cut at the first stop
    character (``, ; : ! ?`` or a quote) and stripped of periods, as generation stop sequences cut it in
    lm-eval-harness (``small,`` and ``small,bright`` both answer ``small``; ``smaller`` does not)."""
    words = continuation.strip().split()
    return bool(words) and _STOP.split(words[0].lstrip(".,;:!?\"'"), maxsplit=1)[0].strip(".") == answer


def value_spans(row: dict[str, Any], sep: str) -> list[tuple[int, int]]:
    """Character spans (in the training text) of the values of a ``v1, k2<sep>v2, k3<sep>v3`` target, each with
    the ``,`` that ends it."""
    start, target = len(row["prompt"]), row["target"]
    spans, pos = [], 0
    for j, part in enumerate(target.split(", ")):
        value_at = pos + (len(part) - len(part.lstrip()) if j == 0 else part.index(sep) + len(sep))
        end = pos + len(part)
        spans.append((start + value_at, start + min(end + 1, len(target))))
        pos = end + 2
    return spans


def depth_table(examples: list[dict[str, Any]], n_bins: int = 5) -> list[dict[str, Any]]:
    """Accuracy per depth bin (depth in [0, 1])."""
    agg: dict[int, list[int]] = defaultdict(list)
    for ex in examples:
        agg[min(int(ex["depth"] * n_bins), n_bins - 1)].append(int(ex["correct"]))
    return [{"depth": (b + 0.5) / n_bins, "accuracy": sum(v) / len(v), "n": len(v)} for b, v in sorted(agg.items())]


VOCABS = ("words", "letters")
#: separator between key and value, and the query suffix, per vocabulary
_SEP = {"words": " ", "letters": ":"}


@register("kv_retrieval", version="2.0.1", family="benchmark", paper="arXiv:2312.04927",
          summary="Synthetic in-context key-value lookup (word or letter/number pairs); accuracy by depth.")
@dataclass(frozen=True)
class KVRetrieval(Benchmark):
    """Synthetic key-value retrieval from the context.

    Parameters
    ----------
    n_pairs : int
        Key-value pairs per prompt (context length grows linearly); at most 45 with ``words``. Default 8.
    n_examples : int
        Examples per split. Default 100.
    queries : int
        Queried pairs per example (1..n_pairs). The first is the scored query; the others extend the target
        (``... kq vq, kr vr, ks vs``), which gives a language model trained on the task one supervised value per query
        instead of one per sequence (the dense supervision of multi-query associative recall). Scoring is unchanged:
        only the first value is checked. Default 1.
    vocab : str
        ``words`` or ``letters`` (see above). Default ``words``.
    seed : int
        Data seed; train and eval splits use disjoint derived seeds. Default 0.
    """

    n_pairs: int = 8
    n_examples: int = 100
    queries: int = 1
    vocab: str = "words"
    seed: int = 0

    metrics: ClassVar[dict[str, bool]] = {"accuracy": True}
    training_only_params: ClassVar[tuple[str, ...]] = ("queries",)
    primary_metric: ClassVar[str] = "accuracy"
    query_split: ClassVar[bool] = True
    figures: ClassVar[dict[str, tuple[str, ...]]] = {"by_depth": ("line", "depth", "accuracy")}

    def __post_init__(self) -> None:
        if self.vocab not in VOCABS:
            raise ParamError(f"kv_retrieval.vocab={self.vocab!r} must be one of {', '.join(VOCABS)}")
        check_range("kv_retrieval.n_pairs", self.n_pairs, 1, len(WORDS) // 2 if self.vocab == "words" else 500)
        check_range("kv_retrieval.n_examples", self.n_examples, 1)
        check_range("kv_retrieval.queries", self.queries, 1, self.n_pairs)

    def _pairs(self, rng: random.Random) -> list[tuple[str, str]]:
        if self.vocab == "words":
            words = rng.sample(WORDS, 2 * self.n_pairs)
            return list(zip(words[: self.n_pairs], words[self.n_pairs :]))
        keys: list[str] = []  # a list, not a set: set order varies between processes (hash randomisation)
        while len(keys) < self.n_pairs:
            key = "".join(rng.choices(string.ascii_lowercase, k=3))
            if key not in keys:
                keys.append(key)
        return [(k, f"{rng.randrange(1000):03d}") for k in keys]

    def sample(self, rng: random.Random, index: int = 0) -> dict[str, Any]:
        pairs = self._pairs(rng)
        sep = _SEP[self.vocab]
        q = index % self.n_pairs  # depth spread evenly over the examples
        if self.vocab == "words":
            context = ", ".join(f"{k}{sep}{v}" for k, v in pairs)
            prompt, first = f"Pairs: {context}. {pairs[q][0]}", " " + pairs[q][1]
        else:  # the 1.1.0 prompt
            context = " ".join(f"{k}{sep}{v}" for k, v in pairs)
            prompt, first = f"Pairs: {context}. {pairs[q][0]}{sep}", pairs[q][1]
        # extra queries from an RNG seeded by the prompt: the scored examples do not depend on `queries`
        more = random.Random(prompt).sample([i for i in range(self.n_pairs) if i != q], self.queries - 1)
        return {
            "prompt": prompt,
            "target": first + "".join(f", {pairs[i][0]}{sep}{pairs[i][1]}" for i in more),
            "answer": pairs[q][1],
            "depth": q / max(self.n_pairs - 1, 1),
            "n_pairs": self.n_pairs,
        }

    def question_start(self, row: dict[str, Any]) -> int | None:
        """The queried key (after the last ``". "``) is the question; the pairs are the context."""
        return row["prompt"].rindex(". ") + 1

    def answer_spans(self, row: dict[str, Any]) -> list[tuple[int, int]]:
        """Each value of the target with the character after it (``,`` or the end: the model learns where an answer
        stops); the keys of extra queries are random, nothing to learn from them."""
        return value_spans(row, _SEP[self.vocab])

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
