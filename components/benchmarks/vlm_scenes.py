"""Run a vision-language model on generated scenes (components/benchmarks/_scenes.py) and score its answers.

``answer`` renders each row's scene, builds the prompt with the model's processor (which expands the image token),
decodes greedily, optionally inside an attention-patch scope, and returns the generated texts. ``score`` turns
texts into an :class:`EvalResult`:

- POPE metrics over the yes/no rows (``exists`` + ``absent``): ``pope_accuracy``, ``pope_precision``,
  ``pope_recall``, ``pope_f1``, ``yes_ratio``;
- ``hallucination_rate``: the share of ``absent`` questions answered "yes" (the object is not in the image);
- ``accuracy_<kind>`` for ``count``, ``position`` and ``text`` (the normalised answer starts the prediction),
  and ``accuracy`` over all rows.

VHR needs each prompt twice (with and without the image): ``paired=True`` builds the paired batch
(``components.patches.vhr.paired_batch``), decodes the twins in lockstep and returns the image rows' texts.

Not a registered benchmark yet: the flows load causal LMs and tokenizers, not VLMs and processors (docs/vlm.md).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch

from components.attention import vision
from components.attention.session import Force, applied
from components.benchmarks import _scenes
from components.benchmarks.base import EvalResult

TEMPLATE = "{image}\nQuestion: {question} Answer:"
KINDS = ("exists", "absent", "count", "position", "text")


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def correct(kind: str, answer: str, prediction: str) -> bool:
    """Yes/no rows: the prediction's first word; other rows: the normalised prediction starts with the answer."""
    if kind in ("exists", "absent"):
        return _scenes.yes_no(prediction) == answer
    words, want = _normalise(prediction).split(), _normalise(answer).split()
    return words[: len(want)] == want


@torch.no_grad()
def answer(model: torch.nn.Module, processor: Any, rows: Sequence[dict[str, Any]], *, image_size: int = 96,
           template: str = TEMPLATE, max_new_tokens: int = 4, batch_size: int = 8, patches: Sequence = (),
           force: Force = None, paired: bool = False,
           session_inputs: Callable[[dict], dict] | None = None) -> list[str]:
    """Greedy answers of ``model`` to ``rows`` (scene rows from ``_scenes.dataset``), one text per row.

    ``processor`` is the model's transformers processor (images + text -> inputs, image tokens expanded);
    ``template`` places its image token (``processor.image_token``) and the question. ``patches`` are applied
    for the whole decoding; ``session_inputs(batch)`` returns per-batch session inputs for patches that read them
    (e.g. the visual boost's token selection)."""
    if "{image}" not in template or "{question}" not in template:
        raise ValueError("template needs {image} and {question} fields")
    layout = vision.layout_of(model.config)
    if layout is None or layout.kind != "decoder":
        raise ValueError(f"{type(model).__name__} is not a supported vision-language decoder")
    tok = processor.tokenizer
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = [_scenes.render(r["scene"], image_size) for r in chunk]
        texts = [template.format(image=processor.image_token, question=r["question"]) for r in chunk]
        enc = dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
        extra: dict[str, Any] = {}
        if paired:
            from transformers import LogitsProcessorList

            from components.patches.vhr import PairedTokens, paired_batch

            enc = paired_batch(enc, layout, pad_id=pad)
            extra["logits_processor"] = LogitsProcessorList([PairedTokens()])
        enc = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}
        with applied(model, *patches, force=force) as session:
            if session_inputs is not None:
                session.set_inputs(**session_inputs(enc))
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, **extra)
        new = gen[: len(chunk), enc["input_ids"].shape[1]:]  # (B, new) the image rows' tokens
        out += tok.batch_decode(new, skip_special_tokens=True)
    return out


def score(rows: Sequence[dict[str, Any]], predictions: Sequence[str]) -> EvalResult:
    """Metrics, per-row records and per-kind / per-strategy breakdowns of ``predictions`` for ``rows``."""
    if len(rows) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
    examples = [{"scene_id": r["scene_id"], "kind": r["kind"], "strategy": r.get("strategy", ""),
                 "question": r["question"], "answer": r["answer"], "prediction": p,
                 "correct": correct(r["kind"], r["answer"], p)} for r, p in zip(rows, predictions)]
    metrics: dict[str, float] = {"accuracy": sum(e["correct"] for e in examples) / max(len(examples), 1)}
    yes_no = [e for e in examples if e["kind"] in ("exists", "absent")]
    if yes_no:
        pope = _scenes.pope_metrics([e["prediction"] for e in yes_no], [e["answer"] for e in yes_no])
        metrics.update({f"pope_{k}": v for k, v in pope.items() if k not in ("yes_ratio", "other_ratio")},
                       yes_ratio=pope["yes_ratio"])
    absent = [e for e in examples if e["kind"] == "absent"]
    if absent:
        metrics["hallucination_rate"] = sum(_scenes.yes_no(e["prediction"]) == "yes" for e in absent) / len(absent)
    by_kind = []
    for kind in KINDS:
        group = [e for e in examples if e["kind"] == kind]
        if group:
            metrics[f"accuracy_{kind}"] = sum(e["correct"] for e in group) / len(group)
            by_kind.append({"kind": kind, "n": len(group), "accuracy": metrics[f"accuracy_{kind}"]})
    by_strategy = [{"strategy": s, "n": len(g), "hallucination_rate": sum(
        _scenes.yes_no(e["prediction"]) == "yes" for e in g) / len(g)}
        for s in _scenes.STRATEGIES if (g := [e for e in absent if e["strategy"] == s])]
    return EvalResult(metrics, examples, {"by_kind": by_kind, "by_strategy": by_strategy})
