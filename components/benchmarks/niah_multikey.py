"""RULER multi-key needles (``niah_multikey``): several keys with one magic number each; one key is queried.

As ``niah_single`` but with ``n_keys`` needles ``One of the special magic numbers for {key} is: {value}.`` at
distinct random depths; the question names the first key, the others are distractors. Scored by RULER's
``string_match_all`` on the queried number (a model that answers a distractor's number scores 0).

From RULER (Hsieh et al., arXiv 2404.06654), task ``niah_multikey_1`` (4 keys); reference code
https://github.com/NVIDIA/RULER (``scripts/data/synthetic/niah.py``). Deviations: story sentences as haystack,
``adjective-noun`` keys from the story vocabulary (RULER's multikey_2/3 fill the haystack with needles or use UUID
keys: not built), no chat template, ``max_new_tokens`` 16 instead of 128.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import check_range
from components.benchmarks import _ruler
from registry import register


@register("niah_multikey", version="1.0.0", family="benchmark", paper="arXiv:2404.06654",
          summary="RULER multi-key needles: distractor keys, one queried; lengths in model tokens; string match.")
@dataclass(frozen=True)
class NiahMultikey(_ruler.RulerBenchmark):
    """RULER needle in a haystack with distractor keys.

    Parameters
    ----------
    n_keys : int
        Keys in the haystack, one queried (1..40). Default 4.
    digits : int
        Digits of the magic numbers. Default 7.
    """

    max_new_tokens: int = 16
    n_keys: int = 4
    digits: int = 7

    example: ClassVar[dict[str, str]] = {"lengths": "128", "n_per_length": "2", "n_keys": "3", "tokenizer": "demo"}

    def __post_init__(self) -> None:
        self.check_common()
        check_range("niah_multikey.n_keys", self.n_keys, 1, len(_ruler.DEPTHS))
        check_range("niah_multikey.digits", self.digits, 2, 12)

    def make(self, rng, tok, budget: int, index: int) -> dict[str, Any]:
        return _ruler.niah_example(rng, tok, budget, n_keys=self.n_keys, n_values=1, digits=self.digits,
                                   what="niah_multikey")
