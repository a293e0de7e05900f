"""In-context classification under a random category-to-label mapping.

Each prompt draws ``n_classes`` word categories (animals, colours, places, ...) and a random mapping from those
categories to label letters, shows ``n_demos`` demonstrations ``word -> label`` and asks for a new word of one of
the categories: ``cat -> B\\nred -> A\\nowl -> B\\nblue -> A\\nfox ->``. Because the mapping is redrawn for
every prompt, the label cannot be memorised: the model must infer it from the demonstrations (the setting of
"semantically unrelated labels" ICL). Scored as ACT and ZeroTuning score classification: the label whose
token(s) get the highest log-probability after the prompt.

Based on Wei et al., "Larger language models do in-context learning differently" (arXiv 2303.03846), symbol
labels; scoring as in ACT (arXiv 2406.15765). Deviations: synthetic categories from a fixed vocabulary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from components.base import check_range
from components.benchmarks import _scoring, _text
from components.benchmarks.base import Benchmark, EvalResult
from registry import register

CATEGORIES = {
    "animal": _text.ANIMALS, "place": _text.PLACES, "thing": _text.THINGS, "name": _text.NAMES,
    "feeling": _text.FEELINGS, "weather": _text.WEATHER,
}
LABELS = ["A", "B", "C", "D", "E", "F"]


@register("icl_classification", version="1.0.0", family="benchmark", paper="arXiv:2303.03846",
          summary="Few-shot word -> label classification under a random mapping; label log-prob scoring.")
@dataclass(frozen=True)
class ICLClassification(Benchmark):
    """Few-shot classification with symbol labels redrawn per prompt.

    Parameters
    ----------
    n_classes : int
        Categories (and labels) per prompt, 2..6. Default 2.
    n_demos : int
        Demonstrations per prompt. Default 8.
    query_in_demos : bool
        Whether the query word may appear among the demonstrations (True turns the task into lookup). Default False.
    n_examples : int
        Examples per split. Default 100.
    seed : int
        Data seed. Default 0.
    """

    n_classes: int = 2
    n_demos: int = 8
    query_in_demos: bool = False
    n_examples: int = 100
    seed: int = 0

    metrics: ClassVar[dict[str, bool]] = {"accuracy": True}
    primary_metric: ClassVar[str] = "accuracy"

    def __post_init__(self) -> None:
        check_range("icl_classification.n_classes", self.n_classes, 2, len(LABELS))
        check_range("icl_classification.n_demos", self.n_demos, 1, 64)
        check_range("icl_classification.n_examples", self.n_examples, 1)

    def sample(self, rng: random.Random, index: int = 0) -> dict[str, Any]:
        cats = rng.sample(sorted(CATEGORIES), self.n_classes)
        labels = rng.sample(LABELS[: self.n_classes], self.n_classes)  # random category -> label mapping
        demo_cats = [cats[i % self.n_classes] for i in range(self.n_demos)]
        rng.shuffle(demo_cats)
        demos = [(rng.choice(CATEGORIES[c]), c) for c in demo_cats]
        q_cat = cats[index % self.n_classes]
        pool = [w for w in CATEGORIES[q_cat] if self.query_in_demos or w not in {d for d, _ in demos}]
        q_word = rng.choice(pool or CATEGORIES[q_cat])
        lines = [f"{w} -> {labels[cats.index(c)]}" for w, c in demos]
        answer = labels[cats.index(q_cat)]
        return {"prompt": "\n".join(lines) + f"\n{q_word} ->", "target": f" {answer}", "answer": answer,
                "choices": [f" {lab}" for lab in LABELS[: self.n_classes]], "category": q_cat}

    def evaluate(self, model, tokenizer, rows, *, session=None, batch_size=16, progress=False) -> EvalResult:
        scores = _scoring.choice_logprobs(model, tokenizer, [r["prompt"] for r in rows],
                                          [r["choices"] for r in rows], session=session,
                                          batch_size=batch_size, progress=progress)
        examples = []
        for r, s in zip(rows, scores):
            pred = r["choices"][max(range(len(s)), key=s.__getitem__)].strip()
            examples.append({"answer": r["answer"], "prediction": pred, "correct": pred == r["answer"],
                             "category": r["category"]})
        acc = sum(e["correct"] for e in examples) / len(examples)
        return EvalResult(metrics={"accuracy": acc}, examples=examples)
