"""RULER common-word extraction (``common_words``): name the most frequent words of a numbered list.

Context: ``Below is a numbered list of words. In these words, some appear more often than others. Memorize the
ones that appear most often.`` then ``1. word 2. word ...``: ``num_cw`` common words appear ``freq_cw`` times each
and uncommon words ``freq_ucw`` times each, shuffled; the number of uncommon words is the largest that fits the
length (binary search). Question: ``Question: What are the {num_cw} most common words in the above list? Answer:
The top {num_cw} words that appear most often in the list are:``. The answers are the common words; scored by
RULER's ``string_match_all`` (the fraction of them present in the greedy answer).

From RULER (Hsieh et al., arXiv 2404.06654), task ``cwe`` (aggregation; freq_cw 30, freq_ucw 3, num_cw 10);
reference code https://github.com/NVIDIA/RULER (``scripts/data/synthetic/common_words_extraction.py``).
Deviations: words are pronounceable two-syllable pseudo-words (``bako``, ``timu``; 4,900 of them, built in)
instead of the wonderwords English nouns/adjectives/verbs; no few-shot example and no chat template;
``max_new_tokens`` 64 instead of 120. At short lengths RULER's defaults do not fit (10 x 30 common items alone take
~1,800 tokens): lower ``freq_cw``/``num_cw`` there; a length whose common words alone do not fit is an error.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import ParamError, check_range
from components.benchmarks import _ruler
from registry import register

HEADER = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
          "that appear most often.\n")
QUESTION = ("\nQuestion: What are the {n} most common words in the above list? Answer: The top {n} words that appear "
            "most often in the list are:")


@register("common_words", version="1.0.0", family="benchmark", paper="arXiv:2404.06654",
          summary="RULER common-word extraction: top-k frequent words of a long list; lengths in model tokens.")
@dataclass(frozen=True)
class CommonWords(_ruler.RulerBenchmark):
    """RULER common-word extraction (aggregation).

    Parameters
    ----------
    num_cw : int
        Common words (the answers). Default 10.
    freq_cw : int
        Occurrences of each common word. Default 30.
    freq_ucw : int
        Occurrences of each uncommon word (below ``freq_cw``). Default 3.
    """

    max_new_tokens: int = 64
    num_cw: int = 10
    freq_cw: int = 30
    freq_ucw: int = 3

    example: ClassVar[dict[str, str]] = {"lengths": "200", "n_per_length": "2", "num_cw": "3", "freq_cw": "4",
                                         "freq_ucw": "1", "tokenizer": "demo"}

    def __post_init__(self) -> None:
        self.check_common()
        check_range("common_words.num_cw", self.num_cw, 1, 100)
        check_range("common_words.freq_cw", self.freq_cw, 2, 1000)
        check_range("common_words.freq_ucw", self.freq_ucw, 1, 1000)
        if self.freq_ucw >= self.freq_cw:
            raise ParamError(f"common_words.freq_ucw={self.freq_ucw} must be below freq_cw={self.freq_cw}")

    def make(self, rng, tok, budget: int, index: int) -> dict[str, Any]:
        words = rng.sample(_ruler.PSEUDO_WORDS, len(_ruler.PSEUDO_WORDS))
        common, rest = words[: self.num_cw], words[self.num_cw:]
        shuffle_seed = rng.randrange(2**63)
        question = QUESTION.format(n=self.num_cw)

        def listing(k: int) -> str:
            items = common * self.freq_cw + rest[:k] * self.freq_ucw
            random.Random(shuffle_seed).shuffle(items)  # the same shuffle for every trial size
            return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))

        n, _ = _ruler.fit(lambda k: HEADER + listing(k) + question, tok, budget, len(rest),
                          f"common_words (num_cw={self.num_cw} x freq_cw={self.freq_cw})")
        return {"context": HEADER + listing(n), "question": question, "outputs": common, "n_uncommon": n}
