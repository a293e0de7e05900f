"""PromptTransform: the family base of prompting methods (family ``prompt``).

A prompt component rewrites the rows a benchmark built before they are tokenised; the evaluate task calls
``rewrite(model, tokenizer, rows)`` on the unpatched model, then applies the cell's attention patch (if any) and
scores the rewritten rows, so a compare cell can hold a prompt method and a patch at once
(``attnflow compare --components "pgi+zerotuning(gamma=2)"``).

Row contract (the user-data benchmarks, ``accepts_prompts = True``, build such rows):

- ``prompt``: the full text scored (few-shot demonstrations + the query);
- ``query``: the query's own templated text, the last part of ``prompt``;
- ``content``: the raw question or text inside ``query`` (what paraphrases and evidence retrieval act on).

A rewrite returns rows with a new ``prompt`` and, for methods that score one question under several prompts
(retrieval-augmented QA: one prompt per evidence paragraph), ``prompt_variants`` (full prompts),
``variant_prior`` (a log-weight per variant added to every option's score) and ``variant_combine`` (``max``: the
best (variant, option) pair wins; ``logsumexp``: the options' probabilities are mixed over variants). The
benchmarks' scorer (``components.benchmarks._userdata.score_options``) reads these keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import Component

COMBINES = ("max", "logsumexp")


class PromptRowError(ValueError):
    """Rows a prompt component cannot rewrite (no ``query``/``content``: not built by a user-data benchmark)."""


@dataclass(frozen=True)
class PromptTransform(Component):
    """Base class of prompt components (family ``prompt``).

    Capability flags: ``needs_model`` (the rewrite runs the model: paraphrases, attributions, reranking); the
    identity check ``is_identity()`` says whether the parameters leave every prompt unchanged.
    """

    needs_model: ClassVar[bool] = False

    def rewrite(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], *,
                progress: bool = False) -> list[dict[str, Any]]:
        """New rows (copies) with rewritten prompts; deterministic for the parameters (``seed`` included)."""
        raise NotImplementedError

    def is_identity(self) -> bool:
        """True when these parameters leave every prompt as it is."""
        return False

    def data_fingerprint(self) -> str:
        """Content identity of files the component reads (a corpus, a paraphrase file); '' when none. Part of
        the evaluation cache key, so a changed file is never answered from the cache."""
        return ""

    def check_model(self, config: Any) -> None:
        """Validate parameters against a model config; the default accepts any model."""


def parts(row: dict[str, Any]) -> tuple[str, str, str]:
    """(prefix, query, content) of a row: the demonstrations before the query, the query, the raw text in it."""
    prompt, query, content = row.get("prompt"), row.get("query"), row.get("content")
    if not isinstance(prompt, str) or not isinstance(query, str) or not isinstance(content, str):
        raise PromptRowError("prompt components need rows with prompt, query and content (the user-data "
                             "benchmarks classification and multiple_choice build them)")
    if not prompt.endswith(query) or content not in query:
        raise PromptRowError(f"row prompt does not end with its query, or the query lacks its content: {query!r}")
    return prompt[: len(prompt) - len(query)], query, content


def with_content(row: dict[str, Any], content: str, *, before_query: str = "", before_all: str = "") -> str:
    """The row's prompt with its content replaced by ``content``; ``before_query`` is inserted between the
    demonstrations and the query, ``before_all`` before everything."""
    prefix, query, old = parts(row)
    i = query.rindex(old)
    return before_all + prefix + before_query + query[:i] + content + query[i + len(old):]
