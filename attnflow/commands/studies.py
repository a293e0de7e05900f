"""`attnflow sink-emergence | arch-compare | instability-proxies | icl-linear | icl-softmax-heads | homeostasis`:
the training-dynamics and study flows (docs/kernels-and-dynamics.md, docs/studies.md), generated from their flows.
The flows check their own inputs before training; the command adds the flows' type checks before any server."""

from __future__ import annotations

import typer

from attnflow.flowcli import lazy_flow_command

#: command (= flow) name -> "module:function"
STUDIES = {
    "sink-emergence": "flows.sink_emergence:sink_emergence",
    "arch-compare": "flows.arch_compare:arch_compare",
    "instability-proxies": "flows.instability_proxies:instability_proxies",
    "icl-linear": "flows.icl_linear:icl_linear",
    "icl-softmax-heads": "flows.icl_softmax:icl_softmax_heads",
    "homeostasis": "flows.homeostasis:homeostasis",
}


def register(app: typer.Typer) -> None:
    for name, target in STUDIES.items():
        lazy_flow_command(name, target)  # the flow prints its verdicts; the CLI its row table and MLflow link
