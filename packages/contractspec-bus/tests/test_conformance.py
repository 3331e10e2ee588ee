"""One conformance suite for every bus store, on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from attrs import evolve
from bus_support import T0, Stores, envelope

from contractspec.bus import (
    DeadLetter,
    DeliveryRecord,
    InAppNotification,
    Page,
    Preference,
    resolve_preference,
)
from contractspec.core import ConfigurationError, ConflictError, NotFoundError

LEASE = timedelta(seconds=30)


async def publish(stores: Stores, *events: object) -> None:
    tx = await stores.unit_of_work.begin()
    await stores.outbox.publish(list(events), tx)  # type: ignore[arg-type]
    await tx.commit()


# -- outbox -----------------------------------------------------------------------------------


async def test_outbox_rows_exist_only_after_commit(stores: Stores) -> None:
    """Published events appear as pending rows when the transaction commits, not on rollback."""
    tx = await stores.unit_of_work.begin()
    await stores.outbox.publish([envelope(1)], tx)
    await tx.rollback()
    assert await stores.outbox.messages() == []
    await publish(stores, envelope(2, key="d2"), envelope(3))
    rows = await stores.outbox.messages()
    assert [(m.id, m.name, m.key, m.status, m.attempts) for m in rows] == [
        ("ev-0002", "crm.deal.created", "d2", "pending", 0),
        ("ev-0003", "crm.deal.created", None, "pending", 0),
    ]
    assert rows[0].payload == {
        "deal_id": "d2",
        "title": "Deal 2",
        "amount": "10",
        "owner_id": "u-1",
        "contact_email": None,
    }
    assert rows[0].headers["actor_id"] == "u-1"
    assert rows[0].occurred_at == T0


async def test_outbox_claim_leases_rows_in_position_order(stores: Stores) -> None:
    """A claim returns rows in order, counts the attempt, and hides them until the lease ends."""
    await publish(stores, *(envelope(i) for i in range(1, 6)))
    first = await stores.outbox.claim(3, T0, LEASE)
    assert [m.id for m in first] == ["ev-0001", "ev-0002", "ev-0003"]
    assert [m.attempts for m in first] == [1, 1, 1]
    assert all(m.available_at == T0 + LEASE for m in first)
    second = await stores.outbox.claim(10, T0, LEASE)
    assert [m.id for m in second] == ["ev-0004", "ev-0005"]
    assert await stores.outbox.claim(10, T0 + timedelta(seconds=1), LEASE) == []
    again = await stores.outbox.claim(10, T0 + LEASE, LEASE)
    assert [(m.id, m.attempts) for m in again] == [(f"ev-000{i}", 2) for i in range(1, 6)]


async def test_outbox_claim_keeps_per_key_order_behind_a_leased_row(stores: Stores) -> None:
    """While a key's earlier row is leased, later rows of that key wait; other keys go on."""
    await publish(stores, envelope(1, key="A"), envelope(2, key="B"))
    held = await stores.outbox.claim(1, T0, LEASE)
    assert [m.id for m in held] == ["ev-0001"]
    await publish(stores, envelope(3, key="A"), envelope(4, key="B"), envelope(5))
    claimed = await stores.outbox.claim(10, T0, LEASE)
    assert [m.id for m in claimed] == ["ev-0002", "ev-0004", "ev-0005"]
    await stores.outbox.mark_delivered([1], T0)
    assert [m.id for m in await stores.outbox.claim(10, T0, LEASE)] == ["ev-0003"]


