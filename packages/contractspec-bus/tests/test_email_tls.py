"""EmailChannel with SMTP credentials requires TLS: never sends them over a plain connection."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from contractspec.bus import OutgoingMessage, Recipient
from contractspec.core import ConfigurationError

pytest.importorskip("aiosmtplib")
pytest.importorskip("aiosmtpd")


class _Server:
    """What an aiosmtpd server saw: AUTH attempts (with whether TLS was on) and messages."""

    def __init__(self) -> None:
        self.auth: list[tuple[bytes, bool]] = []
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 Message accepted for delivery"

    def authenticator(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        from aiosmtpd.smtp import AuthResult

        self.auth.append((auth_data.password, session.ssl is not None))
        return AuthResult(success=True)


def _certificate(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (server context, client context trusting it)."""
    openssl = shutil.which("openssl")
    if openssl is None:  # pragma: no cover - openssl is on every CI image
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def _serve(sink: _Server, tls: ssl.SSLContext | None) -> Any:
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(
            sink,
            hostname="mail.test",
            loop=loop,
            tls_context=tls,
            authenticator=sink.authenticator,
            auth_require_tls=False,  # a careless server: the client must protect itself
        ),
        "127.0.0.1",
        0,
    )


@pytest.fixture
async def plain_server() -> AsyncIterator[tuple[int, _Server]]:
    sink = _Server()
    server = await _serve(sink, None)
    try:
        yield server.sockets[0].getsockname()[1], sink
    finally:
        server.close()
        await server.wait_closed()


def _message() -> OutgoingMessage:
    return OutgoingMessage(
        delivery_id="del-1",
        notification="crm.deal_won",
        channel="email",
        org_id="org-1",
        event_id="ev-1",
        event_name="crm.deal.moved",
        recipient=Recipient("u1", email="ann@example.com", name="Ann"),
        subject="Won",
        body="Deal d1 is won",
        html=None,
        locale="en",
        event={},
    )


async def test_credentials_are_never_sent_to_a_server_without_starttls(
    plain_server: tuple[int, _Server],
) -> None:
    """A server that offers no STARTTLS: the send fails (EmailDeliveryError) and the password
    never reaches the server (before, STARTTLS was opportunistic and AUTH went in clear)."""
    from contractspec.bus.email import EmailChannel, EmailDeliveryError

    port, sink = plain_server
    email = EmailChannel(
        hostname="127.0.0.1", port=port, sender="crm@example.com",
        username="crm", password="s3cret", timeout=5,
    )  # fmt: skip
    with pytest.raises(EmailDeliveryError, match="STARTTLS"):
        await email.send(_message())
    assert sink.auth == []
    assert sink.messages == []


async def test_credentials_go_over_starttls_when_the_server_offers_it(tmp_path: Path) -> None:
    """With a server offering STARTTLS, AUTH happens inside TLS and the message is delivered."""
    from contractspec.bus.email import EmailChannel

    server_ctx, client_ctx = _certificate(tmp_path)
    sink = _Server()
    server = await _serve(sink, server_ctx)
    try:
        port = server.sockets[0].getsockname()[1]
        email = EmailChannel(
            hostname="127.0.0.1", port=port, sender="crm@example.com",
            username="crm", password="s3cret", tls_context=client_ctx, timeout=5,
        )  # fmt: skip
        await email.send(_message())
    finally:
        server.close()
        await server.wait_closed()
    assert sink.auth == [(b"s3cret", True)]
    assert [m.rcpt_tos for m in sink.messages] == [["ann@example.com"]]


def test_credentials_without_tls_are_refused_at_construction() -> None:
    """`start_tls=False` with credentials would send them in clear: ConfigurationError naming
    the field; so are half credentials and both TLS modes at once."""
    from contractspec.bus.email import EmailChannel

    with pytest.raises(ConfigurationError, match="requires TLS") as info:
        EmailChannel(hostname="h", sender="a@b.c", username="u", password="p", start_tls=False)
    assert info.value.details == {"field": "start_tls"}
    with pytest.raises(ConfigurationError) as info:
        EmailChannel(hostname="h", sender="a@b.c", username="u")
    assert info.value.details == {"field": "password"}
    with pytest.raises(ConfigurationError):
        EmailChannel(hostname="h", sender="a@b.c", use_tls=True, start_tls=True)
    implicit = EmailChannel(hostname="h", sender="a@b.c", username="u", password="p", use_tls=True)
    assert (implicit.use_tls, implicit.start_tls) == (True, None)
    required = EmailChannel(hostname="h", sender="a@b.c", username="u", password="p")
    assert required.start_tls is True
