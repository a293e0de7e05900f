"""In-Context Brush: intra-head latent feature shifting + inter-head attention reweighting on an MMDiT.

Paper: Xu et al., "In-Context Brush: Zero-shot Customized Subject Insertion with Context-Aware Latent Space
Manipulation", SIGGRAPH Asia 2025, arXiv:2505.20271; reference code github.com/ICTMCG/In-context-Brush (a patched
diffusers ``FluxAttnProcessor2_0`` in ``diffusers/src/diffusers/models/attention_processor.py``, commit 759700b,
read for the formulas below; not vendored; only the paper's abstract was available offline, so the formulas are
the reference code's).

Setting. The image is a vertical diptych: the subject ("demo", top half of the patch grid, rows 0..h/2) above the
target ("query", bottom half), the prompt's text tokens alongside; an inpainting MMDiT fills the masked part of
the query. On a joint call (components/diffusion/joint.py: keys and queries ``[image; text]``) with probabilities
A (B, H, N, N), value V, Q the query-half image tokens, D the demo-half image tokens and T the text tokens:

    feature shifting     O_Q <- O_Q + lambda (A_{Q,D} V_D + A_{Q,T} V_T)          (lambda = ``shift``, 0.3)
    head reweighting     s_h = sum_{i in Q, j in T} A_h[i, j];
                         w_h = 1 + beta (s_h - min_h s) / (max_h s - min_h s + eps);   O_h <- w_h O_h
                                                                                     (beta = ``reweight``, 0.2)

The shift amplifies what the query reads from the demonstrations (subject and prompt) against what it reads from
itself; the reweighting scales every row of the heads whose query half attends most to the prompt (all rows of a
head, text rows included, as the reference multiplies the whole head output). Calls without text tokens are left
unchanged.

Paths. Fast: one more fused kernel call for the query rows with the value ``[V * 1_{D or T}, 1_T]`` (D + 1
columns) gives both A_{Q,D} V_D + A_{Q,T} V_T and each row's text mass under the same normalisation and the same
biases (``call.attn_mask``). Materialised: the same from the probabilities (``edit_probs`` keeps them for
``edit_output``).

Defaults: the reference's lambda = 0.3 and beta = 0.2, every joint attention module, every step. Deviations: the
reference runs FLUX.1-Fill (text tokens first, 512 T5 tokens; shifting only in its double-stream blocks, reweighting
in both kinds); here SD3's joint blocks (image tokens first), which all carry text, get both edits; the reference's
eps is that of its compute dtype (bfloat16 / float32), here of float32 or wider. Sampling is flow_runner.py; the
demonstration layout (top half) is fixed.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from components.base import ParamError, check_range
from components.diffusion.base import DiffusionComponent
from components.diffusion.types import DiffusionCallInfo
from registry import register


def head_weights(scores: torch.Tensor, beta: float) -> torch.Tensor:
    """(B, H) per-head text mass -> (B, H) weights 1 + beta * min-max normalised score."""
    lo = scores.amin(dim=1, keepdim=True)
    hi = scores.amax(dim=1, keepdim=True)
    return 1.0 + beta * (scores - lo) / (hi - lo + torch.finfo(scores.dtype).eps)


@register("icbrush", version="0.1.0", family="diffusion", paper="arXiv:2505.20271",
          summary="In-Context Brush: query-half attention outputs shifted toward demo + prompt, heads reweighted "
                  "by text attention (MMDiT).")
@dataclasses.dataclass(frozen=True)
class InContextBrush(DiffusionComponent):
    """Latent feature shifting and head attention reweighting on a diptych (demo top, query bottom).

    Parameters
    ----------
    shift
        lambda >= 0: weight of the query rows' demo-image + text readout added to their output.
    reweight
        beta >= 0: head weights range over [1, 1 + beta] by the heads' query-to-text attention mass.
    layers
        Attention-module indices (``DiffusionCallInfo.layer``) edited; empty = every joint module.
    """

    shift: float = 0.3
    reweight: float = 0.2
    layers: tuple[int, ...] = ()

    example: ClassVar[dict] = {"shift": "0.3", "reweight": "0.2"}
    edits_probabilities: ClassVar[bool] = True
    has_fast_path: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_range("icbrush.shift", self.shift, 0.0, None)
        check_range("icbrush.reweight", self.reweight, 0.0, None)
        if any(i < 0 for i in self.layers):
            raise ParamError(f"icbrush.layers={self.layers}: indices are >= 0")

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        joint = [i for i, m in enumerate(modules.values()) if getattr(m, "add_q_proj", None) is not None]
        if not joint:
            raise ValueError("icbrush edits joint (MMDiT) attention with text tokens; this denoiser has none "
                             "(SD3Transformer2DModel has)")
        missing = sorted(set(self.layers) - set(joint))
        if missing:
            raise ValueError(f"icbrush.layers={self.layers}: {missing} are not joint attention modules (those: "
                             f"{joint})")

    def acts_on(self, call: DiffusionCallInfo) -> bool:
        if call.n_image is None or call.kv_len <= call.n_image or (self.shift == 0 and self.reweight == 0):
            return False
        if self.layers and call.layer not in self.layers:
            return False
        if call.spatial is None or call.spatial[0] % 2:
            raise ValueError(f"icbrush: {call.name} has patch grid {call.spatial}; a diptych needs an even height")
        return True

    @staticmethod
    def _split(call: DiffusionCallInfo) -> tuple[int, int]:
        """(first query-half image token, number of image tokens)."""
        h, w = call.spatial
        return (h // 2) * w, call.n_image

    def _apply(self, out: torch.Tensor, readout: torch.Tensor, text_mass: torch.Tensor, q0: int, n: int):
        """out (B, H, N, D); readout (B, H, |Q|, D) = A_{Q,D} V_D + A_{Q,T} V_T; text_mass (B, H, |Q|)."""
        out = out.clone()
        if self.shift:
            out[:, :, q0:n] = out[:, :, q0:n] + self.shift * readout.to(out.dtype)
        if self.reweight:
            w = head_weights(text_mass.sum(-1), self.reweight)  # (B, H)
            out = out * w[:, :, None, None].to(out.dtype)
        return out

    def post_attention(self, call: DiffusionCallInfo, out: torch.Tensor) -> torch.Tensor:
        q0, n = self._split(call)
        s = call.kv_len
        keep = torch.ones(s, dtype=call.value.dtype, device=call.device)
        keep[q0:n] = 0  # the query half's own keys do not count
        is_text = torch.zeros(s, dtype=call.value.dtype, device=call.device)
        is_text[n:] = 1
        v = torch.cat([call.value * keep[:, None], is_text.expand(*call.value.shape[:2], s)[..., None]], dim=-1)
        mask = call.attn_mask
        if mask is not None and mask.shape[-2] > 1:
            mask = mask[..., q0:n, :]
        scale = None if call.scale == call.head_dim ** -0.5 else call.scale
        e = F.scaled_dot_product_attention(call.query[:, :, q0:n], call.key, v, attn_mask=mask, dropout_p=0.0,
                                           scale=scale)  # (B, H, |Q|, D + 1)
        wide = torch.promote_types(e.dtype, torch.float32)
        return self._apply(out, e[..., :-1], e[..., -1].to(wide), q0, n)

    def edit_probs(self, call: DiffusionCallInfo, probs: torch.Tensor) -> torch.Tensor:
        call.state(self)["probs"] = probs
        return probs

    def edit_output(self, call: DiffusionCallInfo, out: torch.Tensor) -> torch.Tensor:
        probs = call.state(self).pop("probs", None)
        if probs is None:  # fast path: done in post_attention
            return out
        q0, n = self._split(call)
        pq = probs[:, :, q0:n]  # (B, H, |Q|, S)
        v = call.value.to(probs.dtype)
        readout = pq[..., :q0] @ v[:, :, :q0] + pq[..., n:] @ v[:, :, n:]  # (B, H, |Q|, D)
        return self._apply(out, readout, pq[..., n:].sum(-1), q0, n)
