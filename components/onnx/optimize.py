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


def gemm_to_matmul(model: Any) -> None:
    """Rewrite plain ``Gemm`` (no transA, alpha = beta = 1) as ``MatMul`` (+ ``Add``), exactly.

    GPT-2's Conv1D exports as Reshape -> Gemm -> Reshape; onnxscript's ``optimize_for_ort`` then drops the reshapes
    and leaves a Gemm on a rank-3 input, which ONNX Runtime refuses to load. MatMul takes any rank."""
    import onnx_ir as ir

    graph = model.graph
    for node in list(graph):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
            continue
        attr = node.attributes
        if attr.get_int("transA", 0) or attr.get_float("alpha", 1.0) != 1.0 or attr.get_float("beta", 1.0) != 1.0:
            continue
        a, b = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        new = []
        if attr.get_int("transB", 0):
            new.append(ir.node("Transpose", [b], {"perm": [1, 0]}))
            b = new[-1].outputs[0]
        new.append(ir.node("MatMul", [a, b]))
        if bias is not None:
            new.append(ir.node("Add", [new[-1].outputs[0], bias]))
        result, old = new[-1].outputs[0], node.outputs[0]
        result.shape, result.type = old.shape, old.type
        ir.convenience.replace_nodes_and_values(graph, node, [node], new, [old], [result])


def fusion_steps(provider: str) -> list[Any]:
    """transformers' fusion steps for ``provider`` ("cpu" or "cuda"), with GroupQueryAttention fused rotary-free,
    after :func:`gemm_to_matmul`."""
    import transformers.exporters.onnxruntime_fusions as hf

    steps: list[Any] = [gemm_to_matmul]
    for step, providers in hf._STEPS:
        if providers is not None and provider not in providers:
            continue
        func = getattr(step, "func", step)
        if func is hf._fuse_group_query_attention:
            step = partial(func, **{**getattr(step, "keywords", {}), "rotary": False})
        steps.append(step)
    return steps + [forget_intermediate_shapes]


def forget_intermediate_shapes(model: Any) -> None:
    """Drop the shape annotations of intermediate values: rewrites can leave stale ones (a reshape removed around a
    MatMul), which ONNX Runtime warns about at load; it infers them itself."""
    outputs = set(map(id, model.graph.outputs))
    for node in model.graph:
        for value in node.outputs:
            if id(value) not in outputs:
                value.shape = None


def optimize(path: str | Path, target: Target) -> dict[str, Any]:
    """Rewrite the graph at ``path`` (and its ``.data`` file) in place for ``target``; ``none`` leaves it as is.

    The fused graph replaces the plain one only if ONNX Runtime loads it; otherwise the plain graph stays and the
    returned ``note`` says why (a model family whose graph a fusion step breaks)."""
    if target not in TARGETS:
        raise ValueError(f"optimize target {target!r} is not one of {', '.join(TARGETS)}")
    if target == "none":
        return {"target": target, "applied": False, "note": None}
    import onnx_ir as ir
    import onnxruntime as ort

    from components.onnx.export import save_model

    path = Path(path)
    model = ir.load(str(path))
    for step in fusion_steps(_PROVIDER[target]):
        step(model)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".optimize-") as tmp:
        fused = Path(tmp) / path.name
        save_model(model, fused)  # reads the old weights while writing the new file
        del model
        try:
            ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises several types for an invalid graph
            return {"target": target, "applied": False,
                    "note": f"fused graph rejected by ONNX Runtime, plain graph kept: {str(e).splitlines()[0][:300]}"}
        data = f"{path.name}.data"
        os.replace(Path(tmp) / data, path.parent / data)
        os.replace(fused, path)
    return {"target": target, "applied": True, "note": None}


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
