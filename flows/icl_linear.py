"""icl-linear: one linear self-attention layer trained on in-context linear regression (Zhang, Frei, Bartlett).

plan the sweep (d x N x covariance) -> train each configuration (cached, on worker processes) -> evaluate it
(u·U11 vs Γ⁻¹, error vs prompt length vs theory, shift table) -> check the paper's claims -> MLflow report.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from tasks.icl import lsa_figures, lsa_report, plan_lsa_evaluation
from tasks.studies import plan_sweep, publish_report, study_verdict, train_and_evaluate
from tasks.tracking import publish_components

STUDY = "lsa_icl"


@flow(name="icl-linear", log_prints=True)
def icl_linear(
    d: list[int] = [5],  # noqa: B006 - Prefect parameter defaults, never mutated
    n_prompt: list[int] = [10, 20, 40],  # noqa: B006
    covariance: list[str] = ["identity", "diagonal"],  # noqa: B006
    spread: float = 2.0,
    sigma: float = 0.1,
    lr: float = 0.05,
    steps: int = 1000,
    batch: int = 4096,
    seed: int = 0,
    test_lengths: list[int] = [5, 10, 20, 40, 80, 160],  # noqa: B006
    shifts: list[str] = ["task", "query:2", "covariate:0.5", "covariate:2", "covariate:3"],  # noqa: B006
    n_test: int = 20000,
    workers: int = 2,
    experiment: str = "icl-linear",
) -> dict[str, Any]:
    """Linear self-attention on in-context regression: u·U11 -> Γ⁻¹, error vs prompt length, shift table.

    Trains LSA on linear-regression prompts and tests the paper's claims: u·U11 -> Γ⁻¹, error(M) on the theory
    curve, task / query shifts tolerated and covariate shifts not.

    Args:
        d: Input dimensions to sweep.
        n_prompt: Training prompt lengths N to sweep.
        covariance: Covariances Λ to sweep: identity, diagonal.
        spread: Condition number of the diagonal covariance.
        sigma: Initialisation scale σ.
        lr: SGD learning rate.
        steps: SGD steps per configuration.
        batch: Fresh prompts per SGD step.
        seed: Seed of initialisation and data.
        test_lengths: Prompt lengths M of the error curve.
        shifts: Distribution shifts of the shift table: task, query:<scale>, covariate:<scale>.
        n_test: Test prompts per evaluation.
        workers: Worker processes for the sweep points (1 = in the flow's process).
        experiment: MLflow experiment name.
    """
    # 1. Validate every configuration and evaluation setting before any compute.
    configs = plan_sweep(STUDY, {"spread": spread, "sigma": sigma, "lr": lr, "steps": steps, "batch": batch,
                                 "seed": seed}, {"d": d, "n_prompt": n_prompt, "covariance": covariance})
    evaluation = plan_lsa_evaluation(test_lengths, shifts, n_test)
    # 2. Publish the study's version to the MLflow component registry.
    versions = publish_components([STUDY])
    # 3. Train, then evaluate, every configuration: one cached task per point, on `workers` processes.
    points = train_and_evaluate(STUDY, configs, evaluation, workers)
    # 4. Check the paper's claims on the whole sweep.
    checks = study_verdict(STUDY, points)
    # 5. Report: verdict, tables, figures and one child run per configuration in MLflow.
    return publish_report(experiment, "icl-linear", STUDY, lsa_report(points, checks), checks, lsa_figures(points),
                          points, versions)


if __name__ == "__main__":
    icl_linear()
