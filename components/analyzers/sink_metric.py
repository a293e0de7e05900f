"""Sink metric: how much attention the first tokens absorb, per head, and how many heads are sinks.

Each probe text is cut to its first T tokens (the tokenizer's BOS included, as the reference feeds it). With
A^{l,h} the attention probabilities of layer l, head h (rows re-normalised to sum to 1, so non-softmax kernels
are measured the same way), the mean attention that key k receives from the queries that can see it is

    alpha_k^{l,h} = 1/(T - k) * sum_{i=k}^{T-1} A^{l,h}_{i,k}          (k = 0 .. T-1; the paper counts from 1)

and the sink rate of key k is the share of (layer, head) pairs where it exceeds eps, averaged over probe samples,
in percent:

    Sink_k^eps = 100 * mean_samples 1/(L*H) * sum_{l,h} 1[alpha_k^{l,h} > eps]

Sink_1 (the paper's name; key index 0 here, the first token) is the headline number. Outputs: ``alpha_first``
(L, H) = mean alpha_0 per head (the layer x head heatmap), ``sink_rate_first`` (L, H) = share of samples where the
head is a sink on the first token, ``sink_rate_by_key`` (T,), per-layer means (``attention_first_layer<l>``),
and the head set ``sink_heads`` (mean alpha_0 > eps). Defaults eps = 0.3, T = 64, 100 probe samples.

Based on Gu et al., "When Attention Sink Emerges in Language Models: An Empirical View" (ICLR 2025,
arXiv 2410.10781). Reference code: https://github.com/sail-sg/Attention-Sink (``eval_sink_open_source.py``:
``measure_attention_sink``, ``compute_attention_sink``; row normalisation as ``attn_weight_normalized`` in
``lit_gpt/inference/model_attn_sim_infer.py``).

Deviations from the reference code: the probe texts are the user's (any text source) or the built-in stories
instead of ``datasets/probe_valid.jsonl``; short inputs raise an error naming the sample (the reference asserts),
or are skipped with ``short=skip``. Probabilities come from the attnflow dispatcher's materialised path (the
reference uses eager attention); patches in an enclosing scope are measured with the model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from components import data as data_sources
from components.analyzers.base import AnalysisResult, Analyzer, attention_maps, layer_head_rows
from components.base import ParamError, check_range
from components.benchmarks import _scoring, _text
from registry import register


def alpha_scores(attn: torch.Tensor) -> torch.Tensor:
    """alpha_k = mean attention key k receives from queries i >= k. attn (..., T, T) -> (..., T), float64."""
    t = attn.shape[-1]
    a = attn.double().tril()  # (..., T, T): only queries that can see the key
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)  # row-normalise (non-softmax kernels)
    seen_by = torch.arange(t, 0, -1, dtype=torch.float64, device=a.device)  # (T,) queries i >= k
    return a.sum(-2) / seen_by  # (..., T)


def sink_rates(alpha: torch.Tensor, eps: float) -> torch.Tensor:
    """Sink_k^eps in %: alpha (N, L, H, T) -> (T,)."""
    return (alpha > eps).double().mean(dim=(0, 1, 2)) * 100.0


@register("sink_metric", version="1.0.0", family="analyzer", paper="arXiv:2410.10781",
          summary="Attention-sink metric: mean attention each key receives; share of heads above eps (Sink_1).")
@dataclass(frozen=True)
class SinkMetric(Analyzer):
    """Attention-sink metric (alpha per head and key, Sink_k over heads).

    Parameters
    ----------
    source : str
        Probe texts: ``builtin:stories`` (generated story text, long enough) or a txt/JSONL/CSV/Parquet file or
        ``hf:<dataset>``. Default ``builtin:stories``.
    text_field : str
        Text field of record sources. Default ``text``.
    n_samples : int
        Probe samples. Default 100.
    n_tokens : int
        T: tokens per sample (inputs are cut to their first T tokens). Default 64.
    eps : float
        Sink threshold on alpha. Default 0.3.
    short : {"error", "skip"}
        What to do with texts shorter than T tokens. Default ``error``.
    batch_size : int
        Samples per forward. Default 16.
    seed : int
        Seed of the built-in stories. Default 0.
    """

    source: str = "builtin:stories"
    text_field: str = "text"
    n_samples: int = 100
    n_tokens: int = 64
    eps: float = 0.3
    short: Literal["error", "skip"] = "error"
    batch_size: int = 16
    seed: int = 0

    primary_array: ClassVar[str] = "alpha_first"
    example: ClassVar[dict[str, str]] = {"n_samples": "4", "n_tokens": "16"}

    def __post_init__(self) -> None:
        check_range("sink_metric.n_samples", self.n_samples, 1)
        check_range("sink_metric.n_tokens", self.n_tokens, 2)
        check_range("sink_metric.eps", self.eps, 0.0, 1.0)
        check_range("sink_metric.batch_size", self.batch_size, 1)

    def build(self) -> list[dict[str, Any]]:
        if self.source == "builtin:stories":
            rng = random.Random(self.seed)  # whole sentences, at least T words: at least T tokens
            return [{"text": _text.filler(rng, self.n_tokens + 8)} for _ in range(self.n_samples)]
        records = data_sources.read_records(self.source, limit=self.n_samples, seed=self.seed)
        rows = [{"text": t} for t in data_sources.texts(records, self.text_field, self.source)]
        if not rows:
            raise data_sources.DataSourceError(f"sink_metric: {self.source!r} has no non-empty texts")
        return rows

    def data_fingerprint(self) -> str:
        return "" if self.source.startswith("builtin:") else data_sources.fingerprint(self.source)

    def token_ids(self, tokenizer: Any, rows: list[dict[str, Any]]) -> torch.Tensor:
        """(N, T) ids: each text's first T tokens; short texts raise (or are skipped with short=skip)."""
        ids, short = [], []
        for i, row in enumerate(rows):
            toks = tokenizer(row["text"])["input_ids"]
            if len(toks) < self.n_tokens:
                short.append((i, len(toks)))
            else:
                ids.append(toks[: self.n_tokens])
        if short and self.short == "error":
            i, n = short[0]
            raise ParamError(
                f"sink_metric: {len(short)} of {len(rows)} probe texts are shorter than n_tokens={self.n_tokens} "
                f"tokens (sample {i} has {n}); give longer texts, lower n_tokens, or pass short=skip"
            )
        if not ids:
            raise ParamError(f"sink_metric: no probe text has n_tokens={self.n_tokens} tokens")
        return torch.tensor(ids)  # (N, T)

    def analyze(self, model, tokenizer, rows, *, progress=False) -> AnalysisResult:
        ids = self.token_ids(tokenizer, rows).to(next(model.parameters()).device)  # (N, T)
        alphas = []
        bar = _scoring._progress(len(ids), "sink_metric", progress)
        for chunk in _scoring.batches(ids, self.batch_size):
            _, maps = attention_maps(model, chunk)  # L x (B, H, T, T)
            alphas.append(alpha_scores(torch.stack(maps, dim=1)).cpu())  # (B, L, H, T)
            bar.update(len(chunk))
        bar.close()
        alpha = torch.cat(alphas)  # (N, L, H, T)
        rates = sink_rates(alpha, self.eps)  # (T,)
        first = alpha[..., 0]  # (N, L, H)
        alpha_first = first.mean(0).numpy()  # (L, H)
        rate_first = (first > self.eps).double().mean(0).numpy()  # (L, H)
        by_layer = [{"layer": layer, "attention_first": float(alpha_first[layer].mean()),
                     "sink_rate": float(rate_first[layer].mean() * 100)} for layer in range(alpha_first.shape[0])]
        metrics = {"sink_1": float(rates[0]), "sink_2": float(rates[1]), "attention_first": float(first.mean()),
                   "n_samples": float(len(ids))}
        metrics.update({f"attention_first_layer{r['layer']}": r["attention_first"] for r in by_layer})
        sink_heads = [(layer, head) for layer in range(alpha_first.shape[0]) for head in range(alpha_first.shape[1])
                      if alpha_first[layer, head] > self.eps]
        return AnalysisResult(
            arrays={"alpha_first": alpha_first, "sink_rate_first": rate_first,
                    "alpha_mean": alpha.mean(0).numpy(), "sink_rate_by_key": rates.numpy()},
            tables={"heads": layer_head_rows({"alpha_first": alpha_first, "sink_rate_first": rate_first}),
                    "by_layer": by_layer,
                    "by_key": [{"key": k, "sink_rate": float(v)} for k, v in enumerate(rates.tolist())]},
            metrics=metrics,
            heads={"sink_heads": sink_heads},
            figures={"attention_first": ("layer_head", "alpha_first"),
                     "attention_first_by_layer": ("line", "by_layer", "layer", "attention_first"),
                     "sink_rate_by_key": ("line", "by_key", "key", "sink_rate")},
        )

