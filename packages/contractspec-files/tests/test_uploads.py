"""Uploads, downloads and deletions through the executor, on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from files_support import PDF, PE, PNG, App, chunks, ctx, noise, open_app
from pydantic import BaseModel

from contractspec.core import (
    ConflictError,
    Executor,
    Invocation,
    NotFoundError,
    PolicyDeniedError,
)
from contractspec.core.handler import NextFn
from contractspec.files import (
    AttachmentLimitError,
    DownloadLinkError,
    FileState,
    FileTooLargeError,
    LegalHoldError,
    LocalFileStorage,
    MediaTypeRefusedError,
)
from contractspec.files.operations import AttachmentView

BIG_PDF = PDF + noise(20_000)


class FailAfter:
    """Middleware: let `operation`'s handler run, then fail the call (it rolls back)."""

    def __init__(self, operation: str) -> None:
        self.operation = operation

    async def __call__(self, inv: Invocation, call_next: NextFn) -> BaseModel:
        out = await call_next(inv)
        if inv.spec.name == self.operation:
            raise ConflictError("injected failure after the handler")
        return out


async def test_upload_records_file_and_attachment(app: App) -> None:
    """The record carries the sniffed type, the streamed size and SHA-256; the blob matches it."""
    await app.project()
    out = await app.upload(
        BIG_PDF, filename="../../Report 2024.pdf", content_type="application/pdf"
    )
    assert isinstance(out, AttachmentView)
    f = out.file
    assert (f.media_type, f.size, f.sha256) == (
        "application/pdf",
        len(BIG_PDF),
        hashlib.sha256(BIG_PDF).hexdigest(),
    )
    assert (f.org_id, f.owner_id, f.filename, f.backend) == (
        "org-1",
        "u-1",
        "Report 2024.pdf",
        "local",
    )
    assert await app.store.get_file("org-1", f.id) == f
    assert (out.attachment.entity, out.attachment.entity_id, out.attachment.slot) == (
        "project", "p1", "project.docs",
    )  # fmt: skip
    stored = b"".join([c async for c in app.storage.get(f.key)])
    assert stored == BIG_PDF
    listed = await app.executor.execute(
        "files.attachments.list", {"entity": "project", "entity_id": "p1"}, ctx()
    )
    assert [i.attachment.id for i in listed.items] == [out.attachment.id]  # type: ignore[attr-defined]


async def test_size_limit_aborts_mid_stream(app: App) -> None:
    """Past max_size the upload stops reading, nothing is stored and no record exists."""
    await app.project()
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        yield PDF
        while True:
            read += 4096
            yield b"\0" * 4096

    with pytest.raises(FileTooLargeError) as info:
        await app.files.stage("project.docs", endless(), org_id="org-1", actor_id="u-1")
    assert info.value.details["max_size"] == 64 * 1024
    assert read <= 64 * 1024 + 4096
    assert app.blobs() == []


async def test_declared_type_must_match_sniffed_type(app: App) -> None:
    """A PE executable claimed as image/png is refused before it is kept; so is a PE unlabelled."""
    with pytest.raises(MediaTypeRefusedError, match="claims to be image/png"):
        await app.files.stage(
            "project.images", chunks(PE), org_id="org-1", actor_id="u-1", content_type="image/png"
        )
    with pytest.raises(MediaTypeRefusedError, match="portable-executable"):
        await app.files.stage("project.images", chunks(PE), org_id="org-1", actor_id="u-1")
    assert app.blobs() == []
    staged = await app.files.stage(
        "project.images", chunks(PNG), org_id="org-1", actor_id="u-1", content_type="image/png"
    )
    assert staged.media_type == "image/png"


async def test_max_count_per_record(app: App) -> None:
    """The fourth file on one project in a max_count=3 slot is refused; other projects are free."""
    await app.project("p1")
    await app.project("p2")
    for _ in range(3):
        await app.upload(PDF)
    with pytest.raises(AttachmentLimitError, match="max_count=3"):
        await app.upload(PDF)
    await app.upload(PDF, entity_id="p2")


async def test_upload_needs_the_slot_permission(app: App) -> None:
    """Without project.files.upload the call is denied and no record is written."""
    await app.project()
    with pytest.raises(PolicyDeniedError):
        await app.upload(PDF, roles=())
    assert await app.store.list_attachments("org-1", "project", "p1") == []


