"""Text classification from your own labelled data, k-shot prompts, scored by label-word log-probability.

Each record has a text and a label. The prompt is ``template`` filled with the text, preceded by ``shots``
demonstrations (the same template followed by their label word); the prediction is the label word whose tokens
get the highest log-probability after the prompt, the protocol of ACT and ZeroTuning's classification
experiments. Labels are mapped to words by ``labels``: integer labels index the list, string labels are used
as they are (``labels`` then fixes the order and the set); without ``labels`` the sorted distinct string labels
are the words.

Sources: .jsonl / .json / .csv / .parquet files, a local dataset directory, or a hub dataset
``hf:<id>[:<config>[:<split>]]`` (for example ``hf:SetFit/sst2::validation``). Splits and seeds as described in
``components/benchmarks/_userdata.py``: fixed evaluation rows, demonstrations redrawn per seed.

Scoring as in ACT (arXiv 2406.15765) and ZeroTuning (arXiv 2505.11739). Deviations: the whole label word is scored
(sum of its tokens' log-probabilities; the reference codes take its last or first token); prompts use one
template for every dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from components import data as data_sources
from components.base import unescape
from components.benchmarks import _userdata
from components.benchmarks.base import EvalResult
from registry import register


@register("classification", version="1.0.0", family="benchmark", paper="arXiv:2406.15765",
          summary="Classification from your data (file or hub): k-shot prompts, label-word log-prob scoring.")
@dataclass(frozen=True)
class Classification(_userdata.UserDataBenchmark):
    """k-shot text classification on user data.

    Parameters
    ----------
    source : str
        The labelled records (file, dataset directory or hf:<id>). Required.
    text_field : str
        Field holding the text. Default ``text``.
    label_field : str
        Field holding the label (integer index into ``labels`` or a string). Default ``label``.
    labels : str
        Label words, comma-separated (e.g. ``negative,positive``). Default empty (the distinct string labels).
    template : str
        Prompt of one example; ``{text}`` is replaced by the text; backslash escapes decoded. Default
        ``Input: {text}\\nLabel:``.
    shots : int
        Demonstrations per prompt (0 = zero-shot). Default 4.
    separator : str
        Text after each demonstration; escapes decoded. Default ``\\n\\n``.
    train_source : str
        Separate source of demonstrations and of the train split. Default empty (the rows after the evaluation rows).
    n_examples : int
        Evaluation rows (and at most as many train-split rows). Default 200.
    seed : int
        Seed of the demonstrations. Default 0.
    """

    template: str = "Input: {text}\\nLabel:"
    shots: int = 4
    text_field: str = "text"
    label_field: str = "label"
    labels: str = ""

    placeholder: ClassVar[str] = "text"
    example: ClassVar[dict[str, str]] = {"source": "hf:SetFit/sst2::validation", "labels": "negative,positive",
                                         "shots": "2"}

    def build(self, split: str) -> list[dict[str, Any]]:
        fields = [self.text_field, self.label_field]
        records = _userdata.read(self.train_source or self.source, fields)
        words = self._label_words(records + (_userdata.read(self.source, fields) if self.train_source else []))

        def make(rec: dict) -> tuple[str, str, list[str], str]:
            word = self._word(rec[self.label_field], words)
            return unescape(self.template).format(text=rec[self.text_field]), f" {word}", [f" {w}" for w in words], word

        return _userdata.few_shot_rows(self, split, fields, make)

    def _label_words(self, records: list[dict[str, Any]]) -> list[str]:
        if self.labels.strip():
            return [w.strip() for w in self.labels.split(",") if w.strip()]
        values = {r[self.label_field] for r in records}
        if any(not isinstance(v, str) for v in values):
            raise data_sources.DataSourceError(
                f"classification: {self.source!r} has non-text labels ({sorted(values, key=str)[:6]}); give the "
                "label words with labels=word0,word1,...")
        return sorted(values)

    def _word(self, value: Any, words: list[str]) -> str:
        if isinstance(value, str) and value.strip() in words:
            return value.strip()
        if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
            i = int(value)
            if 0 <= i < len(words):
                return words[i]
        raise data_sources.DataSourceError(f"classification: label {value!r} is not one of {words} nor an index "
                                           "into them")

    def evaluate(self, model, tokenizer, rows, *, session=None, batch_size=16, progress=False) -> EvalResult:
        return _userdata.score_options(model, tokenizer, rows, session=session, batch_size=batch_size,
                                       progress=progress)
