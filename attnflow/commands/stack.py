"""`attnflow up | status | down`: the local stack (Prefect server + worker, MLflow server) on 127.0.0.1."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up(
        prefect_port: int = typer.Option(4200, envvar="ATTNFLOW_PREFECT_PORT", help="Prefect server (UI + API) port."),
        mlflow_port: int = typer.Option(5000, envvar="ATTNFLOW_MLFLOW_PORT", help="MLflow tracking server port."),
        deploy: bool = typer.Option(True, "--deploy/--no-deploy", help="Deploy prefect.yaml once the server is up."),
        timeout: float = typer.Option(600, help="Seconds to wait for each service to become healthy."),
        database: str = typer.Option("", envvar="ATTNFLOW_DATABASE", show_default=False,
                                     help=r"postgresql://USER\[:PASSWORD]@HOST\[:PORT]\[/NAME]: Prefect and MLflow "
                                          "keep their data in databases NAME_prefect and NAME_mlflow on that server "
                                          "(created when missing; NAME defaults to attnflow). Default: SQLite "
                                          "under ATTNFLOW_HOME. See docs/deploy.md."),
    ) -> None:
        """Start Prefect server + process worker + MLflow server on 127.0.0.1 and deploy prefect.yaml."""
        from attnflow.cli import fail
        from infra.settings import settings
        from infra.stack import StackConfig, StackError
        from infra.stack import up as start

        for name, port in (("--prefect-port", prefect_port), ("--mlflow-port", mlflow_port)):
            if not 1 <= port <= 65535:
                fail(f"{name}={port} is not a TCP port (1-65535)")
        if prefect_port == mlflow_port:
            fail(f"--prefect-port and --mlflow-port are both {prefect_port}; they must differ")
        cfg = StackConfig(home=settings().home, prefect_port=prefect_port, mlflow_port=mlflow_port, timeout=timeout,
                          database=database.strip() or None)
        try:
            state = start(cfg, deploy=deploy, echo=typer.echo)
        except StackError as e:
            fail(str(e))
        from attnflow.output import runs_table_url

        typer.echo(f"\nPrefect UI  {state['prefect_url']}\nMLflow UI   {runs_table_url(state['mlflow_url'])}")
        if state.get("deployments"):
            typer.echo(f"deployments: {', '.join(state['deployments'])}")
        typer.echo(f"logs: {cfg.stack_dir / 'logs'}\nattnflow commands run with this ATTNFLOW_HOME use the stack; "
                   f"for other tools:\n  export PREFECT_API_URL={state['prefect_url']}/api "
                   f"MLFLOW_TRACKING_URI={state['mlflow_url']}")

    @app.command("status")
    def status() -> None:
        """Show the local stack's services: state, PID, URL, log."""
        from infra.settings import settings
        from infra.stack import deployment_names, load_state
        from infra.stack import status as read

        rows = read(settings().home)
        database = load_state(settings().home).get("database") or "sqlite"
        typer.echo(f"attnflow stack in {settings().home} (database: {database})")
        for r in rows:
            typer.echo(f"  {r.name:15s} {r.state:9s} pid {str(r.pid or '-'):8s} {r.url or '-'}")
            if r.log:
                typer.echo(f"  {'':15s} log {r.log}")
        if any(r.name == "prefect-server" and r.state == "running" for r in rows):
            names = deployment_names(load_state(settings().home)["prefect_url"] + "/api")
            typer.echo(f"deployments: {', '.join(names) or '-'}")
        if all(r.state == "stopped" for r in rows):
            raise typer.Exit(code=3)

    @app.command("down")
    def down() -> None:
        """Stop exactly the processes `attnflow up` started (worker first, then the servers)."""
        from infra.settings import settings
        from infra.stack import down as stop

        stop(settings().home, echo=typer.echo)
