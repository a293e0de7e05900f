"""A PostgreSQL server for the local stack: ``attnflow up --database postgresql://USER[:PASSWORD]@HOST[:PORT][/NAME]``.

Prefect's server and MLflow's server each need a database of their own (both keep an ``alembic_version`` table), so
one URL names the server and a base name ``NAME`` (default ``attnflow``): Prefect's data go to ``NAME_prefect``
(driver asyncpg, ``postgresql+asyncpg://``) and MLflow's to ``NAME_mlflow`` (driver psycopg2). :func:`prepare`
checks the URL before anything starts, connects to the server's ``postgres`` database and creates the two
databases when they are missing (the role needs CREATEDB for that; otherwise create them beforehand).

Passwords never reach a command line or ``stack.json``: the servers get their URLs through the environment
(``PREFECT_SERVER_DATABASE_CONNECTION_URL``, ``MLFLOW_BACKEND_STORE_URI``), and :func:`redact` is what is shown.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+asyncpg")
DEFAULT_NAME = "attnflow"
CONNECT_TIMEOUT = 10  # seconds, for the check in prepare()


class DatabaseError(ValueError):
    """The --database URL is invalid, the server does not answer, or a database cannot be created."""


@dataclass(frozen=True)
class Database:
    """A parsed ``--database`` URL (credentials kept, never printed: use :attr:`shown`)."""

    user: str
    password: str
    host: str
    port: int
    name: str  # base name: NAME_prefect and NAME_mlflow
    query: str = ""  # e.g. sslmode=require, passed on to both drivers' URLs

    @property
    def prefect_db(self) -> str:
        return f"{self.name}_prefect"

    @property
    def mlflow_db(self) -> str:
        return f"{self.name}_mlflow"

    def url(self, database: str, driver: str = "postgresql") -> str:
        auth = urllib.parse.quote(self.user, safe="")
        if self.password:
            auth += ":" + urllib.parse.quote(self.password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{driver}://{auth}@{host}:{self.port}/{database}" + (f"?{self.query}" if self.query else "")

    @property
    def prefect_url(self) -> str:
        return self.url(self.prefect_db, "postgresql+asyncpg")

    @property
    def mlflow_url(self) -> str:
        return self.url(self.mlflow_db, "postgresql+psycopg2")

    @property
    def shown(self) -> str:
        """The URL without its password (for messages, ``attnflow status`` and stack.json)."""
        return redact(self.url(self.name))


def redact(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{netloc[0].split(':', 1)[0]}:***@{netloc[1]}"))


def parse(url: str) -> Database:
    """Check the form of a ``--database`` URL (no connection yet); raises DatabaseError with the expected form."""
    form = "expected postgresql://USER[:PASSWORD]@HOST[:PORT][/NAME]"
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port or 5432
    except ValueError as e:
        raise DatabaseError(f"--database {redact(url)!r} is not a valid URL ({e}); {form}") from None
    if parts.scheme not in SCHEMES:
        hint = " (attnflow without --database keeps SQLite)" if parts.scheme.startswith("sqlite") else ""
        raise DatabaseError(f"--database {redact(url)!r}: only PostgreSQL is supported{hint}; {form}")
    if not parts.hostname or not parts.username:
        raise DatabaseError(f"--database {redact(url)!r} names no {'host' if not parts.hostname else 'user'}; {form}")
    name = urllib.parse.unquote(parts.path.strip("/")) or DEFAULT_NAME
    if "/" in name or not name.replace("_", "").replace("-", "").isalnum() or len(name) > 50:
        raise DatabaseError(f"--database {redact(url)!r}: NAME must be letters, digits, '_' or '-' (at most 50), "
                            f"got {name!r}; {form}")
    return Database(user=urllib.parse.unquote(parts.username), password=urllib.parse.unquote(parts.password or ""),
                    host=parts.hostname, port=port, name=name, query=parts.query)


def _connect(db: Database, database: str):
    try:
        import psycopg2
    except ImportError as e:  # a runtime dependency (requirements.txt); only a broken install lacks it
        raise DatabaseError(f"--database needs psycopg2 (pip install -r requirements.txt): {e}") from None
    try:
        return psycopg2.connect(db.url(database), connect_timeout=CONNECT_TIMEOUT)
    except psycopg2.Error as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DatabaseError(f"cannot connect to the PostgreSQL server of --database {db.shown}: {reason}") from None


def prepare(url: str) -> Database:
    """Parse ``url``, connect, and create ``NAME_prefect`` / ``NAME_mlflow`` when missing; returns the Database."""
    import psycopg2

    db = parse(url)
    conn = _connect(db, "postgres")
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            for name in (db.prefect_db, db.mlflow_db):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone():
                    continue
                try:
                    cur.execute(f'CREATE DATABASE "{name}"')  # name checked in parse(): [A-Za-z0-9_-]
                except psycopg2.Error as e:
                    reason = " ".join(str(e).split())
                    raise DatabaseError(f"database {name!r} does not exist on {db.shown} and cannot be created "
                                        f"({reason}); create it, or grant the role CREATEDB") from None
    finally:
        conn.close()
    for name in (db.prefect_db, db.mlflow_db):  # the role may see the server but not be allowed into a database
        _connect(db, name).close()
    return db
