"""Wiring: the CRM registry, a SQL outbox, an event bus, an idempotent projection, notifications.

```text
executor ──(same transaction)──> cs_outbox + cs_audit_log (events audited, PII redacted)
OutboxRelay ──> EventBus ──> crm.deal_timeline (IdempotentConsumer, one row per event)
                         └─> NotificationCenter ──> email (SMTP) / in-app / webhook (signed)
```
"""

from __future__ import annotations

from attrs import define
from crm_pipeline.models import deal_moved, task_completed
from crm_pipeline.spec import policy, registry
from pydantic import AwareDatetime, BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.bus import (
    AuditableEventBus,
    Channel,
    EventBus,
    IdempotentConsumer,
    InAppChannel,
    MemoryDirectory,
    NotificationCenter,
    OutboxRelay,
    Recipient,
    RecipientDirectory,
    Template,
    define_notification,
    to_field,
    to_role,
    to_user,
)
from contractspec.bus.sql import (
    SqlAuditTrail,
    SqlDeadLetterStore,
    SqlDeliveryLog,
    SqlInAppStore,
    SqlOutboxStore,
    SqlPreferenceStore,
    SqlProcessedEventStore,
    create_bus_tables,
)
from contractspec.core import EventEnvelope, Executor, Transaction, define_entity
from contractspec.core.sql import (
    EntityTables,
    SqlBackend,
    SqlEntityStore,
    SqlUnitOfWork,
    create_all,
)

__all__ = [
    "NOTIFICATIONS",
    "ORG_ID",
    "NotificationsApp",
    "TimelineEntry",
    "build",
    "deal_won",
    "deal_won_webhook",
    "demo_directory",
    "task_done",
]

#: The tenant of the demo.
ORG_ID = "acme"

# -- notifications ------------------------------------------------------------------------------

deal_won = define_notification(
    "crm.deal_won",
    event=deal_moved,
    when={"payload.to_stage": "won"},
    recipients=[to_role("sales_manager"), to_field("actor_id")],
    channels=["email", "in_app"],
    templates={
        "en": Template(
            subject="Deal {{ deal_id }} won ({{ amount }})",
            body="Hello {{ recipient.name }},\n\n{{ event.actor_id }} moved deal {{ deal_id }} "
            "from {{ from_stage }} to won.\n",
            html="<p>Hello {{ recipient.name }},</p><p>Deal <b>{{ deal_id }}</b> is won.</p>",
        ),
        "fr": Template(
            subject="Affaire {{ deal_id }} gagnée ({{ amount }})",
            body="Bonjour {{ recipient.name }},\n\n{{ event.actor_id }} a gagné l'affaire "
            "{{ deal_id }}.\n",
        ),
    },
    description="Tell the sales managers and the seller when a deal is won.",
)

deal_won_webhook = define_notification(
    "crm.deal_won_webhook",
    event=deal_moved,
    when={"payload.to_stage": "won"},
    recipients=[to_user("ops")],
    channels=["webhook"],
    templates={"en": Template(subject="deal.won", body="{{ deal_id }} won for {{ amount }}")},
    critical=True,
    description="Post won deals to the operations endpoint (signed webhook).",
)

task_done = define_notification(
    "crm.task_completed",
    event=task_completed,
    recipients=[to_field("actor_id")],
    channels=["in_app"],
    templates={"en": Template(subject="Task {{ task_id }} done", body="On deal {{ deal_id }}.")},
)

#: The notifications of the app (kept out of the CRM registry, which belongs to crm_pipeline).
NOTIFICATIONS = (deal_won, deal_won_webhook, task_done)


def demo_directory(webhook_url: str | None = None) -> MemoryDirectory:
    """Ann sells (English), Marc manages (French), `ops` is the webhook endpoint."""
    directory = MemoryDirectory()
    directory.add(ORG_ID, Recipient("ann", email="ann@acme.test", name="Ann"), roles=["sales"])
    directory.add(
        ORG_ID,
        Recipient("marc", email="marc@acme.test", name="Marc", locale="fr"),
        roles=["sales", "sales_manager"],
    )
    directory.add(ORG_ID, Recipient("ops", name="Operations", webhook_url=webhook_url))
    return directory