async def test_outbox_mark_delivered_failed_requeue_and_purge(stores: Stores) -> None:
    """Delivered rows leave the queue; failed ones back off or give up; requeue and purge work."""
    await publish(stores, *(envelope(i, key=f"k{i}") for i in range(1, 4)))
    batch = await stores.outbox.claim(10, T0, LEASE)
    await stores.outbox.mark_delivered([batch[0].position], T0 + timedelta(seconds=1))
    await stores.outbox.mark_failed(batch[1].position, "Boom: x", T0 + timedelta(minutes=5))
    await stores.outbox.mark_failed(batch[2].position, "Poison: y", None)
    rows = {m.id: m for m in await stores.outbox.messages()}
    assert (rows["ev-0001"].status, rows["ev-0001"].delivered_at) == (
        "delivered",
        T0 + timedelta(seconds=1),
    )
    assert (rows["ev-0002"].status, rows["ev-0002"].last_error) == ("pending", "Boom: x")
    assert (rows["ev-0003"].status, rows["ev-0003"].last_error) == ("failed", "Poison: y")
    assert [m.id for m in await stores.outbox.messages(status="failed")] == ["ev-0003"]
    assert await stores.outbox.claim(10, T0 + timedelta(minutes=1), LEASE) == []
    assert [m.id for m in await stores.outbox.claim(10, T0 + timedelta(minutes=5), LEASE)] == [
        "ev-0002"
    ]
    assert await stores.outbox.requeue(None, T0) == 1
    assert [(m.id, m.attempts) for m in await stores.outbox.claim(10, T0, LEASE)] == [
        ("ev-0003", 1)
    ]
    assert await stores.outbox.purge_delivered(T0 + timedelta(seconds=2)) == 1
    assert [m.id for m in await stores.outbox.messages()] == ["ev-0002", "ev-0003"]


async def test_outbox_claim_rejects_a_bad_limit(stores: Stores) -> None:
    """A non-positive limit is a ConfigurationError naming `limit`."""
    with pytest.raises(ConfigurationError) as info:
        await stores.outbox.claim(0, T0, LEASE)
    assert info.value.details == {"field": "limit"}


# -- dead letters -----------------------------------------------------------------------------


def letter(n: int, subscriber: str = "s1", org: str = "org-1") -> DeadLetter:
    return DeadLetter(
        id=f"dl-{n}",
        event=envelope(n, org_id=org).to_dict(),
        subscriber=subscriber,
        error="RuntimeError: down",
        attempts=3,
        failed_at=T0 + timedelta(seconds=n),
    )


async def test_dead_letters_list_filter_paginate_and_mark_replayed(stores: Stores) -> None:
    """Dead letters are listed oldest first with filters and cursors; replayed ones are hidden."""
    store = stores.dead_letters
    for n in range(1, 6):
        await store.add(letter(n, subscriber="s1" if n % 2 else "s2", org="a" if n < 4 else "b"))
    page1 = await store.list(limit=2)
    assert [d.id for d in page1] == ["dl-1", "dl-2"]
    page2 = await store.list(limit=2, cursor=page1.next_cursor)
    page3 = await store.list(limit=2, cursor=page2.next_cursor)
    assert [d.id for d in page2] == ["dl-3", "dl-4"]
    assert ([d.id for d in page3], page3.next_cursor) == (["dl-5"], None)
    assert [d.id for d in await store.list(subscriber="s1")] == ["dl-1", "dl-3", "dl-5"]
    assert [d.id for d in await store.list(org_id="b")] == ["dl-4", "dl-5"]
    await store.mark_replayed("dl-1", T0)
    assert [d.id for d in await store.list(subscriber="s1")] == ["dl-3", "dl-5"]
    got = await store.get("dl-1")
    assert got is not None
    assert got.replayed_at == T0
    assert got.event_id == "ev-0001"
    assert (await store.count(), await store.count(include_replayed=True)) == (4, 5)
    with pytest.raises(ConflictError):
        await store.add(letter(2))
    with pytest.raises(NotFoundError):
        await store.mark_replayed("nope", T0)
    with pytest.raises(ConfigurationError):
        await store.list(cursor="not-a-cursor")


async def test_dead_letters_browse_one_org_newest_first_and_discard(stores: Stores) -> None:
    """browse: exactly one org (None: events without one), still dead, newest first, paginated."""
    store = stores.dead_letters
    for n in range(1, 7):
        await store.add(letter(n, subscriber="s1" if n % 2 else "s2", org="a" if n != 4 else "b"))
    await store.add(
        DeadLetter(
            id="dl-bare",
            event=envelope(9, org_id=None).to_dict(),
            subscriber="s1",
            error="E: x",
            attempts=1,
            failed_at=T0,
        )
    )
    await store.mark_replayed("dl-6", T0)
    page1 = await store.browse(org_id="a", limit=2)
    assert [d.id for d in page1] == ["dl-5", "dl-3"]
    page2 = await store.browse(org_id="a", limit=2, cursor=page1.next_cursor)
    assert ([d.id for d in page2], page2.next_cursor) == (["dl-2", "dl-1"], None)
    assert [d.id for d in await store.browse(org_id="b")] == ["dl-4"]
    assert [d.id for d in await store.browse(org_id=None)] == ["dl-bare"]
    assert [d.id for d in await store.browse(org_id="a", subscriber="s2")] == ["dl-2"]
    assert await store.browse(org_id="a", event_name="crm.deal.moved") == Page(())
    assert await store.discard("dl-3") is True
    assert await store.discard("dl-3") is False
    assert await store.get("dl-3") is None
    assert [d.id for d in await store.browse(org_id="a")] == ["dl-5", "dl-2", "dl-1"]
    with pytest.raises(ConfigurationError):
        await store.browse(org_id="a", cursor="x")


