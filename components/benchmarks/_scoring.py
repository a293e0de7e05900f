"""Shared scoring routines for benchmarks: batched greedy answers, choice log-probabilities, token NLL."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def by_length(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices grouped into batches of ``size`` items of similar length (sorted by length, stable), so padding
    stays small; callers write results back by index, which restores the input order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]


#: most logits held at once (B * T * V floats: 512 MiB in float32, twice that with the log-softmax); with Gemma-3's
#: 262k vocabulary a batch of 16 x 256 tokens would otherwise need 4 GiB for its logits alone
LOGIT_BUDGET = 1 << 27


def fit_rows(batch_size: int, width: int, vocab: int) -> int:
    """Rows per forward: at most ``batch_size``, and few enough that (B, width, vocab) logits fit LOGIT_BUDGET."""
    return max(1, min(batch_size, LOGIT_BUDGET // max(1, width * vocab)))


def _vocab(model: torch.nn.Module, tokenizer: Any) -> int:
    return int(getattr(getattr(model, "config", None), "vocab_size", 0) or len(tokenizer))


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="ex", disable=not enabled, leave=False, dynamic_ncols=True)


#: when set, :func:`greedy_continuations` hands its prompts to this function instead (same signature): the
#: query-agnostic generation of ``components.presses._query`` (context compressed alone, question on its cache)
GENERATOR: contextvars.ContextVar = contextvars.ContextVar("attnflow_greedy_generator", default=None)


@torch.no_grad()
def greedy_continuations(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    session: Any = None,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Greedy continuations of left-padded prompt batches (KV cache; patches see prefill then decode steps).
    Prompts are batched by token length; the continuations come back in the prompts' order."""
    generator = GENERATOR.get()
    if generator is not None:
        return generator(model, tokenizer, list(prompts), max_new_tokens, session=session, batch_size=batch_size,
                         progress=progress, desc=desc)
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    prompts = list(prompts)
    outs: list[str] = [""] * len(prompts)
    bar = _progress(len(prompts), desc, progress)
    for idx in by_length([len(ids) for ids in tokenizer(prompts)["input_ids"]] if prompts else [], batch_size):
        chunk = [prompts[i] for i in idx]
        enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
        if session is not None:
            session.set_inputs(texts=chunk, encoding=enc, tokenizer=tokenizer)
        gen = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None,
        )
        new = gen[:, enc["input_ids"].shape[1] :]  # (B, new)
        for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
            outs[i] = text
        bar.update(len(chunk))
    bar.close()
    return outs


@torch.no_grad()
def choice_logprobs(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    session: Any = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[float]]:
    """Sum of log-probabilities of each choice's tokens after its prompt (right padding, one forward per pair)."""
    tokenizer.padding_side = "right"
    device = next(model.parameters()).device
    pairs = [(i, p, c) for i, (p, cs) in enumerate(zip(prompts, choices)) for c in cs]
    full = [tokenizer(p + c)["input_ids"] for _, p, c in pairs]
    scores: list[list[float]] = [[] for _ in prompts]
    pair_scores: list[float] = [0.0] * len(pairs)
    bar = _progress(len(pairs), "choices", progress)
    n_rows = fit_rows(batch_size, max((len(f) for f in full), default=1), _vocab(model, tokenizer))
    for idx in by_length([len(f) for f in full], n_rows):
        chunk = [pairs[j] for j in idx]
        prompt_ids = [tokenizer(p)["input_ids"] for _, p, _ in chunk]
        full_ids = [full[j] for j in idx]
        starts = [min(len(p_ids), len(f_ids) - 1) for p_ids, f_ids in zip(prompt_ids, full_ids)]
        width = max(len(f) for f in full_ids)
        pad = tokenizer.pad_token_id or 0
        ids = torch.tensor([f + [pad] * (width - len(f)) for f in full_ids], device=device)  # (B, T)
        mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in full_ids], device=device)
        if session is not None:
            session.set_inputs(texts=[p + c for _, p, c in chunk], prompts=[p for _, p, _ in chunk],
                               prompt_lens=starts, input_ids=ids, tokenizer=tokenizer)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        for row, (j, start, f_ids) in enumerate(zip(idx, starts, full_ids)):
            tgt = torch.tensor(f_ids[start:], device=device)  # choice tokens
            logp = torch.log_softmax(logits[row, start - 1 : len(f_ids) - 1].float(), dim=-1)  # (n, V) rows used
            pair_scores[j] = logp.gather(1, tgt[:, None]).sum().item()
        bar.update(len(chunk))
    for (i, _, _), value in zip(pairs, pair_scores):  # back in the order of the prompts and their choices
        scores[i].append(value)
    bar.close()
    return scores


