"""ONNX graphs of a PAWN detector: the backbone + metric extraction, and the head (torch.onnx, dynamo exporter).

- ``backbone.onnx``: ``input_ids`` (B, T) int64, ``attention_mask`` (B, T) int64 (right padding) ->
  ``hidden`` (B, T, H) float32 (rounded through float16, exactly as the feature cache stores it) and
  ``metrics`` (B, T, 5) float32 (row i = metrics of position i predicting token i+1; zero where there is no
  next real token). The same :func:`token_metrics` as the cached extraction, over the full (B*T, V) logits in
  float32 (no chunking inside a graph: lower the batch size for very large vocabularies).
- ``head.onnx``: ``hidden``, ``metrics``, ``attention_mask`` (float32) -> ``logit`` (B,). Padding uses the
  finite NEG gate logit, so padded or fully masked rows stay finite.

Both graphs have dynamic batch and length (exported with an example batch of 2, since an example batch of 1
gets specialised). The parity check against torch and ONNX Runtime lives in the tasks layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.detectors._features import output_logits, token_metrics
from components.detectors.base import METRICS


class BackboneFeatures(nn.Module):
    """A causal LM wrapped to output the PAWN inputs: (input_ids, attention_mask) -> (hidden, metrics)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = input_ids.shape
        h = self.model.base_model(input_ids=input_ids).last_hidden_state  # (B, T, H) causal; right padding
        logits = output_logits(self.model, h)  # (B, T, V)
        targets = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)  # (B, T); the last column is a dummy
        metrics, _ = token_metrics(logits.reshape(B * T, -1), targets.reshape(B * T))  # (B*T, 5)
        scored = torch.cat([attention_mask[:, 1:], torch.zeros_like(attention_mask[:, :1])], dim=1) > 0  # (B, T)
        metrics = torch.where(scored.unsqueeze(-1), metrics.reshape(B, T, len(METRICS)), 0.0)  # (B, T, 5)
        real = (attention_mask > 0).unsqueeze(-1)  # (B, T, 1)
        hidden = torch.where(real, h.to(torch.float16).to(torch.float32), 0.0)  # (B, T, H)
        return hidden, metrics


def export(module: nn.Module, args: tuple[torch.Tensor, ...], path: str | Path, input_names: list[str],
           output_names: list[str], min_len: int = 2) -> Path:
    """Export ``module`` (eval mode) with dynamic batch (dim 0) and length (dim 1) on every input."""
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("seq", min=min_len, max=65536)
    dynamic: Any = tuple({0: batch, 1: seq} for _ in args)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), dynamo=True, input_names=input_names, output_names=output_names,
                          dynamic_shapes=dynamic, external_data=True, verbose=False)
    return path
