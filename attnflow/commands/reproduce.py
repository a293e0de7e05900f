"""`attnflow reproduce`: every method's headline claim as a measured check on a model (held / not held /
inconclusive, with 95% CIs over seeds); thresholds in docs/reproduce.md. Generated from the `reproduce` flow, plus
``--list`` and ``--control-model`` (a shorthand for ``--option sinks.control_model=...``)."""

from __future__ import annotations

from typing import Any, Optional

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check(call: Call) -> None:
    from flows.reproduce import available_claims
    from tasks.claims_report import plan_claims

    p = call.params
    if call.extras["control_model"]:
        p["options"] = {**p["options"], "sinks": {**p["options"].get("sinks", {}),
                                                  "control_model": call.extras["control_model"]}}
    plan_claims.fn(available_claims(), p["model"], p["claims"], p["seeds"], p["data"], p["options"])


def show(out: dict[str, Any], call: Call) -> None:
    from attnflow.output import print_mlflow

    typer.echo(out["table"])
    print_mlflow(out["experiment"], out["run_id"])


def options() -> dict[str, Any]:
    return {"prepare": check, "show": show, "convert_with": {"options": _options}, "extras": {
        "control_model": (Optional[str], typer.Option(None, help="No-sink control model for the sinks claim "
                                                             "(= --option sinks.control_model=MODEL).")),
        "list_claims": (bool, typer.Option(False, "--list", is_eager=True, callback=_list_claims,
                                           help="List the claims and their criteria, then exit."))}}


def register(app: typer.Typer) -> None:
    lazy_flow_command("reproduce", "flows.reproduce:reproduce", options)


def _options(values: list[str]) -> dict[str, dict[str, Any]]:
    """``--option sinks.n_samples=64`` -> ``{"sinks": {"n_samples": 64}}``."""
    from attnflow.flowcli import number_or_text
    from registry.specs import parse_kv

    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_kv(values, "--option").items():
        claim, _, name = key.partition(".")
        if not claim or not name:
            raise ValueError(f"--option {key}={value}: give claim.key=value, e.g. sinks.n_samples=64")
        out.setdefault(claim, {})[name] = number_or_text(value)
    return out


def _list_claims(value: bool) -> None:
    if not value:
        return
    from flows.reproduce import available_claims

    for c in available_claims().values():
        typer.echo(f"{c.name} ({c.paper}): {c.statement}\n  criterion: {c.criterion}")
    raise typer.Exit()
