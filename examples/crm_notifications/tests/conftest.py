"""Fixtures: a real SMTP server (aiosmtpd), a real webhook receiver, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from contractspec.core.testing.fixtures import sql_engine, sql_kind

__all__ = ["sql_engine", "sql_kind"]


class SmtpInbox:
    """What the SMTP server received."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.port = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpInbox]:
    """An aiosmtpd server on 127.0.0.1 and a free port, in the test's event loop."""
    from aiosmtpd.smtp import SMTP

    inbox = SmtpInbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(inbox, loop=loop), "127.0.0.1", 0)
    inbox.port = server.sockets[0].getsockname()[1]
    try:
        yield inbox
    finally:
        server.close()
        await server.wait_closed()


class Hooks(BaseHTTPRequestHandler):
    """Records webhook POSTs (headers, raw body) and answers 204."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def hooks() -> Iterator[tuple[str, type[Hooks]]]:
    """A threaded HTTP server on 127.0.0.1 and a free port."""
    handler = type("RecordingHooks", (Hooks,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/crm", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
