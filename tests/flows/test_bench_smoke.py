"""Benchmarks do not rot: the bench/ scripts that run Prefect flows, with ``--smoke``, on this tier's Prefect test
server (tests/integration/test_bench_smoke.py runs the others and checks that every script is covered)."""

from __future__ import annotations

import re

import pytest

from tests.helpers.bench import FLOW_BENCHES, SMOKE_LINES, run_smoke
from tests.helpers.threads import one_thread  # noqa: F401


@pytest.mark.parametrize("name", sorted(FLOW_BENCHES))
def test_bench_smoke(name, monkeypatch):
    out = run_smoke(name, monkeypatch)
    assert re.search(SMOKE_LINES[name], out), out[-3000:]
