"""Prefill speed of an exported graph against the patched PyTorch model, measured in one process.

Batch 1, full logits, ``threads`` threads for both (default 1: on a shared machine multi-threaded timings are
noise), CPU time (``time.process_time``), interleaved rounds after a warm-up. Reported per length: the minimum
time of each side over the rounds and ``ratio`` = median over rounds of (ORT time / torch time in the same round),
which cancels slow drifts of the machine. A ratio below 1 means ONNX Runtime is faster.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from components.onnx.export import patched, text_config
from components.onnx.generate import OnnxCausalLM


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_seconds(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def rounds_summary(times: dict[str, list[float]], base: str) -> dict[str, dict[str, float]]:
    """Per variant: ``ms`` (minimum) and ``ratio`` (median of per-round ratios to ``base``)."""
    ref = times[base]
    return {k: {"ms": min(v) * 1000, "ratio": statistics.median(t / b for t, b in zip(v, ref))}
            for k, v in times.items()}


@torch.no_grad()
def measure_speed(model: torch.nn.Module, patches: Sequence[Any], onnx_dir: str | Path, *,
                  lengths: Sequence[int] = (128,), rounds: int = 3, threads: int = 1,
                  seed: int = 0) -> dict[str, Any]:
    """Torch (patched) vs ONNX Runtime prefill time at each length."""
    runner = OnnxCausalLM(onnx_dir, provider="cpu", threads=threads)
    vocab = int(text_config(model.config).vocab_size)
    out: dict[str, Any] = {"threads": threads, "rounds": rounds, "batch": 1, "clock": "process_time",
                           "provider": runner.provider.active[0], "lengths": {}}
    with torch_threads(threads), patched(model, patches):
        for length in lengths:
            ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed + length))
            mask = torch.ones_like(ids)
            feed = (ids.numpy(), mask.numpy().astype(np.int64))
            variants = {"torch": lambda: model(input_ids=ids, attention_mask=mask),
                        "onnxruntime": lambda: runner.prefill(*feed)}
            for fn in variants.values():  # warm-up
                fn()
            times: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(rounds):
                for name, fn in variants.items():
                    times[name].append(cpu_seconds(fn))
            summary = rounds_summary(times, "torch")
            out["lengths"][str(length)] = {"torch_ms": summary["torch"]["ms"],
                                           "onnxruntime_ms": summary["onnxruntime"]["ms"],
                                           "ratio": summary["onnxruntime"]["ratio"]}
    return out
