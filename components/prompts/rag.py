"""Retrieval-augmented few-shot QA: BM25 evidence paragraphs, one prompt per paragraph, options reranked by the
LM's own probabilities.

Based on Lazaridou et al., "Internet-augmented language models through few-shot prompting for open-domain
question answering" (arXiv:2203.05115). The paper retrieves web documents with Google Search, cuts them into
6-sentence paragraphs, ranks the paragraphs by TF-IDF similarity to the question, conditions a few-shot prompt
on each of the top paragraphs ("Evidence: ... Question: ... Answer:"), samples answers per prompt and reranks all
(answer, paragraph) pairs by the LM's probabilities: *direct* p(a | q, p_i), *noisy channel* p(q | a, p_i) and a
*product of experts* of these with the retrieval score. No reference code is published.

Procedure here, per question q (the row's content):

1. Evidence: the top ``k`` paragraphs p_1..p_k of a local BM25 index over ``corpus`` (``_bm25.py``: bm25s,
   built once and cached on disk under a content key), paragraphs of ``chunk_sentences`` sentences.
2. Prompts: one per paragraph, ``demonstrations + evidence_template(p_i) + query``.
3. Reranking (``scoring``), for each answer option a of the benchmark:
   - ``direct`` (the paper's direct reranking): score(a) = max_i log p(a | q, p_i), the best (answer,
     paragraph) pair wins;
   - ``mixture``: score(a) = log sum_i p(p_i | q) p(a | q, p_i) with p(p_i | q) = softmax_i(BM25_i /
     ``retrieval_temperature``), the retrieval score as a prior expert.

Defaults: ``k=4``, ``chunk_sentences=6`` (the paper's paragraphs), BM25 k1=1.5, b=0.75 (Lucene scoring),
``direct``.

Deviations: a local BM25 index over the user's corpus replaces Google Search + TF-IDF; options given by the
benchmark replace sampled answers (the reranking step is what is kept); the demonstrations carry no evidence of
their own (the paper's shots each have a retrieved paragraph); the noisy-channel and three-expert PoE scores are not
implemented (``mixture`` is the retrieval-prior combination only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from components.base import ParamError, check_range, unescape
from components.prompts import _bm25
from components.prompts.base import PromptTransform, parts, with_content
from registry import register


@register("rag", version="1.0.0", family="prompt", paper="arXiv:2203.05115",
          summary="BM25 evidence over your corpus, one prompt per paragraph, options reranked by LM probability.")
@dataclass(frozen=True)
class RAG(PromptTransform):
    """Retrieval-augmented few-shot prompting with LM reranking.

    Parameters
    ----------
    corpus : str
        The evidence corpus: a .txt or .md file (blank-line paragraphs), a .jsonl, .json, .csv or .parquet file
        (records with ``text_field``), or a directory of them. Required.
    text_field : str
        Field holding the text in record files. Default ``text``.
    k : int
        Evidence paragraphs per question (one prompt each). Default 4.
    chunk_sentences : int
        Sentences per indexed paragraph. Default 6.
    scoring : str
        ``direct`` (max over paragraphs of log p(a|q,p)) or ``mixture`` (log sum_i p(p_i|q) p(a|q,p_i)).
        Default ``direct``.
    retrieval_temperature : float
        Temperature of the BM25 softmax p(p|q) in ``mixture``. Default 1.0.
    evidence_template : str
        Text put before the query; ``{evidence}`` is the paragraph; escapes decoded. Default
        ``Evidence: {evidence}\\n``.
    k1 : float
        BM25 term-frequency saturation. Default 1.5.
    b : float
        BM25 length normalisation. Default 0.75.
    cache_dir : str
        Where indexes are cached (a directory). Default empty: ``<ATTNFLOW_HOME>/cache/bm25``.
    """

    corpus: str = ""
    text_field: str = "text"
    k: int = 4
    chunk_sentences: int = 6
    scoring: Literal["direct", "mixture"] = "direct"
    retrieval_temperature: float = 1.0
    evidence_template: str = "Evidence: {evidence}\\n"
    k1: float = 1.5
    b: float = 0.75
    cache_dir: str = ""

    example: ClassVar[dict[str, str]] = {"corpus": "docs", "k": "2"}

    def __post_init__(self) -> None:
        if not self.corpus.strip():
            raise ParamError("rag.corpus: required (a text/JSONL/JSON/CSV/Parquet file or a directory of them)")
        try:
            _bm25.corpus_files(self.corpus)
        except ValueError as e:
            raise ParamError(f"rag.corpus: {e}") from None
        check_range("rag.k", self.k, 1, 64)
        check_range("rag.chunk_sentences", self.chunk_sentences, 1, 1000)
        check_range("rag.retrieval_temperature", self.retrieval_temperature, 0, lo_open=True)
        check_range("rag.k1", self.k1, 0)
        check_range("rag.b", self.b, 0, 1)
        if "{evidence}" not in unescape(self.evidence_template):
            raise ParamError("rag.evidence_template must contain {evidence}")

    def data_fingerprint(self) -> str:
        return _bm25.index_key(self.corpus, self.text_field, self.chunk_sentences, self.k1, self.b)

    def index(self) -> _bm25.Index:
        """The corpus index (built on first use, then read from the disk cache)."""
        if self.cache_dir:
            where = Path(self.cache_dir).expanduser()
        else:
            from infra.settings import settings

            where = settings().cache_dir / "bm25"
        return _bm25.load_index(self.corpus, where, text_field=self.text_field,
                                chunk_sentences=self.chunk_sentences, k1=self.k1, b=self.b)

    def retrieve(self, questions: list[str]) -> list[list[tuple[str, float]]]:
        """Top-``k`` (paragraph, BM25 score) per question."""
        index = self.index()
        return [[(index.paragraphs[i], s) for i, s in hits] for hits in index.search(questions, self.k)]

    def rewrite(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], *,
                progress: bool = False) -> list[dict[str, Any]]:
        for r in rows:
            parts(r)  # every row checked before the index is built
        hits = self.retrieve([r["content"] for r in rows])
        template = unescape(self.evidence_template)
        out = []
        for r, found in zip(rows, hits):
            variants = [with_content(r, r["content"], before_query=template.replace("{evidence}", p))
                        for p, _ in found]
            if self.scoring == "mixture":
                z = [s / self.retrieval_temperature for _, s in found]
                m = max(z)
                lse = m + math.log(sum(math.exp(v - m) for v in z))
                prior, combine = [v - lse for v in z], "logsumexp"
            else:
                prior, combine = [0.0] * len(found), "max"
            out.append({**r, "prompt": variants[0], "prompt_variants": variants, "variant_prior": prior,
                        "variant_combine": combine, "rag_evidence": [p for p, _ in found]})
        return out
