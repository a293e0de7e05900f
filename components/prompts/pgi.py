"""PGI prompting: Persona, Grouping and Intelligence instructions placed before the prompt.

Based on Ioste, "Hallucinations or Attention Misdirection? The Path to Strategic Value Extraction in Business Using
Large Language Models" (arXiv:2402.14002). The paper argues that many errors called hallucinations are *attention
misdirection* (the model attends to the wrong part of the request) and prescribes a prompt built from three parts:

1. **Persona**: who the model is (a role with the relevant expertise);
2. **Grouping**: how to organise the input (separate what is asked from what is given, group related facts);
3. **Intelligence**: how to reason (use established knowledge, prefer the accurate answer over a plausible one).

No reference code is published (the paper reports GPT answers to one business task). Procedure here::

    prompt' = persona + sep + grouping + sep + intelligence + sep + prompt      (position = prefix)
    prompt' = demonstrations + persona + sep + ... + sep + query               (position = query)

Empty parts are left out; with all three empty the prompt is unchanged (``is_identity``).

Defaults: the three sentences below (written for question answering and classification, general enough for both),
``position=prefix``, ``sep=\\n``.

Deviations: the paper's prompts are task-specific business instructions for GPT-3.5/4 in a chat; these default
sentences are a reconstruction of the three parts for benchmark questions, not the paper's text, and they are
prepended to plain-text prompts (no chat template).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from components.base import ParamError, unescape
from components.prompts.base import PromptTransform, parts, with_content
from registry import register


@register("pgi", version="1.0.0", family="prompt", paper="arXiv:2402.14002",
          summary="Persona, grouping and intelligence instructions before the prompt (attention misdirection).")
@dataclass(frozen=True)
class PGI(PromptTransform):
    """PGI prompt template (persona, grouping, intelligence).

    Parameters
    ----------
    persona : str
        The persona sentence: who answers. Escapes decoded; empty leaves it out. Default ``You are a careful
        expert who answers accurately.``
    grouping : str
        The grouping sentence: how to organise the input. Default ``First separate what is asked from what is
        given and group the facts that belong together.``
    intelligence : str
        The intelligence sentence: how to reason. Default ``Rely on well-established knowledge and choose the
        accurate answer rather than the merely plausible one.``
    position : str
        ``prefix``: before the whole prompt (demonstrations included); ``query``: just before the query, after
        the demonstrations. Default ``prefix``.
    sep : str
        Text after each part; escapes decoded. Default ``\\n``.
    """

    persona: str = "You are a careful expert who answers accurately."
    grouping: str = "First separate what is asked from what is given and group the facts that belong together."
    intelligence: str = ("Rely on well-established knowledge and choose the accurate answer rather than the merely "
                         "plausible one.")
    position: Literal["prefix", "query"] = "prefix"
    sep: str = "\\n"

    example: ClassVar[dict[str, str]] = {"position": "query"}

    def __post_init__(self) -> None:
        if self.position not in ("prefix", "query"):
            raise ParamError(f"pgi.position must be prefix or query, got {self.position!r}")

    def instruction(self) -> str:
        """The three parts joined, each followed by ``sep`` ('' when all are empty)."""
        sep = unescape(self.sep)
        return "".join(unescape(p) + sep for p in (self.persona, self.grouping, self.intelligence) if p.strip())

    def is_identity(self) -> bool:
        return not self.instruction()

    def rewrite(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], *,
                progress: bool = False) -> list[dict[str, Any]]:
        text = self.instruction()
        out = []
        for row in rows:
            key = "before_all" if self.position == "prefix" else "before_query"
            _, _, content = parts(row)
            out.append({**row, "prompt": with_content(row, content, **{key: text})})
        return out
