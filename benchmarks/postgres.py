"""A throwaway PostgreSQL server on loopback, for the MLflow server's tests and its load benchmark.

:func:`local_postgres` runs Debian's (or any) PostgreSQL binaries: ``initdb`` into a fresh folder, the
server on a free loopback port with its socket in that folder, a login role with a password (SCRAM over
TCP) and the databases asked for, owned by that role; everything is stopped and deleted afterwards.
PostgreSQL refuses to run as root, so as root (CI) every server command runs as the ``postgres`` user via
``runuser`` and the folder is handed to that user. SQL goes to ``psql`` on its standard input, never on
its command line, so the role's password never shows in ``ps``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries here (Debian: apt-get install postgresql)."""


def binary(name: str) -> str:
    """A PostgreSQL program: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if not candidates:
        raise PostgresMissing(f"{name} not found (install Debian's postgresql package)")
    return candidates[0]


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Postgres:
    """A running server: where it listens and the role the MLflow server logs in as."""

    port: int
    folder: Path
    user: str
    password: str = field(repr=False)

    def uri(self, database: str) -> str:
        """A SQLAlchemy URI without the password (libpq takes it from ``PGPASSWORD``)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def query(self, database: str, sql: str) -> list[tuple]:
        """Rows of ``sql`` run as the role over TCP (what the MLflow server sees)."""
        import psycopg

        with (
            psycopg.connect(
                host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname=database
            ) as conn,
            conn.cursor() as cursor,
        ):
            cursor.execute(sql)
            return list(cursor.fetchall())


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(
        _as_postgres(argv), input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr[-2000:]}")


@contextlib.contextmanager
def local_postgres(databases: tuple[str, ...], user: str = "oncolake") -> Iterator[Postgres]:
    """A fresh PostgreSQL server with ``databases`` owned by ``user`` (random password); removed after."""
    initdb, pg_ctl, psql = binary("initdb"), binary("pg_ctl"), binary("psql")
    folder = Path(tempfile.mkdtemp(prefix="oncolake-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data, port = folder / "data", free_port()
    password = secrets.token_urlsafe(18)
    server = Postgres(port, folder, user, password)
    started = False
    try:
        _run([initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256"])
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=100"
        _run([pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start"])
        started = True
        sql = [f"CREATE ROLE {user} LOGIN PASSWORD '{password}';"]
        sql += [f"CREATE DATABASE {name} OWNER {user};" for name in databases]
        _run(
            [psql, "-h", str(folder), "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"],
            "\n".join(sql),
        )
        yield server
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)
