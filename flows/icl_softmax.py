"""icl-softmax-heads: one layer of multi-head softmax attention trained on in-context linear regression (He, Pan,
Chen, Yang), against linear attention and the GD / debiased GD / Bayes ridge estimators.

plan the configurations (heads x attention kind, optional anisotropic and multi-task variants) -> train each
(cached, on worker processes) -> evaluate (KQ / OV circuits, test MSE by prompt length) -> check the claims ->
MLflow report.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from tasks.icl import STUDY, plan_softmax, plan_softmax_evaluation, softmax_figures, softmax_report
from tasks.studies import publish_report, study_verdict, train_and_evaluate
from tasks.tracking import publish_components


@flow(name="icl-softmax-heads", log_prints=True)
def icl_softmax_heads(
    heads: list[int] = [1, 2, 4],  # noqa: B006 - Prefect parameter defaults, never mutated
    linear_heads: list[int] = [2],  # noqa: B006
    anisotropic_heads: list[int] = [],  # noqa: B006
    rho: float = 0.5,
    multitask_heads: list[int] = [],  # noqa: B006
    dx1: int = 3,
    dx2: int = 4,
    d: int = 5,
    context: int = 40,
    noise_var: float = 0.1,
    steps: int = 6000,
    lr: float = 0.001,
    batch: int = 256,
    seed: int = 0,
    test_lengths: list[int] = [10, 20, 40, 80, 160, 320],  # noqa: B006
    n_test: int = 10000,
    workers: int = 2,
    experiment: str = "icl-softmax-heads",
) -> dict[str, Any]:
    """Multi-head softmax vs linear attention on in-context regression: circuits, debiased GD, prompt length.

    Trains multi-head softmax (and linear) attention on regression prompts and tests the paper's claims:
    KQ = ω_h·I, OV last-entry-only with Σμ ≈ 0, two heads ≈ debiased GD, length generalisation.

    Args:
        heads: Head counts H of the softmax models.
        linear_heads: Head counts of linear-attention models (scores / L_train, no softmax).
        anisotropic_heads: Head counts of softmax models on anisotropic covariates Σ_ij = ρ^|i−j| (option).
        rho: Covariate correlation ρ of the anisotropic models.
        multitask_heads: Head counts of softmax models on the two-task problem (option).
        dx1: Coordinates of task 1 in the multi-task problem.
        dx2: Coordinates of task 2 in the multi-task problem.
        d: Input dimension.
        context: Training prompt length L.
        noise_var: Label noise variance σ².
        steps: Adam steps per model.
        lr: Adam learning rate.
        batch: Fresh prompts per step.
        seed: Seed of initialisation and data.
        test_lengths: Prompt lengths of the test-MSE curve.
        n_test: Test prompts per length.
        workers: Worker processes for the sweep points (1 = in the flow's process).
        experiment: MLflow experiment name.
    """
    # 1. Validate every configuration and evaluation setting before any compute.
    configs = plan_softmax({"d": d, "context": context, "noise_var": noise_var, "steps": steps, "lr": lr,
                            "batch": batch, "seed": seed, "dx1": dx1, "dx2": dx2},
                           heads, linear_heads, anisotropic_heads, rho, multitask_heads)
    evaluation = plan_softmax_evaluation(test_lengths, n_test)
    # 2. Publish the study's version to the MLflow component registry.
    versions = publish_components([STUDY])
    # 3. Train, then evaluate, every model: one cached task per point, on `workers` processes.
    points = train_and_evaluate(STUDY, configs, evaluation, workers)
    # 4. Check the paper's claims on the whole sweep.
    checks = study_verdict(STUDY, points)
    # 5. Report: verdict, tables, figures and one child run per model in MLflow.
    return publish_report(experiment, "icl-softmax-heads", STUDY, softmax_report(points, checks), checks,
                          softmax_figures(points), points, versions)


if __name__ == "__main__":
    icl_softmax_heads()
