"""Head importance: how much a task needs each head, by masking it and by the gradient of its gate.

Three measures per (layer, head), on a benchmark's eval rows:

- ``acc_drop``: the benchmark's primary metric without the head minus with it masked (``head_mask``; sign chosen
  so that positive = worse when the metric is lower-is-better):  m(all heads) - m(head h masked);
- ``logprob_drop``: the drop of the mean per-token log-probability of the targets:
  mean_x [ log p(y|x) - log p_{-h}(y|x) ] with log p averaged over the target's tokens;
- ``taylor`` (Michel et al.'s gate importance): with a gate xi_h multiplying the head's output,
  I_h = E_x | dL(x) / d xi_h |  at xi = 1, L(x) = mean NLL of x's target tokens (one gradient per example).

The three rankings are compared with Spearman correlations (metrics ``spearman_<a>_<b>``).

Based on Li et al., "How Does Attention Work in Vision Transformers? A Visual Analytics Attempt" (PacificVis /
TVCG 2023, arXiv 2303.13731): single-head pruning with accuracy and confidence changes and a Taylor importance,
generalised to any transformer and task; the Taylor score follows Michel, Levy, Neubig, "Are Sixteen Heads Really
Better than One?" (arXiv 1905.10650). The paper has no code; reference for the gate score:
https://github.com/pmichel31415/are-16-heads-really-better-than-1 (``heads_pruning.py``).

Deviations: any benchmark (the paper: ImageNet classes); "confidence change" is the target log-probability drop;
Michel et al. accumulate |gradient| per batch and normalise per layer, here per example and unnormalised;
masking zeroes the head output by default (``mask_mode=uniform`` makes its attention uniform instead).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from components.analyzers._probe import OutputProbe
from components.analyzers.base import AnalysisResult, Analyzer, layer_head_rows, ranked, top_heads
from components.attention.session import applied
from components.base import ParamError, check_range
from components.benchmarks import _scoring
from components.heads import HeadSet
from components.patches.base import model_shape
from components.patches.head_mask import HeadMask
from registry import register
from registry.specs import parse

MEASURES = ("acc_drop", "logprob_drop", "taylor")


def target_logprobs(model: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]],
                    batch_size: int, gates: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean log-probability of each row's target tokens after its prompt, (N,); differentiable w.r.t. ``gates``
    ({layer: (N, H)} head-output multipliers) when given."""
    tokenizer.padding_side = "right"
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompt_len = [len(tokenizer(r["prompt"])["input_ids"]) for r in chunk]
        full = [tokenizer(r["prompt"] + r["target"])["input_ids"] for r in chunk]
        width = max(map(len, full))
        ids = torch.tensor([f + [tokenizer.pad_token_id or 0] * (width - len(f)) for f in full], device=device)
        mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in full], device=device)  # (B, T)
        probe = []
        if gates is not None:
            g = {layer: v[start : start + len(chunk)] for layer, v in gates.items()}  # layer -> (B, H)
            probe = [OutputProbe(fn=lambda call, o, g=g: o * g[call.layer].to(o.dtype)[:, :, None, None])]
        with applied(model, *probe):
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)  # (B, T, V)
        for row, (p, f) in enumerate(zip(prompt_len, full)):
            s = min(p, len(f) - 1)  # first target token
            tgt = torch.tensor(f[s:], device=device)
            out.append(logp[row, s - 1 : len(f) - 1].gather(1, tgt[:, None]).mean())
    return torch.stack(out)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays (average ranks for ties)."""
    def ranks(x):
        order = x.ravel().argsort(kind="stable")
        r = np.empty(order.size)
        r[order] = np.arange(order.size)
        for v in np.unique(x):  # average ranks of ties
            r[x.ravel() == v] = r[x.ravel() == v].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@register("head_importance", version="1.0.0", family="analyzer", paper="arXiv:2303.13731",
          summary="Head importance: metric and log-prob drop when masking each head, and Taylor gate importance.")
@dataclass(frozen=True)
class HeadImportance(Analyzer):
    """Per-head importance by single-head masking and by gate gradients.

    Parameters
    ----------
    task : str
        Benchmark spec whose eval rows are scored, e.g. ``kv_retrieval(n_examples=32)``. Default
        ``kv_retrieval(n_examples=32)``.
    measures : list of str
        Any of ``acc_drop``, ``logprob_drop``, ``taylor``. Default all three.
    mask_mode : {"zero", "uniform"}
        How a head is masked for the drop measures (``head_mask`` modes). Default ``zero``.
    batch_size : int
        Examples per forward. Default 16.
    """

    task: str = "kv_retrieval(n_examples=32)"
    measures: tuple[str, ...] = MEASURES
    mask_mode: Literal["zero", "uniform"] = "zero"
    batch_size: int = 16

    primary_array: ClassVar[str] = "taylor"
    example: ClassVar[dict[str, str]] = {"task": "kv_retrieval(n_examples=4)", "measures": "logprob_drop,taylor"}

    def __post_init__(self) -> None:
        bad = [m for m in self.measures if m not in MEASURES]
        if bad or not self.measures:
            raise ParamError(f"head_importance.measures: {', '.join(bad) or '(none)'} not among {', '.join(MEASURES)}")
        check_range("head_importance.batch_size", self.batch_size, 1)
        try:
            self.benchmark()
        except (ValueError, LookupError) as e:
            raise ParamError(f"head_importance.task: {e}") from None

    def benchmark(self) -> Any:
        return parse(self.task).create("benchmark")

    def build(self) -> list[dict[str, Any]]:
        rows = self.benchmark().build("eval")
        if {"logprob_drop", "taylor"} & set(self.measures) and not {"prompt", "target"} <= set(rows[0]):
            raise ParamError(f"head_importance: {self.task} rows have no prompt/target (a generated benchmark is "
                             "needed for logprob_drop and taylor; use measures=acc_drop)")
        return rows

    def data_fingerprint(self) -> str:
        return self.benchmark().data_fingerprint()

    def _metric(self, model, tokenizer, rows, session=None) -> float:
        bench = self.benchmark()
        res = bench.evaluate(model, tokenizer, rows, session=session, batch_size=self.batch_size)
        value = res.metrics[bench.primary_metric]
        return value if bench.metrics.get(bench.primary_metric, True) else -value

    def _taylor(self, model, tokenizer, rows, n_layers: int, n_heads: int) -> np.ndarray:
        gates = {layer: torch.ones(len(rows), n_heads, requires_grad=True) for layer in range(n_layers)}
        with torch.enable_grad():
            loss = -target_logprobs(model, tokenizer, rows, self.batch_size, gates).sum()  # sum of per-example L(x)
            loss.backward()
        return torch.stack([gates[layer].grad.abs().mean(0) for layer in range(n_layers)]).numpy()  # (L, H)

    def analyze(self, model, tokenizer, rows, *, progress=False) -> AnalysisResult:
        n_layers, n_heads = model_shape(model.config)
        arrays: dict[str, np.ndarray] = {m: np.zeros((n_layers, n_heads)) for m in self.measures}
        metrics: dict[str, float] = {"n_examples": float(len(rows))}
        drops = [m for m in self.measures if m != "taylor"]
        with torch.no_grad():
            base_metric = self._metric(model, tokenizer, rows) if "acc_drop" in drops else 0.0
            base_lp = target_logprobs(model, tokenizer, rows, self.batch_size) if "logprob_drop" in drops else None
        if "acc_drop" in drops:
            metrics["baseline_metric"] = abs(base_metric)
        if base_lp is not None:
            metrics["baseline_logprob"] = float(base_lp.mean())
        bar = _scoring._progress(n_layers * n_heads if drops else 0, "head_importance", progress)
        for layer, head in itertools.product(range(n_layers), range(n_heads)) if drops else []:
            mask = HeadMask(heads=HeadSet.of([(layer, head)]), mode=self.mask_mode)
            with torch.no_grad(), mask.applied(model) as session:
                if "acc_drop" in drops:
                    arrays["acc_drop"][layer, head] = base_metric - self._metric(model, tokenizer, rows, session)
                if base_lp is not None:
                    lp = target_logprobs(model, tokenizer, rows, self.batch_size)
                    arrays["logprob_drop"][layer, head] = float((base_lp - lp).mean())
            bar.update(1)
        bar.close()
        if "taylor" in self.measures:
            arrays["taylor"] = self._taylor(model, tokenizer, rows, n_layers, n_heads)
        for a, b in itertools.combinations(self.measures, 2):
            metrics[f"spearman_{a}_{b}"] = spearman(arrays[a], arrays[b])
        table = ranked(layer_head_rows(arrays), self.measures[0])
        for m in self.measures:
            order = {(r["layer"], r["head"]): i + 1 for i, r in enumerate(ranked(table, m))}
            for r in table:
                r[f"rank_{m}"] = order[(r["layer"], r["head"])]
        return AnalysisResult(
            arrays=arrays, tables={"heads": table}, metrics=metrics,
            heads={f"ranking_{m}": top_heads(arrays[m], n_layers * n_heads) for m in self.measures},
            figures={m: ("layer_head", m) for m in self.measures},
        )
