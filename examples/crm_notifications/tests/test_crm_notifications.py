"""The CRM's events flow through the outbox to a projection and to email, in-app and webhook
notifications; its audit trail verifies and detects tampering."""

from __future__ import annotations

import json
from email import message_from_bytes
from email import policy as email_policy
from typing import Any

from crm_notifications.app import ORG_ID, build, demo_directory
from crm_notifications.flow import run_pipeline
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.bus import AuditFilter, Preference, verify_webhook
from contractspec.bus.email import EmailChannel
from contractspec.bus.webhook import WebhookChannel
from contractspec.core import REDACTED
from contractspec.core.sql import audit_table

SECRET = "whsec-demo"


async def test_events_reach_the_projection_and_every_channel_once(
    sql_engine: AsyncEngine, smtp: Any, hooks: tuple[str, Any]
) -> None:
    """Four events: a 4-row timeline, 2 emails, 3 in-app notes, 1 signed webhook; none twice."""
    url, receiver = hooks
    webhook = WebhookChannel(secret=SECRET)
    try:
        app = await build(
            sql_engine,
            email=EmailChannel(
                hostname="127.0.0.1", port=smtp.port, sender="crm@acme.test", start_tls=False
            ),
            webhook=webhook,
            directory=demo_directory(webhook_url=url),
        )
        deal_id = await run_pipeline(app.executor)
        assert await app.deliver() == 4
        timeline = await app.deal_timeline(deal_id)
        assert [(e.event, e.actor_id) for e in timeline] == [
            ("deal.created", "ann"),
            ("deal.moved", "ann"),
            ("task.completed", "marc"),
            ("deal.moved", "ann"),
        ]
        # Redeliver everything (as after a relay crash): effects and messages stay single.
        async with sql_engine.begin() as conn:
            await conn.execute(
                text("UPDATE cs_outbox SET status = 'pending', available_at = occurred_at")
            )
        assert await app.deliver() == 4
        assert len(await app.deal_timeline(deal_id)) == 4
        assert app.timeline.skipped == 4
    finally:
        await webhook.aclose()

    mails = sorted(
        (e.rcpt_tos[0], message_from_bytes(e.content, policy=email_policy.default))
        for e in smtp.envelopes
    )
    assert [(to, m["Subject"]) for to, m in mails] == [
        ("ann@acme.test", "Deal deal-1 won (12500.00)"),
        ("marc@acme.test", "Affaire deal-1 gagnée (12500.00)"),
    ]
    ann_items = [n.title for n in await app.inbox.list(ORG_ID, "ann")]
    marc_items = [n.title for n in await app.inbox.list(ORG_ID, "marc")]
    assert ann_items == ["Deal deal-1 won (12500.00)"]
    assert marc_items[0] == "Affaire deal-1 gagnée (12500.00)"
    assert marc_items[1].startswith("Task ")
    assert len(marc_items) == 2
    (headers, body), = receiver.received  # fmt: skip
    verify_webhook(SECRET, body, headers)
    doc = json.loads(body)
    assert (doc["notification"], doc["event"]["name"], doc["event"]["payload"]["to_stage"]) == (
        "crm.deal_won_webhook",
        "deal.moved",
        "won",
    )
    log = await app.deliveries.list(org_id=ORG_ID)
    assert sorted((r.notification, r.recipient_id, r.channel, r.status) for r in log) == [
        ("crm.deal_won", "ann", "email", "sent"),
        ("crm.deal_won", "ann", "in_app", "sent"),
        ("crm.deal_won", "marc", "email", "sent"),
        ("crm.deal_won", "marc", "in_app", "sent"),
        ("crm.deal_won_webhook", "ops", "webhook", "sent"),
        ("crm.task_completed", "marc", "in_app", "sent"),
    ]


async def test_preferences_silence_a_channel(sql_engine: AsyncEngine) -> None:
    """Marc opting out of deal_won emails gets the in-app note only."""
    from contractspec.bus.testing import CapturingChannel

    email, webhook = CapturingChannel("email"), CapturingChannel("webhook")
    app = await build(sql_engine, email=email, webhook=webhook)
    await app.preferences.set(Preference(ORG_ID, "marc", "crm.deal_won", "email", False))
    await run_pipeline(app.executor)
    await app.deliver()
    assert [m.recipient.id for m in email.sent] == ["ann"]
    assert [m.recipient.id for m in webhook.sent] == ["ops"]
    assert await app.inbox.unread_count(ORG_ID, "marc") == 2


async def test_audit_trail_verifies_redacts_pii_and_detects_tampering(
    sql_engine: AsyncEngine,
) -> None:
    """Calls and events are audited in one chain that verifies; an edit is found at its entry."""
    from contractspec.bus.testing import CapturingChannel

    app = await build(
        sql_engine, email=CapturingChannel("email"), webhook=CapturingChannel("webhook")
    )
    await run_pipeline(app.executor)
    assert (await app.trail.verify(ORG_ID)).ok is True
    page = await app.trail.query(ORG_ID, AuditFilter(action="deal.moved"), newest_first=False)
    assert [e.record.details["payload"]["to_stage"] for e in page] == ["qualified", "won"]
    (contact,) = await app.trail.query(ORG_ID, AuditFilter(action="crm.contact.create"))
    change: Any = contact.record.changes[0].to_dict()
    assert change["changes"]["email"] == [None, REDACTED]
    by_marc = await app.trail.query(ORG_ID, AuditFilter(actor_id="marc"))
    assert [e.record.action for e in by_marc] == ["crm.task.complete", "task.completed"]

    target = page.items[1].seq
    async with sql_engine.begin() as conn:
        body = (
            await conn.execute(select(audit_table.c.body).where(audit_table.c.seq == target))
        ).scalar_one()
        body["details"]["payload"]["amount"] = "1.00"
        await conn.execute(update(audit_table).where(audit_table.c.seq == target).values(body=body))
    verdict = await app.trail.verify(ORG_ID)
    assert (verdict.ok, verdict.first_bad_seq, verdict.reason) == (
        False,
        target,
        "hash mismatch: the entry was edited",
    )
