"""Pluggable similarity and entailment for the uncertainty methods: what SAR's relevance and similarity read.

Three quantities per question, each computed once and cached beside the generations:

- token relevance R_T(z_i) = 1 - g(x + s, x + s without token i), per answer token;
- sentence similarity g(s_j, s_k) in [0, 1], a symmetric (K, K) matrix (diagonal 1);
- entailment e(s_j -> s_k) in [0, 1], a (K, K) matrix, for semantic entropy's bidirectional-entailment clusters.

Backends (a similarity backend gives g and the relevance; an entailment backend gives e):

- ``hidden`` (similarity, the offline default): cosine of the generating model's mean last-layer hidden states over
  the answer positions, clipped at 0 (:func:`components.uncertainty._generate.hidden_relevance`).
- ``embedding`` (similarity, offline and cheap): g between answers as for ``hidden``; token relevance from the
  model's input embeddings, R_i = 1 - cos(mean embedding of s, mean embedding of s without token i), no forward
  pass (:func:`embedding_relevance`). ``hidden`` costs one forward of
  prompt + answer per answer token (K * T per question); this costs none, and is a cruder relevance.
- a cross-encoder (similarity) given by hub id or local path: ``AutoModelForSequenceClassification`` with one
  output, g = sigmoid(logit) of the pair (question + " " + s_j, question + " " + s_k), as the reference's
  ``sentence_transformers.CrossEncoder(num_labels=1)`` scores ``cross-encoder/stsb-roberta-large``.
- ``rouge`` (entailment, the offline default): e = ROUGE-L F of the two answers (symmetric).
- an NLI model (entailment) given by hub id or local path: ``AutoModelForSequenceClassification`` whose
  ``id2label`` has an entailment class; e(j -> k) = softmax(logits(premise s_j, hypothesis s_k))[entailment]
  (Kuhn et al. use ``microsoft/deberta-large-mnli`` on question + answer).

Deviations from the reference: the default offline backends are not the reference's cross-encoder (no such model is
available offline); relevance removes token i's ids at its one position (the reference deletes every occurrence of
the token's decoded text with ``str.replace``); pairs join question and answer with a space (the reference
concatenates them directly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from components.uncertainty import _rouge
from components.uncertainty._generate import cosine as _cosine

OFFLINE_SIMILARITY = "hidden"
OFFLINE_ENTAILMENT = "rouge"


@dataclass
class PairModel:
    """A sequence-pair classifier: a cross-encoder (one logit, sigmoid) or an NLI model (softmax, one class)."""

    ref: str
    model: Any
    tokenizer: Any
    label: int | None  # NLI: the entailment class; None: one-logit cross-encoder
    batch_size: int = 16

    @torch.no_grad()
    def __call__(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Score of each (first, second) pair, shape (N,) float64."""
        out: list[np.ndarray] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            enc = self.tokenizer([a for a, _ in chunk], [b for _, b in chunk], padding=True, truncation=True,
                                 max_length=512, return_tensors="pt")
            logits = self.model(**enc).logits.float()  # (B, C)
            if self.label is None:
                out.append(torch.sigmoid(logits[:, 0]).double().numpy())
            else:
                out.append(torch.softmax(logits, dim=-1)[:, self.label].double().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def entailment_label(id2label: dict[Any, str], ref: str) -> int:
    """The index of the entailment class of an NLI model's labels; a clear error when there is none."""
    found = [int(i) for i, name in id2label.items() if "entail" in str(name).lower() and "not" not in str(name).lower()]
    if len(found) != 1:
        raise ValueError(f"entailment model {ref!r}: expected one label naming entailment in its config's id2label, "
                         f"found {dict(id2label)}")
    return found[0]


def load_pair_model(ref: str, kind: str, batch_size: int = 16) -> PairModel:
    """Load a cross-encoder (``kind='similarity'``, one output) or an NLI model (``kind='entailment'``) by hub id
    or path with ``AutoModelForSequenceClassification``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(ref).eval()
    tokenizer = AutoTokenizer.from_pretrained(ref)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    n = int(model.config.num_labels)
    if kind == "similarity":
        if n != 1:
            raise ValueError(f"similarity model {ref!r} has {n} outputs; a cross-encoder scoring similarity has one "
                             "(num_labels=1), e.g. cross-encoder/stsb-roberta-large")
        return PairModel(ref, model, tokenizer, None, batch_size)
    if kind == "entailment":
        return PairModel(ref, model, tokenizer, entailment_label(model.config.id2label, ref), batch_size)
    raise ValueError(f"kind must be 'similarity' or 'entailment', not {kind!r}")


def pair_relevance(scorer: PairModel, tokenizer: Any, question: str, answers: Sequence[Sequence[int]]
                   ) -> list[np.ndarray]:
    """Per answer: R_i = 1 - g(question + s, question + s without token i), (T,) float32."""
    pairs = []
    for a in answers:
        full = f"{question} {tokenizer.decode(list(a), skip_special_tokens=True)}"
        for i in range(len(a)):
            cut = tokenizer.decode(list(a[:i]) + list(a[i + 1:]), skip_special_tokens=True)
            pairs.append((full, f"{question} {cut}"))
    scores = scorer(pairs)
    out, pos = [], 0
    for a in answers:
        out.append((1.0 - scores[pos:pos + len(a)]).astype(np.float32))
        pos += len(a)
    return out


def pair_matrix(scorer: PairModel, question: str, texts: Sequence[str], symmetric: bool) -> np.ndarray:
    """(K, K) scores of (question + text_j, question + text_k), diagonal 1; ``symmetric``: scored for j < k only and
    mirrored (as the reference does for similarity); else both directions (entailment: premise j, hypothesis k)."""
    k = len(texts)
    idx = [(j, m) for j in range(k) for m in range(k) if (j < m if symmetric else j != m)]
    full = [f"{question} {t}" for t in texts]
    scores = scorer([(full[j], full[m]) for j, m in idx]) if idx else np.zeros(0)
    out = np.eye(k, dtype=np.float64)
    for (j, m), s in zip(idx, scores):
        out[j, m] = s
        if symmetric:
            out[m, j] = s
    return out


def rouge_matrix(texts: Sequence[str]) -> np.ndarray:
    """(K, K) ROUGE-L F of every pair of answers (symmetric, diagonal 1)."""
    k = len(texts)
    out = np.eye(k, dtype=np.float64)
    for j in range(k):
        for m in range(j + 1, k):
            out[j, m] = out[m, j] = _rouge.rouge_l(texts[j], texts[m])
    return out


def hidden_matrix(embeddings: np.ndarray) -> np.ndarray:
    """(K, K) cosine of the answers' embeddings clipped to [0, 1] (diagonal 1)."""
    sim = np.clip(_cosine(embeddings, embeddings), 0.0, 1.0)
    np.fill_diagonal(sim, 1.0)
    return sim


@torch.no_grad()
def embedding_relevance(model: Any, answers: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Per answer (T tokens): R_i = 1 - max(cos(m(s), m(s without token i)), 0), (T,) float32, where m is the mean of
    the model's input embeddings over the answer's tokens (no forward pass; an empty remainder has m = 0, so a
    one-token answer gets R = 1)."""
    table = model.get_input_embeddings().weight  # (V, H)
    out = []
    for a in answers:
        if not a:
            out.append(np.zeros(0, dtype=np.float32))
            continue
        e = table[torch.tensor(list(a), dtype=torch.long)].double().numpy()  # (T, H)
        total, t = e.sum(axis=0), len(a)
        rest = (total[None] - e) / max(t - 1, 1)  # (T, H): mean without token i
        sims = _cosine(rest, (total / t)[None])[:, 0]  # (T,)
        out.append((1.0 - np.maximum(sims, 0.0)).astype(np.float32))
    return out
