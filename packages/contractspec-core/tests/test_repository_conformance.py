"""One conformance suite for every Repository adapter: memory, SQLite and PostgreSQL.

Every case runs on the three backends through the `backend` fixture; an adapter that passes here
behaves the same as the others for handlers.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from core_app import Contact, Currency, Deal, Stage, contact_entity, currency_entity, deal_entity

from contractspec.core import (
    REDACTED,
    Backend,
    ConflictError,
    HandlerContractError,
    NotFoundError,
    SpecValidationError,
    TenantScopeError,
    Transaction,
)

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def deal(n: int, **changes: Any) -> Deal:
    base = {
        "id": f"d{n:02d}",
        "contact_id": f"c{n % 3}",
        "title": f"Deal {n}",
        "amount": Decimal(n * 100) + Decimal("0.25"),
        "stage": [Stage.LEAD, Stage.QUALIFIED, Stage.WON][n % 3],
        "tags": [f"t{n}"],
        "created_at": T0 + timedelta(hours=n),
        "closed_at": None if n % 2 else T0 + timedelta(days=n),
    }
    base.update(changes)
    return Deal.model_validate(base)


async def begin(backend: Backend, readonly: bool = False) -> Transaction:
    return await backend.unit_of_work.begin(readonly=readonly)


async def add_and_commit(tx: Transaction, repo: Any, obj: Any) -> None:
    """Conflicts surface at add() (memory) or at the flush on commit (SQL): either is fine."""
    await repo.add(obj)
    await tx.commit()


async def seed(backend: Backend, n: int = 6, org: str = "org-1") -> list[Deal]:
    tx = await begin(backend)
    repo = backend.entities.repository(deal_entity, tx, org)
    deals = [await repo.add(deal(i)) for i in range(1, n + 1)]
    await tx.commit()
    return deals


async def test_add_then_get_round_trips_every_value_kind(backend: Backend) -> None:
    """Decimals, enums, aware datetimes (any offset), lists and NULLs come back equal."""
    tx = await begin(backend)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    paris = timezone(timedelta(hours=2))
    original = deal(
        1, created_at=datetime(2024, 3, 1, 14, 30, tzinfo=paris), amount=Decimal("1234.56")
    )
    await repo.add(original)
    assert await repo.get("d01") == original  # visible inside the transaction
    await tx.commit()
    tx = await begin(backend, readonly=True)
    loaded = await backend.entities.repository(deal_entity, tx, "org-1").get("d01")
    await tx.rollback()
    assert loaded == original
    assert loaded is not None
    assert loaded.created_at == datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
    assert loaded.amount == Decimal("1234.56")
    assert loaded.stage is Stage.QUALIFIED
    assert loaded.tags == ["t1"]
    assert loaded.closed_at is None


async def test_get_missing_and_require(backend: Backend) -> None:
    """get() returns None; require() raises NotFoundError naming the entity and id."""
    tx = await begin(backend, readonly=True)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    assert await repo.get("nope") is None
    with pytest.raises(
        NotFoundError, match=re.escape("crm.deal 'nope' not found in this organization")
    ):
        await repo.require("nope")
    await tx.rollback()


async def test_duplicate_primary_key_conflicts(backend: Backend) -> None:
    """Adding an existing primary key raises ConflictError (at the latest on commit)."""
    await seed(backend, 1)
    tx = await begin(backend)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    with pytest.raises(ConflictError):
        await add_and_commit(tx, repo, deal(1, title="again"))
    await tx.rollback()
    tx = await begin(backend, readonly=True)
    kept = await backend.entities.repository(deal_entity, tx, "org-1").require("d01")
    await tx.rollback()
    assert kept.title == "Deal 1"


async def test_unique_index_is_per_tenant(backend: Backend) -> None:
    """A unique email conflicts inside one org but not across orgs; NULLs never conflict."""
    tx = await begin(backend)
    one = backend.entities.repository(contact_entity, tx, "org-1")
    two = backend.entities.repository(contact_entity, tx, "org-2")
    await one.add(Contact(id="c1", name="Ada", email="ada@example.com"))
    await one.add(Contact(id="c2", name="Bob", email=None))
    await one.add(Contact(id="c3", name="Cy", email=None))
    await two.add(Contact(id="c1", name="Ada", email="ada@example.com"))
    await tx.commit()
    tx = await begin(backend)
    one = backend.entities.repository(contact_entity, tx, "org-1")
    with pytest.raises(ConflictError):
        await add_and_commit(tx, one, Contact(id="c9", name="Eve", email="ada@example.com"))
    await tx.rollback()


async def test_update_patch_and_delete(backend: Backend) -> None:
    """update() replaces, patch() changes fields with validation, delete() reports existence."""
    await seed(backend, 2)
    tx = await begin(backend)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    current = await repo.require("d01")
    await repo.update(current.model_copy(update={"title": "Renamed", "stage": Stage.LOST}))
    patched = await repo.patch("d02", amount=Decimal("9.99"), tags=["x", "y"])
    assert patched.amount == Decimal("9.99")
    with pytest.raises(NotFoundError):
        await repo.update(deal(7))
    with pytest.raises(SpecValidationError, match="unknown field"):
        await repo.patch("d01", colour="red")
    with pytest.raises(SpecValidationError, match="primary key"):
        await repo.patch("d01", id="d99")
    with pytest.raises(SpecValidationError, match="patched record is invalid"):
        await repo.patch("d01", amount=Decimal("-1"))
    assert await repo.delete("d02") is True
    assert await repo.delete("d02") is False
    await tx.commit()
    tx = await begin(backend, readonly=True)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    first = await repo.require("d01")
    assert (first.title, first.stage) == ("Renamed", Stage.LOST)
    assert await repo.get("d02") is None
    await tx.rollback()


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"stage": "won"}, ["d02", "d05"]),
        ({"stage__eq": Stage.LEAD}, ["d03", "d06"]),
        ({"stage__ne": "won"}, ["d01", "d03", "d04", "d06"]),
        ({"amount__gt": "300.25"}, ["d04", "d05", "d06"]),
        ({"amount__ge": Decimal("300.25")}, ["d03", "d04", "d05", "d06"]),
        ({"amount__lt": 200}, ["d01"]),
        ({"amount__le": "200.25"}, ["d01", "d02"]),
        ({"contact_id__in": ["c0", "c2"]}, ["d02", "d03", "d05", "d06"]),
        ({"contact_id__not_in": ["c0", "c2"]}, ["d01", "d04"]),
        ({"closed_at__is_null": True}, ["d01", "d03", "d05"]),
        ({"closed_at__is_null": False}, ["d02", "d04", "d06"]),
        ({"closed_at__ne": T0 + timedelta(days=2)}, ["d04", "d06"]),
        ({"title__icontains": "DEAL 1"}, ["d01"]),
        ({"created_at__ge": T0 + timedelta(hours=5)}, ["d05", "d06"]),
        ({"stage": "qualified", "amount__gt": 100}, ["d01", "d04"]),
    ],
)
async def test_filters(backend: Backend, where: dict[str, Any], expected: list[str]) -> None:
    """Every lookup selects the same records on every backend (NULL matches no comparison)."""
    await seed(backend)
    tx = await begin(backend, readonly=True)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    found = await repo.find(where)
    assert [d.id for d in found] == expected
    assert await repo.count(where) == len(expected)
    await tx.rollback()


async def test_ordering_nulls_and_pagination(backend: Backend) -> None:
    """NULLs sort last ascending and first descending; the primary key breaks ties; pages are stable."""
    await seed(backend)
    tx = await begin(backend, readonly=True)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    asc = [d.id for d in await repo.find(order_by="closed_at")]
    desc = [d.id for d in await repo.find(order_by=["-closed_at"])]
    assert asc == ["d02", "d04", "d06", "d01", "d03", "d05"]
    assert desc == ["d01", "d03", "d05", "d06", "d04", "d02"]
    by_stage = [d.id for d in await repo.find(order_by=["stage", "-amount"])]
    assert by_stage == ["d06", "d03", "d04", "d01", "d05", "d02"]
    pages = [
        [d.id for d in await repo.find(order_by="-amount", limit=4, offset=o)] for o in (0, 4, 8)
    ]
    assert pages == [["d06", "d05", "d04", "d03"], ["d02", "d01"], []]
    assert (await repo.first({"stage": "won"}, order_by="-amount")) == deal(5)
    with pytest.raises(SpecValidationError, match="limit must be a non-negative integer"):
        await repo.find(limit=-1)
    await tx.rollback()


async def test_aggregate_counts_and_sums_in_the_store(backend: Backend) -> None:
    """Grouped counts and exact decimal sums, ordered by group; empty input gives one zero row."""
    tx = await begin(backend, readonly=True)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    assert await repo.aggregate(sum=["amount"]) == [{"count": 0, "sum_amount": None}]
    await tx.rollback()
    await seed(backend)
    tx = await begin(backend, readonly=True)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    rows = await repo.aggregate(group_by=["stage"], sum=["amount"])
    assert rows == [
        {"stage": "lead", "count": 2, "sum_amount": Decimal("900.50")},
        {"stage": "qualified", "count": 2, "sum_amount": Decimal("500.50")},
        {"stage": "won", "count": 2, "sum_amount": Decimal("700.50")},
    ]
    totals = await repo.aggregate(group_by=["contact_id", "stage"], where={"amount__ge": 200})
    assert totals == [
        {"contact_id": "c0", "stage": "lead", "count": 2},
        {"contact_id": "c1", "stage": "qualified", "count": 1},
        {"contact_id": "c2", "stage": "won", "count": 2},
    ]
    with pytest.raises(SpecValidationError, match="cannot sum 'title'"):
        await repo.aggregate(sum=["title"])
    with pytest.raises(SpecValidationError, match="group_by and sum take lists"):
        await repo.aggregate(group_by="stage")  # type: ignore[arg-type]
    await tx.rollback()


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"colour": "red"}, "unknown field 'colour'"),
        ({"tags": ["a"]}, "holds structured data"),
        ({"stage__like": "w%"}, "unknown lookup 'like'"),
        ({"amount__gt": "lots"}, "is not a valid value for this field"),
        ({"stage": None}, "__is_null=True"),
        ({"stage__in": "won"}, "give a list of values"),
        ({"amount__icontains": "1"}, "icontains needs a string field"),
    ],
)
async def test_bad_filters_are_explained(
    backend: Backend, where: dict[str, Any], message: str
) -> None:
    """Unknown fields, structured fields, unknown lookups and bad values raise SpecValidationError."""
    tx = await begin(backend, readonly=True)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    with pytest.raises(SpecValidationError, match=message):
        await repo.find(where)
    await tx.rollback()


async def test_tenants_never_see_or_change_each_others_records(backend: Backend) -> None:
    """Reads, counts, aggregates, updates and deletes of another org find nothing, change nothing."""
    await seed(backend, 3, org="org-1")
    tx = await begin(backend)
    other = backend.entities.repository(deal_entity, tx, "org-2")
    assert await other.get("d01") is None
    assert await other.find() == []
    assert await other.count() == 0
    assert await other.aggregate(sum=["amount"]) == [{"count": 0, "sum_amount": None}]
    with pytest.raises(NotFoundError):
        await other.update(deal(1, title="hijacked"))
    with pytest.raises(NotFoundError):
        await other.patch("d01", title="hijacked")
    assert await other.delete("d01") is False
    await other.add(deal(1, title="org-2's own d01"))
    await tx.commit()
    tx = await begin(backend, readonly=True)
    mine = backend.entities.repository(deal_entity, tx, "org-1")
    assert [d.title for d in await mine.find()] == ["Deal 1", "Deal 2", "Deal 3"]
    await tx.rollback()
    with pytest.raises(TenantScopeError, match="needs an org_id"):
        backend.entities.repository(deal_entity, tx, None)


async def test_global_entities_are_shared_by_all_orgs(backend: Backend) -> None:
    """Entities declared tenant_scoped=False are visible whatever the org."""
    tx = await begin(backend)
    await backend.entities.repository(currency_entity, tx, None).add(
        Currency(code="EUR", name="Euro")
    )
    await tx.commit()
    tx = await begin(backend, readonly=True)
    found = await backend.entities.repository(currency_entity, tx, "org-9").get("EUR")
    await tx.rollback()
    assert found == Currency(code="EUR", name="Euro")


async def test_rollback_undoes_adds_updates_and_deletes(backend: Backend) -> None:
    """Nothing a rolled-back transaction wrote survives."""
    await seed(backend, 2)
    tx = await begin(backend)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    await repo.add(deal(3))
    await repo.patch("d01", title="changed")
    await repo.delete("d02")
    assert await repo.count() == 2  # reads see the transaction's own writes (and flush them)
    await tx.rollback()
    tx = await begin(backend, readonly=True)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    assert [(d.id, d.title) for d in await repo.find()] == [("d01", "Deal 1"), ("d02", "Deal 2")]
    await tx.rollback()


async def test_savepoint_rollback_keeps_earlier_work(backend: Backend) -> None:
    """Rolling back to a savepoint undoes only what came after it, even once flushed."""
    tx = await begin(backend)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    await repo.add(deal(1))
    sp = await tx.savepoint()
    await repo.add(deal(2))
    await repo.patch("d01", title="inside savepoint")
    assert await repo.count() == 2  # forces a flush inside the savepoint
    await repo.add(deal(3))
    assert len(sp.changes) == 3
    await sp.rollback()
    assert await repo.get("d02") is None
    assert (await repo.require("d01")).title == "Deal 1"
    sp = await tx.savepoint()
    await repo.add(deal(4))
    await sp.release()
    await tx.commit()
    tx = await begin(backend, readonly=True)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    assert [d.id for d in await repo.find()] == ["d01", "d04"]
    assert (await repo.require("d01")).title == "Deal 1"
    await tx.rollback()


async def test_read_only_transactions_refuse_writes(backend: Backend) -> None:
    """Writing in a query's transaction is a contract violation."""
    tx = await begin(backend, readonly=True)
    repo = backend.entities.repository(deal_entity, tx, "org-1")
    with pytest.raises(HandlerContractError, match="read-only"):
        await repo.add(deal(1))
    await tx.rollback()


