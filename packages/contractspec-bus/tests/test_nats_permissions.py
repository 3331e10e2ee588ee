"""Tenant isolation enforced by the broker: NATS subject permissions on a real `nats-server -js`.

The permission set documented in docs/bus/scaling-out.md ("Tenant isolation") is built here by
`tenant_permissions` and given to users `org-a` and `org-b`; the relay may only publish events
and an admin manages the stream and the consumers. Each test says which bug would make it fail.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from bus_support import build_registry, envelope
from nats_support import NatsServer, start_server

nats = pytest.importorskip("nats")

from nats.js import api  # noqa: E402

from contractspec.bus import MemoryDeadLetterStore  # noqa: E402
from contractspec.bus.nats import JetStreamPublisher, JetStreamSpec, JetStreamSubscriber  # noqa: E402
from contractspec.core import ConfigurationError, EventEnvelope  # noqa: E402

STREAM = JetStreamSpec.from_registry(build_registry(), name="CRM", prefix="cs.events")
ORGS = ["org-a", "org-b", "org-a.x", "*", None]  # 3 events each


def tenant_permissions(stream: str, durable: str, org: str) -> dict[str, Any]:
    """All a `JetStreamSubscriber(bind=True)` of one tenant needs, and nothing more.

    Publish: consumer info (the bind check), pull requests and acks, each for its own durable
    consumer only. Subscribe: its own inbox prefix (`nats.connect(inbox_prefix=...)`), where the
    pulled messages and the API replies arrive. No `$JS.API.CONSUMER.CREATE`, no stream access,
    no event subjects: the consumer's org filter is set by the admin who created it.
    """
    return {
        "publish": {
            "allow": [
                f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
                f"$JS.ACK.{stream}.{durable}.>",
            ]
        },
        "subscribe": {"allow": [f"_INBOX_{org}.>"]},
    }


def _with(
    perms: dict[str, Any], *, publish: Sequence[str] = (), subscribe: Sequence[str] = ()
) -> dict[str, Any]:
    return {
        "publish": {"allow": [*perms["publish"]["allow"], *publish]},
        "subscribe": {"allow": list(subscribe) or perms["subscribe"]["allow"]},
    }


ORG_A = tenant_permissions("CRM", "billing-org-a", "org-a")
USERS: dict[str, dict[str, Any] | None] = {
    "admin": None,  # every subject: stream and consumer management
    "relay": {
        "publish": {"allow": ["cs.events.>"]},
        "subscribe": {"allow": ["_INBOX_relay.>"]},
    },
    "org-a": ORG_A,
    "org-b": tenant_permissions("CRM", "billing-org-b", "org-b"),
    # org-a, allowed to create (or update) its own consumer with its own org filter only
    "org-a-creator": _with(
        ORG_A, publish=["$JS.API.CONSUMER.CREATE.CRM.billing-org-a.cs.events.org-a.>"]
    ),
    # wrong sets, to show what the assertions catch
    "leaky-create": _with(ORG_A, publish=["$JS.API.CONSUMER.DURABLE.CREATE.CRM.billing-org-a"]),
    "leaky-inbox": _with(ORG_A, subscribe=["_INBOX.>"]),
}


#: Users sharing org-a's inbox permission connect with its prefix.
INBOXES = {"org-a-creator": "_INBOX_org-a", "leaky-create": "_INBOX_org-a"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    """A `nats-server -js` with the users above (a fresh one per test: empty stream)."""
    users = [
        {"user": name, "password": name, **({} if p is None else {"permissions": p})}
        for name, p in USERS.items()
    ]
    config = tmp_path / "nats.conf"
    config.write_text(json.dumps({"authorization": {"users": users}}, indent=2))
    server = start_server(tmp_path / "store", extra=["-c", str(config)])
    try:
        yield server
    finally:
        server.stop()


class Clients:
    """Connections as the configured users, each recording the errors the server sends it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connections: list[Any] = []
        self.errors: dict[str, list[str]] = {}

    async def js(self, user: str, *, inbox: str | None = None) -> Any:
        errors = self.errors.setdefault(user, [])

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        inbox = inbox or INBOXES.get(user, f"_INBOX_{user}")
        nc = await nats.connect(
            self.url, user=user, password=user, inbox_prefix=inbox, error_cb=on_error
        )
        self.connections.append(nc)
        return nc.jetstream(timeout=2)

    def violations(self, user: str) -> list[str]:
        return [e for e in self.errors.get(user, []) if "permissions violation" in e]


