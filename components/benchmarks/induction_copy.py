"""Induction copy: a random span of words, then its first words again; continue the copy.

Prompt: ``copy: w1 w2 ... wN | w1 w2 w3``; the answer is ``w4 ... w(3+m)``. Random spans cannot be predicted from
training statistics, only by attending to the earlier occurrence and copying the token after it: the signature
of induction heads. In training every token of the second copy is supervised (dense signal).

Based on Olsson et al., "In-context Learning and Induction Heads" (arXiv 2209.11895), repeated random token
sequences. Deviations: words from a fixed 91-word vocabulary instead of random token ids.

With a fixed span length and a tokenizer that has every word as one token, the second copy sits at a fixed offset
from the first, and a purely positional head ("attend 25 tokens back") solves the task without matching any
content. ``min_span_len`` draws the length per example, which rules that shortcut out: use it when the task is
training data for in-context retrieval (the train-lm mixture). ``numbers`` mixes 3-digit numbers into the span, so
the copy also covers the number tokens that key-value and passkey retrieval copy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import ParamError, check_range
from components.benchmarks import _scoring, _text
from components.benchmarks.base import Benchmark, EvalResult
from registry import register

WORDS = sorted(set(_text.ANIMALS + _text.PLACES + _text.THINGS + _text.COLORS + _text.FEELINGS + _text.NAMES
                   + _text.VERBS + _text.WEATHER))


@register("induction_copy", version="1.1.0", family="benchmark", paper="arXiv:2209.11895",
          summary="Repeated random span: continue the copy (exact match and per-word accuracy).")
@dataclass(frozen=True)
class InductionCopy(Benchmark):
    """Continue a repeated random span of words.

    Parameters
    ----------
    span_len : int
        Words in the random span (its maximum when ``min_span_len`` is set). Default 12.
    min_span_len : int
        When > 0, each example's span length is drawn uniformly from [min_span_len, span_len]. Default 0 (fixed).
    numbers : float
        Probability that a span item is a random 3-digit number instead of a word. Default 0.
    prefix_len : int
        Words of the span repeated in the prompt. Default 3.
    answer_len : int
        Words to produce (prefix_len + answer_len <= span_len). Default 4.
    n_examples : int
        Examples per split. Default 100.
    seed : int
        Data seed. Default 0.
    """

    span_len: int = 12
    min_span_len: int = 0
    numbers: float = 0.0
    prefix_len: int = 3
    answer_len: int = 4
    n_examples: int = 100
    seed: int = 0

    metrics: ClassVar[dict[str, bool]] = {"accuracy": True, "word_accuracy": True}
    primary_metric: ClassVar[str] = "accuracy"

    def __post_init__(self) -> None:
        check_range("induction_copy.span_len", self.span_len, 2, 500)
        check_range("induction_copy.prefix_len", self.prefix_len, 1)
        check_range("induction_copy.answer_len", self.answer_len, 1)
        check_range("induction_copy.n_examples", self.n_examples, 1)
        check_range("induction_copy.numbers", self.numbers, 0.0, 1.0)
        shortest = self.min_span_len or self.span_len
        if self.min_span_len:
            check_range("induction_copy.min_span_len", self.min_span_len, 2, self.span_len)
        if self.prefix_len + self.answer_len > shortest:
            raise ParamError(f"induction_copy: prefix_len + answer_len must be <= the shortest span ({shortest})")

    def sample(self, rng: random.Random, index: int = 0) -> dict[str, Any]:
        n = rng.randint(self.min_span_len, self.span_len) if self.min_span_len else self.span_len
        # the number draw only happens when numbers > 0, so default spans are those of 1.0.0
        span = [f"{rng.randrange(1000):03d}" if self.numbers and rng.random() < self.numbers else rng.choice(WORDS)
                for _ in range(n)]
        prompt = "copy: " + " ".join(span) + " | " + " ".join(span[: self.prefix_len])
        answer = span[self.prefix_len : self.prefix_len + self.answer_len]
        rest = span[self.prefix_len :]  # training supervises the whole remainder of the copy
        return {"prompt": prompt, "target": " " + " ".join(rest), "answer": " ".join(answer)}

    def evaluate(self, model, tokenizer, rows, *, session=None, batch_size=16, progress=False) -> EvalResult:
        conts = _scoring.greedy_continuations(
            model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=3 * self.answer_len + 2,
            session=session, batch_size=batch_size, progress=progress, desc="induction_copy",
        )
        examples = []
        for r, c in zip(rows, conts):
            want, got = r["answer"].split(), c.split()[: self.answer_len]
            hits = sum(a == b for a, b in zip(want, got))
            examples.append({"answer": r["answer"], "output": c, "correct": got == want,
                             "word_accuracy": hits / len(want)})
        n = len(examples)
        return EvalResult(metrics={"accuracy": sum(e["correct"] for e in examples) / n,
                                   "word_accuracy": sum(e["word_accuracy"] for e in examples) / n},
                          examples=examples)
