"""Needle in a haystack: find a needle sentence's answer in filler text; scored by ROUGE-1 recall.

Prompt: haystack words with the needle inserted at a relative depth (at a sentence end), then the question. The
greedy answer (up to the first newline) is scored by ROUGE-1 recall against the needle's answer (``real_needle``);
``accuracy`` is the share of answers with recall > 0.5, the gate the Retrieval Head paper uses to decide that a
test "recalled the needle". Every (length, depth) cell gets ``n_per_cell`` tests: recall as a depth x length heatmap.

Needles: ``passkey`` (a 5-digit key), ``words`` (three random words), or a JSONL/JSON/CSV/Parquet file of
``needle``, ``question``, ``real_needle`` records. Haystack: ``builtin:stories`` or any text source.

Based on the needle-in-a-haystack protocol as used by Wu et al., "Retrieval Head Mechanistically Explains
Long-Context Factuality" (arXiv 2404.15574). Reference code: https://github.com/nightdessert/Retrieval_Head
(``needle_in_haystack_with_mask.py``). Deviations: lengths in words (tokenizers differ) rather than tokens;
ROUGE-1 without stemming; answers up to ``max_new_tokens`` (the reference decodes up to 50 tokens).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

from components import data as data_sources
from components.base import ParamError, check_range
from components.benchmarks import _needle, _scoring
from components.benchmarks.base import Benchmark, EvalResult
from registry import register


@dataclass(frozen=True)
class NeedleGrid:
    """The fields that define a grid of needle tests (shared by the needle benchmark and retrieval_score)."""

    lengths: tuple[int, ...] = (60, 120, 240)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    n_per_cell: int = 2
    needles: str = "passkey"
    haystack: str = "builtin:stories"
    template: str = ""

    def check_grid(self, name: str) -> None:
        if not self.lengths or not self.depths:
            raise ParamError(f"{name}: lengths and depths must not be empty")
        for n in self.lengths:
            check_range(f"{name}.lengths", n, 1, 1_000_000)
        for d in self.depths:
            check_range(f"{name}.depths", d, 0.0, 1.0)
        check_range(f"{name}.n_per_cell", self.n_per_cell, 1)
        try:
            _needle.check_template(self.template, f"{name}.template")
        except ValueError as e:
            raise ParamError(str(e)) from None
        if self.needles not in _needle.BUILTIN_NEEDLES and not self.needles.strip():
            raise ParamError(f"{name}.needles: give passkey, words or a needle file")

    @property
    def n_examples(self) -> int:
        return len(self.lengths) * len(self.depths) * self.n_per_cell

    def grid_test(self, rng: random.Random, index: int) -> dict[str, Any]:
        cell = index // self.n_per_cell
        return _needle.make_test(
            rng, needles=self.needles, haystack_source=self.haystack,
            length=self.lengths[cell // len(self.depths) % len(self.lengths)],
            depth=self.depths[cell % len(self.depths)], template=self.template, needle_index=index,
        )

    def grid_fingerprint(self) -> str:
        files = [s for s in (self.needles, self.haystack)
                 if s not in _needle.BUILTIN_NEEDLES and not s.startswith("builtin:")]
        return "-".join(data_sources.fingerprint(s) for s in files)


@register("needle", version="1.0.0", family="benchmark", paper="arXiv:2404.15574",
          summary="Needle in a haystack (passkey, words or your needles); ROUGE-1 recall as a depth x length heatmap.")
@dataclass(frozen=True)
class Needle(NeedleGrid, Benchmark):
    """Needle-in-a-haystack retrieval scored by ROUGE-1 recall.

    Parameters
    ----------
    lengths : list of int
        Haystack lengths in words. Default 60, 120, 240.
    depths : list of float
        Relative needle depths in [0, 1]. Default 0, 0.25, 0.5, 0.75, 1.
    n_per_cell : int
        Tests per (length, depth) cell. Default 2.
    needles : str
        ``passkey``, ``words``, or a file of needle/question/real_needle records. Default ``passkey``.
    haystack : str
        ``builtin:stories`` or a text source (txt/JSONL/CSV/Parquet, ``hf:<id>``). Default ``builtin:stories``.
    template : str
        Prompt template with ``{context}`` and ``{question}``; empty = the needle source's default. Default empty.
    max_new_tokens : int
        Greedy answer length. Default 16.
    seed : int
        Data seed. Default 0.
    """

    max_new_tokens: int = 16
    seed: int = 0

    metrics: ClassVar[dict[str, bool]] = {"accuracy": True, "recall": True}
    primary_metric: ClassVar[str] = "accuracy"
    query_split: ClassVar[bool] = True
    figures: ClassVar[dict[str, tuple[str, ...]]] = {"depth_x_length": ("heatmap", "length", "depth", "recall")}
    example: ClassVar[dict[str, str]] = {"lengths": "20,40", "depths": "0,1", "n_per_cell": "1"}

    def __post_init__(self) -> None:
        self.check_grid("needle")
        check_range("needle.max_new_tokens", self.max_new_tokens, 1)

    def sample(self, rng: random.Random, index: int = 0) -> dict[str, Any]:
        row = self.grid_test(rng, index)
        return {**row, "target": " " + row["answer"]}

    def data_fingerprint(self) -> str:
        return self.grid_fingerprint()

    def question_start(self, row: dict[str, Any]) -> int | None:
        """The template's text after ``{context}`` (the question in it filled in) is the question."""
        template = self.template or (_needle.BUILTIN_TEMPLATE if self.needles in _needle.BUILTIN_NEEDLES
                                     else _needle.FILE_TEMPLATE)
        suffix = template.split("{context}", 1)[1].replace("{question}", row["question"])
        return len(row["prompt"]) - len(suffix)

    def evaluate(self, model, tokenizer, rows, *, session=None, batch_size=16, progress=False) -> EvalResult:
        conts = _scoring.greedy_continuations(
            model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=self.max_new_tokens, session=session,
            batch_size=batch_size, progress=progress, desc="needle",
        )
        examples = []
        for r, c in zip(rows, conts):
            answer = _needle.answer_response(c)
            recall = _needle.rouge1_recall(r["answer"], answer)
            examples.append({"length": r["length"], "depth": r["depth"], "answer": r["answer"], "output": answer,
                             "recall": recall, "correct": recall > 0.5})
        cells: dict[tuple[int, float], list[float]] = defaultdict(list)
        for e in examples:
            cells[(e["length"], e["depth"])].append(e["recall"])
        grid = [{"length": k[0], "depth": k[1], "recall": sum(v) / len(v), "n": len(v)}
                for k, v in sorted(cells.items())]
        metrics = {"accuracy": sum(e["correct"] for e in examples) / len(examples),
                   "recall": sum(e["recall"] for e in examples) / len(examples)}
        return EvalResult(metrics=metrics, examples=examples, breakdowns={"depth_x_length": grid})
