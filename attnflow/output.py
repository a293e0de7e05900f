"""What a person reads while a flow runs from the CLI: Prefect's own INFO logs go to a log file (the console shows
them with ``--verbose``), result tables are printed once and fitted to the terminal, MLflow links open the runs
table."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import typer

#: set by ``--verbose`` (or ATTNFLOW_VERBOSE=1): Prefect's own INFO lines and the flows' Markdown tables on the console
VERBOSE = {"on": False}
_PREFECT_DIR = None


def _prefect_dir() -> str:
    global _PREFECT_DIR
    if _PREFECT_DIR is None:
        import prefect

        _PREFECT_DIR = os.path.dirname(prefect.__file__) + os.sep
    return _PREFECT_DIR


class QuietPrefect(logging.Filter):
    """Console log filter: below WARNING, drops Prefect's own records (``Created task run ...``, ``Finished in state
    Completed()``, the temporary server's start and stop), the lines tasks print (one per evaluation: the progress
    bars already show it), the tables a flow logs with ``tasks.report.log_table`` and the ``MLflow run: ...`` lines
    it logs with ``tasks.report.log_run_link`` (the CLI prints its own table and link to the runs table). Keeps the
    flows' own ``print`` lines, warnings and errors. The log file gets everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        if VERBOSE["on"] or record.levelno >= logging.WARNING:
            return True
        if getattr(record, "attnflow_table", False) or getattr(record, "attnflow_link", False) \
                or record.name.startswith("prefect.task_runs"):
            return False
        return not record.pathname.startswith(_prefect_dir())


_QUIET = QuietPrefect()


def log_path(flow_name: str) -> Path:
    """A new log file for one flow run from the CLI: ``ATTNFLOW_HOME/logs/<flow>-<UTC time>.log``."""
    from infra.settings import settings

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = settings().home / "logs" / f"{flow_name}-{stamp}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def console(flow_name: str, extra_filters: tuple[logging.Filter, ...] = ()) -> Iterator[Path]:
    """While a flow runs: every log record into a log file, the console filtered (``QuietPrefect``); the log file's
    path is printed when the flow ends."""
    path = log_path(flow_name)
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s - %(message)s"))
    root = logging.getLogger()
    handlers = [h for h in root.handlers if type(h).__name__ == "PrefectConsoleHandler"]
    root.addHandler(file_handler)
    for h in handlers:
        h.addFilter(_QUIET)  # stays for the rest of the process: the server's shutdown lines come after the flow
        for f in extra_filters:
            h.addFilter(f)
    try:
        yield path
    finally:
        for h in handlers:
            for f in extra_filters:
                h.removeFilter(f)
        root.removeHandler(file_handler)
        file_handler.close()
        typer.echo(f"log: {path}", err=True)


# ---------------------------------------------------------------------------------------------- tables

def _cell(c: dict[str, Any] | None) -> str:
    if c is None:
        return "-"
    return f"{c['mean']:.4g}" + (f" ± {c['std']:.2g}" if c["n"] > 1 else "")


def table_caption(table: dict[str, Any]) -> str | None:
    """What ``±`` means in this table (only when some cell has one)."""
    if not any(c["n"] > 1 for row in table["cells"].values() for c in row.values()):
        return None
    return f"± = {table.get('spread', 'standard deviation over seeds')}"


def column_groups(widths: list[int], fixed: int, total: int) -> list[list[int]]:
    """Split columns (their widths, borders included) into consecutive groups that fit ``total`` characters next to
    the ``fixed`` row-label columns; a column wider than the room left gets a group of its own."""
    groups: list[list[int]] = [[]]
    used = fixed
    for i, w in enumerate(widths):
        if groups[-1] and used + w > total:
            groups.append([])
            used = fixed
        groups[-1].append(i)
        used += w
    return groups


