"""A throw-away PostgreSQL cluster that a test can stop and restart (as `.ci/run` starts one).

`ThrowawayPostgres.create()` finds the server binaries under `/usr/lib/postgresql/*/bin` (or
`CONTRACTSPEC_PG_BIN`), runs `initdb` into a fresh directory and `pg_ctl start` on a free local
port. When the tests run as root, the binaries run as the `postgres` user (PostgreSQL refuses to run
as root) and the directory is handed to it. Tests call `stop()` and `start()` to simulate an outage,
and `destroy()` at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["ThrowawayPostgres", "find_postgres_bin"]


def find_postgres_bin() -> Path | None:
    """The directory holding `initdb`, `pg_ctl` and `postgres`, or `None` when not installed."""
    configured = os.environ.get("CONTRACTSPEC_PG_BIN")
    candidates = [configured] if configured else sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    found = [Path(c) for c in candidates if c and (Path(c) / "pg_ctl").exists()]
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThrowawayPostgres:
    """One PostgreSQL cluster in a temporary directory, on `127.0.0.1:port`."""

    def __init__(self, bin_dir: Path, directory: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.directory = directory
        self.port = port
        self.as_postgres = os.geteuid() == 0

    @property
    def dsn(self) -> str:
        """SQLAlchemy URL of the cluster's `postgres` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log(self) -> str:
        """The server's log so far (for assertion messages)."""
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _run(self, command: str) -> None:
        if self.as_postgres:
            argv = ["su", "postgres", "-s", "/bin/sh", "-c", command]
        else:
            argv = ["/bin/sh", "-c", command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{command!r} failed ({done.returncode}): {done.stdout}{done.stderr}{self.log}"
            )

    @classmethod
    async def create(cls, bin_dir: Path) -> ThrowawayPostgres:
        """`initdb` a new cluster and start it.

        Raises:
            RuntimeError: A command failed (its output is in the message).
        """
        directory = Path(tempfile.mkdtemp(prefix="contractspec-pg-"))
        directory.chmod(0o755)  # noqa: ASYNC240 - once, before the server starts
        server = cls(bin_dir, directory, _free_port())
        if server.as_postgres:
            shutil.chown(directory, "postgres")
        data = shlex.quote(str(directory / "data"))
        await asyncio.to_thread(
            server._run,
            f"{shlex.quote(str(bin_dir / 'initdb'))} -D {data} -U postgres --auth=trust "
            "--encoding=UTF8 --locale=C.UTF-8 --no-sync >/dev/null",
        )
        await server.start()
        return server

    async def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {shlex.quote(str(self.directory))} "
            "-c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        )
        await asyncio.to_thread(
            self._run,
            f"{shlex.quote(str(self.bin_dir / 'pg_ctl'))} -D "
            f"{shlex.quote(str(self.directory / 'data'))} -l "
            f"{shlex.quote(str(self.directory / 'server.log'))} -w -t 60 "
            f"-o {shlex.quote(options)} start >/dev/null",
        )

    async def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` disconnects every client and rolls back open transactions."""
        await asyncio.to_thread(
            self._run,
            f"{shlex.quote(str(self.bin_dir / 'pg_ctl'))} -D "
            f"{shlex.quote(str(self.directory / 'data'))} -m {mode} -w stop >/dev/null",
        )

    async def destroy(self) -> None:
        """Stop the server (if running) and delete its directory."""
        with contextlib.suppress(RuntimeError):  # already stopped
            await self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
