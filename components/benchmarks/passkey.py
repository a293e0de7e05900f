"""Passkey retrieval: a number hidden at a chosen depth in filler text, asked for at the end.

Prompt: filler text with ``The pass key is 48213. Remember it. 48213 is the pass key.`` inserted at a relative
depth, then ``What is the pass key? The pass key is``; the answer is the number. Scored by exact match of the
greedy continuation's first word, cut at the first stop character as in ``kv_retrieval`` (1.0.1; 1.0.0 counted
``48213,1`` as wrong). Every (length, depth) cell of the grid gets ``n_per_cell`` examples, so accuracy
is reported as a depth x length heatmap, as in needle-in-a-haystack evaluations.

Format from Mohtashami & Jaggi, "Landmark Attention: Random-Access Infinite Context Length for Transformers"
(arXiv 2305.16300), also used by LongLoRA. Deviations: the filler is the built-in story text instead of the
repeated "The grass is green..." sentences, and lengths are counted in words (tokenizers differ).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import ParamError, check_range
from components.benchmarks import _scoring, _text
from components.benchmarks.base import Benchmark, EvalResult
from components.benchmarks.kv_retrieval import answer_matches
from registry import register

QUESTION = " What is the pass key? The pass key is"


@register("passkey", version="1.0.1", family="benchmark", paper="arXiv:2305.16300",
          summary="A number hidden at a chosen depth in filler text; accuracy as a depth x length heatmap.")
@dataclass(frozen=True)
class Passkey(Benchmark):
    """Passkey retrieval over a grid of context lengths and needle depths.

    Parameters
    ----------
    lengths : list of int
        Filler lengths in words (the grid's x axis). Default 60, 120, 240.
    depths : list of float
        Relative needle depths in [0, 1] (the grid's y axis). Default 0, 0.25, 0.5, 0.75, 1.
    n_per_cell : int
        Examples per (length, depth) cell. Default 4.
    digits : int
        Digits of the pass key. Default 5.
    seed : int
        Data seed. Default 0.
    """

    lengths: tuple[int, ...] = (60, 120, 240)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    n_per_cell: int = 4
    digits: int = 5
    seed: int = 0

    metrics: ClassVar[dict[str, bool]] = {"accuracy": True}
    primary_metric: ClassVar[str] = "accuracy"
    query_split: ClassVar[bool] = True
    figures: ClassVar[dict[str, tuple[str, ...]]] = {"depth_x_length": ("heatmap", "length", "depth", "accuracy")}
    example: ClassVar[dict[str, str]] = {"lengths": "20,40", "depths": "0,1", "n_per_cell": "2"}

    def __post_init__(self) -> None:
        if not self.lengths or not self.depths:
            raise ParamError("passkey: lengths and depths must not be empty")
        for n in self.lengths:
            check_range("passkey.lengths", n, 1, 100_000)
        for d in self.depths:
            check_range("passkey.depths", d, 0.0, 1.0)
        check_range("passkey.n_per_cell", self.n_per_cell, 1)
        check_range("passkey.digits", self.digits, 1, 12)

    @property
    def n_examples(self) -> int:
        return len(self.lengths) * len(self.depths) * self.n_per_cell

    def sample(self, rng: random.Random, index: int = 0) -> dict[str, Any]:
        cell = index // self.n_per_cell
        length = self.lengths[cell // len(self.depths) % len(self.lengths)]
        depth = self.depths[cell % len(self.depths)]
        key = str(rng.randrange(10 ** (self.digits - 1), 10**self.digits))
        needle = f" The pass key is {key}. Remember it. {key} is the pass key."
        words = _text.filler(rng, length).split(" ")
        cut = round(depth * len(words))
        before, after = " ".join(words[:cut]), " ".join(words[cut:])
        prompt = (before + needle + (" " + after if after else "")).strip() + QUESTION
        return {"prompt": prompt, "target": f" {key}.", "answer": key, "length": length, "depth": depth}

    def question_start(self, row: dict[str, Any]) -> int | None:
        return len(row["prompt"]) - len(QUESTION)

    def evaluate(self, model, tokenizer, rows, *, session=None, batch_size=16, progress=False) -> EvalResult:
        conts = _scoring.greedy_continuations(
            model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=self.digits + 3, session=session,
            batch_size=batch_size, progress=progress, desc="passkey",
        )
        examples = [{"length": r["length"], "depth": r["depth"], "answer": r["answer"], "output": c,
                     "correct": answer_matches(c, r["answer"])} for r, c in zip(rows, conts)]
        cells: dict[tuple[int, float], list[int]] = defaultdict(list)
        for e in examples:
            cells[(e["length"], e["depth"])].append(int(e["correct"]))
        grid = [{"length": k[0], "depth": k[1], "accuracy": sum(v) / len(v), "n": len(v)}
                for k, v in sorted(cells.items())]
        by_length = defaultdict(list)
        for e in examples:
            by_length[e["length"]].append(int(e["correct"]))
        metrics = {"accuracy": sum(e["correct"] for e in examples) / len(examples)}
        metrics.update({f"accuracy_len{n}": sum(v) / len(v) for n, v in sorted(by_length.items())})
        return EvalResult(metrics=metrics, examples=examples, breakdowns={"depth_x_length": grid})
