"""ONNX Runtime fusions for exported graphs, and what a graph contains (fused ops, inputs, outputs, dynamic axes).

Targets:

- ``none``: the plain dynamo graph (standard ONNX ops; runs on any ONNX runtime).
- ``ort-cpu``: transformers' ONNX Runtime fusion pipeline for the CPU provider (onnxscript's ``optimize_for_ort``
  plus transformers' rewrites): ``SkipSimplifiedLayerNormalization`` / ``SimplifiedLayerNormalization``,
  ``RotaryEmbedding``, and attention reading a KV-cache update fused into ``com.microsoft.GroupQueryAttention``
  (which carries an additive attention bias, so ZeroTuning-style patches fuse too). Unfused attention stays as
  MatMul/Softmax: ORT's CPU ``MultiHeadAttention`` is slower than the ops it replaces (microsoft/onnxruntime#33873).
- ``ort-gpu``: the same pipeline for the CUDA provider.

Deviation from transformers' pipeline: ``GroupQueryAttention`` is fused *without* folding the rotary embedding into
it. With the rotary folded in, ONNX Runtime 1.31 rotates a prompt at positions 0..T-1 whatever ``position_ids``
says, so left-padded rows got a KV cache rotated at the wrong positions (decode logits off by ~0.3 on a tiny Llama;
prefill logits still matched, since RoPE scores are relative). ``RotaryEmbedding`` stays its own fused op.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Literal

Target = Literal["none", "ort-cpu", "ort-gpu"]
TARGETS: tuple[str, ...] = ("none", "ort-cpu", "ort-gpu")
_PROVIDER = {"ort-cpu": "cpu", "ort-gpu": "cuda"}
# ops in the graph that are fusions (ONNX Runtime contrib ops, and the fused standard ops of opset 23)
FUSED_STANDARD_OPS = ("Attention", "RotaryEmbedding", "RMSNormalization")


def fusion_steps(provider: str) -> list[Any]:
    """transformers' fusion steps for ``provider`` ("cpu" or "cuda"), with GroupQueryAttention fused rotary-free."""
    import transformers.exporters.onnxruntime_fusions as hf

    steps = []
    for step, providers in hf._STEPS:
        if providers is not None and provider not in providers:
            continue
        func = getattr(step, "func", step)
        if func is hf._fuse_group_query_attention:
            step = partial(func, **{**getattr(step, "keywords", {}), "rotary": False})
        steps.append(step)
    return steps


def optimize(path: str | Path, target: Target) -> None:
    """Rewrite the graph at ``path`` (and its ``.data`` file) in place for ``target``; ``none`` leaves it as is."""
    if target not in TARGETS:
        raise ValueError(f"optimize target {target!r} is not one of {', '.join(TARGETS)}")
    if target == "none":
        return
    import onnx_ir as ir

    from components.onnx.export import save_model

    path = Path(path)
    model = ir.load(str(path))
    for step in fusion_steps(_PROVIDER[target]):
        step(model)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".optimize-") as tmp:
        save_model(model, Path(tmp) / path.name)  # reads the old weights while writing the new file
        del model
        data = f"{path.name}.data"
        os.replace(Path(tmp) / data, path.parent / data)
        os.replace(Path(tmp) / path.name, path)


def op_counts(path: str | Path) -> dict[str, int]:
    """Node count per op type (``domain:Op`` for non-standard domains), without loading the weights."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(Counter(f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                        for n in graph.node))


def fused_ops(counts: dict[str, int]) -> dict[str, int]:
    """The fused ops among ``op_counts``: ONNX Runtime contrib ops and fused standard ops."""
    return {k: v for k, v in sorted(counts.items()) if ":" in k or k in FUSED_STANDARD_OPS}


def attention_summary(counts: dict[str, int]) -> str:
    """One word on how attention runs: the fused op's name, or ``unfused`` (MatMul/Softmax)."""
    for op in ("com.microsoft:GroupQueryAttention", "com.microsoft:MultiHeadAttention", "com.microsoft:Attention",
               "Attention"):
        if counts.get(op):
            return op.split(":")[-1]
    return "unfused"


def graph_io(path: str | Path) -> dict[str, Any]:
    """Inputs and outputs (name, dtype, shape with symbolic axes as names), opset, and the dynamic axes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": shape})
        return out

    inputs, outputs = describe(model.graph.input), describe(model.graph.output)
    dynamic = {v["name"]: {str(i): d for i, d in enumerate(v["shape"]) if isinstance(d, str)}
               for v in inputs + outputs}
    opsets = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    return {"inputs": inputs, "outputs": outputs, "dynamic_axes": {k: v for k, v in dynamic.items() if v},
            "opset": opsets.get("ai.onnx"), "opset_imports": opsets, "ir_version": model.ir_version,
            "nodes": len(model.graph.node)}
