"""`attnflow inpaint`: source images + masks (or generated scenes) x prompts x diffusion components x seeds
(generated from the flow); the model folder, sources, masks, prompts and components are validated before any
server starts."""

from __future__ import annotations


import typer

from attnflow.commands.generate_images import show as show_images
from attnflow.flowcli import Call, lazy_flow_command


def check(call: Call) -> None:
    from tasks.diffusion import plan_inpaint

    p = call.params
    plan_inpaint.fn(p["model"], p["prompts"], p["prompt_file"] or None, p["components"], p["seeds"], p["images"],
                    p["masks"], p["scenes"], p["scene_seed"], p["steps"], p["cfg_scale"], p["resample"], p["maps"],
                    p["metrics"], p["clip_model"] or None)


def register(app: typer.Typer) -> None:
    lazy_flow_command("inpaint", "flows.inpaint:inpaint", lambda: {"prepare": check, "show": show_images})
