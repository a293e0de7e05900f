"""`attnflow up --database URL`: the URL's checks, the drivers' URLs, and that no password reaches a command line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from attnflow.cli import app
from infra import database, stack


def test_parse_names_the_two_databases_and_drivers():
    db = database.parse("postgresql://me:p%40ss@db.example:6543/lab?sslmode=require")
    assert (db.user, db.password, db.host, db.port, db.name) == ("me", "p@ss", "db.example", 6543, "lab")
    assert db.prefect_url == "postgresql+asyncpg://me:p%40ss@db.example:6543/lab_prefect?sslmode=require"
    assert db.mlflow_url == "postgresql+psycopg2://me:p%40ss@db.example:6543/lab_mlflow?sslmode=require"
    assert db.shown == "postgresql://me:***@db.example:6543/lab?sslmode=require"
    default = database.parse("postgres://me@localhost")
    assert (default.port, default.name, default.prefect_db, default.mlflow_db) == (
        5432, "attnflow", "attnflow_prefect", "attnflow_mlflow")


@pytest.mark.parametrize("url, message", [
    ("sqlite:///x.db", "only PostgreSQL"),
    ("mysql://u@h/x", "only PostgreSQL"),
    ("postgresql://localhost/x", "names no user"),
    ("postgresql://u:secret@:5432/x", "names no host"),
    ("postgresql://u:secret@h:70000/x", "not a valid URL"),
    ("postgresql://u@h/a;drop", "NAME must be"),
])
def test_invalid_urls_are_refused_without_showing_the_password(url, message):
    with pytest.raises(database.DatabaseError, match=message) as e:
        database.parse(url)
    assert "secret" not in str(e.value)


def test_server_commands_get_the_urls_through_the_environment(tmp_path):
    url = "postgresql://me:secret@127.0.0.1:6543/lab"
    cmds = stack._commands(stack.StackConfig(home=tmp_path, database=url))
    assert cmds["prefect-server"][1]["PREFECT_SERVER_DATABASE_CONNECTION_URL"].endswith("/lab_prefect")
    assert cmds["mlflow-server"][1]["MLFLOW_BACKEND_STORE_URI"].endswith("/lab_mlflow")
    assert not any("secret" in arg for cmd, _ in cmds.values() for arg in cmd)
    assert "--backend-store-uri" not in cmds["mlflow-server"][0]
    assert "secret" not in repr(stack.StackConfig(home=tmp_path, database=url))
    sqlite = stack._commands(stack.StackConfig(home=tmp_path))["mlflow-server"][0]
    assert f"sqlite:///{tmp_path / 'mlflow.db'}" in sqlite


def test_up_fails_early_on_an_unreachable_server(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNFLOW_HOME", str(tmp_path))
    port = stack.free_port()  # nothing listens there
    result = CliRunner().invoke(app, ["up", "--database", f"postgresql://me:secret@127.0.0.1:{port}/lab"])
    assert result.exit_code == 2
    assert "cannot connect to the PostgreSQL server" in result.output and "secret" not in result.output
    assert not stack.load_state(tmp_path).get("services")
