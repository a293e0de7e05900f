"""`attnflow head-search`: find the heads a patch should act on, for any patch that declares a head search
(components/search.py); the head set lands in MLflow as heads.json, usable as
``--param heads=mlflow:<run_id>/heads.json``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("head-search")
    def head_search(
        method: str = typer.Option(..., help="A patch that declares a head search "
                                   "(docs/training-free-patches.md lists them)."),
        model: str = typer.Option("demo", help="Hub id, local model directory, or 'demo'."),
        task: str = typer.Option("icl_classification(n_examples=64)", help="Benchmark spec; its train split "
                                 "is the calibration set."),
        param: list[str] = typer.Option([], "--param", "-p", help="Patch parameter for every trial, key=value "
                                        "(repeatable)."),
        layers: str = typer.Option("all", help="Candidate heads as a head set: all, 2-5:*, 0:1,3:2."),
        objective: str = typer.Option("accuracy", help="accuracy (supervised) or entropy (unsupervised)."),
        grid: list[str] = typer.Option([], "--grid", help="Values of a parameter searched on the selected heads, "
                                       "name=v1,v2,... (repeatable); replaces the patch's own grid for that name."),
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
            values = {k: [x.strip() for x in v.split(",") if x.strip()] for k, v in parse_kv(grid, "--grid").items()}
            plan_search.fn(model, method, task, params, layers, objective, values, trust_remote_code)
            return params, values

        params, values = guarded(prepare)
        from flows.head_search import head_search as flow

        out = run_flow(flow, model=model, method=method, task=task, params=params, layers=layers,
                       objective=objective, grid=values, min_gain=min_gain, top_k=top_k, workers=workers,
                       batch_size=batch_size, experiment=experiment, dtype=dtype,
                       trust_remote_code=trust_remote_code)
        heads = ",".join(f"{lay}:{h}" for lay, h in out["heads"]) or "none"
        refined = ", ".join(f"{k}={v}" for k, v in (out.get("refined") or {}).items())
        typer.echo(f"selected heads: {heads}" + (f"  {refined}" if refined else ""))
        typer.echo(f"use them with: --param heads={out['ref']}")
