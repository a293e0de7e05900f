"""Visual logit boost: "Fixing imbalanced attention to mitigate in-context hallucination of large vision-language
models" (Arif et al., arXiv 2501.12206). Reference code: github.com/hasanar1f/llava-hallunication-fix
(``modPAI/attention.py::llama_new_forward``, ``llama_modify``; token selection in
``modPAI/llava/model/multimodal_encoder/clip_encoder.py``).

Formula (language-model layers ``start_layer`` .. L-1, all heads, the last real query row of every forward: the
last prompt token in the prefill, the new token in each decoding step), on the pre-softmax logits l_j of the image
keys j:

    l_j <- l_j + alpha |l_j|   for the selected ("top") image tokens
    l_j <- l_j + beta  |l_j|   for the "bottom" image tokens (removed from the top set)

then softmax as usual. Selection (``select_tokens``): top = the ``top_fraction`` (25%) of each image's patches with
the highest CLS->patch attention in the vision tower's first layer (summed over heads); bottom = patches whose
CLS attention in the penultimate vision layer is an IQR outlier (> Q3 + 1.5 IQR). ``selection="all"`` boosts every
image token with alpha (no vision-tower scores needed).

Defaults: alpha 0.7, beta 0.3, start_layer 2, top_fraction 0.25 (the reference code's values for LLaVA-1.5-7B).

Fast form: the edit touches one query row per batch row, so the fused SDPA kernel runs unchanged and that row is
recomputed exactly after it (its logits (B, H, S), the boost, softmax, P V: O(B H S D) extra);
``edit_logits`` applies the same formula on materialised logits (fallback path, ``output_attentions``).

Deviations: the paper's head-specific modulation by visual sensitivity is uniform across heads, as in the
reference code; PAI's classifier-free guidance (gamma) is not part of this patch; the optional "spatial" selection
(``--spatial``, default off) is not implemented. Registered with
``needs_images``: vision-language models only (the vlm-eval flow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from components.attention.math import dense_bias_logits, repeat_kv
from components.attention.types import CallInfo
from components.base import ParamError
from registry import register
from components.patches.base import AttentionPatch, model_shape


def select_tokens(first_cls: torch.Tensor, penult_cls: torch.Tensor, image_tokens: torch.Tensor,
                  top_fraction: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Top and bottom image tokens from a vision tower's CLS attention.

    Parameters
    ----------
    first_cls, penult_cls : torch.Tensor
        (N, P) CLS->patch attention of N images' P patches in the first and penultimate vision layers (summed over
        heads), in the order the images' features fill the image tokens (LLaVA: ``pixel_values`` order).
    image_tokens : torch.Tensor
        (B, T) bool image-token positions of the prompt; row-major they must number N * P.
    top_fraction : float
        Share of each image's patches in the top set (ceil).

    Returns
    -------
    (top, bottom) : tuple of torch.Tensor
        (B, T) bool each; bottom tokens are not in top.
    """
    n, p = first_cls.shape
    if penult_cls.shape != (n, p) or int(image_tokens.sum()) != n * p:
        raise ValueError(f"select_tokens: {n} images x {p} patches (CLS scores {tuple(first_cls.shape)} and "
                         f"{tuple(penult_cls.shape)}) do not fill the prompt's {int(image_tokens.sum())} image tokens")
    k = max(1, math.ceil(top_fraction * p))
    top = torch.zeros(n, p, dtype=torch.bool, device=first_cls.device)
    top.scatter_(1, first_cls.topk(k, dim=1).indices, True)  # (N, P)
    q1, q3 = torch.quantile(penult_cls.float(), torch.tensor([0.25, 0.75], device=penult_cls.device), dim=1)
    bottom = penult_cls.float() > (q3 + 1.5 * (q3 - q1))[:, None]  # (N, P)
    top &= ~bottom
    out_top = torch.zeros_like(image_tokens)
    out_bottom = torch.zeros_like(image_tokens)
    out_top[image_tokens] = top.flatten().to(image_tokens.device)  # row-major fill, like LLaVA's masked_scatter
    out_bottom[image_tokens] = bottom.flatten().to(image_tokens.device)
    return out_top, out_bottom


