"""Test tiers: every test carries its tier's marker, and ``--dist loadfile`` keeps files whole and the e2e tier on
one worker (so its stack starts once per session under ``make test``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import xdist_scope_of

ROOT = Path(__file__).resolve().parents[2]


def test_e2e_files_share_one_scope_and_other_files_keep_their_own():
    e2e = {xdist_scope_of(p.relative_to(ROOT).as_posix() + "::test_x") for p in (ROOT / "tests/e2e").glob("test_*.py")}
    assert e2e == {"tests/e2e"}
    assert xdist_scope_of("tests/flows/test_compare.py::test_a[x-1]") == "tests/flows/test_compare.py"
    assert xdist_scope_of("tests/unit/test_registry.py::test_a") != xdist_scope_of("tests/unit/test_claims.py::test_a")


def test_tier_markers_select_exactly_their_directory():
    """Collect three small tiers (no test runs) with ``-m e2e``: exactly the tests under tests/e2e are selected."""
    dirs = ["tests/db", "tests/e2e", "tests/real"]
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-m", "e2e", *dirs], cwd=ROOT, capture_output=True, text=True, timeout=300)
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    files = {i.split("::")[0] for i in ids}
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert files == {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests/e2e").glob("test_*.py")}, ids
