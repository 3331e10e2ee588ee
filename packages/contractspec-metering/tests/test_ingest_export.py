"""Usage from delivered events (idempotent, late events), CloudEvents export, invoices."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from cloudevents.core.formats.json import JSONFormat
from metering_support import T0, App
from pydantic import BaseModel

from contractspec.core import EventEnvelope, NotFoundError, SpecValidationError
from contractspec.metering import UsageEvent, to_cloudevent

DAY = datetime(2024, 3, 10, tzinfo=UTC)


class FileUploaded(BaseModel):
    file_id: str
    project_id: str
    size_bytes: int
    uploader: str


def uploaded(n: int, size: int, *, at: datetime = T0, project: str = "p1", who: str = "ann"):
    return EventEnvelope(
        id=f"ev-{n}",
        name="files.file.uploaded",
        version=1,
        occurred_at=at,
        payload=FileUploaded(file_id=f"f{n}", project_id=project, size_bytes=size, uploader=who),
        org_id="org-1",
        actor_id="user-9",
    )


async def test_events_feed_every_meter_that_listens_once_per_event_id(app: App) -> None:
    """An upload feeds storage.bytes (sum by project) and users.active; redelivery adds nothing."""
    first = await app.metering.ingest(uploaded(1, 100))
    assert [(u.id, u.meter, u.value, u.subject, u.unique_key) for u in first] == [
        ("ev-1:storage.bytes", "storage.bytes", Decimal(100), "p1", None),
        ("ev-1:users.active", "users.active", Decimal(1), "files.file.uploaded", "ann"),
    ]
    await app.metering.ingest(uploaded(1, 100))  # the bus delivers at least once
    await app.metering.ingest(uploaded(2, 50, project="p2", who="bob"))
    await app.metering.ingest(uploaded(3, 25, who="ann"))
    rows = await app.metering.usage("storage.bytes", "org-1", DAY, DAY + timedelta(days=1))
    assert [(r.subject, r.value) for r in rows] == [("p1", Decimal(125)), ("p2", Decimal(50))]
    active = await app.metering.current("users.active", "org-1")
    assert active.value == 2
    assert (active.window_start, active.window_end) == (
        datetime(2024, 3, 1, tzinfo=UTC),
        datetime(2024, 4, 1, tzinfo=UTC),
    )
    assert await app.metering.ingest({"id": "x", "name": "crm.deal.created"}) == []


async def test_a_late_event_counts_in_its_own_window_not_the_current_one(app: App) -> None:
    """An event that occurred two days ago but arrives now lands two days ago."""
    await app.metering.ingest(uploaded(1, 10))
    await app.metering.ingest(uploaded(2, 7, at=T0 - timedelta(days=2)))
    assert (await app.metering.current("storage.bytes", "org-1")).value == 10
    rows = await app.metering.usage(
        "storage.bytes", "org-1", DAY - timedelta(days=3), DAY + timedelta(days=1), by_subject=False
    )
    assert [(r.window_start, r.value) for r in rows] == [
        (DAY - timedelta(days=2), Decimal(7)),
        (DAY, Decimal(10)),
    ]


async def test_plain_dict_events_and_their_errors(app: App) -> None:
    """A dict with ISO text time works; missing org, time or payload paths are clear errors."""
    event = {
        "id": "d1",
        "name": "files.file.uploaded",
        "org_id": "org-1",
        "occurred_at": "2024-03-10T08:00:00+00:00",
        "payload": {"file_id": "f", "project_id": "p9", "size_bytes": "12.5", "uploader": "z"},
    }
    stored = await app.metering.ingest(event)
    assert stored[0].value == Decimal("12.5")
    assert stored[0].timestamp == datetime(2024, 3, 10, 8, tzinfo=UTC)
    with pytest.raises(SpecValidationError, match="no org_id"):
        app.metering.usage_from_event({**event, "org_id": None})
    with pytest.raises(SpecValidationError, match="needs occurred_at"):
        app.metering.usage_from_event({**event, "occurred_at": "yesterday"})
    with pytest.raises(SpecValidationError, match="no 'size_bytes'"):
        app.metering.usage_from_event({**event, "payload": {"project_id": "p", "uploader": "u"}})


async def test_ingest_joins_the_consumers_transaction(app: App) -> None:
    """With tx= the usage commits or rolls back with the consumer's other effects."""
    tx = await app.store.unit_of_work.begin()
    await app.metering.ingest(uploaded(1, 10), tx)
    await tx.rollback()
    assert await app.metering.events("storage.bytes", "org-1", DAY, DAY + timedelta(days=1)) == []


