"""Head importance of a vision encoder, next to each head's attention distance (importance x distance per head).

Li et al., "How Does Attention Work in Vision Transformers? A Visual Analytics Attempt" (PacificVis / TVCG 2023,
arXiv 2303.13731; no reference code): single-head pruning of a ViT, scored by the accuracy and the confidence
(true-class probability) change, shown against each head's attention strength over 2-D patch distance. The
distance half is the ``attention_distance`` analyzer; this analyzer masks each head of a vision encoder and
measures what the task loses, then joins both per head.

Two tasks, chosen from the model:

- a LLaVA-style vision-language model (``model.model.vision_tower`` is a ViT/CLIP/SigLIP encoder): the scene
  questions of components/benchmarks/_scenes.py in the vlm-eval template; per row, the target log-probability
  lp(x) = mean over the answer's tokens of log p(y_t | image, prompt, y_<t) (teacher forcing), and correctness =
  every answer token is the greedy argmax (what greedy decoding would answer first);
- an image classifier (``*ForImageClassification`` on a ViT/CLIP/SigLIP config): the rendered scenes as images,
  labelled by the unmasked model's own prediction (no labelled image set is available offline, so
  "confidence" is the log-probability of the unmasked prediction); correctness = the prediction is unchanged.

For head h of encoder layer l, with lp_{-(l,h)} the same quantity with that head masked (``head_mask``: its output
zeroed before the output projection, ``mask_mode=zero``, the paper's pruning; or uniform attention):

    logprob_drop[l, h] = mean_x [ lp(x) - lp_{-(l,h)}(x) ]          acc_drop[l, h] = acc - acc_{-(l,h)}

and ``mean_distance[l, h]`` is the mean attention distance of ``attention_distance`` on the same images. The
table ``heads`` has one row per head with the three values; ``spearman_<measure>_distance`` is the rank
correlation of importance with distance.

Deviations: the paper uses ImageNet top-1 and true-class confidence of a ViT classifier; here the task is the VLM's
scene QA (or the classifier's own predictions); the Taylor (gate-gradient) score of ``head_importance`` is not
computed for vision heads; accuracy is the teacher-forced greedy match, not free generation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from components.analyzers.attention_distance import AttentionDistance
from components.analyzers.base import AnalysisResult, Analyzer, layer_head_rows, ranked, top_heads
from components.analyzers.head_importance import spearman
from components.attention import vision
from components.attention.session import applied
from components.base import ParamError
from components.benchmarks import _scenes
from components.benchmarks.vlm_scenes import TEMPLATE, row_image
from components.heads import HeadSet
from components.patches.head_mask import HeadMask
from registry import register

MEASURES = ("logprob_drop", "acc_drop")


def vision_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose heads are masked: a LLaVA-style model's vision tower, or a classifier itself."""
    tower = getattr(getattr(model, "model", None), "vision_tower", None)
    target = tower if tower is not None else model
    layout = vision.layout_of(target.config)
    if layout is None or layout.kind != "encoder":
        raise ValueError(f"{type(model).__name__}: no ViT/CLIP/SigLIP vision encoder to mask (supported: a LLaVA-style "
                         f"model, or an image classifier on {', '.join(vision.ENCODERS)})")
    return target


def is_classifier(model: torch.nn.Module) -> bool:
    return type(model).__name__.endswith("ForImageClassification")


