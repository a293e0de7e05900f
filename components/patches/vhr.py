"""VHR, Vision-aware Head Reinforcement: "Cracking the Code of Hallucination in LVLMs with Vision-aware Head
Divergence" (He et al., ACL 2025, arXiv 2412.13949). Reference code: github.com/jinghan1he/VHR (not read here: the
details below follow the paper, as summarised in the project's METHODS.md section 14b).

Vision-aware head divergence of head h in layer l at the current token t:

    VHD_{l,h}(t) = || o_{l,h}(t | image, text) - o_{l,h}(t | text) ||_2

o the head's output (its context vector before the output projection), the second term from a parallel pass on
the same text without the image. VHR, at every decoding step and layer by layer: compute the layer's VHD, drop the
abnormal scores (here: above Q3 + 1.5 IQR over the layer's heads), reinforce the top ``fraction`` (50%) of the
remaining heads by scaling their outputs by ``alpha`` (2), then continue with the next layer, whose VHD therefore
reflects the reinforced lower layers.

Parallel pass: the batch holds each prompt twice, rows [0, B) with the image and rows [B, 2B) the same text with the
image tokens removed (``paired_batch`` builds it; left padding keeps the current token last in both). Both halves
run through the layers in lockstep, so each attention call sees both outputs of the current token and computes the
VHD in place. ``PairedTokens`` (a logits processor) makes each text-only row decode its partner's token. Only the
rows with the image are reinforced; the text-only rows are the unmodified reference.

Path: an output edit (``edit_output``) on the last query row only, so attention keeps the fused SDPA kernel.

Deviations / reconstructions: the outlier rule (IQR) and the rounding of "top 50%" (ceil of the kept heads) are
not specified in the summary used here; the text-only pass's inputs (image tokens removed, other tokens kept) are
a reconstruction. Sampling decodes the twins independently (use greedy decoding, or a sampler that copies the
partner's token). Registered with ``needs_images``: vision-language
models only (the vlm-eval flow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from components.attention.types import CallInfo
from components.attention.vision import VisualLayout
from components.base import ParamError
from registry import register
from components.patches.base import AttentionPatch


def paired_batch(inputs: dict, layout: VisualLayout, pad_id: int = 0) -> dict:
    """Append, for every row, a text-only twin: the same tokens without the image tokens, left-padded.

    Parameters
    ----------
    inputs : dict
        Model inputs with ``input_ids`` and ``attention_mask`` (B, T) (left padding) and the image inputs.
    layout : VisualLayout
        The model's layout (its image token ids).

    Returns
    -------
    dict
        Inputs of 2B rows: rows [0, B) as given (right-aligned), rows [B, 2B) the twins. Per-row image tensors of
        Idefics3-style models (B, N, C, H, W) get all-zero twins (skipped as padding images); ``mm_token_type_ids``
        is rebuilt; other image inputs (LLaVA / Qwen2-VL flattened images) are kept, as only image rows use them.
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    image = layout.image_tokens(ids)
    keep = mask.bool() & ~image
    twins = [row[k] for row, k in zip(ids, keep)]
    width = max(ids.shape[1], max(len(t) for t in twins))
    new_ids = torch.full((2 * ids.shape[0], width), pad_id, dtype=ids.dtype)
    new_mask = torch.zeros(2 * ids.shape[0], width, dtype=mask.dtype)
    new_ids[: ids.shape[0], width - ids.shape[1]:] = ids
    new_mask[: ids.shape[0], width - ids.shape[1]:] = mask
    for b, t in enumerate(twins):
        new_ids[ids.shape[0] + b, width - len(t):] = t
        new_mask[ids.shape[0] + b, width - len(t):] = 1
    out = {**inputs, "input_ids": new_ids, "attention_mask": new_mask}
    pv = inputs.get("pixel_values")
    if pv is not None and pv.dim() == 5:
        out["pixel_values"] = torch.cat([pv, torch.zeros_like(pv)])
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = layout.image_tokens(new_ids).long()
    return out


