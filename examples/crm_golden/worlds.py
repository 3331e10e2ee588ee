"""The state each golden suite replays against: an executor factory per operation.

A golden case replays one recorded call in a fresh executor. Calls that read or extend state need
that state to be there, so each operation names its *world*:

* `empty` — nothing stored: creating contacts;
* `contacts` — the CDNOW customers of the recorded purchases exist: creating deals;
* `imported` — the recorded purchases imported through the real CRM import: every query.

Worlds are rebuilt for every case with the clock and id generator the replay hands in, so values
they derive from time (a deal's `created_at`) differ between the generator's two replays and are
masked, exactly like values the call itself generates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from crm_pipeline.main import IMPORTER, Purchase, data_file, import_purchases, read_purchases
from crm_pipeline.models import CreateContact

from contractspec.core import AllowAll, Clock, Executor, IdGenerator, SpecRegistry
from contractspec.core.testing import FakeClock, SequentialIds

__all__ = ["LIMIT", "WORLDS", "purchases", "world_for"]

#: Purchases (first lines of CDNOW_master.txt) imported while recording, and by the `imported` world.
LIMIT = 300

_PURCHASES: list[Purchase] = []


def purchases() -> list[Purchase]:
    """The first `LIMIT` real CDNOW purchases (read once)."""
    if not _PURCHASES:
        _PURCHASES.extend(read_purchases(data_file(), LIMIT))
    return _PURCHASES


def _executor(registry: SpecRegistry, clock: Clock | None, ids: IdGenerator | None) -> Executor:
    return Executor(
        registry,
        policy=AllowAll(),
        clock=clock or FakeClock(datetime(1998, 7, 1, tzinfo=UTC)),
        ids=ids or SequentialIds("golden"),
    )


async def empty(
    registry: SpecRegistry, *, clock: Clock | None = None, ids: IdGenerator | None = None
) -> Executor:
    """Nothing stored."""
    return _executor(registry, clock, ids)


async def contacts(
    registry: SpecRegistry, *, clock: Clock | None = None, ids: IdGenerator | None = None
) -> Executor:
    """The customers of the recorded purchases exist as contacts."""
    executor = _executor(registry, clock, ids)
    seen: set[str] = set()
    async with executor.batch():
        for p in purchases():
            if p.customer_id not in seen:
                seen.add(p.customer_id)
                await executor.execute(
                    "crm.contact.create",
                    CreateContact(
                        id=f"cdnow-{p.customer_id}",
                        name=f"CDNOW customer {p.customer_id}",
                        source="cdnow",
                    ),
                    IMPORTER,
                )
    return executor


async def imported(
    registry: SpecRegistry, *, clock: Clock | None = None, ids: IdGenerator | None = None
) -> Executor:
    """The recorded purchases imported through the CRM's own import."""
    executor = _executor(registry, clock, ids)
    stats = await import_purchases(executor, purchases())
    if stats.failures:
        raise RuntimeError(f"the imported world failed to build: {stats.errors}")
    return executor


Factory = Callable[..., Awaitable[Executor]]

#: Operation → world it replays in.
WORLDS: dict[str, Factory] = {
    "crm.contact.create": empty,
    "crm.deal.create": contacts,
    "crm.contact.search": imported,
    "crm.deal.search": imported,
    "crm.pipeline.board": imported,
    "crm.report.summary": imported,
}


def world_for(operation: str) -> Any:
    """The executor factory of an operation's golden suite.

    Raises:
        KeyError: The operation has no golden suite here.
    """
    return WORLDS[operation]