@pytest.fixture
async def clients(server: NatsServer) -> AsyncIterator[Clients]:
    """The admin's stream is ensured; the relay has published 3 events of each org in ORGS."""
    c = Clients(server.url)
    try:
        admin = await c.js("admin")
        await STREAM.ensure(admin)
        publisher = JetStreamPublisher(await c.js("relay"), STREAM)
        n = 0
        for org in ORGS:
            for _ in range(3):
                await publisher.deliver(envelope(n, org_id=org))
                n += 1
        yield c
    finally:
        for nc in c.connections:
            await nc.close()


class Seen:
    def __init__(self) -> None:
        self.events: list[EventEnvelope] = []

    async def __call__(self, event: EventEnvelope) -> None:
        self.events.append(event)

    @property
    def orgs(self) -> list[str | None]:
        return [e.org_id for e in self.events]


def _subscriber(js: Any, durable: str, handler: Seen, **kwargs: Any) -> JetStreamSubscriber:
    return JetStreamSubscriber(
        js, STREAM, durable=durable, handler=handler, dead_letters=MemoryDeadLetterStore(), **kwargs
    )


async def _admin_creates(clients: Clients, durable: str, **kwargs: Any) -> None:
    """The deploy step: an admin creates the tenant's consumer from the subscriber's config."""
    admin = await clients.js("admin")
    await admin.add_consumer(
        STREAM.name, _subscriber(admin, durable, Seen(), **kwargs).consumer_config()
    )


