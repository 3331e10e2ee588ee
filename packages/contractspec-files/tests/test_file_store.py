"""One conformance suite for `FileStore`, on memory, a SQLite file and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from files_support import T0, App, attachment, file

from contractspec.core import ConflictError, NotFoundError, TenantScopeError
from contractspec.files import Attachment, File, FileState


async def add(app: App, *pairs: tuple[File, Attachment]) -> None:
    tx = await app.unit_of_work.begin()
    for f, a in pairs:
        await app.store.add(tx, f, a)
    await tx.commit()


async def test_records_exist_only_after_commit(app: App) -> None:
    """A rolled-back add leaves nothing; a committed one is readable field for field."""
    tx = await app.unit_of_work.begin()
    await app.store.add(tx, file(1), attachment(1))
    await tx.rollback()
    assert await app.store.get_file("org-1", "f1") is None
    assert await app.store.get_attachment("org-1", "a1") is None
    await add(app, (file(1), attachment(1)))
    assert await app.store.get_file("org-1", "f1") == file(1)
    assert await app.store.get_attachment("org-1", "a1") == attachment(1)


async def test_reads_are_scoped_by_tenant(app: App) -> None:
    """Another tenant's file and attachment are invisible (None / empty list)."""
    await add(app, (file(1), attachment(1)), (file(2, "org-2"), attachment(2, "org-2")))
    assert await app.store.get_file("org-2", "f1") is None
    assert await app.store.get_attachment("org-2", "a1") is None
    assert [a.id for a in await app.store.list_attachments("org-1", "project", "p1")] == ["a1"]
    assert [a.id for a in await app.store.list_attachments("org-2", "project", "p1")] == ["a2"]


async def test_cross_tenant_link_is_refused(app: App) -> None:
    """An attachment of org-2 cannot link a file of org-1; nothing is written."""
    tx = await app.unit_of_work.begin()
    with pytest.raises(TenantScopeError, match="within its own tenant"):
        await app.store.add(tx, file(1), attachment(1, "org-2"))
    await tx.rollback()
    assert await app.store.get_file("org-1", "f1") is None


async def test_duplicate_ids_and_keys_conflict(app: App) -> None:
    """A second file with the same id or storage key is a ConflictError."""
    await add(app, (file(1), attachment(1)))
    tx = await app.unit_of_work.begin()
    with pytest.raises(ConflictError):
        await app.store.add(tx, file(1), attachment(9, file_id="f1"))
    await tx.rollback()
    clash = file(2).model_copy(update={"key": "blobs/f1"})
    tx = await app.unit_of_work.begin()
    with pytest.raises(ConflictError):
        await app.store.add(tx, clash, attachment(2))
    await tx.rollback()
    assert await app.store.get_file("org-1", "f2") is None


async def test_list_orders_and_filters_by_slot_and_entity(app: App) -> None:
    """Attachments come oldest first, per entity record, optionally per slot."""
    await add(
        app,
        (file(3), attachment(3)),
        (file(1), attachment(1)),
        (file(2), attachment(2, entity_id="p2")),
    )
    assert [a.id for a in await app.store.list_attachments("org-1", "project", "p1")] == [
        "a1",
        "a3",
    ]
    assert await app.store.list_attachments("org-1", "project", "p1", slot="project.images") == []


async def test_remove_deletes_both_and_rolls_back(app: App) -> None:
    """remove() deletes the attachment and its file; a rollback restores them; unknown → 404."""
    await add(app, (file(1), attachment(1)))
    tx = await app.unit_of_work.begin()
    removed = await app.store.remove(tx, "org-1", "a1")
    assert removed == file(1)
    await tx.rollback()
    assert await app.store.get_file("org-1", "f1") == file(1)
    tx = await app.unit_of_work.begin()
    await app.store.remove(tx, "org-1", "a1")
    await tx.commit()
    assert await app.store.get_file("org-1", "f1") is None
    assert await app.store.get_attachment("org-1", "a1") is None
    tx = await app.unit_of_work.begin()
    with pytest.raises(NotFoundError):
        await app.store.remove(tx, "org-1", "a1")
    await tx.rollback()


async def test_remove_in_another_tenant_is_not_found(app: App) -> None:
    """org-2 cannot remove org-1's attachment or file."""
    await add(app, (file(1), attachment(1)))
    tx = await app.unit_of_work.begin()
    with pytest.raises(NotFoundError):
        await app.store.remove(tx, "org-2", "a1")
    with pytest.raises(NotFoundError):
        await app.store.remove_file(tx, "org-2", "f1")
    await tx.rollback()
    assert await app.store.get_file("org-1", "f1") is not None


async def test_update_state_and_hold(app: App) -> None:
    """update_file changes state and legal hold, tenant-scoped."""
    await add(app, (file(1), attachment(1)))
    tx = await app.unit_of_work.begin()
    updated = await app.store.update_file(
        tx, "org-1", "f1", state=FileState.ARCHIVED, legal_hold=True
    )
    await tx.commit()
    assert (updated.state, updated.legal_hold) == (FileState.ARCHIVED, True)
    assert await app.store.get_file("org-1", "f1") == updated
    tx = await app.unit_of_work.begin()
    with pytest.raises(NotFoundError):
        await app.store.update_file(tx, "org-2", "f1", legal_hold=False)
    await tx.rollback()


async def test_known_keys_and_expiring(app: App) -> None:
    """known_keys spans tenants; expiring skips held, archived and recent files."""
    await add(
        app,
        (file(1, days=0), attachment(1)),
        (file(2, "org-2", days=0), attachment(2, "org-2")),
        (file(3, days=0), attachment(3)),
        (file(4, days=10), attachment(4)),
        (file(5, days=0, slot="project.images"), attachment(5)),
    )
    tx = await app.unit_of_work.begin()
    await app.store.update_file(tx, "org-1", "f3", legal_hold=True)
    await tx.commit()
    keys = await app.store.known_keys("local", ["blobs/f1", "blobs/f2", "blobs/zz"])
    assert keys == {"blobs/f1", "blobs/f2"}
    assert await app.store.known_keys("s3", ["blobs/f1"]) == set()
    due = await app.store.expiring(
        "project.docs", T0 + timedelta(days=5), state=FileState.ACTIVE, limit=10
    )
    assert [f.id for f in due] == ["f1", "f2"]
    assert [
        f.id
        for f in await app.store.expiring(
            "project.docs", T0 + timedelta(days=5), state=FileState.ACTIVE, limit=1
        )
    ] == ["f1"]
