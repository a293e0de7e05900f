"""Every `attnflow ...` command shown in README.md and docs/*.md parses with the CLI as it is (option names, choices,
required options): renaming a flow parameter without updating the docs fails here. Parsing only, nothing runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperGroup

from attnflow.cli import app

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shown_commands(text: str) -> list[tuple[str, bool]]:
    """(command, whole) for the `attnflow ...` lines of the page's shell blocks (continuation lines joined, comments
    dropped; whole = True) and its inline code spans (which may name a command without its required arguments)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        current = ""
        for line in block.splitlines():
            line = "" if line.lstrip().startswith("#") else re.split(r"\s{2,}#", line)[0].rstrip()
            if current:
                current += " " + line.strip()
            elif line.strip().startswith("attnflow "):
                current = line.strip()
            if current and not current.endswith("\\"):
                out.append((current, True))
                current = ""
            elif current:
                current = current[:-1]
    out += [(m, False) for m in re.findall(r"`(attnflow [^`]+)`", text) if " -> " not in m]  # not a layer diagram
    return out


def parse_error(root: TyperGroup, line: str, whole: bool = True) -> str | None:
    """Why ``line`` does not parse (None when it does): the global options, then each sub-command's own. Optional
    parts written ``[--option value]`` and placeholder commands (``<flow>``) are notation, not checked. (typer
    vendors click: its context and exception classes are reached through the command objects.)"""
    text = re.sub(r"<[^>]*>", "PLACEHOLDER", re.sub(r"\s\[-[^\]]*\]", "", line))
    rest = shlex.split(text)[1:]
    while rest and rest[0].startswith("-"):
        rest = rest[1:]
    if not rest or rest[0] in ("...", "PLACEHOLDER"):
        return None  # `attnflow --help`, `attnflow --debug ...`, `attnflow <command> --help`
    context = type(root.make_context("attnflow", ["--help"], resilient_parsing=True))
    parent = context(root, info_name="attnflow")
    cmd = root
    try:
        while isinstance(cmd, TyperGroup) and rest and not rest[0].startswith("-"):
            name, cmd, rest = cmd.resolve_command(parent, rest)
            parent = context(cmd, info_name=name, parent=parent)
        if not isinstance(cmd, TyperGroup):
            cmd.make_context(cmd.name, list(rest), parent=parent.parent)
    except Exception as e:  # noqa: BLE001 - click's UsageError family (vendored), or Exit from --help
        if type(e).__name__ == "Exit":
            return None
        if not hasattr(e, "format_message"):
            raise
        message = e.format_message()
        if not whole and (message.startswith("Missing") or message.endswith("requires an argument.")):
            return None  # prose naming a command, e.g. `attnflow models pull`
        return message
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_shown_in_the_docs_parse(page):
    root = typer.main.get_command(app)
    lines = shown_commands(page.read_text())
    bad = {line: err for line, whole in lines if (err := parse_error(root, line, whole))}
    assert not bad, "\n".join(f"{line}\n    -> {err}" for line, err in bad.items())


def test_a_renamed_option_is_caught():
    root = typer.main.get_command(app)
    assert parse_error(root, "attnflow retrieval-heads --detect n_examples=8") is None
    assert "No such option" in parse_error(root, "attnflow retrieval-heads -d n_examples=8")
    assert len(shown_commands((ROOT / "README.md").read_text())) >= 10
