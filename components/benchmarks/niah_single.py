"""RULER single needle (``niah_single``): one magic number for one key hidden in filler text; asked for at the end.

Context: ``Some special magic numbers are hidden within the following text...`` then story sentences with the
needle ``One of the special magic numbers for {key} is: {value}.`` at a random depth (one of 40 evenly spaced
depths). Question: ``What are all the special magic numbers for {key} mentioned in the provided text? The special
magic numbers for {key} mentioned in the provided text are``. The answer is the number; scored by RULER's
``string_match_all`` (1 when the number occurs in the greedy answer). Each length holds ``prompt + max_new_tokens``
tokens of ``tokenizer`` (the filler is the largest number of sentences that fits, by binary search).

From RULER (Hsieh et al., arXiv 2404.06654), task ``niah_single_1``/``niah_single_2``; reference code
https://github.com/NVIDIA/RULER (``scripts/data/synthetic/niah.py``). Deviations: story sentences as haystack (not
Paul Graham essays or the repeated noise sentence), ``adjective-noun`` keys from the story vocabulary, depths drawn
per example, no chat template; ``max_new_tokens`` 16 instead of 128 (the answer is one number).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import check_range
from components.benchmarks import _ruler
from registry import register


@register("niah_single", version="1.0.0", family="benchmark", paper="arXiv:2404.06654",
          summary="RULER single needle: one magic number hidden in filler; lengths in model tokens; string match.")
@dataclass(frozen=True)
class NiahSingle(_ruler.RulerBenchmark):
    """RULER single needle in a haystack.

    Parameters
    ----------
    digits : int
        Digits of the magic number. Default 7.
    """

    max_new_tokens: int = 16
    digits: int = 7

    example: ClassVar[dict[str, str]] = {"lengths": "128", "n_per_length": "2", "tokenizer": "demo"}

    def __post_init__(self) -> None:
        self.check_common()
        check_range("niah_single.digits", self.digits, 2, 12)

    def make(self, rng, tok, budget: int, index: int) -> dict[str, Any]:
        return _ruler.niah_example(rng, tok, budget, n_keys=1, n_values=1, digits=self.digits, what="niah_single")
