"""Parity of an exported graph with the patched PyTorch model it came from.

For every case (a fixed and a random input at each length, batch >= 2, the random one with a left-padded row):

- ``logits``: max |ORT - torch| over real (unpadded) tokens of the prefill graph;
- ``present``: max |ORT - torch| over the KV cache at real positions (what decoding will read);
- ``decode``: one decode step from each side's own cache (ORT prefill -> ORT decode vs torch prefill -> torch
  decode), max |diff| of the step's logits, when the directory has a decode graph.

The reference is the patched model as users run it (``with patched(model, patches)``: ``applied``, the dispatcher's default
fast path), not the traced form, so the check also covers the export-time attention form. Any NaN fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from components.onnx.export import DECODE_FILE, DecodeGraph, PrefillGraph, patched, text_config
from components.onnx.generate import OnnxCausalLM

DEFAULT_THRESHOLD = 1e-4  # float32


@dataclass(frozen=True)
class ParityCase:
    name: str
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)


def parity_cases(vocab_size: int, lengths: Sequence[int], batch: int = 2, seed: int = 0,
                 fixed_ids: Sequence[int] | None = None) -> list[ParityCase]:
    """A fixed and a random case per length; the random one left-pads its last row by a quarter of the length."""
    if batch < 2:
        raise ValueError(f"parity batch={batch}: use >= 2 (a batch of 1 would not exercise the dynamic batch axis)")
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(list(fixed_ids) if fixed_ids else [(7 * i + 3) % vocab_size for i in range(64)])
    cases = []
    for length in lengths:
        if length < 2:
            raise ValueError(f"parity length {length} must be >= 2")
        reps = -(-length // len(base))
        fixed = base.repeat(reps)[:length].clamp(0, vocab_size - 1)
        ids = torch.stack([fixed.roll(-b) for b in range(batch)])  # (B, T)
        cases.append(ParityCase(f"fixed_T{length}", ids, torch.ones_like(ids)))
        ids = torch.randint(0, vocab_size, (batch, length), generator=g)
        mask = torch.ones_like(ids)
        mask[-1, : max(1, length // 4)] = 0
        cases.append(ParityCase(f"random_T{length}_leftpad", ids, mask))
    return cases


def _max_diff(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if where is not None:
        d = d[np.broadcast_to(where, d.shape)]
    return float(d.max()) if d.size else 0.0  # NaN propagates and fails the threshold


def _worst(values: list[float]) -> float:
    return float(np.max(np.asarray(values, dtype=np.float64)))  # NaN-propagating, unlike max()


@torch.no_grad()
def check_parity(model: torch.nn.Module, patches: Sequence[Any], onnx_dir: str | Path, *,
                 lengths: Sequence[int] = (16, 48), batch: int = 2, threshold: float = DEFAULT_THRESHOLD,
                 seed: int = 0, fixed_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Compare the ONNX graphs in ``onnx_dir`` (CPU provider) with ``model`` under ``patches``."""
    runner = OnnxCausalLM(onnx_dir, provider="cpu")
    decode = (Path(onnx_dir) / DECODE_FILE).is_file()
    vocab = int(text_config(model.config).vocab_size)
    results = []
    for case in parity_cases(vocab, lengths, batch, seed, fixed_ids):
        ids, mask = case.input_ids, case.attention_mask
        real = mask.bool().numpy()  # (B, T)
        with patched(model, patches):
            ref = PrefillGraph(model)(ids, mask)
        got_logits, got_past = runner.prefill(ids.numpy(), mask.numpy())
        row = {"case": case.name, "batch": int(ids.shape[0]), "length": int(ids.shape[1]),
               "padded": bool((~real).any()),
               "logits": _max_diff(got_logits, ref[0].numpy(), real[:, :, None]),
               "present": _worst([_max_diff(g, r.numpy(), real[:, None, :, None]) for g, r in zip(got_past, ref[1:])])}
        if decode:
            step = torch.randint(0, vocab, (ids.shape[0], 1), generator=torch.Generator().manual_seed(seed + 1))
            step_mask = torch.cat([mask, torch.ones_like(step)], dim=1)  # (B, T + 1)
            with patched(model, patches):
                ref_step = DecodeGraph(model)(step, step_mask, list(ref[1:]))
            got_step, _ = runner.decode(step.numpy(), step_mask.numpy(), got_past)
            row["decode"] = _max_diff(got_step, ref_step[0].numpy())
        results.append(row)
    keys = ["logits", "present"] + (["decode"] if decode else [])
    worst = {k: _worst([r[k] for r in results]) for k in keys}
    overall = _worst(list(worst.values()))
    passed = bool(np.isfinite(overall) and overall <= threshold)
    return {"passed": passed, "threshold": threshold, "max_abs_diff": overall, "worst": worst, "cases": results,
            "provider": runner.provider.active[0], "lengths": list(lengths), "batch": batch}
