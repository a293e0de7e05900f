"""VAR, Visual Attention Redistribution: "See What You Are Told: Visual Attention Sink in Large Multimodal Models"
(Kang et al., ICLR 2025). Reference code: github.com/MICV-yonsei/VisAttnSink
(``src/logic/logic.py``: ``DimProspector``, ``HeadFork``, ``VARProcessor``; defaults in ``activate``).

Per language-model layer l in ``start_layer`` .. L-1 (the last layer skipped when ``skip_last``):

1. Sink tokens (``DimProspector``): token t is a sink when max_{d in D} |RMSNorm(h_t)|_d > tau, h_t the residual
   stream entering layer l and RMSNorm without its weight (h / sqrt(mean(h^2) + 1e-6)), D the model's sink
   dimensions (LLaMA-2-7B: 2533, 1415; 13B: 2100, 4743; ``SINK_DIMS``). Sinks may be text or image tokens.
2. Image-centric (head, query) pairs (``HeadFork``), only when the row has visual sinks: with I the image keys and
   A the attention row, sum_{j in I} A_j >= summ and sum_{j in I, sink} A_j / (sum_{j in I} A_j + |I| 1e-6) <= rho.
   In the prefill only queries after the row's last image token are considered; every decoding step's query is.
3. Redistribution (``VARProcessor.attn_redist``) on those pairs: A'_j = p A_j on every sink j (text and image);
   the freed mass B = (1 - p) sum_{sinks} A_j goes to the image non-sink keys in proportion to their attention:
   A'_j = A_j + B A_j / sum_{i in I, not sink} A_i (rows sum to 1 again).

Defaults: tau 20, rho 0.5, summ 0.2, p 0.6, start_layer 2, skip_last true (the reference's ``activate``).

Fast form (``post_attention``): the edit changes only the probabilities of image and sink keys, so after the fused
kernel the patch computes the logits of those K keys only (B, H, T, K), turns them into probabilities with the
kernel's log-sum-exp, applies the formula and adds (A' - A) V over those keys to the output: exact, O(T K D)
extra instead of O(T S D) for materialising. ``edit_probs`` is the same formula on materialised probabilities.

Deviations: the reference runs on batch size 1 (sink indices ignore the batch row, image region one contiguous
span); here everything is per batch row, image keys are the image-token positions (several images per row
allowed) and queries "after the image" are those after the row's last image token. Sinks are found in the prefill
and, for each generated token, from its own hidden state as it arrives (the reference keeps per-layer indices
whose decode-time update is not documented). Sink dimensions are an input; ``find_sink_dims`` proposes candidates
by a vote over layers (a helper of this module, not part of the reference code). Registered with
``needs_images``: it runs on vision-language models only (the vlm-eval flow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from components.attention.math import dense_bias_logits, materialized_logits, repeat_kv
from components.attention.types import CallInfo
from components.base import ParamError
from registry import register
from components.patches.base import AttentionPatch, model_shape

#: sink dimensions from the reference code (src/logic/constants.py)
SINK_DIMS = {"llama-v2-7b": (2533, 1415), "llama-v2-13b": (2100, 4743)}


def sink_tokens(hidden: torch.Tensor, dims: tuple[int, ...], tau: float, eps: float = 1e-6) -> torch.Tensor:
    """(B, T) bool: max over ``dims`` of |h / rms(h)| > tau, for ``hidden`` (B, T, d) (RMSNorm without weight)."""
    h = hidden.float()
    normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)  # (B, T, d)
    return normed[..., list(dims)].abs().amax(-1) > tau


@torch.no_grad()
def find_sink_dims(model: torch.nn.Module, inputs: dict, top_k: int = 2, start_layer: int = 2) -> tuple[int, ...]:
    """Candidate sink dimensions of a model: the hidden dimensions with massive activations.

    For each layer l >= ``start_layer`` (the layers VAR edits), the ``top_k`` dimensions with the largest
    max |RMSNorm(h)| over the real tokens of ``inputs`` (RMSNorm without weight, as ``sink_tokens``) get one
    vote. Returns the ``top_k`` dimensions with the most votes (ties: larger summed score first). A helper for
    models without published sink dimensions (the reference code ships LLaMA-2's only); inspect the result before
    trusting it.
    """
    out = model(**inputs, output_hidden_states=True)
    hidden = out.hidden_states  # the language model's: (L + 1) x (B, T, d), entry l = the input of layer l
    real = inputs["attention_mask"].bool() if "attention_mask" in inputs else None
    votes: dict[int, list[float]] = {}
    for h in hidden[start_layer:-1]:
        h = h.float()
        normed = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).abs()  # (B, T, d)
        if real is not None:
            normed = normed * real[..., None].to(normed.device)
        peak = normed.flatten(0, 1).amax(0)  # (d,)
        for d in peak.topk(top_k).indices.tolist():
            votes.setdefault(d, []).append(float(peak[d]))
    ranked = sorted(votes, key=lambda d: (-len(votes[d]), -sum(votes[d]), d))
    return tuple(ranked[:top_k])


def redistribute(probs: torch.Tensor, image: torch.Tensor, sink: torch.Tensor, queries: torch.Tensor, *,
                 rho: float, summ: float, p: float, n_image: torch.Tensor | None = None) -> torch.Tensor:
    """The VAR edit on attention probabilities over any key subset that contains every image and sink key.

    Parameters
    ----------
    probs : torch.Tensor
        (B, H, T, K) attention probabilities on K keys.
    image, sink : torch.Tensor
        (B, K) bool image keys and sink keys (text or image).
    queries : torch.Tensor
        (B, T) bool queries that may be edited.
    rho, summ, p : float
        The thresholds and the sink scale.
    n_image : torch.Tensor, optional
        (B,) number of image keys (for the 1e-6-per-key term of the share); defaults to ``image.sum(1)``.

    Returns
    -------
    torch.Tensor
        (B, H, T, K) edited probabilities; rows not selected are returned unchanged.
    """
    img = image[:, None, None, :].to(probs.dtype)  # (B, 1, 1, K)
    snk = sink[:, None, None, :].to(probs.dtype)
    n_img = (image.sum(1) if n_image is None else n_image).to(probs.dtype)[:, None, None]  # (B, 1, 1)
    image_mass = (probs * img).sum(-1)  # (B, H, T)
    share = (probs * img * snk).sum(-1) / (image_mass + n_img * 1e-6)
    has_visual_sink = (image & sink).any(1)[:, None, None]  # (B, 1, 1)
    chosen = (share <= rho) & (image_mass >= summ) & has_visual_sink & queries[:, None, :]  # (B, H, T)
    budget = (1 - p) * (probs * snk).sum(-1, keepdim=True)  # (B, H, T, 1)
    nonsink_img = probs * img * (1 - snk)  # (B, H, T, K)
    ratios = nonsink_img / nonsink_img.sum(-1, keepdim=True).clamp_min(1e-6)
    edited = probs * (1 - (1 - p) * snk) + budget * ratios
    return torch.where(chosen[..., None], edited, probs)


@register("var", version="1.0.0", family="patch", paper="arXiv:2503.03321",
          summary="VAR: move image-centric heads' attention from visual sink tokens to the other image tokens.")
@dataclass(frozen=True)
class VisualAttentionRedistribution(AttentionPatch):
    """VAR: move image-centric heads' attention from sink tokens to the other image tokens (ICLR 2025).

    Parameters
    ----------
    sink_dims : tuple of int
        The model's sink dimensions of the hidden state (required; ``SINK_DIMS`` has the reference's).
    tau : float
        Sink threshold on |RMSNorm(h)|. Default 20.
    rho : float
        Largest visual-sink share of the image attention of an image-centric head. Default 0.5.
    summ : float
        Smallest image attention of an image-centric head. Default 0.2.
    p : float
        Scale of the sinks' attention (the rest, 1 - p, goes to the image). Default 0.6.
    start_layer : int
        First layer edited. Default 2.
    skip_last : bool
        Leave the last layer alone. Default True.
    """

    sink_dims: tuple[int, ...] = ()
    tau: float = 20.0
    rho: float = 0.5
    summ: float = 0.2
    p: float = 0.6
    start_layer: int = 2
    skip_last: bool = True

    component_name: ClassVar[str] = "var"
    onnx_exportable: ClassVar[bool] = False
    onnx_reason: ClassVar[str] = "it reads image-token positions and hidden states captured outside the graph"
    edits_probabilities: ClassVar[bool] = True
    needs_images: ClassVar[bool] = True
    has_fast_path: ClassVar[bool] = True
    needs_lse: ClassVar[bool] = True
    needs_layer_inputs: ClassVar[bool] = True
    example: ClassVar[dict[str, str]] = {"sink_dims": "0,1", "tau": "20"}

    def __post_init__(self) -> None:
        if not self.sink_dims:
            raise ParamError("var.sink_dims is required (the model's massive-activation dimensions, e.g. 2533,1415 "
                             "for LLaMA-2-7B; see components.patches.var.SINK_DIMS)")
        for name, lo, hi in (("rho", 0.0, 1.0), ("summ", 0.0, 1.0), ("p", 0.0, 1.0)):
            if not lo <= getattr(self, name) <= hi:
                raise ParamError(f"var.{name}: {getattr(self, name)} is outside [{lo}, {hi}]")

    def check_model(self, config) -> None:
        super().check_model(config)
        n_layers, _ = model_shape(config)
        hidden = config.get_text_config().hidden_size
        if self.start_layer >= n_layers - int(self.skip_last):
            raise ParamError(f"var.start_layer: {self.start_layer} leaves no layer of the model's {n_layers}")
        if max(self.sink_dims) >= hidden or min(self.sink_dims) < 0:
            raise ParamError(f"var.sink_dims: {self.sink_dims} outside the hidden size {hidden}")

    def acts_on_layer(self, layer: int, n_layers: int) -> bool:
        return self.start_layer <= layer < n_layers - int(self.skip_last)

    # -- the plan -------------------------------------------------------------------------------------------------
    def plan(self, call: CallInfo) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (B, S), sink (B, S), queries (B, T)) bool for this call; sinks accumulate over the forwards of
        a generation (reset at each prefill)."""
        image = call.require_image_keys("var")
        hidden = call.layer_input
        if hidden is None or hidden.shape[:2] != (call.batch, call.q_len):
            raise ValueError("var: the hidden states entering the layer were not captured for this call")
        state = call.state(self)
        new = sink_tokens(hidden, self.sink_dims, self.tau).to(call.device)  # (B, T)
        seen = state.get("sinks")
        state["sinks"] = new if call.is_prefill or seen is None else torch.cat([seen, new], 1)
        sinks = state["sinks"][:, -call.kv_len:]
        sinks = torch.nn.functional.pad(sinks, (0, call.kv_len - sinks.shape[1]))  # (B, S)
        pos = torch.arange(call.kv_len, device=call.device)
        last_image = torch.where(image, pos, -1).amax(1)  # (B,) key index of the last image token
        qpos = torch.arange(call.q_len, device=call.device) + call.past_len  # (T,)
        queries = (qpos[None, :] > last_image[:, None]) | call.is_decode  # (B, T)
        return image, sinks, queries

    # -- hooks ----------------------------------------------------------------------------------------------------
    def edit_probs(self, call: CallInfo, probs: torch.Tensor) -> torch.Tensor:
        image, sinks, queries = self.plan(call)
        return redistribute(probs, image, sinks, queries, rho=self.rho, summ=self.summ, p=self.p)

    def post_attention(self, call, q, k, v, out, lse, biases):
        image, sinks, queries = self.plan(call)
        sel = image | sinks  # (B, S)
        if not bool((image & sinks).any()):
            return out  # no visual sink in any row: nothing is selected
        n_sel = int(sel.sum(1).max())
        pos = torch.arange(call.kv_len, device=call.device)
        idx = torch.where(sel, pos, call.kv_len).sort(1).values[:, :n_sel]  # (B, K), kv_len = padding
        valid = idx < call.kv_len
        idx_c = idx.clamp(max=call.kv_len - 1)
        n_rep = call.n_heads // call.n_kv_heads
        dtype = torch.promote_types(q.dtype, torch.float32)
        gather = idx_c[:, None, :, None]  # (B, 1, K, 1)
        k_sel = repeat_kv(k.gather(2, gather.expand(-1, k.shape[1], -1, k.shape[3])), n_rep).to(dtype)
        v_sel = repeat_kv(v.gather(2, gather.expand(-1, v.shape[1], -1, v.shape[3])), n_rep).to(dtype)
        s = torch.matmul(q.to(dtype), k_sel.transpose(-1, -2)) * call.scaling  # (B, H, T, K)
        extra = dense_bias_logits(biases, call.batch, call.kv_len, dtype)  # (B, H, 1, S)
        if extra is not None:
            s = s + extra.expand(-1, call.n_heads, -1, -1).gather(3, idx_c[:, None, None, :].expand(
                -1, call.n_heads, 1, -1))
        if lse is None:  # no kernel log-sum-exp (another device, or corrected sparse biases): compute it
            lse = torch.logsumexp(materialized_logits(q, k, call, biases), -1)  # (B, H, T)
        vis = call.visible(torch.where(valid, idx, -1))  # (B, 1, T, K)
        lse_f = lse.to(dtype)[..., None]
        probs = torch.where(vis & torch.isfinite(lse_f), torch.exp(s - lse_f), 0.0)  # (B, H, T, K)
        take = lambda flags: flags.gather(1, idx_c) & valid  # noqa: E731  (B, S) -> (B, K)
        edited = redistribute(probs, take(image), take(sinks), queries, rho=self.rho, summ=self.summ, p=self.p,
                              n_image=image.sum(1))
        return (out.to(dtype) + torch.matmul(edited - probs, v_sel)).to(out.dtype)
