"""Run a patched model against the reference attention on the same inputs."""

from __future__ import annotations

import torch

from components.attention.session import applied
from tests.helpers.reference import reference

TOL = 1e-5


def inputs(batch: int = 2, length: int = 24, vocab: int = 320, left_pad: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if left_pad and batch > 1:
        mask[1, :left_pad] = 0
        ids[1, :left_pad] = 0
    return ids, mask


@torch.no_grad()
def patched_vs_reference(model, patches, edit_probs=None, edit_out=None, *, left_pad=5, force=None,
                         decode_steps=0) -> dict[str, float]:
    """Max |logit diff| over real tokens for prefill (and a greedy decode with KV cache when asked)."""
    ids, mask = inputs(left_pad=left_pad)
    valid = mask.bool()
    with applied(model, *patches, force=force):
        got = model(input_ids=ids, attention_mask=mask).logits
        gen = None
        if decode_steps:
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=decode_steps, do_sample=False,
                                 pad_token_id=0)
            full_mask = torch.cat([mask, torch.ones(mask.shape[0], decode_steps, dtype=torch.long)], 1)
            dec_logits = _step_logits(model, gen, full_mask, ids.shape[1])
    with reference(model, edit_probs=edit_probs, edit_out=edit_out):
        want = model(input_ids=ids, attention_mask=mask).logits
        out = {"prefill": (got - want)[valid].abs().max().item()}
        if decode_steps:
            ref_gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=decode_steps,
                                     do_sample=False, pad_token_id=0)
            ref_dec = _step_logits(model, gen, full_mask, ids.shape[1])
            out["decode"] = (dec_logits - ref_dec).abs().max().item()
            out["same_tokens"] = float(torch.equal(gen, ref_gen))
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
    out["effect"] = (got - base)[valid].abs().max().item()
    return out


def _step_logits(model, tokens, full_mask, prompt_len):
    """Logits of each decode step computed incrementally with a KV cache (prefill, then one token at a time)."""
    out = model(input_ids=tokens[:, :prompt_len], attention_mask=full_mask[:, :prompt_len], use_cache=True)
    cache, steps = out.past_key_values, []
    for t in range(prompt_len, tokens.shape[1]):
        o = model(input_ids=tokens[:, t : t + 1], attention_mask=full_mask[:, : t + 1], past_key_values=cache,
                  use_cache=True)
        cache = o.past_key_values
        steps.append(o.logits[:, -1])
    return torch.stack(steps, 1)