class PairedTokens:
    """A ``generate`` logits processor: the text-only rows [B, 2B) take the scores of their image rows, so greedy
    decoding gives each twin its partner's token."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        half = scores.shape[0] // 2
        return torch.cat([scores[:half], scores[:half]])


def select_heads(vhd: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, H) bool heads to reinforce from VHD scores (B, H): drop scores above Q3 + 1.5 IQR, then the top
    ceil(fraction x kept) of the rest."""
    q1, q3 = torch.quantile(vhd.float(), torch.tensor([0.25, 0.75], device=vhd.device), dim=1)  # (B,) each
    kept = vhd.float() <= (q3 + 1.5 * (q3 - q1))[:, None]  # (B, H)
    n_top = torch.ceil(fraction * kept.sum(1).float()).long()  # (B,)
    ranked = torch.where(kept, vhd.float(), float("-inf")).argsort(dim=1, descending=True)  # (B, H)
    rank = torch.empty_like(ranked).scatter_(1, ranked, torch.arange(vhd.shape[1], device=vhd.device).expand_as(
        ranked))  # (B, H) rank of each head
    return kept & (rank < n_top[:, None])


@register("vhr", version="1.0.0", family="patch", paper="arXiv:2412.13949",
          summary="VHR: scale the outputs of the most vision-aware heads (VHD against a text-only twin row).")
@dataclass(frozen=True)
class VisionAwareHeadReinforcement(AttentionPatch):
    """VHR: scale the outputs of the most vision-aware heads (highest VHD) at the current token (ACL 2025).

    Parameters
    ----------
    alpha : float
        Scale of the reinforced heads' outputs. Default 2.0.
    fraction : float
        Share of the (non-outlier) heads reinforced per layer. Default 0.5.
    """

    alpha: float = 2.0
    fraction: float = 0.5

    component_name: ClassVar[str] = "vhr"
    onnx_exportable: ClassVar[bool] = False
    needs_images: ClassVar[bool] = True
    needs_paired_batch: ClassVar[bool] = True  # each prompt with and without its image (vlm_scenes pairs them)
    example: ClassVar[dict[str, str]] = {"alpha": "2.0", "fraction": "0.5"}
    onnx_reason: ClassVar[str] = "it pairs batch rows and reads image-token positions captured outside the graph"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ParamError(f"vhr.fraction: {self.fraction} is outside (0, 1]")
        if not 0.0 <= self.alpha <= 100.0:
            raise ParamError(f"vhr.alpha: {self.alpha} is outside [0, 100]")

    def vhd(self, call: CallInfo, out: torch.Tensor) -> torch.Tensor:
        """(B, H) VHD of the current token: image rows' head outputs against their text-only twins'."""
        image = call.require_image_keys("vhr")
        half = call.batch // 2
        if call.batch % 2 or not bool(image[:half].any(1).all()) or bool(image[half:].any()):
            raise ValueError("vhr needs a paired batch: rows [0, B) with their image, rows [B, 2B) the same text "
                             "without it (components.patches.vhr.paired_batch)")
        qi = call.last_real_query()  # (2B,)
        rows = torch.arange(call.batch, device=out.device)
        cur = out[rows, :, qi].float()  # (2B, H, D)
        return (cur[:half] - cur[half:]).norm(dim=-1)  # (B, H)

    def edit_output(self, call: CallInfo, out: torch.Tensor) -> torch.Tensor:
        chosen = select_heads(self.vhd(call, out), self.fraction)  # (B, H)
        half = call.batch // 2
        scale = torch.ones(call.batch, call.n_heads, dtype=out.dtype, device=out.device)
        scale[:half] = torch.where(chosen, self.alpha, 1.0).to(out.dtype)
        qi = call.last_real_query()
        rows = torch.arange(call.batch, device=out.device)
        out = out.clone()
        out[rows, :, qi] = out[rows, :, qi] * scale[:, :, None]  # (2B, H, D)
        return out

