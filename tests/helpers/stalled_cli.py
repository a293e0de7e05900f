"""``python tests/helpers/stalled_cli.py compare ...``: the attnflow CLI with the compare flow stalled right
after its parent MLflow run started (the evaluations sleep for 15 minutes), so a test can signal it mid-flow."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import flows.compare as compare_module  # noqa: E402


def stall(task, calls):
    print("stalled inside the parent run", flush=True)
    time.sleep(900)  # bounded: a CLI left behind by a killed test run ends on its own


compare_module.map_calls = stall

from attnflow.cli import main  # noqa: E402

sys.argv = ["attnflow", *sys.argv[1:]]
main()
