"""`attnflow analyze` and `attnflow retrieval-heads`: attention analyses (sink metric, retrieval heads, head
importance, path patching) and the retrieval-head causal test."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("analyze")
    def analyze(
        model: str = typer.Option("demo", help="Hub id, local model directory, or 'demo'."),
        analyzer: str = typer.Option("sink_metric", "--analyzer", "-a",
                                     help="Analyzer spec: sink_metric, retrieval_score, head_importance, "
                                          "path_patching (name[@version][(k=v, ...)])."),
        param: list[str] = typer.Option([], "--param", "-p", help="Analyzer parameter key=value (repeatable)."),
        experiment: str = typer.Option("analyze", help="MLflow experiment."),
        dtype: str = typer.Option("float32"),
        trust_remote_code: bool = typer.Option(False, help="Allow model code from the hub."),
    ) -> None:
        """Run an analyzer on a model; arrays, tables, head sets and figures go to MLflow (runs `analyze`)."""
        from attnflow.cli import guarded, run_flow
        from registry.specs import parse_kv
        from tasks.analysis import plan_analysis

        params = guarded(lambda: parse_kv(param))
        guarded(lambda: plan_analysis.fn(model, analyzer, params, trust_remote_code=trust_remote_code))
        from flows.analyze import analyze as flow

        run_flow(flow, model=model, analyzer=analyzer, params=params, experiment=experiment, dtype=dtype,
                 trust_remote_code=trust_remote_code)

    @app.command("retrieval-heads")
    def retrieval_heads(
        model: str = typer.Option("demo", help="Hub id, local model directory, or 'demo'."),
        detect: list[str] = typer.Option([], "--detect", "-d",
                                         help="retrieval_score parameter key=value, e.g. lengths=60,120 (repeatable)."),
        top_k: int = typer.Option(0, help="Heads to mask; 0 = every retrieval head (score > threshold)."),
        n_random: int = typer.Option(3, help="Random draws of K non-retrieval heads."),
        seed: int = typer.Option(0, help="Seed of the random draws and the task data."),
        tasks: list[str] = typer.Option([], "--tasks", "-t", help="Comma-separated retrieval task specs "
                                        "(default needle,passkey,kv_retrieval)."),
        mask_mode: str = typer.Option("uniform", help="uniform (zero logits, the paper) or zero (zero output)."),
        mask_phase: str = typer.Option("all", help="all, prefill or decode."),
        batch_size: int = typer.Option(16),
        experiment: str = typer.Option("retrieval-heads", help="MLflow experiment."),
        dtype: str = typer.Option("float32"),
        trust_remote_code: bool = typer.Option(False, help="Allow model code from the hub."),
    ) -> None:
        """Find retrieval heads, then mask the top K vs K random heads on retrieval tasks (runs `retrieval-heads`)."""
        import registry
        from attnflow.cli import guarded, print_table, run_flow, split_list
        from flows.retrieval_heads import DEFAULT_TASKS
        from registry.specs import parse_kv
        from tasks.analysis import check_head_budget, plan_analysis
        from tasks.plan import plan_request

        params = guarded(lambda: parse_kv(detect, "--detect"))
        task_list = split_list(tasks) or DEFAULT_TASKS
        guarded(lambda: registry.get("head_mask").create({"heads": "0:0", "mode": mask_mode, "phase": mask_phase}))
        guarded(lambda: plan_analysis.fn(model, "retrieval_score", params, trust_remote_code=trust_remote_code))
        guarded(lambda: plan_request.fn(model, ["baseline"], task_list, [seed], trust_remote_code=trust_remote_code))
        guarded(lambda: check_head_budget.fn(model, top_k, n_random, trust_remote_code=trust_remote_code))
        from flows.retrieval_heads import retrieval_heads as flow

        out = run_flow(flow, model=model, detect=params, top_k=top_k, n_random=n_random, seed=seed, tasks=task_list,
                       mask_mode=mask_mode, mask_phase=mask_phase, batch_size=batch_size, experiment=experiment,
                       dtype=dtype, trust_remote_code=trust_remote_code)
        if out["table"] is not None:
            print_table(out["table"])
            typer.echo(out["verdict"]["text"])
