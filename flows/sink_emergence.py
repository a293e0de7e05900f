"""sink-emergence: when does an attention sink emerge? Softmax vs sigmoid attention without normalisation (Gu et al.).

plan the sweep -> train every point (cached, on the configured task runner; Sink_1 and alpha_0 probed during
training) -> check the paper's claims -> MLflow: verdict, figures, one child run per point.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from tasks.dynamics import check_points, code_version, kernel_names, log_study, run_sweep
from tasks.dynamics_studies import sink_points, sink_report, tag


@flow(name="sink-emergence", log_prints=True)
def sink_emergence(
    attentions: list[str] = ["softmax", "sigmoid"],  # noqa: B006 - Prefect parameter defaults, never mutated
    seeds: list[int] = [0],  # noqa: B006
    steps: int = 3000,
    lr: float = 3e-3,
    weight_decay: float = 0.1,
    warmup: int = 100,
    batch_size: int = 32,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    seq_len: int = 64,
    data: str = "bb",
    weight_decays: list[float] = [],  # noqa: B006
    lrs: list[float] = [],  # noqa: B006
    n_sequences: list[int] = [],  # noqa: B006
    probe_every: int = 250,
    probe_n: int = 64,
    min_sink: float = 5.0,
    experiment: str = "sink-emergence",
) -> dict[str, Any]:
    """Sink_1 (eps 0.3) and alpha_0 over training for softmax vs sigmoid-no-norm on the Bigram-Backcopy LM.

    Args:
        attentions: Kernel specs compared; the first is the softmax reference (sweeps use it), the second the
            kernel expected to form no sink ("sigmoid" = sigmoid attention without normalisation).
        seeds: Training seeds of the main comparison (the data stream is fixed).
        steps: Training steps (constant LR after warm-up).
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        warmup: Linear warm-up steps.
        batch_size: Sequences per step.
        hidden: Model width (Llama: RMSNorm, RoPE, SwiGLU, no biases).
        layers: Decoder layers.
        heads: Attention heads.
        seq_len: Tokens per sequence (BOS + 63).
        data: "bb" (BOS first) or "bb_nobos" (a random first token).
        weight_decays: Extra softmax runs at these weight decays (paper: more decay, more sink).
        lrs: Extra softmax runs at these learning rates (paper: smaller LR, less sink).
        n_sequences: Extra softmax runs trained on a fixed pool of this many sequences (paper: less data, less sink).
        probe_every: Steps between probes of Sink_1, alpha_0, held-out loss and max attention logit.
        probe_n: Held-out probe sequences.
        min_sink: Final softmax Sink_1 (%) that counts as "a sink emerged".
        experiment: MLflow experiment name.
    """
    # 1. Plan and validate every sweep point before any training.
    points = check_points("sink-emergence", sink_points(
        attentions, seeds, steps, lr, weight_decay, warmup, batch_size, hidden, layers, heads, seq_len, data,
        weight_decays, lrs, n_sequences, probe_every, probe_n))
    # 2. Train every point (cached per point; resumable).
    results = tag(run_sweep(points, code_version(kernel_names(points))), points)
    # 3. Check the claims: sink with softmax, none with sigmoid-no-norm; sweep directions.
    report = sink_report(results, attentions, weight_decay, lr, min_sink)
    # 4. Log the verdict, figures and every point to MLflow.
    run_id = log_study("sink-emergence", experiment, {"attentions": attentions, "seeds": seeds, "steps": steps,
                       "lr": lr, "weight_decay": weight_decay, "data": data, "hidden": hidden, "layers": layers},
                       results, report["checks"], report["verdict"], report["table"], report["figures"])
    return {"verdict": report["verdict"], "checks": report["checks"], "table": report["table"], "run_id": run_id}


if __name__ == "__main__":
    sink_emergence()