async def test_changes_are_recorded_with_pii_redacted(backend: Backend) -> None:
    """Every write leaves an EntityChange with before/after JSON; PII fields are redacted."""
    tx = await begin(backend)
    repo = backend.entities.repository(contact_entity, tx, "org-1")
    await repo.add(Contact(id="c1", name="Ada", email="ada@example.com"))
    await repo.patch("c1", name="Ada L.")
    await repo.delete("c1")
    changes = [(c.op, c.entity, c.entity_id, c.diff()) for c in tx.changes]
    await tx.commit()
    assert changes == [
        (
            "create",
            "crm.contact",
            "c1",
            {"email": [None, REDACTED], "id": [None, "c1"], "name": [None, "Ada"]},
        ),
        ("update", "crm.contact", "c1", {"name": ["Ada", "Ada L."]}),
        (
            "delete",
            "crm.contact",
            "c1",
            {"email": [REDACTED, None], "id": ["c1", None], "name": ["Ada L.", None]},
        ),
    ]


async def test_records_added_as_mappings_are_validated(backend: Backend) -> None:
    """add() accepts a mapping, validated against the model; bad ones raise SpecValidationError."""
    tx = await begin(backend)
    repo = backend.entities.repository(contact_entity, tx, "org-1")
    added = await repo.add({"id": "c1", "name": "Ada"})
    assert added == Contact(id="c1", name="Ada")
    with pytest.raises(SpecValidationError, match="record is invalid"):
        await repo.add({"id": "c2", "name": ""})
    with pytest.raises(HandlerContractError, match="expected a Contact instance"):
        await repo.add(deal(1))  # type: ignore[arg-type]
    await tx.rollback()
