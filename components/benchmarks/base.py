"""Benchmark: the family base of evaluation tasks (versioned like every component).

A benchmark is a frozen dataclass whose fields say what data it builds (seed, sizes, lengths, source). It has
two jobs, kept apart so that data prep can be cached and stored as Parquet by the tasks layer:

- ``build(split)`` -> list of plain rows (JSON-friendly dicts), deterministic for the parameters;
- ``evaluate(model, tokenizer, rows, session=...)`` -> :class:`EvalResult` with metrics (``higher_is_better``
  declared per metric), per-example records and breakdown tables (e.g. accuracy per depth x length).

Benchmarks import torch/transformers only; plots are made from the breakdowns by the tasks layer.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from components.base import Component


@dataclass
class EvalResult:
    """What one benchmark run produced."""

    metrics: dict[str, float]
    examples: list[dict[str, Any]] = field(default_factory=list)
    breakdowns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark(Component):
    """Base class of benchmarks (family ``benchmark``)."""

    splits: ClassVar[tuple[str, ...]] = ("train", "eval")
    #: metric name -> higher is better
    metrics: ClassVar[dict[str, bool]] = {}
    primary_metric: ClassVar[str] = ""
    #: figure specs the tasks layer draws from breakdowns: {breakdown name: (kind, x, y, value)}
    figures: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: parameters that only shape training text (e.g. more supervised answers per sequence), never what is scored;
    #: the train-lm flow drops them when it evaluates a mixture task
    training_only_params: ClassVar[tuple[str, ...]] = ()
    #: the scoring code attaches each prompt's text (patches that read prompt texts, e.g. PASTA's spans, can run)
    prompt_texts: ClassVar[bool] = True
    #: a row's prompt splits into context + question (``question_start``): the kv-sweep flow can then compress the
    #: context alone and ask the question on the compressed cache (query-agnostic evaluation)
    query_split: ClassVar[bool] = False
    #: rows carry ``query`` and ``content`` and the scorer reads prompt variants: prompt components
    #: (``components/prompts``) can rewrite them
    accepts_prompts: ClassVar[bool] = False

    def build(self, split: str) -> list[dict[str, Any]]:
        """Rows of one split. Generated benchmarks implement ``sample`` and inherit this."""
        rng = random.Random(self.split_seed(split))
        return [self.sample(rng, i) for i in range(getattr(self, "n_examples"))]

    def sample(self, rng: random.Random, index: int = 0) -> dict[str, Any]:
        """One generated example: at least ``prompt``, ``target`` (the exact continuation) and ``answer``."""
        raise NotImplementedError(f"{self.component_name} is not a generated benchmark")

    @staticmethod
    def training_text(row: dict[str, Any]) -> str:
        """Prompt + target: what a language model trains on (the train-lm mixture)."""
        return row["prompt"] + row["target"]

    def answer_spans(self, row: dict[str, Any]) -> list[tuple[int, int]]:
        """Character spans of ``training_text(row)`` that hold answers: what a model trained with
        ``task_loss: answers`` is supervised on. Default: the whole target. Benchmarks whose target mixes answers
        with unpredictable text (e.g. the random keys of extra queries) return only the answers."""
        start = len(row["prompt"])
        return [(start, start + len(row["target"]))]

    def question_start(self, row: dict[str, Any]) -> int | None:
        """Character offset in ``row["prompt"]`` where the question starts (everything before it is the context);
        None when the benchmark has no such split."""
        return None

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]], *,
                 session: Any = None, batch_size: int = 16, progress: bool = False) -> EvalResult:
        raise NotImplementedError

    def uses_seed(self) -> bool:
        """Whether the data depends on ``seed`` (flows run one evaluation per requested seed only then)."""
        return any(f.name == "seed" for f in dataclasses.fields(self))

    def data_fingerprint(self) -> str:
        """Extra identity of external data (e.g. a file's content hash); '' for generated data."""
        return ""

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"{self.component_name}: unknown split {split!r}; splits: {', '.join(self.splits)}")

    def split_seed(self, split: str) -> int:
        """A seed per split so that train and eval never share examples."""
        self.check_split(split)
        seed = getattr(self, "seed", 0)
        return seed * 1000 + 17 + self.splits.index(split)