def print_table(table: dict[str, Any], full_path: Path | None = None) -> None:
    """Print a comparison table (rows = components, columns = task/metric) fitted to the terminal: names are never
    split; when the columns do not fit, they are printed in groups, each repeating the component column. The
    caption says what ``±`` is; the full table's file is named below it."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or logged: no terminal width to respect, print the table whole
        console = Console(width=max(console.width, 240))
    cols = table["columns"]
    headers = [f"{c} {'↑' if table['higher_is_better'].get(c, True) else '↓'}" for c in cols]
    texts = {row: [_cell(table["cells"][row].get(c)) for c in cols] for row in table["rows"]}
    label_w = max([len("component"), *map(len, table["rows"])]) + 3
    version_w = max([len("version"), *(len(table["versions"].get(r, "")) for r in table["rows"])]) + 3
    widths = [max([len(h), *(len(texts[r][i]) for r in table["rows"])]) + 3 for i, h in enumerate(headers)]
    # the version column is packed like a metric column: it shows in the first group only
    groups = [[i - 1 for i in g] for g in column_groups([version_w, *widths], label_w + 1, console.width)]
    for n, group in enumerate(groups):
        metrics = [i for i in group if i >= 0]
        title = table.get("title") if n == 0 else None
        if len(groups) > 1:
            title = f"{title or ''}{' ' if title else ''}(columns {metrics[0] + 1}-{metrics[-1] + 1} of {len(cols)})"
        t = Table(title=title, show_lines=False)
        t.add_column("component", no_wrap=True)
        if -1 in group:
            t.add_column("version", no_wrap=True)
        for i in metrics:
            t.add_column(headers[i], justify="right", no_wrap=True)
        for row in table["rows"]:
            version = [table["versions"].get(row, "")] if -1 in group else []
            t.add_row(row, *version, *(texts[row][i] for i in metrics))
        console.print(t, crop=False)
    caption = table_caption(table)
    if caption:
        console.print(caption, highlight=False)
    if full_path:
        console.print(f"full table: {full_path}", soft_wrap=True, highlight=False)


def save_table(table: dict[str, Any], name: str) -> Path:
    """The whole table as Markdown in ``ATTNFLOW_HOME/tables/<name>-<UTC time>.md``."""
    from infra.settings import settings
    from tasks.report import to_markdown

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = settings().home / "tables" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_')}-{stamp}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {table.get('title', name)}\n\n{to_markdown(table)}\n")
    return path


def print_rows(rows: list[dict[str, Any]]) -> None:
    """A list of row dicts as a table (columns in first-seen order; floats to 4 significant digits)."""
    from rich.console import Console
    from rich.table import Table

    columns = list(dict.fromkeys(k for row in rows for k in row))
    t = Table(show_lines=False)
    for col in columns:
        t.add_column(str(col), overflow="fold")
    for row in rows:
        t.add_row(*("-" if row.get(c) is None else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])
                    for c in columns))
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 240))
    console.print(t)


# ---------------------------------------------------------------------------------------------- MLflow links

def print_mlflow(experiment: str, run_id: str | None = None) -> None:
    """``MLflow: <link>`` (and how to start the UI when the store is local)."""
    from infra.settings import settings
    from tasks.tracking import ui_link

    link = ui_link(experiment, run_id)
    if not link:
        return
    typer.echo(f"MLflow run {run_id} (experiment '{experiment}'): {link}" if run_id
               else f"MLflow experiment '{experiment}': {link}")
    uri = settings().tracking_uri
    if not uri.startswith(("http://", "https://")):
        typer.echo(f"  (start the UI with `attnflow up`, or `mlflow ui --backend-store-uri {uri} --port 5000`)")


def runs_table_url(server: str, prefer: tuple[str, ...] = ("quickstart", "compare")) -> str:
    """The address on an MLflow server ``server`` (``http://host:port``) that opens a runs table: the first of
    ``prefer`` that exists, else the experiment updated last (``Default`` aside), else the experiments list. MLflow 3
    opens an experiment's bare address on its overview tab; ``#/experiments/<id>/runs`` is its runs table."""
    base = server.rstrip("/")
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=base)
        for name in prefer:
            exp = client.get_experiment_by_name(name)
            if exp is not None:
                return f"{base}/#/experiments/{exp.experiment_id}/runs"
        recent = [e for e in client.search_experiments(order_by=["last_update_time DESC"], max_results=10)
                  if e.name != "Default"]
        if recent:
            return f"{base}/#/experiments/{recent[0].experiment_id}/runs"
    except Exception:  # noqa: BLE001 - a link is a convenience; the server's own health check passed
        pass
    return f"{base}/#/experiments"
