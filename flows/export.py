"""export-onnx: a model with a component applied -> ONNX graphs verified against PyTorch, fused, timed, registered.

validate -> load -> export (prefill, + decode with a KV cache) -> ONNX Runtime fusions -> parity -> speed
-> manifest -> MLflow run + registered model ``attnflow.onnx.<model>.<component>``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import Experiment, ModelName, Positive
from tasks.export import (benchmark_onnx, export_onnx, finalize_export, log_export, optimize_onnx, plan_export,
                          require_parity, verify_parity, write_manifest)
from tasks.models import load_model


@flow(name="export-onnx", log_prints=True)
def export(
    model: ModelName = "demo",
    component: str = "baseline",
    params: dict[str, str] = {},  # noqa: B006 - a Prefect parameter default, never mutated
    kv_cache: bool = False,
    optimize: Literal["none", "ort-cpu", "ort-gpu"] = "ort-cpu",
    out: Optional[str] = None,
    attention_form: Literal["bias", "channels"] = "bias",
    opset: Optional[int] = None,
    parity_lengths: list[int] = [16, 64],  # noqa: B006
    parity_multiple: Optional[float] = None,
    benchmark: bool = True,
    speed_lengths: list[int] = [128, 512],  # noqa: B006
    speed_rounds: Positive = 3,
    register_model: bool = True,
    reuse_export: bool = True,
    experiment: Experiment = "export",
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Export a model with a component applied to ONNX, check parity with PyTorch, fuse, time and register it.

    Args:
        model: Hub id, local model directory, or "demo".
        component: Component name, name@version or full spec, e.g. "zerotuning@1(gamma=2)"; its class must set
            onnx_exportable = True.
        params: Component parameters (key -> value), merged over those of the spec.
        kv_cache: Also export decode.onnx (one step against past/present key-values) for fast generation.
        optimize: ONNX Runtime fusions: "none" (plain graph), "ort-cpu" or "ort-gpu".
        out: Export directory (default ATTNFLOW_HOME/onnx/<model>-<component>-<fingerprint>).
        attention_form: How key biases enter the graph: "bias" (additive mask, fuses into GroupQueryAttention)
            or "channels" (extra head-dim channel, the PyTorch fast form).
        opset: ONNX opset (18-23; default the exporter's, 20). 23 emits the standard Attention,
            RotaryEmbedding and RMSNormalization ops, which the ONNX Runtime fusions leave as they are.
        parity_lengths: Sequence lengths of the parity check (fixed and random inputs, batch 2).
        parity_multiple: Allowed |ORT - torch| as a multiple of PyTorch's own float32 error (|torch32 - torch64|)
            on every compared quantity (default: components.onnx.parity.DEFAULT_MULTIPLE); above it, or when
            greedy/top-5 tokens on real text differ beyond a near tie, the run fails and nothing is registered
            (docs/onnx.md, "The parity gate").
        benchmark: Time ONNX Runtime against PyTorch (prefill, batch 1, 1 thread).
        speed_lengths: Sequence lengths of the speed measurement.
        speed_rounds: Interleaved timing rounds per length.
        register_model: Register the verified export in the MLflow model registry.
        reuse_export: Reuse graphs exported earlier for the same weights, component and options (cache).
        experiment: MLflow experiment.
        trust_remote_code: Allow model code from the hub (off by default).
    """
    # 1. Validate component (exportable?), parameters, model and paths before any model is loaded.
    plan = plan_export(model, component, params, optimize, out, attention_form, parity_lengths, parity_multiple,
                       speed_lengths if benchmark else [], trust_remote_code, opset)
    # 2. Load the model.
    loaded = load_model(plan.model, trust_remote_code=trust_remote_code)
    # 3. Export the graphs with the component applied (into a work directory).
    exported = export_onnx(loaded, plan, kv_cache, reuse_export)
    # 4. ONNX Runtime fusions; record which fused ops each graph holds.
    graphs = optimize_onnx(exported, plan.optimize)
    # 5. Parity with the patched PyTorch model.
    parity = verify_parity(loaded, plan, exported)
    # 6. Speed against PyTorch (only for a graph that passed parity).
    speed = benchmark_onnx(loaded, plan, exported, speed_rounds) if benchmark and parity["passed"] else None
    # 7. Manifest, then the directory moves to its final place.
    manifest = write_manifest(plan, loaded, exported, graphs, parity, speed)
    out_dir = finalize_export(exported, plan)
    # 8. MLflow run with the directory; registered only when parity passed.
    logged = log_export(plan, manifest, out_dir, experiment, register_model)
    # 9. A failed parity check fails the flow; the directory and the FAILED run stay for inspection.
    require_parity(manifest, out_dir, logged)
    return {"out_dir": out_dir, "manifest": manifest, **logged}


if __name__ == "__main__":
    export()
