"""SCBench-style shared-context sessions: one long context, then several queries with reference answers.

SCBench (Li et al., "SCBench: A KV Cache-Centric Analysis of Long-Context Methods", ICLR 2025, arXiv:2412.10319;
reference code microsoft/MInference ``scbench/``, data HF ``microsoft/SCBench``) stores one record per shared
context: ``{id, context, multi_turns: [{input, answer}, ...]}``. The tasks here build records of that layout:

- ``kv``: SCBench's key-value retrieval (``scbench_kv``) in the wording of the ``kv_retrieval`` benchmark:
  ``Pairs: k1 v1, ..., kN vN.``; each turn queries one key (spread over the context's depths), the answer is its
  value. Deviation: word pairs (or ``letters``: 3-letter keys, 3-digit values) instead of UUID strings, which a
  small model cannot copy.
- ``passkey``: several labelled pass keys in filler text (``The pass key of the red door is 48213.``), one question
  per key (SCBench's multi-needle idea in the ``passkey`` benchmark's wording).
- ``text``: verbatim recall of a user's text (SCBench's prefix-suffix retrieval on real prose): each turn quotes the
  first words of a sentence of the context; the answer is the words that follow.
- ``file``: SCBench's own JSONL layout (or Parquet with the same columns), validated row by row before any
  compute; ``answer`` may be a string or a list of acceptable strings (the first is the golden answer written into
  later turns).

Prompts are plain text (no chat template): after the context, turn i is ``query.format(input=...)``; in
multi-turn mode the earlier turns precede it as ``query + answer + sep`` with their reference answers (SCBench's
golden context). Each task fixes its query/answer formats and its metric.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from components import data as data_sources
from components.base import Component, ParamError, check_range, unescape
from components.benchmarks import _text
from components.benchmarks.induction_copy import WORDS
from components.scbench.layout import Session, Turn, read_layout

METRICS = ("first_word", "substring", "prefix")


@dataclass(frozen=True)
class Format:
    """How turns are written after the context and how answers are scored."""

    query: str = "{input}"
    answer: str = " {answer}"
    sep: str = ""
    metric: str = "first_word"
    max_new_tokens: int = 8


@dataclass(frozen=True)
class SessionTask(Component):
    """Base of the session builders (not registered components: built from ``name(k=v, ...)`` specs by
    :func:`components.scbench.protocol.task_from_spec`)."""

    def sessions(self) -> list[Session]:
        raise NotImplementedError

    def format(self) -> Format:
        raise NotImplementedError


@dataclass(frozen=True)
class KVSessions(SessionTask):
    """Key-value retrieval, several keys queried on one context.

    Parameters
    ----------
    n_contexts : int
        Contexts (sessions). Default 3.
    n_pairs : int
        Key-value pairs per context (at most 45 with ``words``). Default 40.
    n_queries : int
        Queried keys per context (turns). Default 4.
    vocab : str
        ``words`` (story words) or ``letters`` (3-letter keys, 3-digit values). Default ``words``.
    seed : int
        Data seed. Default 0.
    """

    n_contexts: int = 3
    n_pairs: int = 40
    n_queries: int = 4
    vocab: str = "words"
    seed: int = 0
    component_name: ClassVar[str] = "kv"

    def __post_init__(self) -> None:
        if self.vocab not in ("words", "letters"):
            raise ParamError(f"kv.vocab={self.vocab!r} must be words or letters")
        check_range("kv.n_contexts", self.n_contexts, 1)
        check_range("kv.n_pairs", self.n_pairs, 1, len(WORDS) // 2 if self.vocab == "words" else 2000)
        check_range("kv.n_queries", self.n_queries, 1, self.n_pairs)

    def format(self) -> Format:
        if self.vocab == "words":
            return Format(query=" {input}", answer=" {answer}", sep=",", metric="first_word", max_new_tokens=4)
        return Format(query=" {input}:", answer="{answer}", sep="", metric="first_word", max_new_tokens=5)

    def sessions(self) -> list[Session]:
        rng = random.Random(7919 * self.seed + 1)
        out = []
        for c in range(self.n_contexts):
            if self.vocab == "words":
                words = rng.sample(WORDS, 2 * self.n_pairs)
                pairs = list(zip(words[: self.n_pairs], words[self.n_pairs :]))
                context = "Pairs: " + ", ".join(f"{k} {v}" for k, v in pairs) + "."
            else:
                keys: list[str] = []
                while len(keys) < self.n_pairs:
                    k = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=3))
                    if k not in keys:
                        keys.append(k)
                pairs = [(k, f"{rng.randrange(1000):03d}") for k in keys]
                context = "Pairs: " + " ".join(f"{k}:{v}" for k, v in pairs) + "."
            picks = _spread(rng, self.n_pairs, self.n_queries)
            out.append(Session(f"kv-{c}", context, tuple(Turn(pairs[i][0], (pairs[i][1],)) for i in picks)))
        return out


LABELS = ("red door", "blue box", "green gate", "old chest", "small safe", "white car", "big bag", "yellow boat",
          "black case", "brown desk", "silver bike", "golden cup")


@dataclass(frozen=True)
class PasskeySessions(SessionTask):
    """Several labelled pass keys in filler text, one question per key.

    Parameters
    ----------
    n_contexts : int
        Contexts (sessions). Default 3.
    words : int
        Filler words per context (about 1.3 tokens each for English tokenizers). Default 800.
    n_needles : int
        Pass keys per context, at evenly spread depths, asked in a shuffled order (at most 12). Default 4.
    digits : int
        Digits of each pass key. Default 5.
    seed : int
        Data seed. Default 0.
    """

    n_contexts: int = 3
    words: int = 800
    n_needles: int = 4
    digits: int = 5
    seed: int = 0
    component_name: ClassVar[str] = "passkey"

    def __post_init__(self) -> None:
        check_range("passkey.n_contexts", self.n_contexts, 1)
        check_range("passkey.words", self.words, 1, 200_000)
        check_range("passkey.n_needles", self.n_needles, 1, len(LABELS))
        check_range("passkey.digits", self.digits, 1, 12)

    def format(self) -> Format:
        return Format(query="{input}", answer=" {answer}.", sep="", metric="first_word",
                      max_new_tokens=self.digits + 3)

    def sessions(self) -> list[Session]:
        rng = random.Random(7919 * self.seed + 2)
        out = []
        for c in range(self.n_contexts):
            words = _text.filler(rng, self.words).split(" ")
            labels = rng.sample(LABELS, self.n_needles)
            keys = [str(rng.randrange(10 ** (self.digits - 1), 10**self.digits)) for _ in labels]
            cuts = [_sentence_start(words, round((j + 0.5) / self.n_needles * len(words)))
                    for j in range(self.n_needles)]
            for j in reversed(range(self.n_needles)):  # from the end, so earlier cuts stay valid
                words.insert(cuts[j], f"The pass key of the {labels[j]} is {keys[j]}. Remember it.")
            turns = [Turn(f" What is the pass key of the {labels[j]}? The pass key of the {labels[j]} is", (keys[j],))
                     for j in rng.sample(range(self.n_needles), self.n_needles)]
            out.append(Session(f"passkey-{c}", " ".join(words), tuple(turns)))
        return out


_SENTENCE = re.compile(r"[^.!?]+[.!?]+[\"')\]]*\s*")


@dataclass(frozen=True)
class TextSessions(SessionTask):
    """Verbatim recall from a user's text file: quote a sentence's first words, answer with the next ones.

    Parameters
    ----------
    source : str
        A text file (.txt: the whole file; .jsonl/.json/.csv/.parquet: the ``text`` field of each record, joined).
    n_contexts : int
        Contexts (windows of the text, starting at sentence starts). Default 3.
    context_words : int
        Words per context. Default 800.
    n_queries : int
        Queried sentences per context (spread over the window). Default 4.
    prefix_words : int
        Words of the sentence given in the query. Default 8.
    answer_words : int
        Words that follow, to be recalled. Default 4.
    seed : int
        Which windows and sentences are drawn. Default 0.
    """

    source: str = ""
    n_contexts: int = 3
    context_words: int = 800
    n_queries: int = 4
    prefix_words: int = 8
    answer_words: int = 4
    seed: int = 0
    component_name: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        if not self.source.strip() or not Path(self.source).expanduser().is_file():
            raise ParamError(f"text.source={self.source!r}: a text file is required (it does not exist)")
        check_range("text.n_contexts", self.n_contexts, 1)
        check_range("text.context_words", self.context_words, 20, 200_000)
        check_range("text.n_queries", self.n_queries, 1, 64)
        check_range("text.prefix_words", self.prefix_words, 2, 64)
        check_range("text.answer_words", self.answer_words, 1, 64)

    def data_fingerprint(self) -> str:
        return data_sources.fingerprint(self.source)

    def format(self) -> Format:
        return Format(query='\n\nQuote from the text above: "{input}', answer=' {answer}"', sep="", metric="prefix",
                      max_new_tokens=3 * self.answer_words + 4)

    def sessions(self) -> list[Session]:
        path = Path(self.source).expanduser()
        if path.suffix.lower() == ".txt":
            text = path.read_text(encoding="utf-8", errors="replace")
        else:
            text = "\n\n".join(data_sources.texts(data_sources.read_records(self.source), "text", self.source))
        words = text.split()
        if len(words) < self.context_words:
            raise ParamError(f"text.source {self.source!r} has {len(words)} words, fewer than context_words="
                             f"{self.context_words}")
        rng = random.Random(7919 * self.seed + 3)
        need = self.prefix_words + self.answer_words
        out = []
        for c in range(self.n_contexts):
            start = rng.randrange(0, len(words) - self.context_words + 1)
            while 0 < start < len(words) - self.context_words and not words[start - 1].endswith((".", "!", "?")):
                start += 1
            context = " ".join(words[start : start + self.context_words])
            sentences = [s.split() for s in _SENTENCE.findall(context)]
            unique = [s for s in sentences if len(s) >= need
                      and context.count(" ".join(s[: self.prefix_words])) == 1]
            if len(unique) < self.n_queries:
                raise ParamError(f"text.source {self.source!r}: window {c} has {len(unique)} sentences of at least "
                                 f"{need} words with a unique start, fewer than n_queries={self.n_queries}")
            picks = _spread(rng, len(unique), self.n_queries)
            turns = tuple(Turn(" ".join(unique[i][: self.prefix_words]),
                               (" ".join(unique[i][self.prefix_words : need]),)) for i in picks)
            out.append(Session(f"text-{c}", context, turns))
        return out


@dataclass(frozen=True)
class FileSessions(SessionTask):
    """A user dataset in SCBench's layout: JSONL (or Parquet/JSON) records ``{id?, context, multi_turns}``.

    Parameters
    ----------
    source : str
        A .jsonl, .json or .parquet file of records with ``context`` (text), ``multi_turns`` (a list of ``{input,
        answer}``; ``answer`` a string or a list of acceptable strings) and an optional ``id``.
    limit : int
        Use the first ``limit`` records (0 = all). Default 0.
    max_turns : int
        Keep at most this many turns per record (SCBench's ``--max_turns``; 0 = all). Default 5.
    query : str
        Template of a turn's query (``{input}``; backslash escapes such as \\n allowed).
        Default ``\\n\\nQuestion: {input}\\nAnswer:``.
    answer : str
        Template of a reference answer written into later turns (``{answer}``). Default `` {answer}``.
    metric : str
        ``substring`` (the answer occurs in the output's first line, case-insensitive: SCBench's metric of
        scbench_kv and the English QA tasks), ``first_word`` or ``prefix``. Default ``substring``.
    max_new_tokens : int
        Greedy tokens per answer. Default 32.
    """

    source: str = ""
    limit: int = 0
    max_turns: int = 5
    query: str = "\\n\\nQuestion: {input}\\nAnswer:"
    answer: str = " {answer}"
    metric: str = "substring"
    max_new_tokens: int = 32
    component_name: ClassVar[str] = "file"

    def __post_init__(self) -> None:
        path = Path(self.source).expanduser()
        if path.suffix.lower() not in (".jsonl", ".json", ".parquet"):
            raise ParamError(f"file.source={self.source!r}: expected a .jsonl, .json or .parquet file")
        if not path.is_file():
            raise ParamError(f"file.source={self.source!r} does not exist")
        check_range("file.limit", self.limit, 0)
        check_range("file.max_turns", self.max_turns, 0)
        check_range("file.max_new_tokens", self.max_new_tokens, 1, 4096)
        if self.metric not in METRICS:
            raise ParamError(f"file.metric={self.metric!r} must be one of {', '.join(METRICS)}")
        if unescape(self.query).count("{input}") != 1 or unescape(self.answer).count("{answer}") != 1:
            raise ParamError("file.query must contain {input} once and file.answer {answer} once")

    def data_fingerprint(self) -> str:
        return data_sources.fingerprint(self.source)

    def format(self) -> Format:
        return Format(query=unescape(self.query), answer=unescape(self.answer), sep="", metric=self.metric,
                      max_new_tokens=self.max_new_tokens)

    def sessions(self) -> list[Session]:
        rows = read_layout(self.source)
        rows = rows[: self.limit] if self.limit else rows
        if self.max_turns:
            rows = [Session(s.id, s.context, s.turns[: self.max_turns]) for s in rows]
        return rows


def _sentence_start(words: list[str], cut: int) -> int:
    """``cut`` moved back to the start of its sentence (the needle goes between sentences, as in needle tests)."""
    while cut > 0 and not words[cut - 1].endswith((".", "!", "?", '."', '!"', '?"')):
        cut -= 1
    return cut


def _spread(rng: random.Random, n: int, k: int) -> list[int]:
    """``k`` distinct indices of ``range(n)``, one from each of ``k`` equal segments (spread over the depths),
    in a shuffled order."""
    picks = [rng.randrange(j * n // k, max((j + 1) * n // k, j * n // k + 1)) for j in range(k)]
    rng.shuffle(picks)
    return picks
