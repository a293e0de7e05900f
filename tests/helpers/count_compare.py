"""Report the parses, builds and config reads of one ``compare`` cell (one component x one benchmark, one seed) on
the demo model, through the flow alone and through the ``attnflow compare`` command (which validates first).

    PYTHONPATH=$PWD python -m tests.helpers.count_compare

Runs in a throw-away ATTNFLOW_HOME with a temporary Prefect server; about a minute on two CPU cores.
"""

from __future__ import annotations

import os
import tempfile

COMPONENT = "zerotuning(gamma=2)"
TASK = "kv_retrieval(n_examples=4)"


def main() -> None:
    os.environ["ATTNFLOW_HOME"] = tempfile.mkdtemp(prefix="attnflow-count-")
    for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME"):
        os.environ.pop(var, None)
    import infra.settings  # noqa: F401
    from prefect.testing.utilities import prefect_test_harness
    from typer.testing import CliRunner

    import registry
    from attnflow.cli import app
    from flows.compare import compare
    from tests.helpers.counting import counting, summary

    registry.discover()
    names = ["zerotuning", "kv_retrieval"]
    with prefect_test_harness(server_startup_timeout=600):
        with counting() as flow_counts:
            compare(model="demo", components=[COMPONENT], tasks=[TASK], seeds=[0], experiment="count-flow",
                    progress=False)
        with counting() as cli_counts:
            res = CliRunner().invoke(app, ["compare", "--model", "demo", "-c", COMPONENT, "-t", TASK.replace(
                "n_examples=4", "n_examples=5"), "--seeds", "0", "--experiment", "count-cli"])
            assert res.exit_code == 0, res.output
    print(f"\none compare cell: {COMPONENT} x {TASK}, seed 0, demo model\n-- flow `compare`:")
    print(summary(flow_counts, names))
    print("-- command `attnflow compare` (validation + flow):")
    print(summary(cli_counts, names))


if __name__ == "__main__":
    main()
