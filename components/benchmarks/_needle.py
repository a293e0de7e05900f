"""Needle-in-a-haystack tests, shared by the ``needle`` benchmark and the ``retrieval_score`` analyzer.

A test is a haystack of ``length`` words with a needle sentence inserted at a relative ``depth`` (moved back to the
previous sentence end, as the reference does), followed by a question. The answer (``real_needle`` in the
Retrieval Head code) is a substring of the needle; rows keep its character span in the prompt so token spans can
be found exactly from the tokenizer's offsets.

Needles: ``passkey`` (a random 5-digit key, the passkey benchmark's sentence), ``words`` (three random words from
the story vocabulary), or a JSONL/JSON/CSV/Parquet file of ``needle``, ``question``, ``real_needle`` records (the
format of the reference's ``haystack_for_detect/needles.jsonl``). Haystacks: ``builtin:stories`` (generated story
text, a fresh one per test) or any text source of :mod:`components.data` (windows of its words).
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from typing import Any

from components import data as data_sources
from components.benchmarks import _text

BUILTIN_NEEDLES = ("passkey", "words")
#: prompt templates: built-in needles end with a completion cue; file needles use the reference's QA format
BUILTIN_TEMPLATE = "{context} {question}"
FILE_TEMPLATE = "{context}\nBased on the content of the book, Question: {question}\nAnswer:"
_WORDS = sorted(set(_text.ANIMALS + _text.THINGS + _text.PLACES))
_SENTENCE_END = (".", "!", "?", '."', '!"', '?"')


def check_template(template: str, where: str) -> None:
    if template and (template.count("{context}") != 1 or template.count("{question}") != 1):
        raise ValueError(f"{where}: template must contain {{context}} and {{question}} exactly once")


def builtin_needle(kind: str, rng: random.Random) -> dict[str, str]:
    """A generated (needle, question, real_needle) triple."""
    if kind == "passkey":
        key = str(rng.randrange(10_000, 100_000))
        return {"needle": f"The pass key is {key}. Remember it. {key} is the pass key.",
                "question": "What is the pass key? The pass key is", "real_needle": key}
    if kind == "words":
        words = " ".join(rng.sample(_WORDS, 3))
        return {"needle": f"The magic words are {words}.", "question": "What are the magic words? The magic words are",
                "real_needle": words}
    raise ValueError(f"unknown built-in needle {kind!r}; built-ins: {', '.join(BUILTIN_NEEDLES)}")


@functools.lru_cache(maxsize=8)
def file_needles(source: str) -> tuple[dict[str, str], ...]:
    """Needle triples from a record source; each real_needle must occur in its needle (case-insensitive)."""
    rows = data_sources.read_records(source)
    if not rows:
        raise data_sources.DataSourceError(f"needles {source!r}: no records")
    out = []
    for i, r in enumerate(rows):
        missing = [k for k in ("needle", "question", "real_needle") if not r.get(k)]
        if missing:
            raise data_sources.DataSourceError(f"needles {source!r}: record {i} lacks {', '.join(missing)}")
        needle, answer = str(r["needle"]).strip(), str(r["real_needle"]).strip()
        if answer.lower() not in needle.lower():
            raise data_sources.DataSourceError(
                f"needles {source!r}: record {i}: real_needle {answer!r} does not occur in its needle")
        out.append({"needle": needle, "question": str(r["question"]).strip(), "real_needle": answer})
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _haystack_words(source: str, max_words: int = 200_000) -> tuple[str, ...]:
    records = data_sources.read_records(source)
    words: list[str] = []
    for text in data_sources.texts(records, "text", source):
        words.extend(text.split())
        if len(words) >= max_words:
            break
    return tuple(words)


def haystack(source: str, rng: random.Random, n_words: int) -> list[str]:
    """About ``n_words`` words of filler: whole generated sentences, or a window of a text source starting at a
    sentence."""
    if source == "builtin:stories":
        return _text.filler(rng, n_words).split(" ") if n_words else []  # whole sentences, >= n_words words
    words = _haystack_words(source)
    if len(words) < n_words:
        raise data_sources.DataSourceError(f"haystack {source!r} has {len(words)} words, fewer than {n_words}")
    start = rng.randrange(0, len(words) - n_words + 1)
    while 0 < start < len(words) - n_words and not words[start - 1].endswith(_SENTENCE_END):
        start += 1
    return list(words[start : start + n_words])


def insert_needle(words: list[str], needle: str, depth: float) -> tuple[str, int]:
    """Context with the needle at ``depth`` (moved back to a sentence end); returns (context, needle offset)."""
    cut = round(depth * len(words))
    while cut > 0 and not words[cut - 1].endswith(_SENTENCE_END):
        cut -= 1
    before, after = " ".join(words[:cut]), " ".join(words[cut:])
    prefix = before + " " if before else ""
    return prefix + needle + (" " + after if after else ""), len(prefix)


def make_test(rng: random.Random, *, needles: str, haystack_source: str, length: int, depth: float,
              template: str, needle_index: int = 0) -> dict[str, Any]:
    """One test row: prompt, answer and its character span in the prompt, plus the grid coordinates."""
    if needles in BUILTIN_NEEDLES:
        triple, default_template = builtin_needle(needles, rng), BUILTIN_TEMPLATE
    else:
        pool = file_needles(needles)
        triple, default_template = pool[needle_index % len(pool)], FILE_TEMPLATE
    context, offset = insert_needle(haystack(haystack_source, rng, length), triple["needle"], depth)
    prompt = (template or default_template).format(context=context, question=triple["question"])
    start = prompt.find(context) + offset + triple["needle"].lower().find(triple["real_needle"].lower())
    return {"prompt": prompt, "answer": triple["real_needle"], "question": triple["question"],
            "length": length, "depth": depth, "answer_start": start, "answer_end": start + len(triple["real_needle"])}


def rouge1_recall(reference: str, hypothesis: str) -> float:
    """ROUGE-1 recall: clipped unigram overlap / reference unigrams (lower-cased alphanumeric tokens, no stemming)."""
    ref = Counter(re.findall(r"[a-z0-9]+", reference.lower()))
    hyp = Counter(re.findall(r"[a-z0-9]+", hypothesis.lower()))
    total = sum(ref.values())
    return sum(min(n, hyp[w]) for w, n in ref.items()) / total if total else 0.0


def answer_response(text: str) -> str:
    """The answer part of a generation: up to the first newline (the reference stops decoding there)."""
    return text.split("\n", 1)[0].strip()
