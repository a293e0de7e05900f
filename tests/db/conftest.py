"""Database tier: a real PostgreSQL server (Debian's `postgresql` package; `.ci/run` installs it when missing),
started by the test itself on a free port of 127.0.0.1 with its data in a temp dir, and killed/restarted at will.

The binaries are looked up under /usr/lib/postgresql/*/bin (newest first), then on PATH; without them the tier is
skipped with the reason. initdb refuses to run as root, so as root the server runs as `nobody` (setpriv).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from infra import stack

USER, PASSWORD = "attnflow", "pg-secret-7f3a"  # the test asserts the password never reaches stack.json


def pg_bindir() -> Path | None:
    """The directory with initdb and postgres: Debian's /usr/lib/postgresql/<version>/bin, else PATH."""
    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(d) / "initdb").exists() and (Path(d) / "postgres").exists():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found and (Path(found).parent / "postgres").exists() else None


class Postgres:
    """One throw-away server: ``start()``, ``kill()`` (SIGKILL of the postmaster and its backends, as in a crash
    of the database host), ``start()`` again on the same data (crash recovery), ``stop()``."""

    def __init__(self, bindir: Path, root: Path, port: int):
        self.bindir, self.root, self.port = bindir, root, port
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.proc: subprocess.Popen | None = None
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb/postgres refuse root: run as nobody, which must own the temp dir
            nobody = pwd.getpwnam("nobody")
            os.chown(root, nobody.pw_uid, nobody.pw_gid)
            self.prefix = [shutil.which("setpriv") or "setpriv", f"--reuid={nobody.pw_uid}",
                           f"--regid={nobody.pw_gid}", "--clear-groups"]
            self._owner = (nobody.pw_uid, nobody.pw_gid)
        else:
            self._owner = None

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/attnflow"

    def _run(self, args: list[str]) -> None:
        proc = subprocess.run(self.prefix + args, cwd=self.root, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._owner:
            os.chown(pwfile, *self._owner)
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile),
                   "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        pwfile.unlink()

    def start(self, timeout: float = 120) -> None:
        # fsync off: only the process dies in this test, not the host, so what reached the OS survives the kill
        cmd = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
               "-k", str(self.root), "-c", "fsync=off", "-c", "max_connections=60"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.prefix + cmd, cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}):\n{self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready after {timeout:.0f} s:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def ready(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname="postgres",
                             connect_timeout=3).close()
            return True
        except psycopg2.OperationalError:
            return False

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend (its process group) at once."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    def query(self, database: str, sql: str):
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname=database,
                                connect_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def postgres():
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb, postgres) under /usr/lib/postgresql/*/bin or on PATH: "
                    "`apt-get install -y --no-install-recommends postgresql` enables the database tier "
                    "(.ci/run does it)")
    root = Path(tempfile.mkdtemp(prefix="attnflow-pg-"))  # not under pytest's 0700 tmp tree: nobody must enter it
    server = Postgres(bindir, root, stack.free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_stack(postgres, tmp_path_factory):
    """`attnflow up --database <that server> --no-deploy` on free ports with its own home; `down` afterwards."""
    home = tmp_path_factory.mktemp("db-home")
    prefect_port = stack.free_port()
    mlflow_port = stack.free_port()
    while mlflow_port in (prefect_port, postgres.port):
        mlflow_port = stack.free_port()
    cfg = stack.StackConfig(home=home, prefect_port=prefect_port, mlflow_port=mlflow_port, timeout=300,
                            database=postgres.url)
    try:
        stack.up(cfg, deploy=False)
        yield cfg
    finally:
        stack.down(home)
