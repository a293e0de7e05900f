"""Multiple choice from your own data, k-shot prompts, scored by option log-probability.

Each record has a question, a list of options and the correct one. The prompt is ``template`` filled with the
question, preceded by ``shots`` solved demonstrations; every option is scored by the log-probability of its text
after the prompt (summed over its tokens, or averaged per token with ``normalize=true``) and the best one is the
prediction, as ZeroTuning and lm-evaluation-harness score multiple choice.

Options may be a list of strings or a mapping with ``text`` and ``label`` lists (the ARC layout); the answer may be
an index, an option label (``B``; letters A, B, ... when the options have no labels) or the option's text.
Sources and splits as in ``classification`` (``components/benchmarks/_userdata.py``).

Scoring as in ZeroTuning (arXiv 2505.11739). Deviations: ACT scores multiple choice by the greedy option letter;
here options are scored by their text, which works without the options being listed in the prompt.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, ClassVar

from components import data as data_sources
from components.base import unescape
from components.benchmarks import _userdata
from components.benchmarks.base import EvalResult
from registry import register


def options_of(value: Any) -> tuple[list[str], list[str]]:
    """(texts, labels) of an options field: a list, or a mapping with ``text`` and ``label`` lists."""
    if isinstance(value, str):
        import json

        value = json.loads(value) if value.strip()[:1] in "[{" else value.split("|")
    if isinstance(value, dict):
        texts = [str(t) for t in value.get("text", [])]
        labels = [str(x) for x in value.get("label", [])] or list(string.ascii_uppercase[: len(texts)])
        return texts, labels
    texts = [str(t) for t in value]
    return texts, list(string.ascii_uppercase[: len(texts)])


def answer_index(answer: Any, texts: list[str], labels: list[str]) -> int:
    """The correct option's index from an index, a label or the option's text."""
    if isinstance(answer, str):
        a = answer.strip()
        if a in labels:
            return labels.index(a)
        if a in texts:
            return texts.index(a)
        if a.isdigit():
            answer = int(a)
    if isinstance(answer, (int, float)) and 0 <= int(answer) < len(texts):
        return int(answer)
    raise data_sources.DataSourceError(f"multiple_choice: answer {answer!r} matches no option (labels {labels})")


@register("multiple_choice", version="1.0.0", family="benchmark", paper="arXiv:2505.11739",
          summary="Multiple choice from your data (file or hub): k-shot prompts, option log-prob scoring.")
@dataclass(frozen=True)
class MultipleChoice(_userdata.UserDataBenchmark):
    """k-shot multiple choice on user data.

    Parameters
    ----------
    source : str
        The records (file, dataset directory or hf:<id>). Required.
    question_field : str
        Field holding the question. Default ``question``.
    choices_field : str
        Field holding the options. Default ``choices``.
    answer_field : str
        Field holding the correct option (index, label or text). Default ``answer``.
    template : str
        Prompt of one example; ``{question}`` is replaced by the question; escapes decoded. Default
        ``Question: {question}\\nAnswer:``.
    shots : int
        Demonstrations per prompt. Default 2.
    separator : str
        Text after each demonstration; escapes decoded. Default ``\\n\\n``.
    normalize : bool
        Score options by their mean per-token log-probability instead of the sum. Default False.
    train_source : str
        Separate source of demonstrations and of the train split. Default empty.
    n_examples : int
        Evaluation rows (and at most as many train-split rows). Default 200.
    seed : int
        Seed of the demonstrations. Default 0.
    """

    template: str = "Question: {question}\\nAnswer:"
    question_field: str = "question"
    choices_field: str = "choices"
    answer_field: str = "answer"
    normalize: bool = False

    placeholder: ClassVar[str] = "question"
    example: ClassVar[dict[str, str]] = {"source": "hf:allenai/ai2_arc:ARC-Easy:test", "answer_field": "answerKey"}

    def build(self, split: str) -> list[dict[str, Any]]:
        def make(rec: dict) -> tuple[str, str, list[str], str]:
            texts, labels = options_of(rec[self.choices_field])
            i = answer_index(rec[self.answer_field], texts, labels)
            return unescape(self.template).format(question=rec[self.question_field]), f" {texts[i]}", \
                [f" {t}" for t in texts], texts[i]

        return _userdata.few_shot_rows(self, split, [self.question_field, self.choices_field, self.answer_field],
                                       make)

    def evaluate(self, model, tokenizer, rows, *, session=None, batch_size=16, progress=False) -> EvalResult:
        return _userdata.score_options(model, tokenizer, rows, session=session, batch_size=batch_size,
                                       progress=progress, normalize=self.normalize)
