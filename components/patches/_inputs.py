"""Reading the per-batch inputs that input-dependent patches need (prompt texts, their token offsets).

The scoring code attaches them with ``session.set_inputs(texts=..., tokenizer=..., prompts=..., prompt_lens=...)``
(see ``components/benchmarks/_scoring.py``): ``texts`` are the model inputs row by row, ``prompts`` their prompt
part (a prefix; defaults to the whole text), ``prompt_lens`` the number of prompt tokens when the caller knows it.
Tokens are located in a batch through the 2-D attention mask: the k-th real position of a row holds the row's k-th
token (left or right padding alike); positions after the text's tokens are generated tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from components.attention.types import CallInfo


@dataclass
class PromptRows:
    """Token layout of one batch: per row, the number of text tokens and of prompt tokens, and the character
    offsets of the prompt tokens."""

    prompts: list[str]
    n_tokens: list[int]
    n_prompt: list[int]
    offsets: list[list[tuple[int, int]]]


def prompt_rows(call: CallInfo, owner: Any, *, need_offsets: bool) -> PromptRows | None:
    """The batch's layout, computed once per ``set_inputs`` and shared by the layers; None without texts."""
    inputs = call.inputs
    texts = inputs.get("texts")
    if texts is None:
        return None
    cache = call.session.state.setdefault((id(owner), "prompt_rows"), {})
    if cache.get("inputs") is inputs and (cache["rows"].offsets or not need_offsets):
        return cache["rows"]
    tok = inputs.get("tokenizer")
    if tok is None:
        raise ValueError(f"{owner.component_name}: session inputs have texts but no tokenizer")
    prompts = list(inputs.get("prompts") or texts)
    if len(prompts) != len(texts) or any(not t.startswith(p) for t, p in zip(texts, prompts)):
        raise ValueError(f"{owner.component_name}: each prompt must be a prefix of its text")
    enc = tok(list(texts), return_offsets_mapping=need_offsets)
    ids = enc["input_ids"]
    lens = inputs.get("prompt_lens")
    if lens is None:
        lens = [len(i) for i in tok(prompts)["input_ids"]] if inputs.get("prompts") else [len(i) for i in ids]
    offsets = [list(map(tuple, o))[:n] for o, n in zip(enc["offset_mapping"], lens)] if need_offsets else []
    rows = PromptRows(prompts, [len(i) for i in ids], [int(n) for n in lens], offsets)
    cache.update(inputs=inputs, rows=rows)
    return rows


def token_index(call: CallInfo, rows: PromptRows) -> torch.Tensor:
    """(B, N) long over absolute positions (N = length of the 2-D mask): index of each position among its row's
    tokens, -1 for padding. Checks at prefill that the batch holds exactly the tokenized texts."""
    am2 = call.attention_mask_2d
    if am2 is None:
        n = call.kv_len + call.key_offset
        real = torch.ones(call.batch, n, dtype=torch.bool, device=call.device)
    else:
        real = (am2 != 0).to(call.device)
    idx = torch.where(real, real.long().cumsum(1) - 1, -1)  # (B, N)
    if call.is_prefill:
        have = real.sum(1).tolist()
        if have != rows.n_tokens:
            raise ValueError(f"the batch holds {have} real tokens per row but the attached texts tokenize to "
                             f"{rows.n_tokens}: session.set_inputs must describe the model input")
    return idx


def row_mask(values: list[list[bool]], device: torch.device) -> torch.Tensor:
    """Ragged per-row booleans (token order) -> (B, L) bool padded with False."""
    width = max((len(v) for v in values), default=0) or 1
    out = torch.zeros(len(values), width, dtype=torch.bool, device=device)
    for b, v in enumerate(values):
        if v:
            out[b, : len(v)] = torch.tensor(v, dtype=torch.bool, device=device)
    return out


def last_prompt_query(call: CallInfo, owner: Any) -> torch.Tensor:
    """(B,) query index (within this prefill call) of each row's last prompt token; the last real query when no
    texts are attached."""
    rows = prompt_rows(call, owner, need_offsets=False)
    if rows is None:
        return call.last_real_query()
    idx = token_index(call, rows)[:, call.key_offset + call.past_len:]  # (B, q)
    target = torch.tensor([n - 1 for n in rows.n_prompt], device=idx.device)[:, None]  # (B, 1)
    return (idx == target).int().argmax(1)
