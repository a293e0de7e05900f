"""Sampling K answers per question, the greedy answer, and what the uncertainty methods read from them.

1. Prompts: ``template.format(question=...)``, wrapped in the tokenizer's chat template (one user turn plus the
   generation prompt) when ``chat`` is set and the tokenizer has one.
2. Sampling (:func:`generate`): batches of questions, left-padded, ``num_return_sequences=K``, ``do_sample`` with
   temperature / top-p / top-k, seeded per batch inside ``torch.random.fork_rng`` (the global RNG is untouched);
   the greedy answer (``do_sample=False``) is the "most likely generation" SAR scores for correctness. An answer ends
   at an EOS token or before the first token whose decoded prefix contains a stop string.
3. Rescoring (:func:`rescore`): one teacher-forced forward over prompt + answer at temperature 1, as the reference's
   ``get_likelihoods.py`` does, giving -log p(z_i | s_<i, x) per answer token and the mean last-layer hidden state
   over the answer's positions (the last prompt position for an empty answer), the offline similarity embedding.
4. Hidden-state token relevance (:func:`hidden_relevance`): the embedding of prompt + answer with token i removed,
   one forward per (answer, token), compared by cosine with the full answer's embedding.

Based on Duan et al., "Shifting Attention to Relevance" (https://arxiv.org/abs/2307.01379); reference code
https://github.com/jinhaoduan/SAR (``src/generate.py``, ``src/get_likelihoods.py``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch


def build_prompt(tokenizer: Any, question: str, template: str, chat: bool) -> list[int]:
    """Token ids of one question's prompt."""
    text = template.format(question=question)
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def cut(ids: Sequence[int], tokenizer: Any, eos: set[int], stop: Sequence[str]) -> list[int]:
    """The answer: ``ids`` up to the first EOS, then up to (excluding) the first token that completes a stop string."""
    out: list[int] = []
    for t in ids:
        if int(t) in eos:
            break
        out.append(int(t))
    if stop:
        text = tokenizer.decode(out, skip_special_tokens=True)
        if any(s in text for s in stop):
            for i in range(1, len(out) + 1):
                prefix = tokenizer.decode(out[:i], skip_special_tokens=True)
                if any(s in prefix for s in stop):
                    return out[: i - 1]
    return out


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, L)
    for b, s in enumerate(seqs):
        if s:
            ids[b, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[b, width - len(s):] = 1
    return ids, mask


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], *, n_samples: int, temperature: float,
             top_p: float, top_k: int, max_new_tokens: int, seed: int, stop: Sequence[str] = (),
             batch_size: int = 4, progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Per prompt: ``samples`` (K answers' token ids) and ``greedy`` (the greedy answer's ids).

    Batch ``j`` of ``batch_size`` prompts is sampled with seed ``seed + j`` (batches are fixed by ``batch_size``).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = _eos_ids(model, tokenizer)
    common = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=sorted(eos) or None,
                  num_beams=1, return_dict_in_generate=False)
    out: list[dict[str, Any]] = []
    for j, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = prompts[start:start + batch_size]
        ids, mask = _left_pad(chunk, pad_id)  # (B, P)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + j)
            sampled = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                                     top_p=top_p, top_k=top_k, num_return_sequences=n_samples, **common)  # (B*K, P+N)
        greedy = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, temperature=None, top_p=None,
                                top_k=None, **common)  # (B, P+N)
        width = ids.shape[1]
        for b in range(len(chunk)):
            out.append({
                "samples": [cut(sampled[b * n_samples + k, width:].tolist(), tokenizer, eos, stop)
                            for k in range(n_samples)],
                "greedy": cut(greedy[b, width:].tolist(), tokenizer, eos, stop),
            })
        if progress is not None:
            progress(len(chunk))
    return out


@torch.no_grad()
def _last_hidden(model: Any, seqs: Sequence[Sequence[int]], pad_id: int, keep: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Last-layer hidden states (B, L, H) of left-padded ``seqs`` and, when ``keep`` is given, the log-softmax of
    the last ``keep`` positions' logits (B, keep, V) in float32."""
    ids, mask = _left_pad(seqs, pad_id)  # (B, L)
    if keep is None:
        return model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state, None
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=keep)
    return out.hidden_states[-1], torch.log_softmax(out.logits.float(), dim=-1)


def _answer_mean(h: torch.Tensor, b: int, n_answer: int) -> torch.Tensor:
    """Mean of row b's hidden states over its last ``n_answer`` positions (the last position when n_answer = 0)."""
    return h[b, -max(n_answer, 1):].float().mean(dim=0)  # (H,)


@torch.no_grad()
def rescore(model: Any, tokenizer: Any, prompt: Sequence[int], answers: Sequence[Sequence[int]],
            batch_size: int = 8) -> tuple[list[np.ndarray], np.ndarray]:
    """Per answer: -log p of each token given the prompt and the answer's prefix (float32, (T,)), and the
    answer's embedding; embeddings stacked as (n_answers, H) float32."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll: list[np.ndarray] = []
    emb: list[torch.Tensor] = []
    for start in range(0, len(answers), batch_size):
        chunk = answers[start:start + batch_size]
        t_max = max(len(a) for a in chunk)
        h, logp = _last_hidden(model, [list(prompt) + list(a) for a in chunk], pad_id, keep=t_max + 1)
        assert logp is not None
        for b, a in enumerate(chunk):
            t = len(a)
            # position -t-1 .. -2 predict the answer's tokens (left padding: every row ends at the last column)
            rows = logp[b, logp.shape[1] - 1 - t: logp.shape[1] - 1]  # (T, V)
            target = torch.tensor(list(a), dtype=torch.long)  # (T,)
            nll.append((-rows.gather(1, target[:, None])[:, 0]).numpy().astype(np.float32))
            emb.append(_answer_mean(h, b, t))
    return nll, torch.stack(emb).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows of ``a`` (N, H) with rows of ``b`` (M, H) -> (N, M); 0 for a zero vector."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=-1, keepdims=True)
    nb = np.linalg.norm(b, axis=-1, keepdims=True)
    return (a / np.where(na > 0, na, 1.0)) @ (b / np.where(nb > 0, nb, 1.0)).T


@torch.no_grad()
def hidden_relevance(model: Any, tokenizer: Any, prompt: Sequence[int], answers: Sequence[Sequence[int]],
                     embeddings: np.ndarray, batch_size: int = 32) -> list[np.ndarray]:
    """Per answer (T tokens): R_i = 1 - max(cos(e(x + s), e(x + s without token i)), 0), (T,) float32, where e is
    the answer-position mean of the last hidden state (:func:`rescore`'s embedding)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    variants = [(k, i, list(prompt) + list(a[:i]) + list(a[i + 1:])) for k, a in enumerate(answers)
                for i in range(len(a))]
    sims: dict[tuple[int, int], float] = {}
    for start in range(0, len(variants), batch_size):
        chunk = variants[start:start + batch_size]
        h, _ = _last_hidden(model, [v[2] for v in chunk], pad_id)  # (B, L, H)
        for b, (k, i, _seq) in enumerate(chunk):
            e = _answer_mean(h, b, len(answers[k]) - 1).numpy()[None]  # (1, H)
            sims[(k, i)] = float(cosine(e, embeddings[k][None])[0, 0])
    return [np.array([1.0 - max(sims[(k, i)], 0.0) for i in range(len(a))], dtype=np.float32)
            for k, a in enumerate(answers)]
