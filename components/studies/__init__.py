"""Reproductions of papers as studies (family ``study``): a model, its data generator, its training loop, the
paper's theory values and the checks of its claims, in plain torch/numpy. The flows fan the sweep points out
as cached Prefect tasks and log figures and verdicts to MLflow; the components themselves know nothing of
either."""