async def test_staged_upload_cannot_cross_tenants_or_callers(app: App) -> None:
    """A token staged for org-1/u-1 is refused for org-2 or u-2; an entity of another org is 404."""
    await app.project("p1", org="org-1")
    await app.project("p9", org="org-2")
    staged = await app.files.stage("project.docs", chunks(PDF), org_id="org-1", actor_id="u-1")
    for org, user in (("org-2", "u-1"), ("org-1", "u-2")):
        with pytest.raises(PolicyDeniedError, match="another caller or tenant"):
            await app.executor.execute(
                "files.upload", {"token": staged.token, "entity_id": "p1"}, ctx(org, user)
            )
    with pytest.raises(NotFoundError, match="project 'p9' does not exist"):
        await app.executor.execute(
            "files.upload", {"token": staged.token, "entity_id": "p9"}, ctx("org-1", "u-1")
        )
    assert await app.store.list_attachments("org-2", "project", "p9") == []


async def test_tampered_or_expired_token_is_refused(app: App) -> None:
    """A modified token or one older than upload_ttl cannot record a file; a used one conflicts."""
    await app.project()
    staged = await app.files.stage("project.docs", chunks(PDF), org_id="org-1", actor_id="u-1")
    with pytest.raises(DownloadLinkError, match="not valid"):
        await app.executor.execute(
            "files.upload", {"token": staged.token[:-2] + "xx", "entity_id": "p1"}, ctx()
        )
    await app.executor.execute("files.upload", {"token": staged.token, "entity_id": "p1"}, ctx())
    with pytest.raises(ConflictError):
        await app.executor.execute(
            "files.upload", {"token": staged.token, "entity_id": "p1"}, ctx()
        )
    late = await app.files.stage("project.docs", chunks(PDF), org_id="org-1", actor_id="u-1")
    app.clock.advance(app.files.upload_ttl + timedelta(seconds=2))
    with pytest.raises(DownloadLinkError, match="expired"):
        await app.executor.execute("files.upload", {"token": late.token, "entity_id": "p1"}, ctx())
    assert len(await app.store.list_attachments("org-1", "project", "p1")) == 1


async def test_rolled_back_upload_leaves_an_orphan_that_is_collected(
    app: App, tmp_path: object
) -> None:
    """A call that fails after its handler leaves no record; its blob is collected after the grace."""
    app.executor.middleware = (FailAfter("files.upload"),)
    await app.project()
    staged = await app.files.stage("project.docs", chunks(PDF), org_id="org-1", actor_id="u-1")
    with pytest.raises(ConflictError, match="injected"):
        await app.executor.execute(
            "files.upload", {"token": staged.token, "entity_id": "p1"}, ctx()
        )
    assert await app.store.get_file("org-1", staged.file_id) is None
    app.executor.middleware = ()
    kept = await app.upload(PDF)
    assert app.blobs() == sorted([staged.key, kept.file.key])
    assert await app.files.collect_orphans() == 0  # within the grace period: untouched
    app.clock.set(
        datetime.now(UTC) + app.files.upload_ttl + app.files.orphan_margin + timedelta(seconds=1)
    )
    assert await app.files.collect_orphans() == 1
    assert app.blobs() == [kept.file.key]


async def test_delete_removes_the_blob_only_after_commit(app: App) -> None:
    """A rolled-back delete keeps record and blob; a committed one removes both."""
    await app.project()
    out = await app.upload(PDF)
    app.executor.middleware = (FailAfter("files.delete"),)
    admin = ctx(roles=("admin",))
    with pytest.raises(ConflictError, match="injected"):
        await app.executor.execute("files.delete", {"attachment_id": out.attachment.id}, admin)
    await app.files.drain()
    assert await app.storage.exists(out.file.key)
    assert await app.store.get_file("org-1", out.file.id) is not None
    app.executor.middleware = ()
    with pytest.raises(PolicyDeniedError):
        await app.executor.execute("files.delete", {"attachment_id": out.attachment.id}, ctx())
    await app.executor.execute("files.delete", {"attachment_id": out.attachment.id}, admin)
    await app.files.drain()
    assert not await app.storage.exists(out.file.key)
    assert await app.store.get_file("org-1", out.file.id) is None