# -- an idempotent projection -------------------------------------------------------------------


class TimelineEntry(BaseModel):
    """One event of a deal's history (written once per event by the projection)."""

    id: str
    deal_id: str
    event: str
    actor_id: str | None
    occurred_at: AwareDatetime


timeline_entity = define_entity("crm.timeline", TimelineEntry, indexes=["deal_id"])
timeline_tables = EntityTables([timeline_entity], prefix="ex_")


# -- the app ------------------------------------------------------------------------------------


@define
class NotificationsApp:
    """Everything wired on one engine (see the module docs)."""

    engine: AsyncEngine
    executor: Executor
    bus: EventBus
    relay: OutboxRelay
    outbox: SqlOutboxStore
    center: NotificationCenter
    timeline: IdempotentConsumer
    trail: SqlAuditTrail
    inbox: SqlInAppStore
    deliveries: SqlDeliveryLog
    preferences: SqlPreferenceStore

    async def deliver(self) -> int:
        """Run the relay until the outbox is empty; return how many events it delivered."""
        return await self.relay.drain()

    async def deal_timeline(self, deal_id: str) -> list[TimelineEntry]:
        """The projected history of one deal, oldest first."""
        table = timeline_tables[timeline_entity].table
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(table)
                    .where(table.c.org_id == ORG_ID, table.c.deal_id == deal_id)
                    .order_by(table.c.occurred_at, table.c.id)
                )
            ).mappings()
            return [TimelineEntry.model_validate(dict(r)) for r in rows]


async def build(
    engine: AsyncEngine,
    *,
    email: Channel,
    webhook: Channel,
    directory: RecipientDirectory | None = None,
) -> NotificationsApp:
    """Create the tables and wire the app on `engine` (SQLite or PostgreSQL)."""
    backend = SqlBackend(engine, registry)
    await backend.create_all()
    await create_bus_tables(engine)
    await create_all(engine, timeline_tables.metadata)

    outbox = SqlOutboxStore(engine)
    executor = Executor(
        registry,
        backend=backend,
        events=AuditableEventBus(outbox, backend.audit, registry=registry),
        policy=policy(),
    )
    bus = EventBus(registry=registry, dead_letters=SqlDeadLetterStore(engine))

    store = SqlEntityStore(timeline_tables)

    async def project(event: EventEnvelope, tx: Transaction) -> None:
        await store.repository(timeline_entity, tx, event.org_id).add(
            TimelineEntry(
                id=event.id,
                deal_id=event.payload.deal_id,  # type: ignore[attr-defined]  # every CRM event has it
                event=event.name,
                actor_id=event.actor_id,
                occurred_at=event.occurred_at,
            )
        )

    timeline = IdempotentConsumer(
        "crm.deal_timeline",
        project,
        unit_of_work=SqlUnitOfWork(engine),
        processed=SqlProcessedEventStore(engine),
    )
    for pattern in ("deal.*", "task.*"):
        bus.subscribe(pattern, timeline, name=f"crm.deal_timeline:{pattern}")

    inbox = SqlInAppStore(engine)
    deliveries = SqlDeliveryLog(engine)
    preferences = SqlPreferenceStore(engine)
    center = NotificationCenter(
        NOTIFICATIONS,
        channels=[email, InAppChannel(inbox), webhook],
        directory=directory or demo_directory(),
        delivery_log=deliveries,
        preferences=preferences,
    )
    center.subscribe(bus)
    return NotificationsApp(
        engine=engine,
        executor=executor,
        bus=bus,
        relay=OutboxRelay(outbox, bus, registry=registry),
        outbox=outbox,
        center=center,
        timeline=timeline,
        trail=SqlAuditTrail(engine),
        inbox=inbox,
        deliveries=deliveries,
        preferences=preferences,
    )
