"""Shared test app: a `project` entity with two attachment slots, on every backend."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from attrs import define
from pydantic import BaseModel

from contractspec.core import (
    Actor,
    CallContext,
    Executor,
    HandlerCtx,
    RolePermissions,
    SpecRegistry,
    UnitOfWork,
    define_command,
    define_entity,
)
from contractspec.core.testing import FakeClock, temporary_sql_engine
from contractspec.files import (
    ArchiveLimits,
    Attachment,
    File,
    Files,
    FileStore,
    LocalFileStorage,
    MemoryFileStore,
    Retention,
    define_attachment_slot,
    register_file_operations,
)

SECRET = "s" * 40
T0 = datetime(2024, 1, 1, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
PE = b"MZ\x90\x00" + b"\x00" * 100 + b"PE\x00\x00"
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
GIF_POLYGLOT = b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00*/=1;<script>alert(1)</script>"


def file(n: int, org: str = "org-1", *, slot: str = "project.docs", days: int = 0) -> File:
    """A deterministic file record number `n`."""
    return File(
        id=f"f{n}",
        org_id=org,
        owner_id="u-1",
        slot=slot,
        filename=f"{n}.pdf",
        media_type="application/pdf",
        size=n,
        sha256=f"{n:064x}",
        backend="local",
        key=f"blobs/f{n}",
        created_at=T0 + timedelta(days=days, seconds=n),
    )


def attachment(
    n: int, org: str = "org-1", *, file_id: str | None = None, entity_id: str = "p1"
) -> Attachment:
    """A deterministic attachment of file `n`."""
    return Attachment(
        id=f"a{n}",
        org_id=org,
        file_id=file_id or f"f{n}",
        slot="project.docs",
        entity="project",
        entity_id=entity_id,
        created_at=T0 + timedelta(seconds=n),
        created_by="u-1",
    )


class Project(BaseModel):
    id: str
    name: str


class NewProject(BaseModel):
    id: str
    name: str


project = define_entity("project", Project)
create_project = define_command("app.project.create", input=NewProject, output=Project, auth=None)
docs_slot = define_attachment_slot(
    project,
    "docs",
    media_types=["application/pdf", "image/*", "application/zip"],
    max_size=64 * 1024,
    max_count=3,
    upload="project.files.upload",
    view="project.files.view",
    delete="project.files.delete",
    retention=Retention(days=30, action="delete"),
    archive_limits=ArchiveLimits(max_members=10, max_uncompressed=200_000, max_ratio=50),
)
images_slot = define_attachment_slot(
    project,
    "images",
    media_types=["image/png", "image/jpeg", "image/gif"],
    max_size=1024 * 1024,
    retention=Retention(days=7, action="archive"),
)

POLICY = RolePermissions(
    {
        "member": ["project.files.view", "project.files.upload"],
        "admin": ["project.files.*", "files.legal_hold"],
    }
)


def ctx(org: str = "org-1", user: str = "u-1", roles: Iterable[str] = ("member",)) -> CallContext:
    """A caller in `org` with `roles`."""
    return CallContext(actor=Actor.user(user, roles=tuple(roles)), org_id=org)


async def chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    """`data` as an async stream of `size`-byte chunks."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def noise(n: int) -> bytes:
    """`n` random bytes, like a compressed stream: `<a `, `<b>` or `<p/` occur in some draws, and
    the polyglot check must not refuse a PDF or zip for them (it judges those by their start)."""
    return os.urandom(n)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A deflated zip archive of `members`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buf.getvalue()


@define
class App:
    """Everything a files test needs."""

    kind: str
    executor: Executor
    files: Files
    store: FileStore
    storage: LocalFileStorage
    unit_of_work: UnitOfWork
    clock: FakeClock
    engine: Any = None

    async def project(self, pid: str = "p1", org: str = "org-1") -> None:
        await self.executor.execute(
            "app.project.create", {"id": pid, "name": pid}, ctx(org, roles=("admin",))
        )

    async def upload(
        self,
        data: bytes,
        *,
        slot: str = "project.docs",
        entity_id: str = "p1",
        org: str = "org-1",
        user: str = "u-1",
        roles: Iterable[str] = ("member",),
        filename: str = "a.pdf",
        content_type: str | None = None,
    ) -> Any:
        staged = await self.files.stage(
            slot, chunks(data), org_id=org, actor_id=user, filename=filename,
            content_type=content_type,
        )  # fmt: skip
        return await self.executor.execute(
            "files.upload", {"token": staged.token, "entity_id": entity_id}, ctx(org, user, roles)
        )

    def blobs(self) -> list[str]:
        root = self.storage.root
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def build_registry(files: Files) -> SpecRegistry:
    """The registry with the project entity, its create command and the files operations."""
    registry = SpecRegistry(project, create_project)

    @registry.handler(create_project)
    async def _create(inp: NewProject, hctx: HandlerCtx) -> Project:
        return await hctx.repo(project).add(Project(id=inp.id, name=inp.name))

    register_file_operations(registry, files)
    return registry


@asynccontextmanager
async def open_app(
    kind: str, tmp_path: Path, *, clock: FakeClock | None = None
) -> AsyncIterator[App]:
    """The app on `kind` (`memory`, `sqlite`, `postgres`) with blobs under `tmp_path/blobs`."""
    clock = clock or FakeClock(datetime.now(UTC).replace(microsecond=0))
    storage = LocalFileStorage(tmp_path / "blobs", fsync=False)
    if kind == "memory":
        store: FileStore = MemoryFileStore()
        files = Files(
            storage=storage, store=store, secret=SECRET, clock=clock, slots=[docs_slot, images_slot]
        )
        registry = build_registry(files)
        executor = Executor(registry, policy=POLICY, clock=clock)
        yield App(kind, executor, files, store, storage, executor.unit_of_work, clock)
        return
    async with temporary_sql_engine(kind, tmp_path) as engine:
        yield await sql_app(engine, tmp_path, clock=clock)


async def sql_app(
    engine: Any, tmp_path: Path, *, clock: FakeClock | None = None, middleware: Any = ()
) -> App:
    """The app on an existing SQL engine (tables created if missing)."""
    from contractspec.core.sql import SqlBackend
    from contractspec.files.sql import SqlFileStore

    clock = clock or FakeClock(datetime.now(UTC).replace(microsecond=0))
    storage = LocalFileStorage(tmp_path / "blobs", fsync=False)
    store = SqlFileStore(engine)
    files = Files(
        storage=storage, store=store, secret=SECRET, clock=clock, slots=[docs_slot, images_slot]
    )
    registry = build_registry(files)
    backend = SqlBackend(engine, registry)
    await backend.create_all()
    await store.create_tables()
    executor = Executor(
        registry, backend=backend, policy=POLICY, clock=clock, middleware=middleware
    )
    kind = "postgres" if engine.dialect.name == "postgresql" else "sqlite"
    return App(kind, executor, files, store, storage, backend.unit_of_work, clock, engine)