async def test_dead_letter_writes_in_a_transaction_roll_back_with_it(stores: Stores) -> None:
    """add, mark_replayed and discard with `tx=` take effect iff the transaction commits."""
    store = stores.dead_letters
    await store.add(letter(1))
    await store.add(letter(2))
    tx = await stores.unit_of_work.begin()
    await store.add(letter(3), tx=tx)
    await store.mark_replayed("dl-1", T0, tx=tx)
    assert await store.discard("dl-2", tx=tx) is True
    seen = await store.get("dl-1", tx=tx)
    assert seen is not None
    assert seen.replayed_at == T0
    assert [d.id for d in await store.browse(org_id="org-1", tx=tx)] == ["dl-3"]
    await tx.rollback()
    assert [d.id for d in await store.browse(org_id="org-1")] == ["dl-2", "dl-1"]
    tx = await stores.unit_of_work.begin()
    await store.add(letter(3), tx=tx)
    await store.mark_replayed("dl-1", T0, tx=tx)
    assert await store.discard("dl-2", tx=tx) is True
    await tx.commit()
    assert [d.id for d in await store.browse(org_id="org-1")] == ["dl-3"]


# -- processed events -------------------------------------------------------------------------


async def test_processed_events_mark_once_and_roll_back_with_the_transaction(
    stores: Stores,
) -> None:
    """The first mark wins; a rolled-back mark is forgotten; consumers are independent."""
    store = stores.processed
    tx = await stores.unit_of_work.begin()
    assert await store.mark(tx, "c1", "ev-1", T0) is True
    await tx.rollback()
    assert await store.seen("c1", "ev-1") is False
    tx = await stores.unit_of_work.begin()
    assert await store.mark(tx, "c1", "ev-1", T0) is True
    await tx.commit()
    tx = await stores.unit_of_work.begin()
    assert await store.mark(tx, "c1", "ev-1", T0) is False
    assert await store.mark(tx, "c2", "ev-1", T0) is True
    await tx.commit()
    assert (await store.seen("c1", "ev-1"), await store.seen("c2", "ev-1")) == (True, True)


# -- in-app -----------------------------------------------------------------------------------


def note(n: int, user: str = "u1", org: str | None = "org-1") -> InAppNotification:
    return InAppNotification(
        id=f"n-{n}",
        org_id=org,
        user_id=user,
        notification="crm.deal_won",
        title=f"Title {n}",
        body=f"Body {n}",
        event_id=f"ev-{n}",
        created_at=T0 + timedelta(minutes=n),
        data={"n": n},
    )


async def test_in_app_notifications_read_unread_scoped_and_paginated(stores: Stores) -> None:
    """Newest first, per org and user; marking read changes unread counts and filters."""
    inbox = stores.inbox
    for n in range(1, 5):
        await inbox.add(note(n))
    await inbox.add(note(5, user="u2"))
    await inbox.add(note(6, org="org-2"))
    page = await inbox.list("org-1", "u1", limit=3)
    assert [i.id for i in page] == ["n-4", "n-3", "n-2"]
    rest = await inbox.list("org-1", "u1", limit=3, cursor=page.next_cursor)
    assert ([i.id for i in rest], rest.next_cursor) == (["n-1"], None)
    assert page.items[0].data == {"n": 4}
    assert page.items[0].unread is True
    assert await inbox.unread_count("org-1", "u1") == 4
    assert await inbox.mark_read("org-1", "u1", "n-3", T0) is True
    assert await inbox.mark_read("org-1", "u1", "n-3", T0) is False
    assert await inbox.mark_read("org-1", "u2", "n-2", T0) is False  # not u2's
    assert await inbox.mark_read("org-2", "u1", "n-2", T0) is False  # not in org-2
    assert [i.id for i in await inbox.list("org-1", "u1", unread_only=True)] == [
        "n-4",
        "n-2",
        "n-1",
    ]
    assert await inbox.mark_all_read("org-1", "u1", T0) == 3
    assert await inbox.unread_count("org-1", "u1") == 0
    assert await inbox.unread_count("org-1", "u2") == 1
    assert [i.id for i in await inbox.list("org-2", "u1")] == ["n-6"]
    with pytest.raises(ConflictError):
        await inbox.add(note(1))


