"""Notification center: templates checked at definition, SSTI, rules, preferences, channels."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from bus_support import T0, Stores, deal_created, deal_moved, envelope
from hypothesis import given, settings
from hypothesis import strategies as st

from contractspec.bus import (
    EventBus,
    InAppChannel,
    MemoryDeliveryLog,
    MemoryDirectory,
    MemoryInAppStore,
    MemoryPreferenceStore,
    NotificationCenter,
    Preference,
    Recipient,
    RetryPolicy,
    Template,
    WebhookSignatureError,
    define_notification,
    sign_webhook,
    to_field,
    to_resolver,
    to_role,
    to_user,
    verify_webhook,
)
from contractspec.bus.testing import CapturingChannel
from contractspec.core import ConfigurationError, SpecDefinitionError, SpecRegistry
from contractspec.core.testing import FakeClock, SequentialIds

WON = Template(subject="Deal {{ deal_id }} moved", body="Hi {{ recipient.name }}: {{ to_stage }}")


def won_notification(**kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "event": deal_moved,
        "recipients": [to_role("manager")],
        "channels": ["email", "in_app"],
        "templates": {"en": WON},
    }
    options.update(kwargs)
    return define_notification("crm.deal_won", **options)


def directory() -> MemoryDirectory:
    d = MemoryDirectory()
    d.add("org-1", Recipient("u1", email="ann@example.com", name="Ann"), roles=["manager"])
    d.add("org-1", Recipient("u2", email="bob@example.com", name="Bob", locale="fr-CA"), roles=["manager"])  # fmt: skip
    d.add("org-1", Recipient("u3", email=None, name="Cy", locale="de"), roles=["sales"])
    d.add("org-2", Recipient("u9", email="zed@example.com", name="Zed"), roles=["manager"])
    return d


def center(spec: Any, *channels: Any, **kwargs: Any) -> NotificationCenter:
    options: dict[str, Any] = {
        "channels": list(channels),
        "directory": directory(),
        "delivery_log": MemoryDeliveryLog(),
        "clock": FakeClock(),
        "ids": SequentialIds("del"),
        "retry": RetryPolicy(max_attempts=3, base_delay=10.0, max_delay=100.0, jitter="none"),
    }
    options.update(kwargs)
    return NotificationCenter([spec], **options)


# -- templates --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "{{ dealid }}",
            "unknown variable(s) dealid; the payload DealMoved has: deal_id, to_stage",
        ),
        ("{{ payload.stage }}", "payload.stage: stage is not a field of DealMoved"),
        ("{{ event.payload.nope }}", "event.payload.nope: nope is not a field of DealMoved"),
        ("{{ event.secret }}", "event has no attribute 'secret'"),
        ("{{ recipient.password }}", "recipient has no attribute 'password'"),
        ("{% if deal_id %}", "template syntax error"),
        ("{{ deal_id }\n", "(line 1): template syntax error"),
        ("{% include 'x.txt' %}", "include is not allowed"),
        ("{{ range(10) }}", "unknown variable(s) range"),
    ],
)
def test_templates_are_checked_against_the_payload_at_definition_time(
    source: str, message: str
) -> None:
    """Unknown variables or fields, bad syntax and includes fail when the notification is defined."""
    with pytest.raises(SpecDefinitionError) as info:
        won_notification(templates={"en": Template(body=source)})
    assert message in info.value.message
    assert info.value.message.startswith("crm.deal_won@1 template */en body")


SSTI_PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ deal_id.__class__.__base__.__subclasses__() }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ config.items() }}",
    "{{ request.application.__globals__ }}",
    "{{ deal_id|attr('__class__') }}",
    "{{ '{0.__class__}'.format(deal_id) }}",
    "{{ payload['__class__'] }}",
    "{{ event.payload.__dict__ }}",
    "{{ recipient.__class__.__init__.__globals__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ self }}",
    "{% import 'os' as os %}",
    "{% extends 'base.html' %}",
]


@pytest.mark.parametrize("payload", SSTI_PAYLOADS)
def test_server_side_template_injection_payloads_are_refused_at_definition(payload: str) -> None:
    """Classic Jinja2 SSTI payloads never compile into a notification."""
    with pytest.raises(SpecDefinitionError):
        won_notification(templates={"en": Template(body=payload)})


async def test_payload_values_are_rendered_as_data_never_as_templates() -> None:
    """A payload containing template syntax is printed literally, not evaluated."""
    email = CapturingChannel("email")
    inbox = CapturingChannel("in_app")
    c = center(won_notification(), email, inbox)
    evil = "{{ ''.__class__.__mro__ }}{% for x in range(9) %}x{% endfor %}"
    await c.handle(envelope(1, name="crm.deal.moved", deal_id=evil, to_stage="won"))
    assert email.sent[0].subject == f"Deal {evil} moved"


async def test_locale_fallbacks_and_channel_specific_templates() -> None:
    """fr-CA uses `fr`, de falls back to the default `en`; `email:fr` overrides `fr` for email."""
    spec = won_notification(
        templates={
            "en": WON,
            "fr": Template(subject="Affaire {{ deal_id }}", body="Bonjour {{ recipient.name }}"),
            "email:fr": Template(
                subject="[email] Affaire {{ deal_id }}", body="Cher {{ recipient.name }}"
            ),
        },
        recipients=[to_role("manager"), to_role("sales")],
    )
    email = CapturingChannel("email")
    inbox = CapturingChannel("in_app")
    c = center(spec, email, inbox)
    await c.handle(envelope(1, name="crm.deal.moved", deal_id="d1", to_stage="won"))
    assert [(m.recipient.id, m.locale, m.subject, m.body) for m in email.sent] == [
        ("u1", "en", "Deal d1 moved", "Hi Ann: won"),
        ("u2", "fr", "[email] Affaire d1", "Cher Bob"),
        ("u3", "en", "Deal d1 moved", "Hi Cy: won"),
    ]
    assert [(m.recipient.id, m.subject) for m in inbox.sent] == [
        ("u1", "Deal d1 moved"),
        ("u2", "Affaire d1"),
        ("u3", "Deal d1 moved"),
    ]


def test_definition_errors_name_the_field() -> None:
    """Bad names, channels, locales, recipients and missing defaults raise SpecDefinitionError."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"channels": []}, "channels"),
        ({"channels": ["E-mail"]}, "channels"),
        ({"recipients": []}, "recipients"),
        ({"templates": {}}, "templates"),
        ({"templates": {"fr": WON}}, "templates"),
        ({"templates": {"en": WON, "sms:en": WON}}, "templates"),
        ({"templates": {"en": WON, "english!": WON}}, None),
        ({"event": "crm.deal.moved"}, "event"),
    ]
    for kwargs, field in cases:
        with pytest.raises(SpecDefinitionError) as info:
            won_notification(**kwargs)
        if field is not None:
            assert info.value.details == {"field": field}, kwargs
    with pytest.raises(SpecDefinitionError) as info:
        define_notification(
            "DealWon",
            event=deal_moved,
            recipients=[to_user("u1")],
            channels=["email"],
            templates={"en": WON},
        )
    assert info.value.details == {"field": "name"}


