"""Shared machinery of the RULER-style synthetic benchmarks (``niah_single``, ``niah_multikey``, ``niah_multivalue``,
``variable_tracking``, ``common_words``).

RULER (Hsieh et al., "RULER: What's the Real Context Size of Your Long-Context Language Models?", arXiv 2404.06654;
reference code https://github.com/NVIDIA/RULER, ``scripts/data/synthetic/``) builds every example for one tokenizer
and one total length: the number of haystack units is the largest that keeps ``prompt tokens + tokens to generate
<= length`` (a binary search), and an answer scores the fraction of the required strings it contains
(``string_match_all``: case-insensitive substring match, averaged over the references).

Here each row keeps the prompt as ``context + question`` (``context`` is a field of the row), so the kv-sweep flow
can prefill and compress the context alone and ask the question on the compressed cache (query-agnostic
evaluation). Lengths count tokens of the tokenizer named by ``tokenizer`` (flows fill in the evaluated model).

Deviations shared by the tasks: the haystack is the built-in story text (``components/benchmarks/_text.py``)
instead of Paul Graham essays or the repeated "The grass is green..." noise; no chat template; the answer prefix
is part of the question (RULER appends it for base models too).
"""

from __future__ import annotations

import functools
import hashlib
import random
import string
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from components.base import ParamError, check_range
from components.benchmarks import _scoring, _text
from components.benchmarks.base import Benchmark, EvalResult

#: relative depths a needle may sit at (RULER: 40 evenly spaced depths)
DEPTHS = tuple(round(i / 39, 4) for i in range(40))
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
#: pronounceable two-syllable pseudo-words (4,900), sorted: common-words lists and variable-free vocabulary
PSEUDO_WORDS = tuple(sorted(a + b + c + d for a in _CONSONANTS for b in _VOWELS for c in _CONSONANTS for d in _VOWELS))
#: needle keys ``adjective-noun`` from the story vocabulary (as RULER's wonderwords keys)
KEY_WORDS = tuple(f"{a}-{n}" for a in _text.COLORS + _text.WEATHER
                  for n in sorted(set(_text.ANIMALS + _text.THINGS + _text.PLACES)))


@functools.lru_cache(maxsize=4)
def load_tokenizer(ref: str) -> Any:
    """The tokenizer of a model reference (demo, local directory, catalogue name, hub id); no weights are read."""
    from transformers import AutoTokenizer

    from components import model_sources, modeling

    mref = model_sources.materialize(modeling.resolve(ref))
    return AutoTokenizer.from_pretrained(mref.location)


def tokenizer_fingerprint(ref: str) -> str:
    """sha256 of the tokenizer's files (or of its vocabulary when it has none on disk): data built for one
    tokenizer is never reused for another."""
    tok = load_tokenizer(ref)
    h = hashlib.sha256(type(tok).__name__.encode())
    root = Path(getattr(tok, "name_or_path", "") or ".")
    files = [root / f for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                                "merges.txt", "special_tokens_map.json") if (root / f).is_file()]
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    if not files:
        h.update(repr(sorted(tok.get_vocab().items())).encode())
    return h.hexdigest()[:16]


def n_tokens(tok: Any, text: str) -> int:
    """Tokens of ``text`` as the scoring code encodes a prompt (special tokens included)."""
    return len(tok(text)["input_ids"])


