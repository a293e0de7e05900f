"""`attnflow reproduce`: every method's headline claim as a measured check on a model (held / not held /
inconclusive, with 95% CIs over seeds); thresholds in docs/reproduce.md."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("reproduce")
    def reproduce(
        model: str = typer.Option("demo", help="Hub id, local model directory, or 'demo'."),
        claims: list[str] = typer.Option([], "--claims", "-c",
                                         help="Comma-separated claim names (default: all); see --list."),
        seeds: str = typer.Option("0,1,2", help="Comma-separated seeds (at least 3)."),
        data: list[str] = typer.Option([], "--data", "-d",
                                       help="Dataset key=path (repeatable), e.g. corpus=essays.txt, haystack=dir/."),
        control_model: Optional[str] = typer.Option(None, help="No-sink control model for the sinks claim."),
        option: list[str] = typer.Option([], "--option", "-o",
                                         help="Claim option claim.key=value (repeatable), e.g. sinks.n_samples=64."),
        dtype: str = typer.Option("float32"),
        experiment: str = typer.Option("reproduce", help="MLflow experiment."),
        list_claims: bool = typer.Option(False, "--list", help="List the claims and their criteria, then exit."),
    ) -> None:
        """Check the papers' headline claims on a model; one MLflow run per claim (runs `reproduce`)."""
        from attnflow.cli import guarded, parse_ints, run_flow, split_list
        from flows.reproduce import available_claims
        from registry.specs import parse_kv
        from tasks.claims_report import plan_claims

        available = available_claims()
        if list_claims:
            for c in available.values():
                typer.echo(f"{c.name} ({c.paper}): {c.statement}\n  criterion: {c.criterion}")
            return
        seed_list = guarded(lambda: parse_ints(seeds))
        data_map = guarded(lambda: parse_kv(data, "--data"))
        options = guarded(lambda: _options(parse_kv(option, "--option"), control_model))
        names = split_list(claims)
        guarded(lambda: plan_claims.fn(available, model, names, seed_list, data_map, options))
        from flows.reproduce import reproduce as flow

        out = run_flow(flow, model=model, claims=names, seeds=seed_list, data=data_map, options=options, dtype=dtype,
                       experiment=experiment)
        typer.echo(out["table"])


def _options(items: dict[str, str], control_model: str | None) -> dict[str, dict]:
    """``{"sinks.n_samples": "64"}`` -> ``{"sinks": {"n_samples": 64}}``; ``--control-model`` goes to sinks."""
    out: dict[str, dict] = {}
    for key, value in items.items():
        claim, _, name = key.partition(".")
        if not claim or not name:
            raise ValueError(f"--option {key}={value}: give claim.key=value, e.g. sinks.n_samples=64")
        out.setdefault(claim, {})[name] = _value(value)
    if control_model:
        out.setdefault("sinks", {})["control_model"] = control_model
    return out


def _value(text: str):
    """Option values: ints and floats as numbers, everything else as text (claims validate their own options)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