@torch.no_grad()
def cls_attention(vision_tower: torch.nn.Module, pixel_values: torch.Tensor, layers=(0, -2)) -> list[torch.Tensor]:
    """(N, P) CLS->patch attention summed over heads, per requested layer, from a CLIP-style vision tower run with
    ``output_attentions=True`` under eager attention (restored afterwards; the class token is token 0)."""
    previous = vision_tower.config._attn_implementation
    vision_tower.set_attn_implementation("eager")
    try:
        out = vision_tower(pixel_values=pixel_values, output_attentions=True)
    finally:
        vision_tower.set_attn_implementation(previous)
    return [out.attentions[layer][:, :, 0, 1:].sum(1) for layer in layers]  # (N, H, 1+P, 1+P) -> (N, P)


@register("visual_logit_boost", version="1.0.0", family="patch", paper="arXiv:2501.12206",
          summary="Boost the attention logits of selected image tokens at the last query row (l + alpha |l|).")
@dataclass(frozen=True)
class VisualLogitBoost(AttentionPatch):
    """Boost the logits of selected image tokens at the last query row (arXiv 2501.12206).

    Parameters
    ----------
    alpha : float
        l + alpha |l| on top image tokens. Default 0.7.
    beta : float
        l + beta |l| on bottom image tokens. Default 0.3.
    start_layer : int
        First language-model layer edited (layers before it are left alone). Default 2.
    selection : {"inputs", "all"}
        ``inputs``: the top/bottom masks from ``session.set_inputs(visual_top=(B, T) bool, visual_bottom=...)``
        (see ``select_tokens``); ``all``: every image token is top. Default ``inputs``.
    """

    alpha: float = 0.7
    beta: float = 0.3
    start_layer: int = 2
    selection: Literal["inputs", "all"] = "inputs"

    component_name: ClassVar[str] = "visual_logit_boost"
    onnx_exportable: ClassVar[bool] = False
    onnx_reason: ClassVar[str] = "it reads image-token positions captured from input_ids outside the graph"
    edits_probabilities: ClassVar[bool] = True
    needs_images: ClassVar[bool] = True
    has_fast_path: ClassVar[bool] = True
    needs_inputs: ClassVar[bool] = True
    example: ClassVar[dict[str, str]] = {"alpha": "0.7", "beta": "0.3", "selection": "all"}

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            if not -1.0 <= getattr(self, name) <= 100.0:
                raise ParamError(f"visual_logit_boost.{name}: {getattr(self, name)} is outside [-1, 100]")
        if self.start_layer < 0:
            raise ParamError(f"visual_logit_boost.start_layer: {self.start_layer} < 0")

    def check_model(self, config) -> None:
        super().check_model(config)
        n_layers, _ = model_shape(config)
        if self.start_layer >= n_layers:
            raise ParamError(f"visual_logit_boost.start_layer: {self.start_layer} >= the model's {n_layers} layers")

    def acts_on_layer(self, layer: int, n_layers: int) -> bool:
        return layer >= self.start_layer

    def inputs_for(self, model: torch.nn.Module, enc: dict) -> dict[str, torch.Tensor]:
        """Session inputs for a batch ``enc`` (processor output): with ``selection=inputs`` the top/bottom image
        tokens from the vision tower's CLS attention (``cls_attention`` + ``select_tokens``, LLaVA layout); none
        with ``selection=all``."""
        if self.selection == "all":
            return {}
        from components.attention.vision import layout_of

        tower = getattr(model, "vision_tower", None) or getattr(getattr(model, "model", None), "vision_tower", None)
        if tower is None or "pixel_values" not in enc:
            raise ValueError(f"visual_logit_boost: selection=inputs needs a LLaVA-style model with a vision_tower and "
                             f"pixel_values; {type(model).__name__} has none (use selection=all)")
        first, penult = cls_attention(tower, enc["pixel_values"])
        top, bottom = select_tokens(first, penult, layout_of(model.config).image_tokens(enc["input_ids"]))
        return {"visual_top": top, "visual_bottom": bottom}

    # -- the plan -------------------------------------------------------------------------------------------------
    def coefficients(self, call: CallInfo) -> torch.Tensor:
        """(B, S) float32 per-key factor c_j: alpha on top image keys, beta on bottom ones, 0 elsewhere."""
        image = call.require_image_keys("visual_logit_boost")  # (B, S)
        if self.selection == "all":
            return image.float() * self.alpha
        top, bottom = (self._key_flags(call, name) for name in ("visual_top", "visual_bottom"))
        bottom = bottom & image
        top = top & image & ~bottom
        return top.float() * self.alpha + bottom.float() * self.beta

    def _key_flags(self, call: CallInfo, name: str) -> torch.Tensor:
        flags = call.inputs.get(name)
        if flags is None:
            raise ValueError(f"visual_logit_boost: selection=inputs needs session.set_inputs({name}=(batch, seq) "
                             "bool tensor) (see components.patches.visual_boost.select_tokens), or selection=all")
        flags = torch.as_tensor(flags, device=call.device).bool()
        seen = call.session.image_tokens
        total = seen.shape[1] if seen is not None else call.kv_len
        if flags.shape[0] != call.batch or flags.shape[1] > total:
            raise ValueError(f"visual_logit_boost: {name} has shape {tuple(flags.shape)}, the batch has "
                             f"{call.batch} rows of {total} positions")
        flags = torch.nn.functional.pad(flags, (0, total - flags.shape[1]))[:, -call.kv_len:]  # (B, <=S)
        return torch.nn.functional.pad(flags, (0, call.kv_len - flags.shape[1]))  # (B, S)

    # -- hooks ----------------------------------------------------------------------------------------------------
    def post_attention(self, call, q, k, v, out, lse, biases):
        coef = self.coefficients(call)  # (B, S)
        if not bool((coef != 0).any()):
            return out
        b_idx = torch.arange(call.batch, device=call.device)
        qi = call.last_real_query()  # (B,)
        n_rep = call.n_heads // call.n_kv_heads
        q_row = q[b_idx, :, qi]  # (B, H, D)
        dtype = torch.promote_types(q.dtype, torch.float32)
        logits = torch.einsum("bhd,bhsd->bhs", q_row.to(dtype), repeat_kv(k, n_rep).to(dtype)) * call.scaling
        extra = dense_bias_logits(biases, call.batch, call.kv_len, dtype)  # (B, H, 1, S) or None
        if extra is not None:
            logits = logits + extra[:, :, 0]
        visible = self._row_visible(call, qi)  # (B, S)
        logits = logits + coef[:, None, :].to(dtype) * logits.abs()  # (B, H, S)
        logits = logits.masked_fill(~visible[:, None, :], float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # (B, H, S)
        row = torch.einsum("bhs,bhsd->bhd", probs, repeat_kv(v, n_rep).to(dtype))  # (B, H, Dv)
        out = out.clone()
        out[b_idx, :, qi] = row.to(out.dtype)
        return out

    def _row_visible(self, call: CallInfo, qi: torch.Tensor) -> torch.Tensor:
        """(B, S) bool: the keys query ``qi[b]`` sees."""
        if call.mask is not None:
            m = call.mask.expand(call.batch, -1, -1, -1)[:, 0]  # (B, q, S)
            return m[torch.arange(call.batch, device=m.device), qi.to(m.device)].to(call.device)
        keys = torch.arange(call.kv_len, device=call.device)[None, :]
        if call.is_causal or call.q_len == 1:
            return keys <= (qi + call.past_len)[:, None]
        return torch.ones(call.batch, call.kv_len, dtype=torch.bool, device=call.device)

    def edit_logits(self, call: CallInfo, logits: torch.Tensor) -> torch.Tensor:
        coef = self.coefficients(call)  # (B, S)
        b_idx = torch.arange(call.batch, device=call.device)
        qi = call.last_real_query()
        row = logits[b_idx, :, qi]  # (B, H, S)
        boosted = row + coef[:, None, :].to(row.dtype) * row.abs()
        logits = logits.clone()
        logits[b_idx, :, qi] = torch.where(torch.isfinite(row), boosted, row)
        return logits
