"""arch-compare: MoH (75% / 50% of heads), ComplexFormer CMHA and lightning/TNL against softmax MHA with RoPE, at
equal parameters on the same data and seeds.

plan (match parameter counts) -> kernel equivalence checks -> train every point (cached, configured task runner)
-> compare held-out loss per variant -> MLflow: verdict, loss curves side by side, one child run per point.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from tasks.dynamics import check_points, code_version, kernel_names, log_study, run_sweep
from tasks.dynamics_studies import arch_points, arch_report, kernel_checks, tag

DEFAULT_VARIANTS = ["moh(shared=2, top_k=4)", "moh(shared=2, top_k=2)", "complex", "lightning(block=16)"]


@flow(name="arch-compare", log_prints=True)
def arch_compare(
    variants: list[str] = DEFAULT_VARIANTS,
    baseline: str = "softmax",
    seeds: list[int] = [0, 1],  # noqa: B006 - a Prefect parameter default, never mutated
    steps: int = 800,
    lr: float = 3e-3,
    warmup: int = 50,
    weight_decay: float = 0.1,
    batch_size: int = 32,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 8,
    seq_len: int = 64,
    data: str = "builtin:stories",
    equal_params: bool = True,
    probe_every: int = 100,
    probe_n: int = 32,
    experiment: str = "arch-compare",
) -> dict[str, Any]:
    """Attention kernels against softmax MHA on a character-level LM, loss curves side by side.

    Args:
        variants: Kernel specs to compare with the baseline, e.g. "moh(shared=2, top_k=4)" (75% of 8 heads),
            "moh(shared=2, top_k=2)" (50%), "complex", "lightning(block=16)".
        baseline: The reference kernel (softmax attention with RoPE).
        seeds: Training seeds (>= 2 to see the seed spread).
        steps: Training steps (warm-up, then cosine decay to 0.1 lr).
        lr: Peak learning rate.
        warmup: Warm-up steps.
        weight_decay: AdamW weight decay.
        batch_size: Sequences per step.
        hidden: Model width.
        layers: Decoder layers.
        heads: Attention heads (MoH's shared + top-k must fit).
        seq_len: Characters per sequence.
        data: Character-level corpus: "builtin:stories" or a text file.
        equal_params: Shrink each variant's SwiGLU width so its parameter count matches the baseline's.
        probe_every: Steps between held-out loss probes.
        probe_n: Held-out validation windows per probe.
        experiment: MLflow experiment name.
    """
    # 1. Plan and validate every point (equal parameter counts) before any training.
    points = check_points("arch-compare", arch_points(
        variants, baseline, seeds, steps, lr, warmup, weight_decay, batch_size, hidden, layers, heads, seq_len, data,
        equal_params, probe_every, probe_n))
    # 2. The pass criteria that need no training: CMHA at delta = 1 is RoPE; tiled lightning is exact.
    equivalences = kernel_checks()
    # 3. Train every point (cached per point).
    results = tag(run_sweep(points, code_version(kernel_names(points))), points)
    # 4. Compare each variant with the baseline.
    report = arch_report(results, baseline, equivalences)
    # 5. Log the verdict, figures and every point to MLflow.
    run_id = log_study("arch-compare", experiment, {"variants": variants, "baseline": baseline, "seeds": seeds,
                       "steps": steps, "hidden": hidden, "layers": layers, "heads": heads, "data": data,
                       "equal_params": equal_params}, results, report["checks"], report["verdict"],
                       report["table"], report["figures"])
    return {"verdict": report["verdict"], "checks": report["checks"], "table": report["table"], "run_id": run_id}


if __name__ == "__main__":
    arch_compare()