@settings(max_examples=60, deadline=None)
@given(st.from_regex(r"[a-z]{3,12}", fullmatch=True).filter(lambda s: s not in {"deal_id", "to_stage", "event", "payload", "recipient"}))  # fmt: skip
def test_any_unknown_variable_is_rejected(name: str) -> None:
    """Every variable the payload does not define fails definition, naming the variable."""
    with pytest.raises(SpecDefinitionError) as info:
        won_notification(templates={"en": Template(body="{{ " + name + " }}")})
    assert f"unknown variable(s) {name};" in info.value.message


def test_notifications_register_in_the_spec_registry() -> None:
    """A NotificationSpec is a spec of kind `notification` in the same registry as its event."""
    spec = won_notification()
    registry = SpecRegistry(deal_moved, spec)
    assert registry.specs("notification") == [spec]
    c = NotificationCenter(
        registry,
        channels=[CapturingChannel("email"), CapturingChannel("in_app")],
        directory=directory(),
        delivery_log=MemoryDeliveryLog(),
    )
    assert c.event_names == ["crm.deal.moved"]


def test_center_refuses_notifications_without_a_channel_adapter() -> None:
    """A notification using a channel no adapter provides is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="uses channel\\(s\\) in_app"):
        center(won_notification(), CapturingChannel("email"))
    with pytest.raises(ConfigurationError, match="two channel adapters are named 'email'"):
        center(won_notification(), CapturingChannel("email"), CapturingChannel("email"))


# -- rules, preferences, idempotency, retries -------------------------------------------------


async def test_recipient_rules_union_without_duplicates_and_when_filter() -> None:
    """Users, roles, payload fields and resolvers combine; `when` skips non-matching events."""

    async def by_stage(event: Any, d: Any) -> list[Recipient]:
        return (
            [Recipient("ext", email="ext@example.com")] if event.payload.to_stage == "won" else []
        )

    spec = won_notification(
        recipients=[to_user("u1"), to_role("manager"), to_field("payload.deal_id"), to_resolver(by_stage)],
        channels=["email"],
        when={"payload.to_stage": "won"},
    )  # fmt: skip
    email = CapturingChannel("email")
    d = directory()
    d.add("org-1", Recipient("d-owner", email="o@example.com"))
    c = center(spec, email, directory=d)
    await c.handle(envelope(1, name="crm.deal.moved", deal_id="d-owner", to_stage="won"))
    await c.handle(envelope(2, name="crm.deal.moved", deal_id="d-owner", to_stage="lost"))
    assert [m.recipient.id for m in email.sent] == ["u1", "u2", "d-owner", "ext"]
    assert {m.event_id for m in email.sent} == {"ev-0001"}


async def test_preferences_opt_out_per_channel_and_critical_overrides() -> None:
    """Opt-outs drop a channel (user over org); critical notifications ignore them."""
    prefs = MemoryPreferenceStore()
    await prefs.set(Preference("org-1", None, "*", "email", False))  # org: no email
    await prefs.set(Preference("org-1", "u2", "crm.deal_won", "email", True))  # u2 wants it
    await prefs.set(Preference("org-1", "u1", "crm.deal_won", "*", False))  # u1: nothing
    email, inbox = CapturingChannel("email"), CapturingChannel("in_app")
    c = center(won_notification(), email, inbox, preferences=prefs)
    await c.handle(envelope(1, name="crm.deal.moved", deal_id="d1"))
    assert [m.recipient.id for m in email.sent] == ["u2"]
    assert [m.recipient.id for m in inbox.sent] == ["u2"]
    email2, inbox2 = CapturingChannel("email"), CapturingChannel("in_app")
    critical = center(won_notification(critical=True), email2, inbox2, preferences=prefs)
    await critical.handle(envelope(1, name="crm.deal.moved", deal_id="d1"))
    assert [m.recipient.id for m in email2.sent] == ["u1", "u2"]


async def test_redelivered_events_send_nothing_twice() -> None:
    """Handling the same event again creates no delivery: idempotent per (event, recipient, channel)."""
    email, inbox = CapturingChannel("email"), CapturingChannel("in_app")
    c = center(won_notification(), email, inbox)
    first = await c.handle(envelope(1, name="crm.deal.moved"))
    again = await c.handle(envelope(1, name="crm.deal.moved"))
    assert [(r.recipient_id, r.channel, r.status) for r in first] == [
        ("u1", "email", "sent"),
        ("u1", "in_app", "sent"),
        ("u2", "email", "sent"),
        ("u2", "in_app", "sent"),
    ]
    assert again == []
    assert (len(email.sent), len(inbox.sent)) == (2, 2)


async def test_failed_sends_back_off_exponentially_then_give_up() -> None:
    """Failures are queued with growing delays; retry_due resends when due; the limit fails it."""
    clock = FakeClock()
    flaky = CapturingChannel("email", fail_times=1)
    down = CapturingChannel("in_app", fail_times=99)
    c = center(won_notification(recipients=[to_user("u1")]), flaky, down, clock=clock)
    records = await c.handle(envelope(1, name="crm.deal.moved"))
    assert [(r.channel, r.status, r.attempts, r.next_attempt_at) for r in records] == [
        ("email", "queued", 1, T0 + timedelta(seconds=10)),
        ("in_app", "queued", 1, T0 + timedelta(seconds=10)),
    ]
    assert records[0].last_error == "ConnectionError: email is down (simulated)"
    assert await c.retry_due() == []
    clock.advance(10)
    second = await c.retry_due()
    assert [(r.channel, r.status, r.attempts) for r in second] == [
        ("email", "sent", 2),
        ("in_app", "queued", 2),
    ]
    assert second[1].next_attempt_at == T0 + timedelta(seconds=30)  # 10 s, then 20 s
    clock.advance(20)
    third = await c.retry_due()
    assert [(r.channel, r.status, r.attempts) for r in third] == [("in_app", "failed", 3)]
    assert [m.subject for m in flaky.sent] == ["Deal d1 moved"]
    assert down.attempts == 3


async def test_center_on_every_backend_fills_inbox_and_delivery_log(stores: Stores) -> None:
    """Through the bus, in-app notifications and delivery records land in the backend's stores."""
    bus = EventBus()
    c = NotificationCenter(
        [won_notification(channels=["in_app"])],
        channels=[InAppChannel(stores.inbox, clock=FakeClock())],
        directory=directory(),
        delivery_log=stores.deliveries,
        preferences=stores.preferences,
        clock=FakeClock(),
        ids=SequentialIds("del"),
    )
    c.subscribe(bus)
    await stores.preferences.set(Preference("org-1", "u2", "crm.deal_won", "in_app", False))
    report = await bus.deliver(envelope(1, name="crm.deal.moved", deal_id="d7"))
    assert report.delivered_to == ("contractspec.notifications:crm.deal.moved",)
    await bus.deliver(envelope(1, name="crm.deal.moved", deal_id="d7"))  # redelivery
    page = await stores.inbox.list("org-1", "u1")
    assert [(n.id, n.title, n.body, n.notification) for n in page] == [
        ("del-000001", "Deal d7 moved", "Hi Ann: won", "crm.deal_won")
    ]
    assert await stores.inbox.list("org-1", "u2") == page.__class__(())
    log = await stores.deliveries.list(event_id="ev-0001")
    assert [(r.recipient_id, r.channel, r.status, r.attempts) for r in log] == [
        ("u1", "in_app", "sent", 1)
    ]