def fit(build: Callable[[int], str], tok: Any, budget: int, n_max: int, what: str) -> tuple[int, str]:
    """The largest ``n`` in [0, n_max] whose ``build(n)`` has at most ``budget`` tokens (binary search, as RULER
    does); ``build`` must grow with ``n``. Raises when even ``build(0)`` does not fit."""
    lo, hi = 0, n_max
    if n_tokens(tok, build(0)) > budget:
        raise ParamError(f"{what}: the fixed part of the prompt alone has more than {budget} tokens; "
                         "raise the length or shrink the task")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if n_tokens(tok, build(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo, build(lo)


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER's ``string_match_all``: the fraction of references found (case-insensitive) in the prediction."""
    pred = prediction.lower()
    return sum(r.lower() in pred for r in references) / len(references) if references else 0.0


def number(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def filler_sentences(rng: random.Random, n: int) -> list[str]:
    return [_text.sentence(rng) for _ in range(n)]


def insert_at(sentences: list[str], items: list[tuple[float, str]]) -> str:
    """Sentences with each (depth, text) item inserted between sentences at its relative depth (stable order)."""
    out = list(sentences)
    for depth, text in sorted(items, key=lambda x: -x[0]):  # deepest first: earlier cuts stay valid
        out.insert(round(depth * len(sentences)), text)
    return " ".join(out)


def variable_names(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct 5-letter upper-case names (RULER's variable names)."""
    names: list[str] = []  # a list, not a set: deterministic order
    while len(names) < n:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    return names


#: the shared parameters' entries (numpy style, 4-space indent as in a class docstring)
COMMON_DOCS = """\
    lengths : list of int
        Total lengths in tokens of ``tokenizer`` (prompt + ``max_new_tokens``), each at most the model's context.
        Default {lengths}.
    n_per_length : int
        Examples per length. Default {n}.
    tokenizer : str
        Model whose tokenizer counts the lengths; empty = the evaluated model (flows fill it in). Default empty.
    max_new_tokens : int
        Greedy answer length (reserved in every length). Default {new}.
    seed : int
        Data seed. Default {seed}.
"""


@dataclass(frozen=True)
class RulerBenchmark(Benchmark):
    """Common fields and evaluation of the RULER-style tasks (subclasses implement ``make``).

    A subclass's docstring lists only its own parameters under ``Parameters``; the common ones (``COMMON_DOCS``, with
    the subclass's defaults) are inserted at the top of that section when the subclass is defined, so ``help()``,
    the CLI and the UI form show them once per task without a second copy in the source.
    """

    lengths: tuple[int, ...] = (1024,)
    n_per_length: int = 8
    tokenizer: str = ""
    max_new_tokens: int = 32
    seed: int = 0

    metrics: ClassVar[dict[str, bool]] = {"accuracy": True, "all_correct": True}
    primary_metric: ClassVar[str] = "accuracy"
    figures: ClassVar[dict[str, tuple[str, ...]]] = {"by_length": ("line", "length", "accuracy")}
    #: flows set ``tokenizer`` to the evaluated model when it is left empty
    needs_tokenizer: ClassVar[bool] = True
    #: rows hold ``context`` and the prompt is ``context + question`` (query-agnostic evaluation is possible)
    query_split: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        doc = cls.__dict__.get("__doc__") or ""
        header = "    Parameters\n    ----------\n"
        if header not in doc:
            raise TypeError(f"{cls.__name__}: a RULER task's docstring needs a Parameters section")
        common = COMMON_DOCS.format(lengths=",".join(map(str, cls.lengths)), n=cls.n_per_length,
                                    new=cls.max_new_tokens, seed=cls.seed)
        cls.__doc__ = doc.replace(header, header + common, 1)

    def check_common(self) -> None:
        name = self.component_name
        if not self.lengths:
            raise ParamError(f"{name}.lengths must not be empty")
        for n in self.lengths:
            check_range(f"{name}.lengths", n, 64, 1_000_000)
        check_range(f"{name}.n_per_length", self.n_per_length, 1)
        check_range(f"{name}.max_new_tokens", self.max_new_tokens, 1, min(self.lengths) // 2)

    def check_model(self, config: Any) -> None:
        """Every length (prompt + answer tokens) must fit the model's context."""
        limit = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 0)
        too_long = [n for n in self.lengths if limit and n > limit]
        if too_long:
            raise ParamError(f"{self.component_name}.lengths {too_long} exceed the model's context of {limit} tokens")

    @property
    def n_examples(self) -> int:
        return len(self.lengths) * self.n_per_length

    def data_fingerprint(self) -> str:
        return tokenizer_fingerprint(self.tokenizer) if self.tokenizer else ""

    def build(self, split: str) -> list[dict[str, Any]]:
        if not self.tokenizer:
            raise ParamError(f"{self.component_name}.tokenizer: name the model whose tokenizer counts the lengths "
                             "(flows fill in the evaluated model)")
        tok = load_tokenizer(self.tokenizer)
        rng = random.Random(self.split_seed(split))
        rows = []
        for i in range(self.n_examples):
            length = self.lengths[i // self.n_per_length]
            ex_rng = random.Random(rng.randrange(2**63))  # one stream per example: examples do not shift each other
            row = self.make(ex_rng, tok, length - self.max_new_tokens, i)
            prompt = row["context"] + row["question"]
            rows.append({"prompt": prompt, "target": " " + ", ".join(row["outputs"]),
                         "answer": ", ".join(row["outputs"]), "length": length,
                         "n_tokens": n_tokens(tok, prompt), **row})
        return rows

    def make(self, rng: random.Random, tok: Any, budget: int, index: int) -> dict[str, Any]:
        """One example whose prompt has at most ``budget`` tokens: ``context``, ``question``, ``outputs``."""
        raise NotImplementedError

    def question_start(self, row: dict[str, Any]) -> int | None:
        return len(row["context"])

    def evaluate(self, model, tokenizer, rows, *, session=None, batch_size=16, progress=False) -> EvalResult:
        conts = _scoring.greedy_continuations(
            model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=self.max_new_tokens, session=session,
            batch_size=batch_size, progress=progress, desc=self.component_name,
        )
        examples = []
        for r, c in zip(rows, conts):
            score = string_match_all(c, list(r["outputs"]))
            examples.append({"length": r["length"], "answer": r["answer"], "output": c, "score": score,
                             "correct": score == 1.0})
        by_length: dict[int, list[float]] = defaultdict(list)
        for e in examples:
            by_length[e["length"]].append(e["score"])
        metrics = {"accuracy": sum(e["score"] for e in examples) / len(examples),
                   "all_correct": sum(e["correct"] for e in examples) / len(examples)}
        metrics.update({f"accuracy_len{n}": sum(v) / len(v) for n, v in sorted(by_length.items())})
        table = [{"length": n, "accuracy": sum(v) / len(v), "n": len(v)} for n, v in sorted(by_length.items())]
        return EvalResult(metrics=metrics, examples=examples, breakdowns={"by_length": table})


# -- needle in a haystack (RULER's niah_* family) ---------------------------------------------------------------------
NIAH_HEADER = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
               "I will quiz you about the numbers afterwards.\n")
NIAH_NEEDLE = "One of the special magic numbers for {key} is: {value}."
NIAH_QUESTION = ("\nWhat are all the special magic numbers for {key} mentioned in the provided text? "
                 "The special magic numbers for {key} mentioned in the provided text are")


def niah_example(rng: random.Random, tok: Any, budget: int, *, n_keys: int, n_values: int, digits: int,
                 what: str) -> dict[str, Any]:
    """``n_keys`` keys with ``n_values`` numbers each as needles at random depths among story sentences; the first
    key is queried and its numbers are the answers (the other keys are distractors)."""
    keys = rng.sample(KEY_WORDS, n_keys)
    values: list[list[str]] = []
    used: set[str] = set()
    for _ in keys:
        vals = []
        while len(vals) < n_values:
            v = number(rng, digits)
            if v not in used:
                used.add(v)
                vals.append(v)
        values.append(vals)
    tagged = [(i, NIAH_NEEDLE.format(key=k, value=v)) for i, (k, vs) in enumerate(zip(keys, values)) for v in vs]
    rng.shuffle(tagged)
    needles = [t for _, t in tagged]
    depths = sorted(rng.sample(DEPTHS, len(needles)))
    pool = filler_sentences(rng, budget // 4 + 8)  # story sentences have more than 4 tokens each
    question = NIAH_QUESTION.format(key=keys[0])

    def build(n: int) -> str:
        return NIAH_HEADER + insert_at(pool[:n], list(zip(depths, needles))) + question

    n, _ = fit(build, tok, budget, len(pool), what)
    context = NIAH_HEADER + insert_at(pool[:n], list(zip(depths, needles)))
    first = min(d for d, (i, _) in zip(depths, tagged) if i == 0)  # depth of the queried key's first needle
    return {"context": context, "question": question, "outputs": values[0], "depth": first, "n_keys": n_keys}