async def test_legal_hold_blocks_deletion_and_retention(app: App) -> None:
    """A held file cannot be deleted by a caller or by retention until released."""
    await app.project()
    out = await app.upload(PDF)
    admin = ctx(roles=("admin",))
    await app.executor.execute(
        "files.legal_hold.set", {"attachment_id": out.attachment.id, "hold": True}, admin
    )
    with pytest.raises(LegalHoldError):
        await app.executor.execute("files.delete", {"attachment_id": out.attachment.id}, admin)
    app.clock.advance(timedelta(days=31))
    report = await app.files.apply_retention(app.executor)
    assert report.deleted == ()
    await app.executor.execute(
        "files.legal_hold.set", {"attachment_id": out.attachment.id, "hold": False}, admin
    )
    report = await app.files.apply_retention(app.executor)
    assert report.deleted == (out.file.id,)
    assert not await app.storage.exists(out.file.key)
    assert await app.store.get_attachment("org-1", out.attachment.id) is None


async def test_retention_archives_and_downloads_stop(app: App) -> None:
    """After 7 days an image is archived: still listed, no download path, link refused."""
    await app.project()
    out = await app.upload(PNG, slot="project.images", filename="a.png")
    token = out.download_path.rsplit("/", 1)[1]
    app.clock.advance(timedelta(days=6))
    assert (await app.files.apply_retention(app.executor)).archived == ()
    app.clock.advance(timedelta(days=2))
    assert (await app.files.apply_retention(app.executor)).archived == (out.file.id,)
    got = await app.executor.execute("files.get", {"attachment_id": out.attachment.id}, ctx())
    assert got.file.state is FileState.ARCHIVED  # type: ignore[attr-defined]
    assert got.download_path is None  # type: ignore[attr-defined]
    assert await app.storage.exists(out.file.key)
    app.files.link_ttl = timedelta(days=30)
    with pytest.raises(NotFoundError):
        await app.files.open_download(token)


async def test_signed_download_link_expires_and_resists_tampering(app: App) -> None:
    """files.get returns a link that streams the bytes until link_ttl; a changed token is refused."""
    await app.project()
    out = await app.upload(BIG_PDF)
    got = await app.executor.execute("files.get", {"attachment_id": out.attachment.id}, ctx())
    token = got.download_path.rsplit("/", 1)[1]  # type: ignore[attr-defined]
    file, stream = await app.files.open_download(token)
    assert file.id == out.file.id
    assert b"".join([c async for c in stream]) == BIG_PDF
    with pytest.raises(DownloadLinkError, match="not valid"):
        await app.files.open_download(token[:-3] + "abc")
    with pytest.raises(PolicyDeniedError):  # no view permission
        await app.executor.execute("files.get", {"attachment_id": out.attachment.id}, ctx(roles=()))
    with pytest.raises(NotFoundError):  # another tenant
        await app.executor.execute("files.get", {"attachment_id": out.attachment.id}, ctx("org-2"))
    app.clock.advance(app.files.link_ttl + timedelta(seconds=2))
    with pytest.raises(DownloadLinkError, match="expired"):
        await app.files.open_download(token)


async def test_concurrent_uploads_respect_max_count(backend_kind: str, tmp_path: object) -> None:
    """Six concurrent uploads to one project in a max_count=3 slot: exactly three succeed."""
    import asyncio
    from pathlib import Path

    async with open_app(backend_kind, Path(str(tmp_path))) as app:
        await app.project()
        staged = [
            await app.files.stage("project.docs", chunks(PDF), org_id="org-1", actor_id="u-1")
            for _ in range(6)
        ]
        results = await asyncio.gather(
            *(
                app.executor.execute("files.upload", {"token": s.token, "entity_id": "p1"}, ctx())
                for s in staged
            ),
            return_exceptions=True,
        )
        ok = [r for r in results if isinstance(r, AttachmentView)]
        refused = [r for r in results if isinstance(r, AttachmentLimitError)]
        assert (len(ok), len(refused)) == (3, 3), results
        assert len(await app.store.list_attachments("org-1", "project", "p1")) == 3


def test_executor_is_real(app: App) -> None:
    """Sanity: the fixture wires a real executor."""
    assert isinstance(app.executor, Executor)