# -- email over a real SMTP server ------------------------------------------------------------


class _SmtpSink:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
async def smtp_server() -> AsyncIterator[tuple[int, _SmtpSink]]:
    """An aiosmtpd SMTP server in this event loop on a free port."""
    from aiosmtpd.smtp import SMTP

    sink = _SmtpSink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="mail.test", loop=loop), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1], sink
    finally:
        server.close()
        await server.wait_closed()


async def test_email_channel_delivers_over_smtp(smtp_server: tuple[int, _SmtpSink]) -> None:
    """EmailChannel sends a real SMTP message with subject, text, HTML and delivery headers."""
    from contractspec.bus.email import EmailChannel

    port, sink = smtp_server
    email = EmailChannel(hostname="127.0.0.1", port=port, sender="crm@example.com", sender_name="CRM", start_tls=False)  # fmt: skip
    spec = won_notification(
        channels=["email"],
        recipients=[to_role("manager"), to_role("sales")],
        templates={"en": Template(subject="Won {{ deal_id }}", body="Text {{ to_stage }}", html="<b>{{ deal_id }}</b>")},
    )  # fmt: skip
    c = center(spec, email)
    records = await c.handle(envelope(1, name="crm.deal.moved", deal_id="<d1>", to_stage="won"))
    assert [(r.recipient_id, r.status) for r in records] == [
        ("u1", "sent"),
        ("u2", "sent"),
        ("u3", "queued"),
    ]
    assert records[2].last_error == "EmailDeliveryError: recipient 'u3' has no email address"
    assert [e.rcpt_tos for e in sink.envelopes] == [["ann@example.com"], ["bob@example.com"]]
    mail = message_from_bytes(sink.envelopes[0].content)
    assert mail["Subject"] == "Won <d1>"
    assert mail["From"] == "CRM <crm@example.com>"
    assert mail["To"] == "Ann <ann@example.com>"
    assert mail["X-ContractSpec-Delivery"] == "del-000001"
    parts = {p.get_content_type(): p.get_payload(decode=True).decode() for p in mail.walk() if not p.is_multipart()}  # fmt: skip
    assert parts == {"text/plain": "Text won\r\n", "text/html": "<b>&lt;d1&gt;</b>\r\n"}


