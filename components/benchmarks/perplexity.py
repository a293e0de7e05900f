"""Perplexity: exp(mean next-token negative log-likelihood) on a text source.

Texts are concatenated (EOS-separated) and cut into non-overlapping windows of ``max_length`` tokens; each window
is scored independently (the non-overlapping protocol of the transformers perplexity guide, stride = max_length).
Models whose tokenizer starts every text with a BOS token (Gemma, Llama-2/3) see each window after that BOS token,
as they see any text, and every token of the window is scored; for tokenizers that add nothing (GPT-2, SmolLM2) a
window's first token has no context and is not scored. This is lm-evaluation-harness's rolling-window convention
(a prefix token before each window). Version 1.0.0 gave BOS models no BOS: Gemma-3-270m scored 98 instead of 25 on
1,024 State-of-the-Union tokens.

Sources: a .txt (paragraphs), .jsonl/.json/.csv/.parquet file with a text field, a hub dataset
(``hf:wikitext:wikitext-2-raw-v1:test``) or ``builtin:stories`` (template-generated stories, offline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from components import data as data_sources
from components.base import check_range
from components.benchmarks import _scoring
from components.benchmarks.base import Benchmark, EvalResult
from registry import register


@register("perplexity", version="1.1.0", family="benchmark", paper=None,
          summary="Token-level perplexity on a text file, hub dataset or the built-in stories.")
@dataclass(frozen=True)
class Perplexity(Benchmark):
    """Perplexity of non-overlapping token windows over a text source.

    Parameters
    ----------
    source : str
        Where the text comes from. Default ``builtin:stories``.
    text_field : str
        Field holding the text in record sources. Default ``text``.
    max_length : int
        Window length in tokens. Default 256.
    max_docs : int
        At most this many documents are read. Default 200.
    max_tokens : int
        At most this many tokens are scored (0 = all). Default 20000.
    seed : int
        Seed of the built-in source. Default 0.
    """

    prompt_texts: ClassVar[bool] = False  # token windows, no prompt texts: text-reading patches cannot run

    source: str = "builtin:stories"
    text_field: str = "text"
    max_length: int = 256
    max_docs: int = 200
    max_tokens: int = 20000
    seed: int = 0

    splits: ClassVar[tuple[str, ...]] = ("eval",)
    metrics: ClassVar[dict[str, bool]] = {"ppl": False, "nll": False}
    primary_metric: ClassVar[str] = "ppl"

    def __post_init__(self) -> None:
        check_range("perplexity.max_length", self.max_length, 2)
        check_range("perplexity.max_docs", self.max_docs, 1)
        check_range("perplexity.max_tokens", self.max_tokens, 0)

    def build(self, split: str) -> list[dict[str, Any]]:
        self.check_split(split)
        # the built-in stories use a seed disjoint from the demo model's training text
        records = data_sources.read_records(self.source, limit=self.max_docs, seed=10_000 + self.seed)
        rows = [{"text": t} for t in data_sources.texts(records, self.text_field, self.source)]
        if not rows:
            raise data_sources.DataSourceError(f"perplexity: {self.source!r} has no non-empty texts")
        return rows

    def uses_seed(self) -> bool:
        return self.source.startswith("builtin:")

    def data_fingerprint(self) -> str:
        return data_sources.fingerprint(self.source)

    def evaluate(self, model, tokenizer, rows, *, session=None, batch_size=8, progress=False) -> EvalResult:
        total, count, per_window = _scoring.token_nll(
            model, tokenizer, [r["text"] for r in rows], max_length=self.max_length,
            max_tokens=self.max_tokens or None, session=session, batch_size=batch_size, progress=progress,
        )
        nll = total / count
        examples = [{"window": i, "nll": v} for i, v in enumerate(per_window)]
        return EvalResult(metrics={"ppl": math.exp(nll), "nll": nll, "n_tokens": float(count)}, examples=examples)
