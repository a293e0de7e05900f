"""Retrieval score: which heads copy the needle from the context while the model answers (retrieval heads).

Greedy decoding over needle-in-a-haystack tests at several lengths and depths. At every decoding step, for each
head take its top-1 attended key position j for the step's query; if j lies in the needle-answer span [s, e) of the
prompt and the generated token w equals the prompt token at j, the head performs a copy-paste event worth
1/(e - s). A head's score on one test is therefore |g_h intersect k| / |k| (the share of answer tokens it copied):

    score_h(test) = (1 / (e - s)) * sum_steps 1[argmax_j A_h[step, j] in [s, e) and x_j == w_step]

Only tests whose answer recalls the needle (ROUGE-1 recall > ``recall_gate``) count; the final score is the mean
over those tests. Heads with score > ``threshold`` (0.1) are retrieval heads. As in the reference, the prompt is
prefilled without its last token, which is then fed as the first decoding step, so every generated token comes from
a single-query step whose attention is read from the attnflow dispatcher (materialised probabilities, q_len = 1).

Based on Wu, Wang, Xiao, Peng, Fu, "Retrieval Head Mechanistically Explains Long-Context Factuality"
(arXiv 2404.15574). Reference code: https://github.com/nightdessert/Retrieval_Head (``retrieval_head_detection.py``:
``retrieval_calculate``, ``decode``, ``find_needle_idx``).

Deviations from the reference code: needles are generated (``passkey``, ``words``) or read from the user's file in
the reference's needles.jsonl format, haystacks are the built-in stories or the user's text, lengths are in words
(default 60-240, small models) instead of 1k-50k tokens; the needle span comes from the tokenizer's character
offsets of the answer (exact) instead of a token-set overlap > 0.9 search (used as the fallback for slow
tokenizers); ROUGE-1 without stemming; decoding stops at a newline or EOS after at most ``max_new_tokens`` (the
reference: 50). ``top_k`` > 1 counts an event when any of the top-k positions qualifies (as the reference's loop).

Changelog
---------
1.1.0: tests decoded in length-sorted, left-padded batches (``batch_size``); the prefill keeps only the last logits;
    sliding-window layers (Gemma-3, Mistral) map their cached keys back to prompt positions (prompts longer than
    the window failed before); the tests table records ``generated_tokens``. Scores unchanged (SmolLM2-135M,
    default grid: bit-identical to 1.0.0).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from components.analyzers.base import AnalysisResult, Analyzer, layer_head_rows, ranked
from components.attention.session import applied
from components.base import check_range
from components.benchmarks import _needle, _scoring
from components.benchmarks.needle import NeedleGrid
from components.patches.base import model_shape
from registry import register


def copy_events(att: torch.Tensor, token: int, prompt_ids: torch.Tensor, span: tuple[int, int],
                top_k: int = 1) -> torch.Tensor:
    """Copy-paste events of one decoding step: att (L, H, S) probabilities of the step's query -> (L, H) scores
    (1/|span| where a head's top-k attended position lies in the span and holds the generated token)."""
    top = att.topk(min(top_k, att.shape[-1]), dim=-1).indices  # (L, H, k)
    return events_at(top, token, prompt_ids, span)


def events_at(top: torch.Tensor, token: int, prompt_ids: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """Copy-paste events from the attended prompt positions top (L, H, k) (any integers: positions outside the
    prompt, e.g. padding or generated tokens, never count) -> (L, H) scores."""
    s, e = span
    in_span = (top >= s) & (top < e)
    src = prompt_ids[top.clamp(min=0, max=prompt_ids.shape[0] - 1)]  # (L, H, k) prompt token at each position
    return (in_span & (src == token)).any(-1).double() / (e - s)  # (L, H)


def top_positions(attentions: Sequence[torch.Tensor], top_k: int, full: int) -> torch.Tensor:
    """Top-k attended key positions of the last query per layer: attentions[l] (B, H, T, S_l) -> (B, L, H, k),
    positions among the ``full`` keys of the sequence so far (a sliding-window cache keeps only the last S_l keys:
    shifted by full - S_l)."""
    tops = [a[:, :, -1].topk(min(top_k, a.shape[-1]), dim=-1).indices + (full - a.shape[-1])
            for a in attentions]  # each (B, H, k)
    k = min(t.shape[-1] for t in tops)
    return torch.stack([t[..., :k] for t in tops], dim=1)  # (B, L, H, k)


def needle_span(tokenizer: Any, prompt: str, start: int, end: int) -> tuple[list[int], tuple[int, int]]:
    """Prompt ids and the token span [s, e) of the answer's characters [start, end)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(prompt, return_offsets_mapping=True)
        hit = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
        ids = enc["input_ids"]
        if hit:
            return ids, (hit[0], hit[-1] + 1)
    else:  # the reference's search: first window whose token set overlaps the answer's by > 0.9
        ids = tokenizer(prompt)["input_ids"]
        want = set(tokenizer(" " + prompt[start:end], add_special_tokens=False)["input_ids"])
        n = len(tokenizer(" " + prompt[start:end], add_special_tokens=False)["input_ids"])
        for i in range(len(ids)):
            if len(set(ids[i : i + n]) & want) / max(len(want), 1) > 0.9:
                return ids, (i, i + n)
    raise ValueError(f"retrieval_score: the answer {prompt[start:end]!r} was not found among the prompt's tokens")


@register("retrieval_score", version="1.1.0", family="analyzer", paper="arXiv:2404.15574",
          summary="Retrieval heads: copy-paste score of each head while decoding needle-in-a-haystack answers.")
@dataclass(frozen=True)
class RetrievalScore(NeedleGrid, Analyzer):
    """Retrieval-head detection by copy-paste events during greedy needle retrieval.

    Parameters
    ----------
    lengths : list of int
        Haystack lengths in words. Default 60, 120, 240.
    depths : list of float
        Relative needle depths in [0, 1]. Default 0, 0.25, 0.5, 0.75, 1.
    n_per_cell : int
        Tests per (length, depth) cell. Default 2.
    needles : str
        ``passkey``, ``words``, or a file of needle/question/real_needle records. Default ``passkey``.
    haystack : str
        ``builtin:stories`` or a text source (txt/JSONL/CSV/Parquet, ``hf:<id>``). Default ``builtin:stories``.
    template : str
        Prompt template with ``{context}`` and ``{question}``; empty = the needle source's default. Default empty.
    max_new_tokens : int
        Greedy decoding steps per test. Default 24.
    top_k : int
        Attended positions checked per head and step. Default 1.
    recall_gate : float
        Tests count when ROUGE-1 recall of the answer exceeds this. Default 0.5.
    threshold : float
        Heads scoring above this are retrieval heads. Default 0.1.
    seed : int
        Data seed (the tests differ from the needle benchmark's splits). Default 0.
    batch_size : int
        Tests decoded together, grouped by token length, left-padded (speed only: the scores equal batch_size=1 up
        to float rounding in the matrix products). Default 8.
    """

    max_new_tokens: int = 24
    top_k: int = 1
    recall_gate: float = 0.5
    threshold: float = 0.1
    seed: int = 0
    batch_size: int = 8

    primary_array: ClassVar[str] = "retrieval_score"
    example: ClassVar[dict[str, str]] = {"lengths": "20", "depths": "0,1", "n_per_cell": "1", "max_new_tokens": "4"}

    def __post_init__(self) -> None:
        self.check_grid("retrieval_score")
        check_range("retrieval_score.max_new_tokens", self.max_new_tokens, 1)
        check_range("retrieval_score.top_k", self.top_k, 1)
        check_range("retrieval_score.recall_gate", self.recall_gate, 0.0, 1.0)
        check_range("retrieval_score.threshold", self.threshold, 0.0, 1.0)
        check_range("retrieval_score.batch_size", self.batch_size, 1)

    def build(self) -> list[dict[str, Any]]:
        rng = random.Random(self.seed * 1000 + 5)  # disjoint from the needle benchmark's splits (+17, +18)
        return [self.grid_test(rng, i) for i in range(self.n_examples)]

    def data_fingerprint(self) -> str:
        return self.grid_fingerprint()

    @torch.no_grad()
    def score_batch(self, model: torch.nn.Module, tokenizer: Any,
                    tests: Sequence[tuple[list[int], tuple[int, int]]]) -> list[tuple[torch.Tensor, list[int]]]:
        """Greedy decoding of several tests at once (left padding): per test, (L, H) event scores and the
        generated ids. Call inside ``applied(model)``. Every step reads the materialised probabilities of its
        single query (q_len = 1: cheap); the prefill runs on the fast path and keeps only the last logits."""
        n_layers, n_heads = model_shape(model.config)
        device = next(model.parameters()).device
        n, width = len(tests), max(len(ids) for ids, _ in tests)
        left = [width - len(ids) for ids, _ in tests]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        prompt = torch.tensor([[pad] * lp + ids for lp, (ids, _) in zip(left, tests)], device=device)  # (B, P)
        mask = torch.tensor([[0] * lp + [1] * len(ids) for lp, (ids, _) in zip(left, tests)], device=device)
        padded = any(left)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P) position ids that skip the left padding
        # prefill without the last token, which is fed as the first decoding step (as the reference does)
        extra = {"attention_mask": mask[:, :-1], "position_ids": pos[:, :-1]} if padded else {}
        cache = model(input_ids=prompt[:, :-1], use_cache=True, logits_to_keep=1, **extra).cache
        inp, step_pos = prompt[:, -1:], pos[:, -1:]  # (B, 1)
        scores = [torch.zeros(n_layers, n_heads, dtype=torch.float64) for _ in tests]
        generated: list[list[int]] = [[] for _ in tests]
        live = [True] * n
        prompt_ids = [torch.tensor(ids) for ids, _ in tests]
        with applied(model, force="materialize"):
            for t in range(self.max_new_tokens):
                if padded:
                    mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
                    extra = {"attention_mask": mask, "position_ids": step_pos}
                step = model(input_ids=inp, cache=cache, use_cache=True, output_attentions=True, **extra)
                cache, tokens = step.cache, step.logits[:, -1].argmax(-1)  # (B,)
                top = top_positions(step.attentions, self.top_k, width + t).cpu()  # (B, L, H, k) padded positions
                for b in range(n):
                    if not live[b]:
                        continue
                    token = int(tokens[b])
                    scores[b] += events_at(top[b] - left[b], token, prompt_ids[b], tests[b][1])
                    generated[b].append(token)
                    if token == tokenizer.eos_token_id or "\n" in tokenizer.decode([token]):
                        live[b] = False
                if not any(live):
                    break
                inp, step_pos = tokens[:, None], step_pos + 1
        return list(zip(scores, generated))

    def analyze(self, model, tokenizer, rows, *, progress=False) -> AnalysisResult:
        n_layers, n_heads = model_shape(model.config)
        total = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        prepared = [needle_span(tokenizer, row["prompt"], row["answer_start"], row["answer_end"]) for row in rows]
        order = sorted(range(len(rows)), key=lambda i: len(prepared[i][0]))  # similar lengths decode together
        decoded: dict[int, tuple[torch.Tensor, list[int]]] = {}
        bar = _scoring._progress(len(rows), "retrieval_score", progress)
        with applied(model):
            for chunk in _scoring.batches(order, self.batch_size):
                decoded.update(zip(chunk, self.score_batch(model, tokenizer, [prepared[i] for i in chunk])))
                bar.update(len(chunk))
        tests, counted = [], 0
        for i, row in enumerate(rows):  # in the rows' order: sums are the same as unbatched
            (ids, _), (score, generated) = prepared[i], decoded[i]
            response = _needle.answer_response(tokenizer.decode(generated, skip_special_tokens=True))
            recall = _needle.rouge1_recall(row["answer"], response)
            ok = recall > self.recall_gate
            if ok:
                total += score
                counted += 1
            tests.append({"length": row["length"], "depth": row["depth"], "tokens": len(ids),
                          "answer": row["answer"], "response": response, "recall": recall, "counted": ok,
                          "generated_tokens": len(generated), "best_head_score": float(score.max())})
        bar.close()
        mean = (total / counted if counted else total).numpy()  # (L, H)
        rows_ = ranked(layer_head_rows({"retrieval_score": mean}), "retrieval_score")
        heads = [(r["layer"], r["head"]) for r in rows_ if r["retrieval_score"] > self.threshold]
        cells: dict[tuple[int, float], list[float]] = defaultdict(list)
        for t in tests:
            cells[(t["length"], t["depth"])].append(t["recall"])
        metrics = {"n_tests": float(len(tests)), "n_counted": float(counted),
                   "counted_rate": counted / max(len(tests), 1), "n_retrieval_heads": float(len(heads)),
                   "retrieval_head_share": len(heads) / mean.size, "max_score": float(mean.max())}
        return AnalysisResult(
            arrays={"retrieval_score": mean},
            tables={"heads": rows_, "tests": tests,
                    "recall": [{"length": k[0], "depth": k[1], "recall": float(np.mean(v)), "n": len(v)}
                               for k, v in sorted(cells.items())]},
            metrics=metrics,
            heads={"retrieval_heads": heads, "ranking": [(r["layer"], r["head"]) for r in rows_]},
            figures={"retrieval_score": ("layer_head", "retrieval_score"),
                     "recall": ("heatmap", "recall", "length", "depth", "recall")},
        )