async def test_email_channel_reports_an_unreachable_server() -> None:
    """A refused connection becomes EmailDeliveryError, recorded as the delivery's last error."""
    from contractspec.bus.email import EmailChannel, EmailDeliveryError

    email = EmailChannel(hostname="127.0.0.1", port=1, sender="crm@example.com", timeout=5)
    c = center(won_notification(channels=["email"], recipients=[to_user("u1")]), email)
    (record,) = await c.handle(envelope(1, name="crm.deal.moved"))
    assert record.status == "queued"
    assert (record.last_error or "").startswith(
        "EmailDeliveryError: SMTP delivery to 127.0.0.1 failed"
    )
    with pytest.raises(ConfigurationError):
        EmailChannel(hostname="h", sender="not-an-address")
    assert issubclass(EmailDeliveryError, RuntimeError)


# -- webhooks over a real HTTP server ---------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]
    statuses: list[int]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers.items()), body))
        status = self.statuses.pop(0) if self.statuses else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, type[_Receiver]]]:
    """A threaded HTTP server on 127.0.0.1 and a free port, recording POSTs."""
    handler = type("Receiver", (_Receiver,), {"received": [], "statuses": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_webhook_channel_posts_signed_json_that_receivers_verify(
    webhook_server: tuple[str, type[_Receiver]],
) -> None:
    """The POST carries a timestamp and HMAC-SHA256 signature that verify_webhook accepts."""
    from contractspec.bus.webhook import WebhookChannel

    url, receiver = webhook_server
    receiver.statuses.extend([500])
    clock = FakeClock()
    hook = WebhookChannel(secret="s3cret", url=url, clock=clock)
    try:
        c = center(
            won_notification(channels=["webhook"], recipients=[to_user("u1")]), hook, clock=clock
        )
        (record,) = await c.handle(envelope(1, name="crm.deal.moved", deal_id="d1"))
        assert (record.status, record.last_error) == (
            "queued",
            f"WebhookDeliveryError: webhook {url} answered 500",
        )
        clock.advance(10)
        (retried,) = await c.retry_due()
        assert (retried.status, retried.attempts) == ("sent", 2)
    finally:
        await hook.aclose()
    headers, body = receiver.received[1]
    stamp = verify_webhook("s3cret", body, headers, now=T0.timestamp() + 10)
    assert stamp == int(T0.timestamp()) + 10
    assert headers["X-ContractSpec-Delivery"] == "del-000001"
    doc = json.loads(body)
    assert (doc["notification"], doc["event"]["id"], doc["message"]["subject"]) == (
        "crm.deal_won",
        "ev-0001",
        "Deal d1 moved",
    )
    assert receiver.received[0][1] == body  # the retry sends the same document


def test_verify_webhook_rejects_tampering_wrong_secret_replays_and_missing_headers() -> None:
    """Every forgery is a WebhookSignatureError naming the header at fault."""
    body = b'{"a":1}'
    good = {
        "X-ContractSpec-Timestamp": "1000",
        "X-ContractSpec-Signature": sign_webhook("k", body, 1000),
    }
    assert verify_webhook("k", body, good, now=1000) == 1000
    rotated = {**good, "x-contractspec-signature": "v1=00, " + good["X-ContractSpec-Signature"]}
    del rotated["X-ContractSpec-Signature"]
    assert verify_webhook("k", body, rotated, now=1100) == 1000
    cases = [
        ("k", b'{"a":2}', good, 1000, "X-ContractSpec-Signature"),
        ("other", body, good, 1000, "X-ContractSpec-Signature"),
        ("k", body, good, 1301, "X-ContractSpec-Timestamp"),
        ("k", body, {"X-ContractSpec-Signature": "v1=x"}, 1000, "X-ContractSpec-Timestamp"),
        ("k", body, {**good, "X-ContractSpec-Timestamp": "soon"}, 1000, "X-ContractSpec-Timestamp"),
        (
            "k",
            body,
            {**good, "X-ContractSpec-Signature": "v0=abc"},
            1000,
            "X-ContractSpec-Signature",
        ),
    ]
    for secret, data, headers, now, field in cases:
        with pytest.raises(WebhookSignatureError) as info:
            verify_webhook(secret, data, headers, now=now)
        assert info.value.details == {"field": field}
    with pytest.raises(WebhookSignatureError):
        sign_webhook("", body, 1)


@given(st.binary(max_size=200), st.binary(min_size=1, max_size=200))
def test_any_changed_body_fails_verification(body: bytes, suffix: bytes) -> None:
    """Appending any bytes to a signed body breaks the signature."""
    headers = {
        "X-ContractSpec-Timestamp": "5",
        "X-ContractSpec-Signature": sign_webhook("k", body, 5),
    }
    assert verify_webhook("k", body, headers, now=5) == 5
    with pytest.raises(WebhookSignatureError):
        verify_webhook("k", body + suffix, headers, now=5)


async def test_in_app_channel_ignores_a_repeat_of_the_same_delivery() -> None:
    """Sending the same delivery twice to the in-app store keeps one notification."""
    inbox = MemoryInAppStore()
    channel = InAppChannel(inbox, clock=FakeClock())
    email = CapturingChannel("email")
    c = center(won_notification(recipients=[to_user("u1")]), email, channel)
    await c.handle(envelope(1, name="crm.deal.moved"))
    (record,) = [r for r in await c.delivery_log.list() if r.channel == "in_app"]
    from contractspec.bus import OutgoingMessage

    await channel.send(OutgoingMessage.from_dict(record.message))
    assert await inbox.unread_count("org-1", "u1") == 1
    assert deal_created.name == "crm.deal.created"  # the other event triggers nothing
    assert await c.handle(envelope(2)) == []
