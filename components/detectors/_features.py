"""Per-token features of a frozen causal LM: last-layer hidden states and the 5 PAWN next-token metrics.

For a text tokenized as t_0 (BOS) ... t_{T-1} and the model's next-token distribution P_i at position i (target
t_{i+1}), with log P computed in float32:

    entropy      = -sum_v P_i(v) log P_i(v)
    max_log_prob = max_v log P_i(v)
    next_token_log_prob = log P_i(t_{i+1})
    quantile     = #{v : log P_i(v) >= log P_i(t_{i+1})} / V          (">=": the target counts itself)
    top_p        = sum_v P_i(v) [log P_i(v) >= log P_i(t_{i+1})]
    log_prob_sq  = sum_v P_i(v) (log P_i(v))^2                          (aux: Fast-DetectGPT's variance)

and, for Binoculars, with an observer O and a performer M2 on the same tokens (each defaults to the backbone; at
least one of them given):

    performer_log_prob = log M2_i(t_{i+1});   cross_entropy = -sum_v O_i(v) log M2_i(v)
    observer_log_prob  = log O_i(t_{i+1})     (only when an observer other than the backbone is given)

The vocabulary can be large (128k for Llama 3), so nothing of size (T, V) is ever held in float64: the
backbone's body runs once per batch, then the output projection runs over chunks of up to 1024 positions (about
8 x ``chunk_elements`` logits) and the metrics over pieces of about ``chunk_elements`` logits, in float32. Texts
always start with a BOS token (the tokenizer's, else its EOS, as is usual for GPT-2), so the first real token is
scored too; texts longer than ``max_length`` tokens are truncated and flagged. ``EXTRACTOR_VERSION`` is part of
every feature-cache key: bump it whenever the numbers change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from components.detectors.base import AUX, METRICS, OBSERVER_AUX, PERFORMER_AUX, FeatureError, FeatureSet

EXTRACTOR_VERSION = "1.0.0"
#: characters kept per allowed token before tokenizing (protects the tokenizer from megabyte-long texts)
CHARS_PER_TOKEN_CAP = 64


@dataclass(frozen=True)
class Encoded:
    """Token ids per text (BOS first, at most max_length) and whether the text was cut."""

    ids: list[list[int]]
    truncated: list[bool]


def bos_id(tokenizer: Any) -> int | None:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode(tokenizer: Any, texts: Sequence[str], max_length: int, names: Sequence[str] | None = None) -> Encoded:
    """Tokenize for feature extraction; empty texts and texts shorter than 2 tokens raise FeatureError."""
    names = list(names) if names is not None else [f"#{i}" for i in range(len(texts))]
    empty = [names[i] for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if empty:
        raise FeatureError(f"{len(empty)} empty text(s): {', '.join(map(repr, empty[:5]))}"
                           + (" ..." if len(empty) > 5 else ""))
    cap = max_length * CHARS_PER_TOKEN_CAP
    cut_chars = [len(t) > cap for t in texts]
    enc = tokenizer([t[:cap] for t in texts], add_special_tokens=True)["input_ids"]
    bos = bos_id(tokenizer)
    ids, truncated = [], []
    for i, row in enumerate(enc):
        row = list(row)
        if bos is not None and (not row or row[0] != bos):
            row = [bos] + row
        truncated.append(cut_chars[i] or len(row) > max_length)
        row = row[:max_length]
        if len(row) < 2:
            raise FeatureError(f"text {names[i]!r} has fewer than 2 tokens; nothing to score")
        ids.append(row)
    return Encoded(ids, truncated)


def output_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's next-token logits from final hidden states, in float32: (..., H) -> (..., V)."""
    logits = model.get_output_embeddings()(hidden).float()  # (..., V)
    cfg = model.config
    scale = getattr(cfg, "logit_scale", None)
    if scale:
        logits = logits * scale
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def token_metrics(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5 PAWN metrics (N, 5) and log_prob_sq (N, 1) from float32 logits (N, V) and targets (N,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    p = logp.exp()  # (N, V)
    tgt = logp.gather(-1, targets[:, None])  # (N, 1)
    plogp = p * logp  # (N, V)
    entropy = -plogp.sum(-1)  # (N,)
    logp_sq = torch.linalg.vecdot(plogp, logp).unsqueeze(-1)  # (N, 1)
    at_least = (logp >= tgt).to(logp.dtype)  # (N, V) 1.0 where the token is at least as likely as the target
    quantile = at_least.sum(-1) / logp.shape[-1]  # (N,)
    top_p = torch.linalg.vecdot(at_least, p)  # (N,)
    metrics = torch.stack([entropy, logp.amax(-1), tgt[:, 0], quantile, top_p], dim=-1)  # (N, 5)
    return metrics, logp_sq


def performer_stats(obs_logits: torch.Tensor, perf_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, 2): performer log-prob of the target and cross-entropy -sum_v P_obs(v) log P_perf(v)."""
    perf_logp = torch.log_softmax(perf_logits.float(), dim=-1)  # (N, V)
    obs_p = torch.softmax(obs_logits.float(), dim=-1)  # (N, V)
    xent = -(obs_p * perf_logp).sum(-1)  # (N,)
    return torch.stack([perf_logp.gather(-1, targets[:, None])[:, 0], xent], dim=-1)


def vocab_size(model: torch.nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def _body(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states of a right-padded batch. The attention mask is all ones on purpose: with right padding
    the causal mask already hides every pad key from every real query, and an all-ones mask keeps the fused
    causal SDPA kernel (~1.85x faster than a padding mask). Pad query positions hold garbage and are never read."""
    return model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state  # (B, T, H)


@torch.no_grad()
def extract(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 512,
    batch_size: int = 16,
    performer: torch.nn.Module | None = None,
    observer: torch.nn.Module | None = None,
    names: Sequence[str] | None = None,
    chunk_elements: int = 1 << 22,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureSet:
    """Features of ``texts`` (returned in input order). ``progress(texts_done, tokens_done)`` after each batch."""
    names = list(names) if names is not None else [f"#{i}" for i in range(len(texts))]
    enc = encode(tokenizer, texts, max_length, names)
    V = vocab_size(model)
    for role, other in (("performer", performer), ("observer", observer)):
        if other is not None and vocab_size(other) != V:
            raise FeatureError(f"{role} vocabulary ({vocab_size(other)}) differs from the backbone's ({V})")
    pair = performer is not None or observer is not None  # Binoculars statistics of an observer/performer pair
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(texts)), key=lambda i: len(enc.ids[i]))  # similar lengths share a batch
    n = len(texts)
    hidden: list[Any] = [None] * n
    metrics: list[Any] = [None] * n
    aux: list[Any] = [None] * n
    gemm_rows = max(16, min(1024, 8 * chunk_elements // V))  # positions per output-projection GEMM
    stat_rows = max(16, min(512, chunk_elements // V))  # positions per metric computation (cache-friendly)
    done_texts = done_tokens = 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        lens = [len(enc.ids[i]) for i in idx]
        T = max(lens)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)  # (B, T) right-padded
        mask = torch.zeros(len(idx), T, dtype=torch.long)  # (B, T)
        for r, i in enumerate(idx):
            ids[r, : lens[r]] = torch.tensor(enc.ids[i])
            mask[r, : lens[r]] = 1
        ids, mask = ids.to(device), mask.to(device)
        h = _body(model, ids)  # (B, T, H)
        scored = mask[:, 1:].bool()  # (B, T-1): position i predicts real token i+1
        rows = h[:, :-1][scored]  # (N, H)
        targets = ids[:, 1:][scored]  # (N,)
        hp = _body(performer, ids)[:, :-1][scored] if performer is not None else None  # (N, H2)
        ho = _body(observer, ids)[:, :-1][scored] if observer is not None else None  # (N, H3)
        m_parts, a_parts = [], []
        for c in range(0, rows.shape[0], gemm_rows):  # output projection: large GEMMs
            logits = output_logits(model, rows[c : c + gemm_rows])  # (n, V)
            perf = output_logits(performer, hp[c : c + gemm_rows]) if hp is not None else None  # (n, V)
            obs = output_logits(observer, ho[c : c + gemm_rows]) if ho is not None else None  # (n, V)
            for s in range(0, logits.shape[0], stat_rows):  # metrics: cache-sized pieces
                lg = logits[s : s + stat_rows]  # (n', V)
                tg = targets[c + s : c + s + lg.shape[0]]  # (n',)
                m, sq = token_metrics(lg, tg)
                if pair:
                    o = obs[s : s + stat_rows] if obs is not None else lg  # (n', V) observer logits
                    q = perf[s : s + stat_rows] if perf is not None else lg  # (n', V) performer logits
                    sq = torch.cat([sq, performer_stats(o, q, tg)], dim=-1)  # (n', 3)
                    if obs is not None:
                        o_lp = torch.log_softmax(o, dim=-1).gather(-1, tg[:, None])  # (n', 1)
                        sq = torch.cat([sq, o_lp], dim=-1)  # (n', 4)
                m_parts.append(m)
                a_parts.append(sq)
        m_all = torch.cat(m_parts).cpu().numpy()  # (N, 5)
        a_all = torch.cat(a_parts).cpu().numpy()  # (N, A)
        h16 = h.to(torch.float16).cpu().numpy()  # (B, T, H)
        offset = 0
        for r, i in enumerate(idx):
            k = lens[r] - 1
            metrics[i], aux[i] = m_all[offset : offset + k], a_all[offset : offset + k]
            hidden[i] = h16[r, : lens[r]].copy()
            offset += k
        bad = [names[i] for i in idx if not (np.isfinite(metrics[i]).all() and np.isfinite(aux[i]).all()
                                             and np.isfinite(hidden[i]).all())]
        if bad:
            raise FeatureError(f"non-finite (NaN/inf) features for text(s) {', '.join(map(repr, bad[:5]))}: the "
                               "backbone overflowed or has broken weights (try dtype float32)")
        done_texts += len(idx)
        done_tokens += sum(lens)
        if progress is not None:
            progress(done_texts, done_tokens)
    return FeatureSet(
        ids=names, n_tokens=np.array([len(x) for x in enc.ids], dtype=np.int32), metrics=metrics, aux=aux,
        aux_names=AUX + (PERFORMER_AUX if pair else ()) + (OBSERVER_AUX if observer is not None else ()),
        vocab_size=V, hidden=hidden,
        extra={"truncated": list(enc.truncated)},
    )


__all__ = ["EXTRACTOR_VERSION", "METRICS", "encode", "extract", "token_metrics", "performer_stats", "output_logits"]