def leading_bos(tokenizer: Any) -> list[int]:
    """``[bos_token_id]`` when the tokenizer puts BOS before every text it encodes, else ``[]``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    with_special = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    return [bos] if with_special[:1] == [bos] and bare[:1] != [bos] else []


@torch.no_grad()
def token_nll(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    max_tokens: int | None = None,
    session: Any = None,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[float, int, list[float]]:
    """Concatenate texts (EOS-separated) and score non-overlapping windows of ``max_length`` tokens.

    Each window is preceded by the BOS token when the tokenizer adds one to every text (then all of the window's
    tokens are scored). Returns (total NLL in nats, number of predicted tokens, per-window mean NLL).
    """
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prefix = leading_bos(tokenizer)  # [] or [bos]: the context every text gets from the tokenizer
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False)["input_ids"] + sep)
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    if max_tokens is not None:
        stream = stream[:max_tokens]
    windows = [stream[i : i + max_length] for i in range(0, len(stream), max_length)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise ValueError("perplexity: the text source yields fewer than 2 tokens")
    device = next(model.parameters()).device
    total, count, per_window = 0.0, 0, []
    bar = _progress(len(windows), "perplexity", progress)
    for chunk in batches(windows, fit_rows(batch_size, max_length, _vocab(model, tokenizer))):
        chunk = [prefix + w for w in chunk]
        width = max(len(w) for w in chunk)
        ids = torch.tensor([w + [0] * (width - len(w)) for w in chunk], device=device)  # (B, T)
        mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in chunk], device=device)
        if session is not None:
            session.set_inputs(input_ids=ids, tokenizer=tokenizer)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"
        )  # (B, T-1)
        valid = mask[:, 1:].bool()
        for row in range(len(chunk)):
            n = int(valid[row].sum())
            s = float(nll[row][valid[row]].sum())
            total, count = total + s, count + n
            per_window.append(s / max(n, 1))
        bar.update(len(chunk))
    bar.close()
    return total, count, per_window


@torch.no_grad()
def prediction_entropy(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    session: Any = None,
    batch_size: int = 16,
) -> float:
    """Mean entropy (nats) of the model's prediction for each row, without labels: over the row's options
    (softmax of their log-probabilities) when it has ``choices``, else over the vocabulary for the token after
    the prompt. ZeroTuning's unsupervised criterion (lower = more confident)."""
    if rows and rows[0].get("choices"):
        scores = choice_logprobs(model, tokenizer, [r["prompt"] for r in rows], [r["choices"] for r in rows],
                                 session=session, batch_size=batch_size)
        logp = [torch.log_softmax(torch.tensor(s, dtype=torch.float64), 0) for s in scores]
        return float(sum(-(lp.exp() * lp).sum() for lp in logp) / len(logp))
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    prompts = [r["prompt"] for r in rows]
    entropy = [0.0] * len(prompts)
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    for idx in by_length(lengths, fit_rows(batch_size, max(lengths, default=1), _vocab(model, tokenizer))):
        chunk = [prompts[i] for i in idx]
        enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
        if session is not None:
            session.set_inputs(texts=chunk, encoding=enc, tokenizer=tokenizer)
        pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # (B, T) left padding: positions skip the pads
        logits = model(**enc, position_ids=pos).logits[:, -1]  # (B, V)
        logp = torch.log_softmax(logits.double(), dim=-1)  # (B, V)
        for i, h in zip(idx, (-(logp.exp() * logp).sum(-1)).tolist()):
            entropy[i] = h
    return sum(entropy) / len(rows)  # summed in the rows' order
