"""instability-proxies: small-scale proxies of large-scale training instabilities (Wortsman et al.).

plan the width x LR x qk-layernorm x z-loss grid -> train every point (cached, configured task runner) ->
attention-logit growth, LR sensitivity, log Z -> MLflow: verdict, loss/max-logit vs LR, one child run per point.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from tasks.dynamics import check_points, code_version, kernel_names, log_study, run_sweep
from tasks.dynamics_studies import proxy_points, proxy_report, tag


@flow(name="instability-proxies", log_prints=True)
def instability_proxies(
    widths: list[int] = [32, 64],  # noqa: B006 - Prefect parameter defaults, never mutated
    lrs: list[float] = [3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0],  # noqa: B006
    qk_layernorm: list[bool] = [False, True],  # noqa: B006
    z_losses: list[float] = [1e-4],  # noqa: B006
    seeds: list[int] = [0],  # noqa: B006
    steps: int = 300,
    warmup: int = 30,
    batch_size: int = 16,
    layers: int = 2,
    head_dim: int = 32,
    seq_len: int = 64,
    weight_decay: float = 1e-4,
    data: str = "builtin:stories",
    probe_every: int = 50,
    probe_n: int = 16,
    logit_threshold: float = 1000.0,
    sensitivity_ratio: float = 0.75,
    experiment: str = "instability-proxies",
) -> dict[str, Any]:
    """Final loss and max attention logit vs learning rate, with and without qk-layernorm, on a char-level LM.

    Args:
        widths: Model widths (heads = width / head_dim).
        lrs: Learning-rate grid (also the range of the LR-sensitivity average).
        qk_layernorm: qk-layernorm settings to compare.
        z_losses: Output z-loss weights (paper: 1e-4; add 0.0 to see its effect on log Z).
        seeds: Training seeds (results are averaged over seeds).
        steps: Training steps (linear warm-up, then cosine decay to 1e-5).
        warmup: Warm-up steps.
        batch_size: Sequences per step.
        layers: Decoder layers.
        head_dim: Head dimension.
        seq_len: Characters per sequence.
        weight_decay: Independent weight decay (scaled by lr_t / lr, not lr_t).
        data: Character-level corpus: "builtin:stories" or a text file.
        probe_every: Steps between probes of held-out loss, max attention logit and log Z.
        probe_n: Held-out validation windows per probe.
        logit_threshold: Max attention logit that counts as "logit growth".
        sensitivity_ratio: qk-layernorm "lowers LR sensitivity" when its sensitivity is at most this times the
            sensitivity without it.
        experiment: MLflow experiment name.
    """
    # 1. Plan and validate the grid before any training.
    points = check_points("instability-proxies", proxy_points(
        widths, lrs, qk_layernorm, z_losses, seeds, steps, warmup, batch_size, layers, head_dim, seq_len,
        weight_decay, data, probe_every, probe_n))
    # 2. Train every grid point (cached per point).
    results = tag(run_sweep(points, code_version(kernel_names(points))), points)
    # 3. Check the claims per width: logit growth without qk-LN only, lower LR sensitivity with it; z-loss.
    report = proxy_report(results, widths, qk_layernorm, z_losses, logit_threshold, sensitivity_ratio)
    # 4. Log the verdict, figures and every point to MLflow.
    run_id = log_study("instability-proxies", experiment, {"widths": widths, "lrs": lrs, "qk_layernorm": qk_layernorm,
                       "z_losses": z_losses, "seeds": seeds, "steps": steps, "data": data}, results,
                       report["checks"], report["verdict"], report["table"], report["figures"])
    return {"verdict": report["verdict"], "checks": report["checks"], "table": report["table"], "run_id": run_id}


if __name__ == "__main__":
    instability_proxies()
