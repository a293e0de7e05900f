"""Query-agnostic evaluation of a press on unchanged benchmarks: the context is prefilled (and compressed) alone,
then the question and the greedy answer run on the compressed cache, as kvpress evaluates.

``with query_agnostic({prompt: question_start}):`` makes ``_scoring.greedy_continuations`` (what the generative
benchmarks call) split each prompt at its question: the full prompt is tokenized once and cut at the first token
that reaches into the question, so the tokens are exactly those of the unsplit prompt (ratio 0 reproduces the
unpressed greedy answer). Batches: contexts and questions are each left-padded ("pad c c c pad q q"), the pads
masked, and ``position_ids`` count real tokens only (as for a left-padded prompt).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from components.benchmarks import _scoring


def split_ids(tokenizer: Any, prompt: str, start: int) -> tuple[list[int], int]:
    """Token ids of ``prompt`` and the number of leading tokens that lie wholly before character ``start``."""
    try:
        enc = tokenizer(prompt, return_offsets_mapping=True)
    except NotImplementedError:
        raise ValueError("query-agnostic evaluation needs a fast tokenizer (character offsets)") from None
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    n = 0
    for _, end in offsets:
        if end > start:
            break
        n += 1
    if n == 0 or n == len(ids):
        raise ValueError(f"prompt {prompt[:60]!r}...: splitting at character {start} leaves an empty "
                         f"{'context' if n == 0 else 'question'}")
    return ids, n


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]


@torch.no_grad()
def generate_split(model: torch.nn.Module, context: torch.Tensor, context_mask: torch.Tensor, question: torch.Tensor,
                   question_mask: torch.Tensor, max_new_tokens: int, pad_id: int, eos: Sequence[int]) -> torch.Tensor:
    """Prefill ``context`` (B, Tc) alone (a press active around this call compresses it), then ``question``
    (B, Tq) and greedy steps on the cache. Rows that produced an EOS continue with ``pad_id`` (as ``generate``).
    Returns (B, n <= max_new_tokens) new tokens."""
    mask = torch.cat([context_mask, question_mask], 1)  # (B, Tc+Tq)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, Tc+Tq) positions of real tokens
    tc = context.shape[1]
    cache = model(input_ids=context, attention_mask=context_mask, position_ids=pos[:, :tc],
                  use_cache=True).past_key_values
    logits = model(input_ids=question, attention_mask=mask, position_ids=pos[:, tc:], past_key_values=cache,
                   use_cache=True).logits  # (B, Tq, V)
    last = pos[:, -1:]  # (B, 1)
    eos_t = torch.tensor(list(eos), dtype=torch.long, device=context.device)
    finished = torch.zeros(context.shape[0], dtype=torch.bool, device=context.device)
    out = []
    for step in range(max_new_tokens):
        tok = logits[:, -1].argmax(-1)  # (B,)
        tok = torch.where(finished, torch.full_like(tok, pad_id), tok)
        out.append(tok)
        finished |= torch.isin(tok, eos_t)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        last = last + 1
        logits = model(input_ids=tok[:, None], attention_mask=mask, position_ids=last, past_key_values=cache,
                       use_cache=True).logits  # (B, 1, V)
    return torch.stack(out, 1)  # (B, n)


def split_continuations(model: torch.nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int, *,
                        splits: dict[str, int], session: Any = None, batch_size: int = 16, progress: bool = False,
                        desc: str = "generate") -> list[str]:
    """``greedy_continuations`` with each prompt's context prefilled alone (see the module docstring)."""
    missing = [p for p in prompts if p not in splits]
    if missing:
        raise ValueError(f"query-agnostic evaluation: {len(missing)} prompt(s) have no context/question split "
                         f"(first: {missing[0][:60]!r}...)")
    device = next(model.parameters()).device
    items = [split_ids(tokenizer, p, splits[p]) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = _eos_ids(model, tokenizer)
    outs = [""] * len(prompts)
    bar = _scoring._progress(len(prompts), desc, progress)
    for idx in _scoring.by_length([len(items[i][0]) for i in range(len(items))], batch_size):
        ctx = [items[i][0][: items[i][1]] for i in idx]
        qs = [items[i][0][items[i][1]:] for i in idx]
        tc, tq = max(map(len, ctx)), max(map(len, qs))

        def left(rows: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)  # (B, width)
            m = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            return ids, m

        (c_ids, c_mask), (q_ids, q_mask) = left(ctx, tc), left(qs, tq)
        if session is not None:
            session.set_inputs(texts=[prompts[i] for i in idx], tokenizer=tokenizer)
        new = generate_split(model, c_ids, c_mask, q_ids, q_mask, max_new_tokens, pad, eos)
        for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
            outs[i] = text
        bar.update(len(idx))
    bar.close()
    return outs


@contextmanager
def query_agnostic(splits: dict[str, int]) -> Iterator[None]:
    """Within the block, generative benchmarks prefill each prompt's context alone (``splits``: prompt -> character
    offset of its question), then run the question and the greedy answer on the (compressed) cache."""
    token = _scoring.GENERATOR.set(functools.partial(split_continuations, splits=splits))
    try:
        yield
    finally:
        _scoring.GENERATOR.reset(token)
