"""`attnflow analyze` and `attnflow retrieval-heads`: attention analyses (sink metric, retrieval heads, head
importance, path patching) and the retrieval-head causal test, generated from their flows."""

from __future__ import annotations

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check_analyze(call: Call) -> None:
    from tasks.analysis import plan_analysis

    p = call.params
    plan_analysis.fn(p["model"], p["analyzer"], p["params"], trust_remote_code=p["trust_remote_code"])


def check_retrieval(call: Call) -> None:
    import registry
    from tasks.analysis import check_head_budget, plan_analysis
    from tasks.plan import plan_request

    p = call.params
    registry.get("head_mask").create({"heads": "0:0", "mode": p["mask_mode"], "phase": p["mask_phase"]})
    plan_analysis.fn(p["model"], "retrieval_score", p["detect"], trust_remote_code=p["trust_remote_code"])
    plan_request.fn(p["model"], ["baseline"], p["tasks"], [p["seed"]], trust_remote_code=p["trust_remote_code"])
    check_head_budget.fn(p["model"], p["top_k"], p["n_random"], trust_remote_code=p["trust_remote_code"])


def register(app: typer.Typer) -> None:
    lazy_flow_command("analyze", "flows.analyze:analyze", lambda: {"prepare": check_analyze})  # the flow prints
    lazy_flow_command("retrieval-heads", "flows.retrieval_heads:retrieval_heads",
                      lambda: {"prepare": check_retrieval})  # shown by cli.show_result: table, verdict, link
