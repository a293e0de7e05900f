"""Run a bench/ script with ``--smoke`` in this process (``runpy``, as ``__main__``) and return what it printed.

In-process, so a smoke run pays no interpreter, torch or Prefect start-up of its own; the flow benchmarks use the
flows tier's Prefect test server. SMOKE_LINES: per script, a pattern its output must contain (its result line)."""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"

SMOKE_LINES = {
    "kernel_speed": r"(?m)^\s+128\s+[\d,]+\s+[\d,]+\s+\S+\s+[\d.]+x$",
    "patch_overhead": r"(?m)^pasta\s+\d+ ms x\s*[\d.]+$",
    "onnx_speed": r"(?m)^unpatched \| ort fused\s+\d+ ms x\s*[\d.]+$",
    "onnx_parity_floor": r"(?m)^# 1 correct exports: err/floor max [\d.e+-]+",
    "analysis_speed": r"(?m)^ratio analysis / greedy decode: [\d.]+.*\n.*\(ratio [\d.]+\)$",
    "sink_control": r"(?m)^demo\s+builtin:stories\s+T=32 .*Sink_1=\s*[\d.]+%",
    "real_model_parity": r"(?m)^\s+pasta\(.*\): fast vs materialised .* next-token agree (True|False)",
    "pawn": r"(?m)^\| demo-lm \| x[\d.]+ \| [\d,]+ \| x[\d.]+ .*\n(.*\n)*## demo-lm: main->gpt .*\n(.*\n)*"
            r"\| log_likelihood \| [\d.]+ \|",
    "reproduce": r"(?m)^## .*demo-lm \(.*seeds 0,1,2.*\)\n\n(.*\n)*.*sinks",
    "reproduce_fewshot": r"(?m)^\| pasta \(\) \| [\d.]+ \| [\d.]+ \| [+-][\d.]+ \|",
    "kv_press": r"(?m)^\s+snapkv ratio 0\.500 T=128: cache x0\.[45]\d+, prefill x[\d.]+, decode x[\d.]+$",
    "training_free_eval": r"(?m)^## kv_retrieval on demo\n(.*\n)*.*pasta",
    "vlm_patch_overhead": r"(?m)^var \[materialised\]\s+[\d.]+ ms\s+x\s*[\d.]+$",
    "vlm_fixes": r"(?m)^var\(sink_dims=0;1, tau=0.5, start_layer=0\)\s+halluc [\d.]+ \[[\d.]+, [\d.]+\]\s+acc_rest",
    "hidiffusion_speed": r"(?m)^\| hidiffusion \| 32 \| [\d.]+ \| [\d.]+ \|$",
    "vlm_vision_heads": r"(?m)^\| 1 \| 1 \| -?[\d.]+ \| [+-][\d.]+ \| [\d.]+ \|$",
    "vlm_steering": r"(?m)^red:blue layer 1 alpha 1\.0: \{\"caption_flip\": \{\"k\": \d+, \"n\": 2",
    "wings_forgetting": r"(?m)^wings sst2 \{.*\"accuracy\": \{\"value\": [\d.]+, \"n\": 4",
    "sink_dims": r"(?m)^demo: \d+ tokens, hidden \d+, sink dims \(\d+, \d+\)\n(layer\s+\d+: .*\n)+",
    "uncertainty": r"(?m)^\| sar \| (nan|[\d.]+) \|(.*\n)*^speed-up scoring from cache vs regenerating: x[\d,]+",
    "sinklora": r"(?m)^\| SF-Attn \+ LoRA \| h2o\(ratio=0\.5\) \| [01]/1 \[0\.\d\d, [01]\.\d\d\] \|$",
    "scbench_reuse": r"(?m)^scbench reuse: compress once x[\d.]+ vs per query, stored prefill loaded in [\d.]+ s, "
                     r"answers identical True$",
    "prompts": r"(?m)^\| planted \| pgi\+zerotuning\(gamma=2\) \| [\d.]+ ± [\d.]+ \| [+-][\d.]+ ± [\d.]+ \|$",
    "diffusion_claims": r"(?m)^\| softpag\(strength=1\.0, scale=2\.0\) \| [\d.]+ \(x[\d.]+\) \| "
                        r"(nan|-?[\d.]+) \[(nan|-?[\d.]+), (nan|-?[\d.]+)\] Δ(nan|[+-][\d.]+)",
    "diffusion_edit_claims": r"(?m)^\| painta \+ rasg\(eta=0\.1\) \| [\d.]+ \(x[\d.]+\) \| "
                             r"(nan|-?[\d.]+) \[(nan|-?[\d.]+), (nan|-?[\d.]+)\] Δ(nan|[+-][\d.]+)",
    "icbrush_claim": r"(?m)^\| icbrush \| [\d.]+ \(x[\d.]+\) \| (nan|-?[\d.]+) \[(nan|-?[\d.]+), (nan|-?[\d.]+)\] "
                     r"Δ(nan|[+-][\d.]+)",
    "diffusion_head_hunt": r"(?m)^found: softpag@[\d.]+\(strength=1\.0, scale=2\.0, blocks=, heads=[\d:;]+\)$",
}
FLOW_BENCHES = {"reproduce", "reproduce_fewshot", "training_free_eval"}  # run Prefect flows: tests/flows


def run_smoke(name: str, monkeypatch) -> str:
    """What ``python bench/<name>.py --smoke`` prints. stdout goes to a buffer that stays open (not capsys, whose
    stream closes after the test while Prefect's console log handler may still hold it)."""
    path = BENCH / f"{name}.py"
    monkeypatch.setattr(sys, "argv", [str(path), "--smoke"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts put the repository first
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(path), run_name="__main__")
    return out.getvalue()
