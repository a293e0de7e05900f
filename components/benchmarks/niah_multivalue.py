"""RULER multi-value needle (``niah_multivalue``): one key with several magic numbers; all must be recalled.

As ``niah_single`` but the key gets ``n_values`` needles (each ``One of the special magic numbers for {key} is:
{value}.``) at distinct random depths. Scored by RULER's ``string_match_all``: the fraction of the key's numbers
present in the greedy answer.

From RULER (Hsieh et al., arXiv 2404.06654), task ``niah_multivalue`` (4 values); reference code
https://github.com/NVIDIA/RULER (``scripts/data/synthetic/niah.py``). Deviations: story sentences as haystack,
``adjective-noun`` keys from the story vocabulary, no chat template, ``max_new_tokens`` 48 instead of 128.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import check_range
from components.benchmarks import _ruler
from registry import register


@register("niah_multivalue", version="1.0.0", family="benchmark", paper="arXiv:2404.06654",
          summary="RULER multi-value needle: all numbers of one key; lengths in model tokens; string match.")
@dataclass(frozen=True)
class NiahMultivalue(_ruler.RulerBenchmark):
    """RULER needle in a haystack with several values for the queried key.

    Parameters
    ----------
    n_values : int
        Magic numbers of the queried key (1..40). Default 4.
    digits : int
        Digits of the magic numbers. Default 7.
    """

    max_new_tokens: int = 48
    n_values: int = 4
    digits: int = 7

    example: ClassVar[dict[str, str]] = {"lengths": "160", "n_per_length": "2", "n_values": "2", "tokenizer": "demo"}

    def __post_init__(self) -> None:
        self.check_common()
        check_range("niah_multivalue.n_values", self.n_values, 1, len(_ruler.DEPTHS))
        check_range("niah_multivalue.digits", self.digits, 2, 12)

    def make(self, rng, tok, budget: int, index: int) -> dict[str, Any]:
        return _ruler.niah_example(rng, tok, budget, n_keys=1, n_values=self.n_values, digits=self.digits,
                                   what="niah_multivalue")
