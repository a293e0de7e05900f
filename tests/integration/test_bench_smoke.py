"""Benchmarks do not rot: every script in bench/ runs with ``--smoke`` (tiny sizes, built-in or generated data, the
demo model shipped in assets/, nothing outside the repository, no downloads) and prints its result lines. The
scripts that run Prefect flows are smoke-run in tests/flows/test_bench_smoke.py."""

from __future__ import annotations

import re

import pytest

from tests.helpers.bench import BENCH, FLOW_BENCHES, SMOKE_LINES, run_smoke
from tests.helpers.threads import one_thread  # noqa: F401


def test_every_bench_script_has_a_smoke_run():
    scripts = {p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_")} - {"results_md"}  # renders docs
    assert scripts == set(SMOKE_LINES), "add the new bench script to tests/helpers/bench.py SMOKE_LINES"
    for name in scripts:
        assert '"--smoke"' in (BENCH / f"{name}.py").read_text(), f"bench/{name}.py has no --smoke"


@pytest.mark.parametrize("name", sorted(set(SMOKE_LINES) - FLOW_BENCHES))
def test_bench_smoke(name, monkeypatch):
    out = run_smoke(name, monkeypatch)
    assert re.search(SMOKE_LINES[name], out), out[-3000:]
