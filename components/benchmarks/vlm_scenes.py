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

The registered benchmark ``vlm_scenes`` (:class:`VLMScenes`, ``needs_images``) wraps both for the vlm-eval flow:
``build(split)`` generates the rows of a split, ``evaluate(model, processor, rows, patches=...)`` answers and
scores them. POPE's sampling of absent objects is the ``strategy`` parameter (random / popular / adversarial).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch

from components.attention import vision
from components.attention.session import Force, applied
from components.benchmarks import _scenes
from components.base import ParamError
from components.benchmarks.base import Benchmark, EvalResult
from registry import register

TEMPLATE = "{image}\nQuestion: {question} Answer:"
KINDS = ("exists", "absent", "count", "position", "text", "vqa")  # vqa: free-form user questions


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def correct(kind: str, answer: str, prediction: str) -> bool:
    """Yes/no rows: the prediction's first word; other rows: the normalised prediction starts with the answer."""
    if kind in ("exists", "absent"):
        return _scenes.yes_no(prediction) == answer
    words, want = _normalise(prediction).split(), _normalise(answer).split()
    return words[: len(want)] == want


def row_image(row: dict[str, Any], image_size: int = 96):
    """The PIL image of a row: a generated ``scene`` rendered at ``image_size``, else ``image_bytes`` (encoded
    PNG/JPEG...) or ``image_path`` (a file) from a user dataset (components/benchmarks/vlm_qa.py), as RGB."""
    if row.get("scene") is not None:  # a dict, or its JSON text after a Parquet round trip (tasks/io.py)
        scene = json.loads(row["scene"]) if isinstance(row["scene"], str) else row["scene"]
        return _scenes.render(scene, image_size)
    import io

    from PIL import Image

    if row.get("image_bytes"):
        return Image.open(io.BytesIO(row["image_bytes"])).convert("RGB")
    if row.get("image_path"):
        return Image.open(row["image_path"]).convert("RGB")
    raise ValueError(f"row {row.get('scene_id', '?')} has no scene, image_bytes or image_path")


def processor_size(processor: Any, default: int = 96) -> int:
    """The square input side of ``processor``'s image processor (crop size, else resize size), else ``default``."""
    ip = getattr(processor, "image_processor", None)
    for attr, key in (("crop_size", "height"), ("size", "height"), ("size", "shortest_edge")):
        value = getattr(ip, attr, None)  # a dict or transformers' SizeDict
        side = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        if side:
            return int(side)
    return default


@torch.no_grad()
def answer(model: torch.nn.Module, processor: Any, rows: Sequence[dict[str, Any]], *, image_size: int = 0,
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
    image_size = image_size or processor_size(processor)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = [row_image(r, image_size) for r in chunk]
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


def patch_inputs(model: torch.nn.Module, patches: Sequence, paired: bool) -> Callable[[dict], dict] | None:
    """``session_inputs`` for ``answer``: the union of ``inputs_for(model, enc)`` of the patches that define it
    (e.g. the visual boost's top/bottom image tokens); None when no patch reads inputs."""
    readers = [p for p in patches if getattr(p, "needs_inputs", False) and hasattr(p, "inputs_for")]
    if not readers:
        return None
    if paired:
        raise ValueError(f"{', '.join(p.component_name for p in readers)} cannot run on a paired batch (VHR): "
                         "evaluate them separately")
    return lambda enc: {k: v for p in readers for k, v in p.inputs_for(model, enc).items()}


@register("vlm_scenes", version="1.0.0", family="benchmark", paper="arXiv:2305.10355",
          summary="Generated shape scenes: POPE yes/no on present/absent objects, counts, positions, text.")
@dataclass(frozen=True)
class VLMScenes(Benchmark):
    """POPE-style object hallucination and VQA accuracy on generated scenes (vision-language models only).

    Parameters
    ----------
    n_scenes : int
        Scenes per split (each gives 3-5 questions). Default 40.
    strategy : {"random", "popular", "adversarial"}
        POPE's sampling of the absent objects asked about. Default ``random``.
    max_objects : int
        Largest number of objects in a scene (1-9). Default 4.
    text_prob : float
        Probability that a scene has a written word. Default 0.3.
    image_size : int
        Side of the rendered images in pixels; 0 (default) renders at the model's input size (its image
        processor's crop size), so scenes are drawn as the model saw them in training, not resized.
    max_new_tokens : int
        Greedy tokens generated per answer. Default 4.
    seed : int
        Data seed. Default 0.
    """

    n_scenes: int = 40
    strategy: Literal["random", "popular", "adversarial"] = "random"
    max_objects: int = 4
    text_prob: float = 0.3
    image_size: int = 0
    max_new_tokens: int = 4
    seed: int = 0

    needs_images: ClassVar[bool] = True
    prompt_texts: ClassVar[bool] = False
    metrics: ClassVar[dict[str, bool]] = {
        "accuracy": True, "pope_accuracy": True, "pope_precision": True, "pope_recall": True, "pope_f1": True,
        "yes_ratio": True, "hallucination_rate": False, **{f"accuracy_{k}": True for k in KINDS}}
    primary_metric: ClassVar[str] = "accuracy"
    example: ClassVar[dict[str, str]] = {"n_scenes": "4", "strategy": "adversarial"}

    def __post_init__(self) -> None:
        if self.n_scenes < 1:
            raise ParamError(f"vlm_scenes.n_scenes: {self.n_scenes} < 1")
        if not 1 <= self.max_objects <= len(_scenes.CELLS):
            raise ParamError(f"vlm_scenes.max_objects: {self.max_objects} is outside [1, {len(_scenes.CELLS)}]")
        if not 0.0 <= self.text_prob <= 1.0:
            raise ParamError(f"vlm_scenes.text_prob: {self.text_prob} is outside [0, 1]")
        if (self.image_size and self.image_size < 16) or self.max_new_tokens < 1:
            raise ParamError("vlm_scenes: image_size must be 0 (the model's input size) or >= 16, and "
                             "max_new_tokens >= 1")

    def build(self, split: str) -> list[dict[str, Any]]:
        return _scenes.dataset(self.split_seed(split), self.n_scenes, self.strategy, self.max_objects,
                               self.text_prob)

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]], *,
                 session: Any = None, batch_size: int = 8, progress: bool = False,
                 patches: Sequence = (), force: Force = None) -> EvalResult:
        """Answer ``rows`` with ``model`` and its processor (``tokenizer``) inside a scope of ``patches``; a patch
        that needs a paired batch (VHR, ``needs_paired_batch``) switches the paired decoding on."""
        paired = any(getattr(p, "needs_paired_batch", False) for p in patches)
        preds = answer(model, tokenizer, rows, image_size=self.image_size, max_new_tokens=self.max_new_tokens,
                       batch_size=batch_size, patches=patches, force=force, paired=paired,
                       session_inputs=patch_inputs(model, patches, paired))
        return score(rows, preds)
