"""ONNX Runtime (fused and plain graphs) vs PyTorch (SDPA and eager), patched and unpatched, in one process.

Model: the random 4-layer Llama of ``bench/patch_overhead.py`` (hidden 512, 8 heads, head_dim 64, vocab 4096),
batch 1, full logits (prefill). For each patch (none, zerotuning, head_mask, and act when it is registered):

- ``torch sdpa``: the patched model on the attnflow fast path (stock SDPA when unpatched);
- ``torch eager``: stock eager attention when unpatched, the materialised fallback path when patched;
- ``ort plain``: the dynamo export (key biases as an additive mask), standard ONNX ops, no fusions;
- ``ort fused``: the same graph after ``--optimize ort-cpu`` (GroupQueryAttention, RotaryEmbedding, skip RMSNorm).

Method: ``torch.set_num_threads(1)`` and ONNX Runtime ``intra_op_num_threads=1`` (1 thread for both), CPU time
(``time.process_time``), interleaved rounds after a warm-up (every variant once per round). Reported: minimum ms
over rounds and ratio = median over rounds of (variant / stock torch SDPA in the same round). Goals of issue #6:
``ort fused`` <= 0.85x stock torch SDPA at T=512 and <= 0.95x at T=2048.

    python bench/onnx_speed.py                        # T = 512, 2048, 3 rounds
    python bench/onnx_speed.py --lengths 512 --rounds 2 --json out.json
    python bench/onnx_speed.py --smoke                # hidden-64 model, unpatched only, T = 32, 1 round
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import registry  # noqa: E402
from bench.patch_overhead import build_model  # noqa: E402
from components.attention.session import applied  # noqa: E402
from components.onnx import export as onnx_export  # noqa: E402
from components.onnx import optimize as onnx_optimize  # noqa: E402
from components.onnx.generate import OnnxCausalLM  # noqa: E402
from components.onnx.speed import cpu_seconds, rounds_summary  # noqa: E402
from registry.specs import parse  # noqa: E402

PATCHES: dict[str, str | None] = {
    "unpatched": None,
    "zerotuning": "zerotuning(gamma=2)",
    "head_mask 2/8": "head_mask(heads=0:1;1:3;2:5;3:7)",
}
GOALS = {512: 0.85, 2048: 0.95}


def patch_list(smoke: bool = False) -> dict[str, str | None]:
    """The variants to time; a registered patch that cannot be exported is skipped with a line saying why."""
    out = {"unpatched": None} if smoke else dict(PATCHES)  # smoke: one export (dynamo export takes the time)
    try:  # ACT (issue #4) when it is registered, with its example parameters
        info = registry.get("act", family="patch")
    except LookupError:
        return out
    if not getattr(info.cls, "onnx_exportable", True):
        print(f"# skipped act: not exportable ({getattr(info.cls, 'onnx_reason', 'see docs/onnx.md')})", flush=True)
        return out
    params = ", ".join(f"{k}={str(v).replace(',', ';')}" for k, v in info.cls.example.items())
    out["act"] = f"act({params})"
    return out


def export_variant(model, spec: str | None, root: Path) -> dict[str, Path]:
    """Plain and fused prefill graphs of ``model`` with ``spec`` applied."""
    patches = [] if spec is None else [parse(spec).create("patch")]
    name = (spec or "none").split("(")[0]
    plain, fused = root / f"{name}-plain", root / f"{name}-fused"
    start = time.perf_counter()
    onnx_export.export_graphs(model, patches, plain, kv_cache=False, form="bias")
    shutil.copytree(plain, fused)
    result = onnx_optimize.optimize(fused / onnx_export.PREFILL_FILE, "ort-cpu")
    counts = onnx_optimize.op_counts(fused / onnx_export.PREFILL_FILE)
    print(f"# exported {spec or 'unpatched'} in {time.perf_counter() - start:.0f}s; fused graph: attention "
          f"{onnx_optimize.attention_summary(counts)}, {onnx_optimize.fused_ops(counts)}"
          + (f" ({result['note']})" if result["note"] else ""), flush=True)
    return {"plain": plain, "fused": fused}


def variants_for(model, label: str, spec: str | None, dirs: dict[str, Path]) -> dict[str, object]:
    """name -> zero-argument callable running one forward at the current length (set through ``state``)."""
    patches = [] if spec is None else [parse(spec).create("patch")]
    runners = {k: OnnxCausalLM(d, threads=1) for k, d in dirs.items()}

    def torch_run(force=None, eager=False):
        def run(ids):
            with torch.no_grad():
                if spec is None:
                    if eager:
                        model.set_attn_implementation("eager")
                    try:
                        return model(input_ids=ids)
                    finally:
                        model.set_attn_implementation("sdpa")
                with applied(model, *patches, force=force):
                    return model(input_ids=ids)

        return run

    def ort_run(runner):
        return lambda ids: runner.prefill(ids.numpy(), torch.ones_like(ids).numpy())

    return {
        f"{label} | torch sdpa": torch_run(),
        f"{label} | torch eager": torch_run(force="materialize", eager=True),
        f"{label} | ort plain": ort_run(runners["plain"]),
        f"{label} | ort fused": ort_run(runners["fused"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds, no ../shared and no downloads: checks the script runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        args.lengths, args.rounds = [32], 1
    torch.set_num_threads(1)
    model = build_model(tiny=args.smoke)
    vocab = int(model.config.vocab_size)
    root = Path(tempfile.mkdtemp(prefix="onnx-speed-"))
    try:
        variants: dict[str, object] = {}
        for label, spec in patch_list(args.smoke).items():
            variants.update(variants_for(model, label, spec, export_variant(model, spec, root)))
        base = "unpatched | torch sdpa"
        results: dict[int, dict[str, dict[str, float]]] = {}
        for T in args.lengths:
            ids = torch.randint(0, vocab, (1, T), generator=torch.Generator().manual_seed(T))
            for fn in variants.values():  # warm-up
                fn(ids)
            times: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.rounds):
                for name, fn in variants.items():
                    times[name].append(cpu_seconds(lambda: fn(ids)))
            results[T] = rounds_summary(times, base)
            print(f"# T={T} done", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"# ONNX Runtime vs PyTorch: prefill CPU time (min of {args.rounds} interleaved rounds) and ratio to stock "
          f"torch SDPA (median of per-round ratios); 1 thread for both, batch 1; torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}, {platform.processor() or platform.machine()}")
    print(f"{'variant':34s}" + "".join(f"{'T=' + str(T):>20s}" for T in args.lengths))
    for name in variants:
        cells = [f"{results[T][name]['ms']:9.0f} ms x{results[T][name]['ratio']:5.2f}" for T in args.lengths]
        print(f"{name:34s}" + "".join(f"{c:>20s}" for c in cells))
    print("# goals (ort fused vs stock torch SDPA): " + ", ".join(f"<= {g}x at T={T}" for T, g in GOALS.items()))
    for name in [n for n in variants if n.endswith("ort fused")]:
        ratios = {T: results[T][name]["ratio"] for T in args.lengths if T in GOALS}
        verdicts = [f"T={T} x{r:.2f} {'met' if r <= GOALS[T] else 'MISSED'}" for T, r in ratios.items()]
        print(f"#   {name.split(' |')[0]:16s} " + ", ".join(verdicts))
    if args.json:
        args.json.write_text(json.dumps({str(T): r for T, r in results.items()}, indent=2))


if __name__ == "__main__":
    main()
