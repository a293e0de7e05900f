"""`attnflow compare`, `attnflow evaluate`, `attnflow quickstart`: generated from their flows (``attnflow.flowcli``);
what the CLI adds is a domain check before any server starts and, for compare, ``--preset``."""

from __future__ import annotations

from typing import Any, Optional

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check_compare(call: Call) -> None:
    from flows.params import ComparisonPreset
    from registry.specs import load_preset
    from tasks.plan import plan_request

    p = call.params
    preset = call.extras["preset"]
    if preset:  # the preset fills what the command line leaves out
        cfg = load_preset(preset, ComparisonPreset)
        for key in ("components", "tasks", "seeds"):
            if key not in call.given and cfg.get(key):
                p[key] = cfg[key]
    plan_request.fn(p["model"], p["components"], p["tasks"], p["seeds"], trust_remote_code=p["trust_remote_code"])


def compare_options() -> dict[str, Any]:
    return {"prepare": check_compare, "extras": {"preset": (Optional[str], typer.Option(
        None, help="A comparison preset (registry/presets/<name>.yaml or a YAML path) giving components, tasks and "
                   "seeds; options given on the command line win."))}}


def check_evaluate(call: Call) -> None:
    from registry.specs import Spec, parse
    from tasks.plan import plan_request

    p = call.params
    comp, bench = parse(p["component"]), parse(p["task"])
    plan_request.fn(p["model"], [Spec(comp.name, comp.version, {**comp.params, **p["params"]}).text()],
                    [Spec(bench.name, bench.version, {**bench.params, **p["task_params"]}).text()], p["seeds"],
                    trust_remote_code=p["trust_remote_code"])


def check_quickstart(call: Call) -> None:
    from flows.quickstart import preset_for

    preset_for(call.params["model"] or None, call.params["preset"] or None)


def register(app: typer.Typer) -> None:
    lazy_flow_command("compare", "flows.compare:compare", compare_options)
    lazy_flow_command("evaluate", "flows.evaluate:evaluate", lambda: {"prepare": check_evaluate})
    lazy_flow_command("quickstart", "flows.quickstart:quickstart", lambda: {"prepare": check_quickstart})
