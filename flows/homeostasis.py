"""homeostasis: homeostatic vs constant vs random learning-rate regulation under concept shift (Man, Damasio,
Neven).

check the dataset and the sweep -> prepare the data once (.npz, cached) -> simulate every (method, shift rate)
for all seeds (cached per point, on worker processes; LRC-matched after LRR) -> check the claims -> MLflow report.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from tasks.homeostasis import (STUDY, check_dataset, check_methods, dataset_file, homeostasis_figures,
                               homeostasis_report, submit_sweep)
from tasks.studies import collect_points, plan_sweep, publish_report, study_verdict, worker_pool
from tasks.tracking import publish_components


@flow(name="homeostasis", log_prints=True)
def homeostasis(
    methods: list[str] = ["lrc", "lrr", "lrh", "lrc_matched"],  # noqa: B006 - Prefect defaults, never mutated
    swaps_per_epoch: list[int] = [0, 5, 20, 100],  # noqa: B006
    seeds: list[int] = [0, 1, 2, 3, 4],  # noqa: B006
    epochs: int = 10,
    eta0: float = 0.001,
    batch: int = 10,
    hidden1: int = 80,
    hidden2: int = 60,
    memory: int = 20,
    dataset: str = "generated",
    label_column: str = "label",
    n_train: int = 10000,
    n_val: int = 2000,
    features: int = 32,
    data_seed: int = 0,
    workers: int = 2,
    experiment: str = "homeostasis",
) -> dict[str, Any]:
    """Constant, random and homeostatic learning rates under label-swap concept shift, with 95% CIs over seeds.

    Classifiers with constant (LRC), random (LRR) and homeostatic (LRH) learning rates, and LRC at LRR's mean η,
    on a label-swap concept-shift stream; validation accuracy vs shift rate, one verdict per claim.

    Args:
        methods: Learning-rate regulations: lrc, lrr, lrh, lrc_matched (needs lrr).
        swaps_per_epoch: Concept-shift rates to sweep (label swaps of two random classes per epoch).
        seeds: Seeds (initialisation, data order, swaps, LRR coin flips); CIs are over seeds.
        epochs: Passes over the training set.
        eta0: Initial / constant learning rate η₀ (regulation steps are η₀/10).
        batch: Minibatch size.
        hidden1: First hidden layer width.
        hidden2: Second hidden layer width.
        memory: Recent examples the homeostatic trial updates are scored on.
        dataset: "generated" (offline Gaussian mixture), a folder of IDX files (MNIST / Fashion-MNIST layout),
            or a .parquet / .csv table with numeric feature columns and an integer label column.
        label_column: Label column of a table dataset.
        n_train: Training examples used.
        n_val: Validation examples used.
        features: Feature dimension of the generated dataset.
        data_seed: Seed of the dataset generation / subsampling.
        workers: Worker processes for the sweep points (1 = in the flow's process).
        experiment: MLflow experiment name.
    """
    # 1. Validate the dataset request and the sweep before any compute.
    request = check_dataset(dataset, label_column, n_train, n_val, features, data_seed)
    ordered = check_methods(methods, swaps_per_epoch)
    configs = plan_sweep(STUDY, {"epochs": epochs, "eta0": eta0, "batch": batch, "hidden1": hidden1,
                                 "hidden2": hidden2, "memory": memory, "seeds": seeds},
                         {"method": ordered, "swaps_per_epoch": swaps_per_epoch})
    # 2. Publish the study's version; prepare the examples once (content-addressed .npz, cached).
    versions = publish_components([STUDY])
    data = dataset_file(request)
    # 3. Simulate every (method, shift rate) for all seeds: one cached task per point, on `workers` processes.
    with worker_pool(workers):
        points = collect_points(STUDY, configs, {"result": submit_sweep(configs, data)})
    # 4. Check the paper's claims (paired over seeds, 95% intervals).
    checks = study_verdict(STUDY, points)
    # 5. Report: verdict, accuracy table, figures and one child run per point in MLflow.
    return publish_report(experiment, "homeostasis", STUDY, homeostasis_report(points, checks, data), checks,
                          homeostasis_figures(points), points, versions)


if __name__ == "__main__":
    homeostasis()