@torch.no_grad()
def vlm_scores(model: torch.nn.Module, processor: Any, rows: list[dict[str, Any]], image_size: int,
               batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(lp (N,), correct (N,) bool) of each row's answer after its image and question (teacher forcing)."""
    tok = processor.tokenizer
    tok.padding_side = "right"
    device = next(model.parameters()).device
    lps, oks = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = [row_image(r, image_size) for r in chunk]
        prompts = [TEMPLATE.format(image=processor.image_token, question=r["question"]) for r in chunk]
        enc = processor(images=images, text=[p + " " + r["answer"] for p, r in zip(prompts, chunk)],
                        return_tensors="pt", padding=True)
        plen = [len(processor(images=[im], text=[p], return_tensors="pt")["input_ids"][0])
                for im, p in zip(images, prompts)]
        enc = {k: v.to(device) for k, v in enc.items()}
        logp = torch.log_softmax(model(**enc).logits.float(), -1)  # (B, T, V)
        for b, n in enumerate(plen):
            end = int(enc["attention_mask"][b].sum())
            tgt = enc["input_ids"][b, n:end]  # (A,) answer tokens
            pred = logp[b, n - 1 : end - 1]  # (A, V) the positions predicting them
            lps.append(pred.gather(1, tgt[:, None]).mean())
            oks.append(bool((pred.argmax(-1) == tgt).all()))
    return torch.stack(lps).cpu(), torch.tensor(oks)


@torch.no_grad()
def classifier_scores(model: torch.nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor,
                      batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(label) (N,), prediction == label (N,)) of an image classifier."""
    device = next(model.parameters()).device
    lps, oks = [], []
    for start in range(0, len(pixel_values), batch_size):
        logits = model(pixel_values=pixel_values[start : start + batch_size].to(device)).logits.float()  # (B, C)
        lab = labels[start : start + batch_size].to(device)
        lps.append(torch.log_softmax(logits, -1).gather(1, lab[:, None])[:, 0].cpu())
        oks.append((logits.argmax(-1) == lab).cpu())
    return torch.cat(lps), torch.cat(oks)


@register("vision_head_importance", version="1.0.0", family="analyzer", paper="arXiv:2303.13731",
          summary="Vision-encoder head importance (mask each head: VLM answer or classifier drop) x attention "
                  "distance.")
@dataclass(frozen=True)
class VisionHeadImportance(Analyzer):
    """Per-head importance of a vision encoder by single-head masking, with each head's attention distance.

    Parameters
    ----------
    n_scenes : int
        Generated scenes (each gives 3-5 questions for a VLM; one image for a classifier). Default 24.
    max_objects : int
        Largest number of objects in a scene. Default 4.
    image_size : int
        Side of the rendered scenes in pixels (0: the encoder's input size). Default 0.
    mask_mode : {"zero", "uniform"}
        How a head is masked (``head_mask`` modes). Default ``zero`` (the paper's pruning).
    batch_size : int
        Rows per forward. Default 8.
    seed : int
        Scene seed. Default 0.
    """

    n_scenes: int = 24
    max_objects: int = 4
    image_size: int = 0
    mask_mode: Literal["zero", "uniform"] = "zero"
    batch_size: int = 8
    seed: int = 0

    primary_array: ClassVar[str] = "logprob_drop"
    needs_images: ClassVar[bool] = True
    reads_decoders: ClassVar[bool] = True  # the analysis flow accepts vision-language decoders (tasks/analysis.py)
    example: ClassVar[dict[str, str]] = {"n_scenes": "2", "batch_size": "4"}

    def __post_init__(self) -> None:
        if self.n_scenes < 1 or self.batch_size < 1 or self.image_size < 0:
            raise ParamError("vision_head_importance: n_scenes and batch_size must be >= 1, image_size >= 0")
        if not 1 <= self.max_objects <= len(_scenes.CELLS) - 1:
            raise ParamError(f"vision_head_importance.max_objects: {self.max_objects} is outside [1, 8]")

    def build(self) -> list[dict[str, Any]]:
        return _scenes.dataset(self.seed, self.n_scenes, "random", self.max_objects)

    def check_model(self, config: Any) -> None:
        layout = vision.layout_of(config)
        if layout is None:
            raise ValueError(f"vision_head_importance needs a vision model; {type(config).__name__} is text-only")
        if layout.kind == "decoder" and layout.family != "llava":
            raise ValueError(f"vision_head_importance reads LLaVA-style vision towers; {layout.family} is not one")

    def _size(self, encoder: torch.nn.Module) -> int:
        return self.image_size or encoder.config.image_size

    def _task(self, model, processor, rows, encoder):
        """(score function () -> (lp, correct), pixel values (N, C, S, S) of the task's images)."""
        size = self._size(encoder)
        if is_classifier(model):
            scenes = {r["scene_id"]: r for r in rows}
            images = [row_image(r, size) for r in scenes.values()]
            arr = torch.tensor(np.stack([np.asarray(im, dtype=np.float32) / 127.5 - 1.0 for im in images]))
            pixels = arr.permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S) in [-1, 1]
            with torch.no_grad():
                labels = model(pixel_values=pixels).logits.argmax(-1)  # (N,) the unmasked predictions
            return (lambda: classifier_scores(model, pixels, labels, self.batch_size)), pixels
        if processor is None:
            raise ValueError("vision_head_importance: a vision-language model needs its processor")
        pixels = processor.image_processor(images=[row_image(r, size) for r in {r["scene_id"]: r for r in rows}
                                                   .values()], return_tensors="pt")["pixel_values"]
        return (lambda: vlm_scores(model, processor, rows, size, self.batch_size)), pixels

    def analyze(self, model: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]], *,
                progress: bool = False) -> AnalysisResult:
        self.check_model(model.config)
        encoder = vision_encoder(model)
        score, pixels = self._task(model, tokenizer, rows, encoder)
        n_layers, n_heads = encoder.config.num_hidden_layers, encoder.config.num_attention_heads
        base_lp, base_ok = score()
        arrays = {m: np.zeros((n_layers, n_heads)) for m in MEASURES}
        for layer, head in itertools.product(range(n_layers), range(n_heads)):
            mask = HeadMask(heads=HeadSet.of([(layer, head)]), mode=self.mask_mode)
            with applied(encoder, mask):
                lp, ok = score()
            arrays["logprob_drop"][layer, head] = float((base_lp - lp).double().mean())
            arrays["acc_drop"][layer, head] = float(base_ok.double().mean() - ok.double().mean())
        dist = AttentionDistance(batch_size=self.batch_size).profile(encoder, pixels)
        arrays["mean_distance"] = dist.arrays["mean_distance"]
        metrics = {"n_examples": float(len(base_lp)), "baseline_logprob": float(base_lp.double().mean()),
                   "baseline_accuracy": float(base_ok.double().mean()),
                   **{f"spearman_{m}_distance": spearman(arrays[m], arrays["mean_distance"]) for m in MEASURES},
                   "spearman_logprob_drop_acc_drop": spearman(arrays["logprob_drop"], arrays["acc_drop"])}
        table = ranked(layer_head_rows(arrays), "logprob_drop")
        return AnalysisResult(
            arrays={**arrays, "profile": dist.arrays["profile"]},
            tables={"heads": table, "profile": dist.tables["profile"]}, metrics=metrics,
            heads={f"ranking_{m}": top_heads(arrays[m], n_layers * n_heads) for m in MEASURES},
            figures={m: ("layer_head", m) for m in (*MEASURES, "mean_distance")},
        )
