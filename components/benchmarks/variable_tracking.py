"""RULER variable tracking (``variable_tracking``): follow chains of assignments hidden in filler text.

Context: ``Memorize and track the chain(s) of variable assignment hidden in the following text.`` then story
sentences with the statements of ``n_chains`` chains inserted in order at random places: ``VAR QWERT = 12345.``,
``VAR ASDFG = VAR QWERT.``, ... (``n_hops`` hops, so ``n_hops + 1`` variables per chain, every chain with its own
value). Question: ``Question: Find all variables that are assigned the value {value} in the text above. Answer:
According to the chain(s) of variable assignment in the text above, {n} variables are assigned the value {value},
they are:``. The answers are the first chain's variable names; scored by RULER's ``string_match_all`` (the
fraction of them present in the greedy answer).

From RULER (Hsieh et al., arXiv 2404.06654), task ``vt`` (1 chain, 4 hops); reference code
https://github.com/NVIDIA/RULER (``scripts/data/synthetic/variable_tracking.py``). Deviations: story sentences
instead of the repeated noise sentence, statements end with a period, no few-shot example and no chat template,
no trailing space after the answer prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import check_range
from components.benchmarks import _ruler
from registry import register

HEADER = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
QUESTION = ("\nQuestion: Find all variables that are assigned the value {value} in the text above. Answer: According "
            "to the chain(s) of variable assignment in the text above, {n} variables are assigned the value {value}, "
            "they are:")


@register("variable_tracking", version="1.0.0", family="benchmark", paper="arXiv:2404.06654",
          summary="RULER variable tracking: chains VAR X = 12345, VAR Y = VAR X in filler; name every variable.")
@dataclass(frozen=True)
class VariableTracking(_ruler.RulerBenchmark):
    """RULER variable tracking (multi-hop tracing).

    Parameters
    ----------
    n_chains : int
        Chains in the context; the first is queried. Default 1.
    n_hops : int
        Hops per chain (variables = hops + 1). Default 4.
    digits : int
        Digits of the assigned values. Default 5.
    """

    max_new_tokens: int = 30
    n_chains: int = 1
    n_hops: int = 4
    digits: int = 5

    example: ClassVar[dict[str, str]] = {"lengths": "160", "n_per_length": "2", "n_hops": "2", "tokenizer": "demo"}

    def __post_init__(self) -> None:
        self.check_common()
        check_range("variable_tracking.n_chains", self.n_chains, 1, 50)
        check_range("variable_tracking.n_hops", self.n_hops, 1, 50)
        check_range("variable_tracking.digits", self.digits, 2, 12)

    def make(self, rng, tok, budget: int, index: int) -> dict[str, Any]:
        names = _ruler.variable_names(rng, self.n_chains * (self.n_hops + 1))
        values: list[str] = []
        while len(values) < self.n_chains:
            v = _ruler.number(rng, self.digits)
            if v not in values:
                values.append(v)
        chains = []
        for c in range(self.n_chains):
            var = names[c * (self.n_hops + 1):(c + 1) * (self.n_hops + 1)]
            chains.append([f"VAR {var[0]} = {values[c]}."] + [f"VAR {b} = VAR {a}." for a, b in zip(var, var[1:])])
        order = [c for c in range(self.n_chains) for _ in range(self.n_hops + 1)]
        rng.shuffle(order)  # a random interleaving that keeps each chain's statements in order
        nxt = [0] * self.n_chains
        statements = []
        for c in order:
            statements.append(chains[c][nxt[c]])
            nxt[c] += 1
        depths = sorted(rng.random() for _ in statements)
        items = list(zip(depths, statements))
        pool = _ruler.filler_sentences(rng, budget // 4 + 8)
        question = QUESTION.format(value=values[0], n=self.n_hops + 1)
        n, _ = _ruler.fit(lambda k: HEADER + _ruler.insert_at(pool[:k], items) + question, tok, budget, len(pool),
                          "variable_tracking")
        first = names[: self.n_hops + 1]
        return {"context": HEADER + _ruler.insert_at(pool[:n], items), "question": question, "outputs": first,
                "value": values[0]}
