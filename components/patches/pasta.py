"""PASTA / context steering: scale the attention to every prompt token outside chosen spans by alpha.

On the chosen heads, log(alpha) is added to the logit of each prompt position outside the emphasised spans
(template, instructions, other turns), so with alpha < 1 the heads attend relatively more to the spans. Generated
positions are left alone (no bias), so decoding steps see the same steering over the prompt. Formula, per query
row i over the keys j it can see (O = prompt tokens outside the spans):

    A'_ij = alpha * A_ij / D_i   (j in O),    A'_ij = A_ij / D_i   (otherwise),
    D_i   = 1 - (1 - alpha) * sum_{j in O} A_ij          = softmax(l_ij + log(alpha) * 1[j in O])

Spans are character ranges of the prompt text (``spans=0:120,-40:``, Python slice semantics, negative = from the
end) or the text between markers (``span_start="<user>"``, ``span_end="</user>"``, each occurrence), mapped to tokens
through the tokenizer's offsets: a token belongs to a span when its characters overlap it (special tokens such
as BOS never do). The prompt texts come from the scoring code (``session.set_inputs``), hence ``needs_inputs``.

Fast path: a key bias on the fused kernel. Since adding a constant to every visible logit changes nothing, the
bias is applied to whichever set is smaller: +log(alpha) on O, or -log(alpha) on the other real keys (spans and
generated tokens). Up to ``sparse_max`` keys it is a sparse bias; above that, one extra head-dim channel (dense
form). The dispatcher applies a sparse bias on more than 1/64 of the keys as the same extra channel, the cheaper
exact form then (``LSE_KEYS_PER_CHANNEL`` in ``components/attention/math.py``); so a span of 100 tokens in a
2048-token prompt takes the channel form. Otherwise a sparse bias depends on its sign (``LSE_MIN_BIAS``):

- bias >= -log 2 (+log(alpha) with alpha >= 1/2 on O, or -log(alpha) with alpha <= 2 on the other keys): corrected
  after the fused kernel from its float32 log-sum-exp, exact in real arithmetic:
  o' = (o + sum_j w_j v_j) / (1 + sum_j w_j), w_j = p_j (e^bias - 1); the kernel keeps ``is_causal``. Positive
  weights, even 99 (alpha = 0.01 on the spans), stay at the float32 noise floor.
- bias < -log 2 (weights down to -0.99 at alpha = 0.01 or 100): the same extra channel as the dense form, so the
  kernel adds the bias to the logits itself. The correction would divide by 1 + sum w, ~0.01 when the biased keys
  hold most of the attention, amplifying float32 rounding: measured (layer-0 attention output vs float64, over the
  float32 floor |stock SDPA - float64|) 37-43x on SmolLM2-135M and 14-52x on tiny random models, and no better in
  float64 arithmetic (the kernel's lse is float32); the channel form measures 0.8-1.3x
  (``tests/integration/test_bias_precision.py`` holds it under 3x).

Based on Zhang et al., "Tell Your Model Where to Attend: Post-hoc Attention Steering for LLMs" (PASTA, arXiv
2311.02262) and Wang et al., "Instruction Tuning and Loss of Context-Awareness" (arXiv 2411.02688). Reference code:
https://github.com/YihanWang617/context_awareness (``PASTA/pastalib/pasta.py``: ``edit_multisection_attention``
with ``scale_position="exclude"``; ``UserSteeredWrapper.py``).

Deviations from the reference code: spans come from character ranges or markers instead of the chat template's
user turns; the bias is exact in logit space for any alpha (the reference adds log(alpha) to its additive mask, the
same thing); heads are a parameter (the context-awareness paper steers all heads of all layers, PASTA profiles
heads).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

import torch

from components.attention.types import CallInfo, KeyBias
from components.base import ParamError, check_range, unescape
from components.heads import HeadSet
from components.patches import _inputs
from components.patches.base import AttentionPatch
from registry import register

_RANGE = re.compile(r"^\s*(-?\d*)\s*:\s*(-?\d*)\s*$")


def parse_ranges(text: str) -> list[tuple[int | None, int | None]]:
    """``0:10,-5:`` -> [(0, 10), (-5, None)]; raises ValueError on anything else."""
    out: list[tuple[int | None, int | None]] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        m = _RANGE.match(item)
        if not m:
            raise ValueError(f"span {item!r} is not a character range like 0:120, -40: or :80")
        out.append((int(m.group(1)) if m.group(1) else None, int(m.group(2)) if m.group(2) else None))
    return out


def char_spans(prompt: str, ranges: list[tuple[int | None, int | None]], start: str, end: str) \
        -> list[tuple[int, int]]:
    """Character intervals [a, b) of ``prompt`` covered by the ranges and the marker spans."""
    spans = []
    for a, b in ranges:
        lo, hi, _ = slice(a, b).indices(len(prompt))
        if hi > lo:
            spans.append((lo, hi))
    if start:
        pos = prompt.find(start)
        while pos >= 0:
            lo = pos + len(start)
            stop = prompt.find(end, lo) if end else -1
            hi = stop if stop >= 0 else len(prompt)
            if hi > lo:
                spans.append((lo, hi))
            pos = prompt.find(start, max(hi, lo))
    return spans


def reference_probs(probs: torch.Tensor, outside: torch.Tensor, heads: list[int], alpha: float) -> torch.Tensor:
    """The formula on materialised attention, written directly (tests compare every path against it; the patch
    itself applies a logit bias).

    Parameters
    ----------
    probs : torch.Tensor
        (B, H, T, S) post-softmax attention of one layer.
    outside : torch.Tensor
        (B, S) bool over this call's keys: prompt tokens outside every span (the set O; generated tokens and pads
        are not in it).
    heads : list of int
        The steered query heads of this layer.
    alpha : float
        Attention scale of the keys in O.

    Returns
    -------
    torch.Tensor
        (B, H, T, S) with A'_ij = alpha A_ij / D_i for j in O, A_ij / D_i otherwise (D_i renormalises the row).
    """
    probs = probs.clone()
    scale = torch.where(outside, alpha, 1.0).to(probs.dtype)  # (B, S)
    probs[:, heads] = probs[:, heads] * scale[:, None, None, :]  # (B, |heads|, T, S)
    return probs / probs.sum(-1, keepdim=True).clamp_min(1e-300)  # rows renormalised


@register("pasta", version="1.0.0", family="patch", paper="arXiv:2311.02262",
          summary="Context steering: log(alpha) on prompt tokens outside chosen spans (character ranges/markers).")
@dataclass(frozen=True)
class Pasta(AttentionPatch):
    """PASTA-style attention steering towards chosen spans of the prompt.

    Parameters
    ----------
    alpha : float
        Attention scale of prompt tokens outside the spans (> 0; < 1 emphasises the spans, 1 = no-op). Default 0.9.
    spans : str
        Character ranges of the prompt, e.g. ``0:120`` or ``-40:`` (comma-separated). Default empty.
    span_start : str
        Marker opening a span (the span starts after it); backslash escapes such as ``\\n`` are decoded. Default
        empty.
    span_end : str
        Marker closing a span (end of the prompt when empty or absent); escapes decoded. Default empty.
    heads : HeadSet
        Steered (layer, head) pairs. Default ``all``.
    sparse_max : int
        Largest key set applied as a sparse bias; larger sets use the extra-channel form. Default 128.
    """

    alpha: float = 0.9
    spans: str = ""
    span_start: str = ""
    span_end: str = ""
    heads: HeadSet = HeadSet.all()
    sparse_max: int = 128

    needs_inputs: ClassVar[bool] = True
    example: ClassVar[dict[str, str]] = {"alpha": "0.5", "spans": "-12:", "heads": "0:*,1:1"}

    def __post_init__(self) -> None:
        check_range("pasta.alpha", self.alpha, 0.0, None, lo_open=True)
        check_range("pasta.sparse_max", self.sparse_max, 0)
        try:
            parse_ranges(self.spans)
        except ValueError as e:
            raise ParamError(f"pasta.spans: {e}") from None
        if not self.spans.strip() and not self.span_start:
            raise ParamError("pasta: give spans (character ranges such as 0:120 or -40:) or a span_start marker")
        if self.span_end and not self.span_start:
            raise ParamError("pasta.span_end needs span_start")

    # -- which keys ---------------------------------------------------------------------------------------------
    def _outside_tokens(self, call: CallInfo) -> tuple[torch.Tensor, _inputs.PromptRows]:
        """(B, L) bool over each row's tokens: prompt tokens outside every span."""
        rows = _inputs.prompt_rows(call, self, need_offsets=True)
        if rows is None:
            raise ValueError("pasta needs the prompt texts: run it through attnflow's scoring code or call "
                             "session.set_inputs(texts=..., tokenizer=...) before the forward")
        cache = call.session.state.setdefault((id(self), "outside"), {})
        if cache.get("rows") is not rows:
            ranges, start, end = parse_ranges(self.spans), unescape(self.span_start), unescape(self.span_end)
            flags = []
            for prompt, offs in zip(rows.prompts, rows.offsets):
                spans = char_spans(prompt, ranges, start, end)
                flags.append([not any(s < hi and e > lo for lo, hi in spans) for s, e in offs])
            cache.update(rows=rows, outside=_inputs.row_mask(flags, call.device))
        return cache["outside"], rows

    def key_bias(self, call: CallInfo) -> KeyBias | None:
        if self.alpha == 1.0 or not self.head_indices(call):
            return None
        outside_tok, rows = self._outside_tokens(call)
        idx = _inputs.token_index(call, rows)  # (B, N) token index per absolute position, -1 = pad
        idx = idx[:, call.key_offset : call.key_offset + call.kv_len]  # (B, S)
        real = idx >= 0
        in_text = idx < torch.tensor(rows.n_tokens, device=idx.device)[:, None]  # later ones are generated
        outside = real & in_text & outside_tok.gather(1, idx.clamp(0, outside_tok.shape[1] - 1))  # (B, S)
        inside = real & ~outside  # span tokens and generated tokens
        n_out, n_in = int(outside.sum(1).max()), int(inside.sum(1).max())
        if n_out == 0 or n_in == 0:
            return None  # the same bias on every visible key: a no-op
        feature, sign = (outside, 1.0) if n_out <= n_in else (inside, -1.0)
        coef = self.head_vector(call, on=sign * math.log(self.alpha), off=0.0)  # (H,)
        if min(n_out, n_in) > self.sparse_max:
            return KeyBias(coef=coef, keys=feature.float())  # dense: (B, S)
        return KeyBias(coef=coef, index=_sparse_index(feature))  # (B, K)


def _sparse_index(feature: torch.Tensor) -> torch.Tensor:
    """(B, S) bool -> (B, K) positions of the True entries, padded with -1."""
    k = max(int(feature.sum(1).max()), 1)
    order = torch.sort(feature.int(), dim=1, descending=True, stable=True)
    return torch.where(order.values[:, :k] > 0, order.indices[:, :k], -1)
