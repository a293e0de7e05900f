"""`attnflow head-search`: find the heads a patch should act on (ACT head filtering, ZeroTuning head profiling,
head masking); the head set lands in MLflow as heads.json, usable as ``--param heads=mlflow:<run_id>/heads.json``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("head-search")
    def head_search(
        model: str = typer.Option("demo", help="Hub id, local model directory, or 'demo'."),
        method: str = typer.Option("act", help="act, zerotuning or head_mask."),
        task: str = typer.Option("icl_classification(n_examples=64)", help="Benchmark spec; its train split "
                                 "is the calibration set."),
        param: list[str] = typer.Option([], "--param", "-p", help="Component parameter key=value (repeatable), "
                                        "e.g. beta=0.4 for act."),
        layers: str = typer.Option("all", help="Candidate heads as a head set: all, 2-5:*, 0:1,3:2."),
        objective: str = typer.Option("accuracy", help="accuracy (supervised) or entropy (unsupervised)."),
        trial_gamma: float = typer.Option(2.0, help="ZeroTuning's profiling gamma."),
        gammas: str = typer.Option("1.5,2,3,4", help="ZeroTuning's gamma grid (comma-separated)."),
        min_gain: float = typer.Option(0.0, help="Minimum change of the objective for a head to be selected."),
        top_k: int = typer.Option(0, help="Keep at most this many heads (0 = all that qualify)."),
        workers: int = typer.Option(1, help="Candidate evaluations at once (one model copy each)."),
        batch_size: int = typer.Option(16),
        experiment: str = typer.Option("head-search", help="MLflow experiment."),
        dtype: str = typer.Option("float32"),
        trust_remote_code: bool = typer.Option(False, help="Allow model code from the hub."),
    ) -> None:
        """Search the attention heads a patch should act on (runs the `head-search` flow)."""
        from attnflow.cli import guarded, run_flow
        from registry.specs import parse_kv
        from tasks.head_search import plan_search

        def prepare():
            params = parse_kv(param)
            grid = [float(g) for g in gammas.split(",") if g.strip()]
            if not grid or min(grid) <= 0:
                raise ValueError(f"--gammas {gammas!r}: give positive numbers, e.g. 1.5,2,3,4")
            plan_search.fn(model, method, task, params, layers, objective, trial_gamma, trust_remote_code)
            return params, grid

        params, grid = guarded(prepare)
        from flows.head_search import head_search as flow

        out = run_flow(flow, model=model, method=method, task=task, params=params, layers=layers,
                       objective=objective, trial_gamma=trial_gamma, gammas=grid, min_gain=min_gain, top_k=top_k,
                       workers=workers, batch_size=batch_size, experiment=experiment, dtype=dtype,
                       trust_remote_code=trust_remote_code)
        heads = ",".join(f"{lay}:{h}" for lay, h in out["heads"]) or "none"
        typer.echo(f"selected heads: {heads}" + (f"  gamma={out['gamma']}" if out.get("gamma") else ""))
        typer.echo(f"use them with: --param heads={out['ref']}")
