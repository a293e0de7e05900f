"""Greedy decoding on a pressed cache, the question kept out of compression (query-agnostic, as kvpress evaluates)."""

from __future__ import annotations

import torch

from components.presses.base import KVPress, PressState


@torch.no_grad()
def generate_on_cache(model: torch.nn.Module, press: KVPress, context_ids: torch.Tensor,
                      context_mask: torch.Tensor | None, question_ids: torch.Tensor,
                      max_new_tokens: int) -> tuple[torch.Tensor, PressState]:
    """Prefill ``context_ids`` (B, Tc) (compressed by ``press``), then the question (B, Tq) and ``max_new_tokens``
    greedy steps on the compressed cache. Returns the new tokens (B, max_new_tokens) and the press state."""
    mask = context_mask if context_mask is not None else torch.ones_like(context_ids)
    with press.applied(model) as state:
        cache = model(input_ids=context_ids, attention_mask=mask, use_cache=True).past_key_values
        mask = torch.cat([mask, torch.ones_like(question_ids)], 1)  # (B, Tc+Tq)
        out = greedy_after(model, question_ids, mask, cache, max_new_tokens)
    return out, state


def greedy_after(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, cache: object,
                 max_new_tokens: int) -> torch.Tensor:
    """Feed ``input_ids`` (B, Tq) on ``cache`` (``mask`` (B, cached + Tq) covers both), then ``max_new_tokens``
    greedy steps: the new tokens (B, max_new_tokens). Runs inside the caller's press scope."""
    b = input_ids.shape[0]
    logits = model(input_ids=input_ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits
    out = []
    for _ in range(max_new_tokens):
        tok = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        out.append(tok)
        mask = torch.cat([mask, mask.new_ones(b, 1)], 1)
        logits = model(input_ids=tok, attention_mask=mask, past_key_values=cache, use_cache=True).logits
    return torch.cat(out, 1)