# -- preferences ------------------------------------------------------------------------------


async def test_preferences_upsert_remove_and_resolve_most_specific(stores: Stores) -> None:
    """User beats org, named notification beats `*`, named channel beats `*`; upserts replace."""
    prefs = stores.preferences
    await prefs.set(Preference("org-1", None, "*", "email", False))
    await prefs.set(Preference("org-1", "u1", "crm.deal_won", "*", True))
    await prefs.set(Preference("org-1", "u2", "*", "*", False))
    await prefs.set(Preference("org-1", "u2", "*", "*", True))  # replaces
    await prefs.set(Preference("org-2", "u1", "*", "*", False))
    mine = await prefs.for_user("org-1", "u1")
    assert [(p.user_id, p.notification, p.channel, p.enabled) for p in mine] == [
        (None, "*", "email", False),
        ("u1", "crm.deal_won", "*", True),
    ]
    assert resolve_preference(mine, "u1", "crm.deal_won", "email") is True
    assert resolve_preference(mine, "u1", "crm.other", "email") is False
    assert resolve_preference(mine, "u1", "crm.other", "in_app") is None
    u2 = await prefs.for_user("org-1", "u2")
    assert resolve_preference(u2, "u2", "crm.other", "email") is True
    assert await prefs.remove("org-1", None, "*", "email") is True
    assert await prefs.remove("org-1", None, "*", "email") is False
    assert [p.user_id for p in await prefs.for_user("org-1", "u1")] == ["u1"]


# -- delivery log -----------------------------------------------------------------------------


def delivery(n: int, *, channel: str = "email", event: str = "ev-1") -> DeliveryRecord:
    return DeliveryRecord(
        id=f"del-{n}",
        org_id="org-1",
        notification="crm.deal_won",
        event_id=event,
        recipient_id=f"u{n}",
        channel=channel,
        status="queued",
        attempts=0,
        message={"subject": f"S{n}"},
        created_at=T0,
        next_attempt_at=T0 + timedelta(minutes=5),
    )


async def test_delivery_log_is_idempotent_per_key_and_tracks_attempts(stores: Stores) -> None:
    """A second record with the same key is refused; sent/failed/due transitions are stored."""
    log = stores.deliveries
    assert await log.create(delivery(1)) == delivery(1)
    assert await log.create(evolve(delivery(1), id="del-x")) is None
    await log.create(delivery(2))
    await log.create(delivery(3, channel="in_app"))
    await log.mark_sent("del-1", T0 + timedelta(seconds=1), 1)
    await log.mark_failed("del-2", "ConnectionError: down", 1, T0 + timedelta(seconds=30))
    await log.mark_failed("del-3", "Gave up", 5, None)
    one = await log.get("del-1")
    assert one is not None
    assert (one.status, one.attempts, one.sent_at) == (
        "sent",
        1,
        T0 + timedelta(seconds=1),
    )
    found = await log.find("crm.deal_won", "ev-1", "u2", "email")
    assert found is not None
    assert (found.status, found.attempts, found.last_error) == (
        "queued",
        1,
        "ConnectionError: down",
    )
    assert [r.id for r in await log.due(T0 + timedelta(seconds=29))] == []
    assert [r.id for r in await log.due(T0 + timedelta(seconds=30))] == ["del-2"]
    assert [r.id for r in await log.list(status="failed")] == ["del-3"]
    assert [r.id for r in await log.list(event_id="ev-1")] == ["del-1", "del-2", "del-3"]
    assert [r.message for r in await log.list(org_id="org-1", limit=1)] == [{"subject": "S1"}]
    with pytest.raises(NotFoundError):
        await log.mark_sent("nope", T0, 1)