async def test_files_upload_runs_both_phases(app: App) -> None:
    """Files.upload stages with the caller's tenant and actor, then records through the executor."""
    await app.project()
    out = await app.files.upload(
        app.executor, "project.docs", "p1", chunks(PDF), ctx(), filename="x.pdf"
    )
    assert (out.file.org_id, out.file.owner_id, out.file.filename) == ("org-1", "u-1", "x.pdf")
    from contractspec.core import CallContext, TenantScopeError

    with pytest.raises(TenantScopeError):
        await app.files.upload(app.executor, "project.docs", "p1", chunks(PDF), CallContext())


async def test_failed_blob_delete_after_commit_leaves_a_collectable_orphan(app: App) -> None:
    """If the after-commit blob removal fails, the record is gone and the blob is collected later."""
    await app.project()
    out = await app.upload(PDF)
    calls = 0

    class FailingDelete(LocalFileStorage):
        async def delete(self, key: str) -> bool:
            nonlocal calls
            calls += 1
            raise OSError("storage unavailable")

    app.files.storage = FailingDelete(app.storage.root, fsync=False)
    await app.executor.execute(
        "files.delete", {"attachment_id": out.attachment.id}, ctx(roles=("admin",))
    )
    await app.files.drain()
    assert calls == 1
    assert await app.store.get_file("org-1", out.file.id) is None
    assert await app.storage.exists(out.file.key)
    app.files.storage = app.storage
    app.clock.set(
        datetime.now(UTC) + app.files.upload_ttl + app.files.orphan_margin + timedelta(seconds=1)
    )
    assert await app.files.collect_orphans() == 1
    assert app.blobs() == []


async def test_idempotency_key_replays_the_upload(app: App) -> None:
    """The same call with the same idempotency key returns the first result; one record exists."""
    await app.project()
    staged = await app.files.stage("project.docs", chunks(PDF), org_id="org-1", actor_id="u-1")
    keyed = ctx().replace(idempotency_key="up-1")
    first = await app.executor.execute(
        "files.upload", {"token": staged.token, "entity_id": "p1"}, keyed
    )
    again = await app.executor.execute(
        "files.upload", {"token": staged.token, "entity_id": "p1"}, keyed
    )
    assert again.model_dump() == first.model_dump()
    assert len(await app.store.list_attachments("org-1", "project", "p1")) == 1


async def test_expire_is_system_only_audited_and_rechecks_the_hold(app: App) -> None:
    """A user cannot run files.expire; retention runs it as a system actor, emitting files.expired,
    and the operation re-checks the file (not due yet → skipped)."""
    await app.project()
    out = await app.upload(PDF)
    with pytest.raises(PolicyDeniedError, match="system actor"):
        await app.executor.execute("files.expire", {"file_id": out.file.id}, ctx(roles=("admin",)))
    from contractspec.core import Actor, CallContext

    system = CallContext(actor=Actor.system("files.retention"), org_id="org-1")
    early = await app.executor.execute("files.expire", {"file_id": out.file.id}, system)
    assert (early.outcome, early.reason) == ("skipped", "not_due")  # type: ignore[attr-defined]
    app.clock.advance(timedelta(days=31))
    report = await app.files.apply_retention(app.executor)
    assert report.deleted == (out.file.id,)
    if app.kind == "memory":
        assert "files.expired" in app.executor.backend.events.names()  # type: ignore[attr-defined]
    gone = await app.executor.execute("files.expire", {"file_id": out.file.id}, system)
    assert (gone.outcome, gone.reason) == ("skipped", "gone")  # type: ignore[attr-defined]


async def test_one_token_used_concurrently_records_once(app: App) -> None:
    """Four concurrent files.upload calls with one token: one record, the rest conflict."""
    import asyncio

    await app.project()
    staged = await app.files.stage("project.docs", chunks(PDF), org_id="org-1", actor_id="u-1")
    results = await asyncio.gather(
        *(
            app.executor.execute("files.upload", {"token": staged.token, "entity_id": "p1"}, ctx())
            for _ in range(4)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, AttachmentView) for r in results) == 1, results
    assert all(isinstance(r, (AttachmentView, ConflictError)) for r in results), results
    assert len(await app.store.list_attachments("org-1", "project", "p1")) == 1
