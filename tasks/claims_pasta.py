"""The PASTA claim (arXiv:2311.02262): emphasising a user-marked instruction span raises instruction following.

A built-in prompt set: a checkable instruction (the marked span: the text after ``Instruction:`` up to the end of
its line), then a distracting context passage and a question about it, rendered with the model's chat template
when its tokenizer has one. Compliance = share of greedy answers that pass the instruction's deterministic
checker, with PASTA on vs off. Seeds draw which passage/question goes with each instruction. Also reported:
perplexity of built-in text with PASTA emphasising its first sentence vs off.

Deviation from PASTA: the repository has no PASTA head profiling, so every head of the middle third of the
layers is steered (PASTA profiles and keeps the best heads per task); alpha = 0.01 as in PASTA.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from typing import Any

import torch

from components.benchmarks import _scoring, _text
from tasks import claims_stats as stats
from tasks.claims_base import Claim

_WORD = re.compile(r"[A-Za-z']+")


def all_caps(answer: str) -> bool:
    """Every letter is upper case (and there is at least one letter)."""
    letters = [c for c in answer if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters)


def one_word(answer: str) -> bool:
    """Exactly one word once surrounding punctuation and whitespace are stripped."""
    words = answer.strip().strip(".,!?;:\"'()").split()
    return len(words) == 1 and any(c.isalnum() for c in words[0])


def begins_yes(answer: str) -> bool:
    """The answer starts with the word Yes."""
    return re.match(r"\s*[\"']?Yes\b", answer) is not None


def uses_she(answer: str) -> bool:
    """The pronoun 'she' occurs as a word (any case)."""
    return any(w.lower() == "she" for w in _WORD.findall(answer))


def answer_format(answer: str) -> bool:
    """The answer starts with 'Answer:'."""
    return answer.lstrip().startswith("Answer:")


#: instruction text -> its checker
INSTRUCTIONS: dict[str, Callable[[str], bool]] = {
    "Write your whole answer in capital letters.": all_caps,
    "Answer with exactly one word.": one_word,
    "Begin your answer with the word 'Yes'.": begins_yes,
    "Talk about a woman in your answer, using the pronoun 'she'.": uses_she,
    "Start your answer with 'Answer:'.": answer_format,
}

#: distracting passages, each with a question about it
PASSAGES: tuple[tuple[str, str], ...] = (
    (("The harbour town wakes early. Fishing boats leave before dawn and come back at noon with their catch, which "
     "is sold on the quay. In winter, storms keep the boats in port for days."), "When do the boats come back?"),
    (("A library in the old mill lends tools as well as books. People borrow drills, ladders and sewing machines "
     "for a week at a time, and volunteers repair what comes back broken."), "What can people borrow besides books?"),
    (("The mountain railway climbs two thousand metres in forty minutes. Its carriages are pushed, not pulled, by "
     "a small engine, and the line closes when snow covers the upper station."), "When does the line close?"),
    (("Bees in the city garden make a dark honey from lime trees. The beekeeper opens the hives twice a month and "
     "records the weight of each frame in a notebook."), "What do the bees make honey from?"),
    (("The night market opens at six on Fridays. Stalls sell noodles, grilled fish and fruit, and a band plays on "
     "the steps of the town hall until midnight."), "Where does the band play?"),
    (("An old clock tower stands in the square. Its bell rings every hour, and once a year a mechanic climbs the "
     "stairs to oil the gears and set the hands."), "How often does the bell ring?"),
)


def prompt_set(seed: int, per_instruction: int = 2) -> list[dict[str, str]]:
    """The user messages of one seed: each instruction with ``per_instruction`` passages drawn with ``seed``."""
    rng = random.Random(seed)
    out = []
    for instruction in INSTRUCTIONS:
        for passage, question in rng.sample(PASSAGES, per_instruction):
            out.append({"instruction": instruction,
                        "message": f"Instruction: {instruction}\n{passage}\n\nQuestion: {question}"})
    return out


def render(tokenizer: Any, message: str) -> str:
    """The prompt text: the chat template when the tokenizer has one (BOS left to the tokenizer), else the message."""
    if not getattr(tokenizer, "chat_template", None):
        return message + "\n"
    text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    return text[len(bos):] if adds_bos and text.startswith(bos) else text


def steered_heads(n_layers: int) -> str:
    """Every head of the middle third of the layers, as a head set (at least one layer)."""
    lo = n_layers // 3
    hi = max(lo, 2 * n_layers // 3 - 1)
    return f"{lo}-{hi}:*"


def _pasta(n_layers: int, alpha: float, **spans: str) -> Any:
    import registry

    return registry.get("pasta", family="patch").create(
        {"alpha": str(alpha), "heads": steered_heads(n_layers), **spans})


def _answers(loaded: Any, prompts: list[str], patch: Any, max_new_tokens: int, batch_size: int) -> list[str]:
    if patch is None:
        return _scoring.greedy_continuations(loaded.model, loaded.tokenizer, prompts, max_new_tokens,
                                             batch_size=batch_size)
    with patch.applied(loaded.model) as session:
        return _scoring.greedy_continuations(loaded.model, loaded.tokenizer, prompts, max_new_tokens,
                                             session=session, batch_size=batch_size)


@torch.no_grad()
def _perplexity(loaded: Any, text: str, patch: Any) -> float:
    """exp(mean next-token NLL) of ``text`` (one sequence), with ``patch`` applied when given."""
    tok, model = loaded.tokenizer, loaded.model
    enc = tok([text], return_tensors="pt")
    ids = enc["input_ids"]  # (1, T)

    def nll() -> float:
        logits = model(**enc).logits.float()  # (1, T, V)
        return float(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]))

    if patch is None:
        return math.exp(nll())
    with patch.applied(model) as session:
        session.set_inputs(texts=[text], encoding=enc, tokenizer=tok)
        return math.exp(nll())


def run(model: str, *, seeds: list[int], data: dict[str, str] | None = None, dtype: str = "float32",
        progress: bool = False, alpha: float = 0.01, per_instruction: int = 2, max_new_tokens: int = 24,
        batch_size: int = 8, **options: Any) -> dict[str, Any]:
    """Compliance with PASTA on vs off per seed, the verdict, and the perplexity change (docs/reproduce-fewshot.md)."""
    from components.base import ParamError
    from components.patches.base import model_shape
    from tasks.claims_fewshot import result
    from tasks.models import load_model

    start = time.perf_counter()
    if options:
        raise ParamError(f"unknown pasta claim option(s) {', '.join(sorted(options))}; known: alpha, "
                         "per_instruction, max_new_tokens, batch_size")
    if len(seeds) < 2:
        raise ParamError(f"claim pasta: at least 2 seeds are needed for a confidence interval, got {seeds}")
    if not 0 < alpha <= 1 or not 1 <= per_instruction <= len(PASSAGES):
        raise ParamError(f"claim pasta: alpha must be in (0, 1] and per_instruction in 1..{len(PASSAGES)}")
    loaded = load_model(model, dtype=dtype)
    n_layers, _ = model_shape(loaded.model.config)
    steer = _pasta(n_layers, alpha, span_start="Instruction:", span_end="\\n")
    per_seed, examples = [], []
    for seed in seeds:
        items = prompt_set(seed, per_instruction)
        prompts = [render(loaded.tokenizer, it["message"]) for it in items]
        off = _answers(loaded, prompts, None, max_new_tokens, batch_size)
        on = _answers(loaded, prompts, steer, max_new_tokens, batch_size)
        ok_off = [INSTRUCTIONS[it["instruction"]](a) for it, a in zip(items, off)]
        ok_on = [INSTRUCTIONS[it["instruction"]](a) for it, a in zip(items, on)]
        story = " ".join(_text.stories(seed, 3))
        first = story.find(". ") + 1 or len(story)
        ppl_off = _perplexity(loaded, story, None)
        ppl_on = _perplexity(loaded, story, _pasta(n_layers, alpha, spans=f"0:{first}"))
        row = {"seed": seed, "baseline_compliance": stats.mean(ok_off), "method_compliance": stats.mean(ok_on),
               "ppl_off": ppl_off, "ppl_pasta": ppl_on}
        row["gain"] = row["method_compliance"] - row["baseline_compliance"]
        for ins, check in INSTRUCTIONS.items():
            idx = [i for i, it in enumerate(items) if it["instruction"] == ins]
            row[f"{check.__name__}/gain"] = stats.mean([ok_on[i] - ok_off[i] for i in idx])
        per_seed.append(row)
        examples += [{"seed": seed, "instruction": it["instruction"], "off": a, "pasta": b}
                     for it, a, b in zip(items, off, on)]
    keys = [k for k in per_seed[0] if k != "seed"]
    figures = {k: stats.mean([r[k] for r in per_seed]) for k in keys}
    figures["ppl_change"] = figures["ppl_pasta"] / figures["ppl_off"] - 1
    ci = stats.t_interval([r["gain"] for r in per_seed])
    verdict = stats.verdict_from_ci(ci)
    reason = (f"compliance {figures['baseline_compliance']:.2f} -> {figures['method_compliance']:.2f} (gain "
              f"{figures['gain']:+.3f}, 95% t-CI over {len(seeds)} seeds [{ci[0]:+.3f}, {ci[1]:+.3f}]); perplexity "
              f"{figures['ppl_off']:.1f} -> {figures['ppl_pasta']:.1f} with the first sentence emphasised")
    return result(PASTA_CLAIM, model, seeds, start, verdict=verdict, reason=reason, figures=figures,
                  ci={"gain": list(ci)}, per_seed=per_seed,
                  details={"heads": steered_heads(n_layers), "alpha": alpha, "examples": examples})


PASTA_CLAIM = Claim(
    "pasta", "arXiv:2311.02262", "Emphasising a user-marked instruction span with attention steering raises the "
    "instruct model's instruction following.", "compliance with PASTA minus without, per seed; held when the lower "
    "bound of its 95% t-interval over seeds is > 0, not held when the upper bound is <= 0, inconclusive otherwise",
    run)