async def test_cloudevents_export_is_valid_cloudevents_1_0(app: App) -> None:
    """Each exported usage event parses with the CloudEvents SDK, time in UTC, value as text."""
    await app.metering.ingest(uploaded(1, 100))
    await app.metering.ingest(uploaded(2, 3, at=T0 - timedelta(hours=1)))
    exported = await app.metering.export_cloudevents(
        "storage.bytes", "org-1", DAY, DAY + timedelta(days=1), source="https://api.example.test"
    )
    assert [e["id"] for e in exported] == ["ev-2:storage.bytes", "ev-1:storage.bytes"]
    # the official SDK validates the required attributes and their types while reading
    parsed = JSONFormat().read(None, json.dumps(exported[1]))
    assert parsed.get_specversion() == "1.0"
    assert parsed.get_type() == "io.contractspec.metering.usage"
    assert parsed.get_source() == "https://api.example.test"
    assert parsed.get_subject() == "org-1"
    assert parsed.get_time() == T0
    assert exported[1]["time"] == "2024-03-10T12:30:00Z"
    assert parsed.get_data() == {
        "meter": "storage.bytes",
        "value": "100",
        "org_id": "org-1",
        "subject": "p1",
        "user_id": "user-9",
        "unit": "byte",
    }
    event = UsageEvent("i", "o", None, "s", "m", "0.000001", T0, unique_key="k")
    assert to_cloudevent(event)["data"]["value"] == "0.000001"


async def test_invoice_prices_the_period_with_the_org_plan(app: App) -> None:
    """Invoice lines: graduated tokens, volume storage, totals per currency; exact decimals."""
    await app.metering.assign_plan("org-1", "pro")
    usage = [
        UsageEvent(f"t{i}", "org-1", "u", "s", "llm.tokens", v, T0 + timedelta(hours=i))
        for i, v in enumerate(["600", "650.5"])
    ]
    await app.metering.record_many(usage)
    await app.metering.ingest(uploaded(1, 1500))
    start, end = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC)
    invoice = await app.metering.invoice("org-1", start, end)
    tokens, storage = invoice.lines
    # graduated: 100 free, 900 at 0.002 = 1.8, 250.5 at 0.001 = 0.2505, + 1 flat = 3.0505
    assert (tokens.meter, tokens.quantity, tokens.subtotal, tokens.amount) == (
        "llm.tokens",
        Decimal("1250.5"),
        Decimal("3.0505"),
        Decimal("3.05"),
    )
    # volume: 1500 bytes fall in the second tier: 1500 * 0.005 = 7.5
    assert (storage.quantity, storage.subtotal) == (Decimal(1500), Decimal("7.5"))
    assert invoice.totals == {"usd": Decimal("10.55")}
    assert invoice.to_dict()["totals"] == {"usd": "10.55"}
    with pytest.raises(NotFoundError, match="no plan"):
        await app.metering.invoice("org-2", start, end)
    with pytest.raises(SpecValidationError, match="must end after"):
        await app.metering.invoice("org-1", end, start)


@pytest.mark.parametrize("value", ["9223372036855", "-9223372036855", "1" + "0" * 29])
async def test_a_value_the_backend_cannot_hold_is_refused_naming_the_field(
    app: App, value: str
) -> None:
    """SQLite stores values as 64-bit integer micro-units (|value| < 9.22e12): a larger value is
    a SpecValidationError naming `value` there (it was a bare OverflowError from the driver),
    nothing is stored, and the next event still records. PostgreSQL's NUMERIC(36, 6) and the
    memory store hold values up to 30 integer digits."""
    big = UsageEvent(
        id="big", org_id="org-1", user_id=None, subject="p1", meter="llm.tokens",
        value=Decimal(value), timestamp=T0,
    )  # fmt: skip
    fits = app.kind != "sqlite" and len(value.lstrip("-")) <= 30
    if fits:
        assert (await app.metering.record(big)).value == Decimal(value)
    else:
        with pytest.raises(SpecValidationError) as caught:
            await app.metering.record(big)
        assert caught.value.details["field"] == "value"
        assert "SQLite" in caught.value.message
        assert await app.store.get("org-1", "big") is None
    small = UsageEvent(
        id="small", org_id="org-1", user_id=None, subject="p1", meter="llm.tokens",
        value=Decimal("9223372036854.775807"), timestamp=T0,
    )  # fmt: skip
    assert (await app.metering.record(small)).value == Decimal("9223372036854.775807")