async def _consume(sub: JetStreamSubscriber, handler: Seen, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(handler.events) < count:
        assert time.monotonic() < deadline, f"{len(handler.events)} of {count}: {sub.stats}"
        await sub.run_once(wait=1.0)


async def test_an_org_a_user_consumes_org_a_through_a_consumer_the_admin_created(
    clients: Clients,
) -> None:
    """With exactly `tenant_permissions`, the org-a subscriber (bind=True) gets org-a's 3 events,
    acks them, and never an event of org-b, 'org-a.x', '*' or no org; without bind it is refused.

    Fails if: the permission set misses a subject the subscriber uses (a violation is recorded or
    it never receives), the subscriber ignored org_id (the admin's consumer would filter every
    org), or bind still tried to create the consumer.
    """
    await _admin_creates(clients, "billing-org-a", org_id="org-a")
    js = await clients.js("org-a")
    seen = Seen()
    sub = _subscriber(js, "billing-org-a", seen, org_id="org-a", bind=True)
    await _consume(sub, seen, 3)
    assert await sub.run_once(wait=1.0) == 0
    assert seen.orgs == ["org-a"] * 3
    assert [e.id for e in seen.events] == [envelope(n).id for n in range(3)]
    assert sub.stats.handled == 3
    assert sub.stats.dead_lettered == 0
    assert clients.errors["org-a"] == []  # the set is sufficient: nothing refused
    assert clients.errors["relay"] == []  # so is the relay's: it published all 15
    info = await (await clients.js("admin")).consumer_info(STREAM.name, "billing-org-a")
    assert (info.num_pending, info.num_ack_pending, info.ack_floor.stream_seq) == (0, 0, 3)
    await sub.stop()

    # Without bind, start() creates or updates the consumer: the tenant may not.
    creating = _subscriber(js, "billing-org-a", Seen(), org_id="org-a")
    with pytest.raises(nats.errors.TimeoutError):
        await creating.start()
    assert clients.violations("org-a") == [
        'nats: permissions violation for publish to "$js.api.consumer.durable.create.crm.billing-org-a"'
    ]


async def test_an_org_a_user_is_refused_every_way_to_read_org_b(clients: Clients) -> None:
    """As user org-a: our subscriber for org-b (bound or creating), for all orgs, a raw pull
    consumer filtering org-b (durable or ephemeral), a pull on org-b's consumer, and plain
    subscriptions to org-b's subjects or to other inboxes are refused by the server (a
    permissions violation; requests time out); no org-b event reaches org-a while org-b's own
    subscriber receives its 3.

    Fails if: the set let org-a create consumers with any filter, pull from another durable,
    subscribe to event subjects or to `_INBOX.>`; or if bind skipped the filter check (the
    all-orgs subscriber would silently run on org-a's consumer).
    """
    await _admin_creates(clients, "billing-org-a", org_id="org-a")
    await _admin_creates(clients, "billing-org-b", org_id="org-b")
    js = await clients.js("org-a")
    nc = js._nc
    stolen = Seen()
    raw: list[Any] = []

    async def keep(msg: Any) -> None:
        raw.append(msg)

    for subject in ("cs.events.org-b.>", "cs.events.>", "_INBOX.>", "_INBOX_org-b.>"):
        await nc.subscribe(subject, cb=keep)
    await nc.flush()

    for kwargs in ({"bind": True}, {}):
        with pytest.raises(nats.errors.TimeoutError):  # consumer info / create refused
            await _subscriber(js, "billing-org-b", stolen, org_id="org-b", **kwargs).start()
    with pytest.raises(nats.errors.TimeoutError):
        await _subscriber(js, "billing-org-a", stolen, all_orgs=True).start()
    with pytest.raises(ConfigurationError, match="filters") as refused:
        await _subscriber(js, "billing-org-a", stolen, all_orgs=True, bind=True).start()
    assert refused.value.details["field"] == "durable"
    for durable in ("billing-org-b", None):
        with pytest.raises(nats.errors.TimeoutError):
            await js.pull_subscribe("cs.events.org-b.>", durable=durable, stream=STREAM.name)
    on_b = await js.pull_subscribe_bind("billing-org-b", STREAM.name)
    with pytest.raises(nats.errors.TimeoutError):  # the pull request is refused: nothing comes
        await on_b.fetch(1, timeout=1)
    # Naming org-b's subject while binding to its own consumer gets org-a's events, not org-b's.
    own = await js.pull_subscribe("cs.events.org-b.>", durable="billing-org-a", stream=STREAM.name)
    pulled = await own.fetch(10, timeout=2)
    assert {m.subject for m in pulled} == {"cs.events.org-a.crm.deal.created"}

    # Meanwhile org-b gets one more event and consumes its 4: there was traffic to steal.
    await JetStreamPublisher(await clients.js("relay"), STREAM).deliver(
        envelope(99, org_id="org-b")
    )
    seen_b = Seen()
    sub_b = _subscriber(
        await clients.js("org-b"), "billing-org-b", seen_b, org_id="org-b", bind=True
    )
    await _consume(sub_b, seen_b, 4)
    await nc.flush()
    assert seen_b.orgs == ["org-b"] * 4
    assert clients.errors["org-b"] == []
    assert stolen.events == []
    assert raw == []
    refused = {v.split('"')[1] for v in clients.violations("org-a")}
    ephemeral = {s for s in refused if s.startswith("$js.api.consumer.create.crm.")}
    assert len(ephemeral) == 1
    assert ephemeral.pop().endswith(".cs.events.org-b.>")
    assert {s for s in refused if not s.startswith("$js.api.consumer.create.")} == {
        "cs.events.org-b.>",
        "cs.events.>",
        "_inbox.>",
        "_inbox_org-b.>",
        "$js.api.consumer.info.crm.billing-org-b",
        "$js.api.consumer.durable.create.crm.billing-org-b",
        "$js.api.consumer.durable.create.crm.billing-org-a",
        "$js.api.consumer.msg.next.crm.billing-org-b",
    }


async def test_bind_refuses_a_missing_consumer_or_one_filtering_other_orgs(
    clients: Clients,
) -> None:
    """bind=True checks the admin's consumer: missing, or created for every org (or org-b)
    under org-a's durable name, start() raises a ConfigurationError naming `durable` and the fix.

    Fails if: bind trusted the consumer blindly (a deploy mistake would give org-a's process
    every tenant's events, and only the body check would stop them, as dead letters).
    """
    js = await clients.js("org-a")
    sub = _subscriber(js, "billing-org-a", Seen(), org_id="org-a", bind=True)
    with pytest.raises(ConfigurationError, match=r"no consumer 'billing-org-a'.*add_consumer") as e:
        await sub.start()
    assert e.value.details["field"] == "durable"
    await _admin_creates(clients, "billing-org-a", all_orgs=True)
    with pytest.raises(ConfigurationError, match=r"filters \['cs.events.\*.crm.deal.created'"):
        await sub.start()
    assert clients.errors["org-a"] == []
    with pytest.raises(ConfigurationError, match="bind must be True or False"):
        _subscriber(js, "billing-org-a", Seen(), org_id="org-a", bind="yes")


async def test_a_filtered_create_permission_lets_org_a_create_only_its_own_org_consumer(
    clients: Clients,
) -> None:
    """`$JS.API.CONSUMER.CREATE.CRM.billing-org-a.cs.events.org-a.>` (nats-server >= 2.9) lets a
    tenant create its consumer itself, with its org's filter only: the server compares the filter
    in the subject with the one in the request (error 10131). A consumer with several filters,
    or created the legacy way (`DURABLE.CREATE`, what nats-py does for our subscriber's config),
    cannot be checked and is refused; so our subscriber still runs with bind=True.

    Fails if: the server did not compare body and subject (org-a would create an org-b filter).
    """
    js = await clients.js("org-a-creator")
    own = api.ConsumerConfig(
        name="billing-org-a",
        durable_name="billing-org-a",
        filter_subject="cs.events.org-a.>",
        ack_policy=api.AckPolicy.EXPLICIT,
    )
    assert (await js.add_consumer(STREAM.name, own)).config.filter_subject == "cs.events.org-a.>"
    for other in (
        {"filter_subject": "cs.events.org-b.>"},
        {"filter_subject": "cs.events.*.>"},
        {"filter_subject": None, "filter_subjects": ["cs.events.org-a.>", "cs.events.org-b.>"]},
    ):
        with pytest.raises(nats.errors.TimeoutError):
            await js.add_consumer(STREAM.name, own.evolve(**other))
    body = {
        "stream_name": STREAM.name,
        "config": own.evolve(filter_subject="cs.events.org-b.>").as_dict(),
    }
    reply = await js._nc.request(
        "$JS.API.CONSUMER.CREATE.CRM.billing-org-a.cs.events.org-a.>",
        json.dumps(body).encode(),
        timeout=2,
    )
    assert json.loads(reply.data)["error"]["err_code"] == 10131
    with pytest.raises(nats.errors.TimeoutError):  # DURABLE.CREATE: refused
        await _subscriber(js, "billing-org-a", Seen(), org_id="org-a").start()
    assert len(clients.violations("org-a-creator")) == 4
    # One event, one filter: the tenant (re)creates the consumer from our subscriber's config.
    seen = Seen()
    sub = _subscriber(
        js, "billing-org-a", seen, org_id="org-a", events=["crm.deal.created"], bind=True
    )
    await js.add_consumer(STREAM.name, sub.consumer_config().evolve(name="billing-org-a"))
    await _consume(sub, seen, 3)
    assert seen.orgs == ["org-a"] * 3
    assert len(clients.violations("org-a-creator")) == 4


async def test_the_permission_sets_that_would_leak_org_b(clients: Clients) -> None:
    """Negative controls: (1) the legacy `$JS.API.CONSUMER.DURABLE.CREATE.CRM.billing-org-a`
    carries no filter, so org-a can give its own durable org-b's filter and read org-b; (2)
    subscribe `_INBOX.>` lets org-a read what is pulled by any process on the default `_INBOX`
    prefix, here an all-orgs consumer. Why the set has neither, and each process its own prefix.
    """
    seen = Seen()
    sub = _subscriber(await clients.js("leaky-create"), "billing-org-a", seen, org_id="org-b")
    await _consume(sub, seen, 3)
    assert seen.orgs == ["org-b"] * 3

    spy = await (await clients.js("leaky-inbox"))._nc.subscribe("_INBOX.>")
    admin = await clients.js("admin", inbox="_INBOX")
    seen_all = Seen()
    await _consume(_subscriber(admin, "analytics", seen_all, all_orgs=True), seen_all, 15)
    leaked = set()
    deadline = time.monotonic() + 5
    while "org-b" not in leaked and time.monotonic() < deadline:
        try:
            msg = await spy.next_msg(timeout=1)
        except nats.errors.TimeoutError:
            continue
        if msg.data.startswith(b"{"):
            leaked.add(json.loads(msg.data).get("org_id"))
    assert "org-b" in leaked
