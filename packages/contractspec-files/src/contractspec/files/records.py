"""`File` and `Attachment` records and the `FileStore` port (memory implementation here, SQL in
`contractspec.files.sql`)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from contractspec.core import ConflictError, NotFoundError, TenantScopeError, Transaction

__all__ = [
    "Attachment",
    "File",
    "FileState",
    "FileStore",
    "MemoryFileStore",
]


class FileState(enum.StrEnum):
    """Lifecycle of a stored file: `active` (downloadable) or `archived` (kept, not served)."""

    ACTIVE = "active"
    ARCHIVED = "archived"


class File(BaseModel):
    """One stored blob and what is known about it (all sniffed or computed server-side).

    Attributes:
        id: Identifier (the executor's `IdGenerator`).
        org_id: Tenant owning the file.
        owner_id: Actor who uploaded it.
        slot: Attachment slot it was uploaded to (`project.contracts`).
        filename: The client's file name, sanitised (no path, no control characters).
        media_type: Sniffed from the content (never the client's claim).
        size: Bytes.
        sha256: Hex SHA-256 of the content, computed while streaming.
        backend: Name of the storage that holds the blob (`local`, `s3`, ...).
        key: Object key in that storage.
        created_at: UTC upload time.
        state: `active` or `archived`.
        legal_hold: Under legal hold: neither callers nor retention may delete it.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    org_id: str
    owner_id: str
    slot: str
    filename: str
    media_type: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    backend: str
    key: str
    created_at: datetime
    state: FileState = FileState.ACTIVE
    legal_hold: bool = False


class Attachment(BaseModel):
    """The link of a file to one entity record, in one slot.

    Attributes:
        id: Identifier.
        org_id: Tenant; equal to the file's and to the entity's tenant.
        file_id: The attached `File`.
        slot: Slot name (`project.contracts`).
        entity: Entity name (`project`).
        entity_id: Primary key of the entity record.
        created_at: UTC time of the attachment.
        created_by: Actor who attached it.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    org_id: str
    file_id: str
    slot: str
    entity: str
    entity_id: str
    created_at: datetime
    created_by: str


@runtime_checkable
class FileStore(Protocol):
    """Where `File` and `Attachment` records live; every read and write is scoped by `org_id`.

    Writes take the call's transaction (`ctx.tx`) and commit or roll back with it. The
    maintenance reads (`known_keys`, `expiring`) span tenants: only jobs call them.
    """

    async def add(self, tx: Transaction, file: File, attachment: Attachment) -> None:
        """Insert a file and its attachment.

        Raises:
            TenantScopeError: `attachment.org_id != file.org_id`.
            ConflictError: An id is taken.
        """
        ...

    async def get_file(
        self, org_id: str, file_id: str, *, tx: Transaction | None = None
    ) -> File | None:
        """The file of this tenant, or `None` (also for another tenant's file)."""
        ...

    async def get_attachment(
        self, org_id: str, attachment_id: str, *, tx: Transaction | None = None
    ) -> Attachment | None:
        """The attachment of this tenant, or `None`."""
        ...

    async def list_attachments(
        self,
        org_id: str,
        entity: str,
        entity_id: str,
        *,
        slot: str | None = None,
        tx: Transaction | None = None,
    ) -> list[Attachment]:
        """Attachments of one entity record, oldest first (ties by id)."""
        ...

    async def remove(self, tx: Transaction, org_id: str, attachment_id: str) -> File:
        """Delete an attachment and its file record; return the deleted file.

        Raises:
            NotFoundError: No such attachment in this tenant.
        """
        ...

    async def remove_file(self, tx: Transaction, org_id: str, file_id: str) -> File:
        """Delete a file record and its attachments; return the deleted file.

        Raises:
            NotFoundError: No such file in this tenant.
        """
        ...

    async def update_file(
        self,
        tx: Transaction,
        org_id: str,
        file_id: str,
        *,
        state: FileState | None = None,
        legal_hold: bool | None = None,
    ) -> File:
        """Change a file's state or legal hold; return the updated file.

        Raises:
            NotFoundError: No such file in this tenant.
        """
        ...

    async def known_keys(self, backend: str, keys: Sequence[str]) -> set[str]:
        """Which of `keys` (in storage `backend`) some file record refers to (all tenants)."""
        ...

    async def expiring(
        self, slot: str, created_before: datetime, *, state: FileState, limit: int
    ) -> list[File]:
        """Files of `slot` in `state`, created before the cutoff, not on hold (all tenants)."""
        ...


def not_found(kind: str, ident: str) -> NotFoundError:
    """The `NotFoundError` for a file or attachment id missing from the caller's org.

    Args:
        kind: `"file"` or `"attachment"`; the error's `details["field"]` is `<kind>_id`.
        ident: The id that was looked up.
    """
    return NotFoundError(
        f"{kind} {ident!r} does not exist in this org", details={"field": f"{kind}_id"}
    )


def check_same_tenant(file: File, attachment: Attachment) -> None:
    """Raise `TenantScopeError` unless the file and the attachment belong to one tenant."""
    if attachment.org_id != file.org_id or attachment.file_id != file.id:
        raise TenantScopeError(
            f"attachment {attachment.id!r} (org {attachment.org_id!r}) cannot link file "
            f"{file.id!r} (org {file.org_id!r}): a file is attached only within its own tenant",
            reason="cross_tenant_attachment",
            action="files.attach",
        )


class MemoryFileStore:
    """In-process `FileStore` for tests and single-process apps; writes undo on rollback."""

    __slots__ = ("_attachments", "_files")

    def __init__(self) -> None:
        self._files: dict[str, File] = {}
        self._attachments: dict[str, Attachment] = {}

    async def add(self, tx: Transaction, file: File, attachment: Attachment) -> None:
        """Insert both (see `FileStore.add`)."""
        check_same_tenant(file, attachment)
        tx.check_writable("adding a file")
        if file.id in self._files:
            raise ConflictError(f"file id {file.id!r} is taken", details={"field": "id"})
        if attachment.id in self._attachments:
            raise ConflictError(
                f"attachment id {attachment.id!r} is taken", details={"field": "id"}
            )
        if any(f.backend == file.backend and f.key == file.key for f in self._files.values()):
            raise ConflictError(f"storage key {file.key!r} is taken", details={"field": "key"})
        tx.undo_item(self._files, file.id)
        self._files[file.id] = file
        tx.undo_item(self._attachments, attachment.id)
        self._attachments[attachment.id] = attachment

    async def get_file(
        self, org_id: str, file_id: str, *, tx: Transaction | None = None
    ) -> File | None:
        """See `FileStore.get_file`."""
        file = self._files.get(file_id)
        return file if file is not None and file.org_id == org_id else None

    async def get_attachment(
        self, org_id: str, attachment_id: str, *, tx: Transaction | None = None
    ) -> Attachment | None:
        """See `FileStore.get_attachment`."""
        att = self._attachments.get(attachment_id)
        return att if att is not None and att.org_id == org_id else None

    async def list_attachments(
        self,
        org_id: str,
        entity: str,
        entity_id: str,
        *,
        slot: str | None = None,
        tx: Transaction | None = None,
    ) -> list[Attachment]:
        """See `FileStore.list_attachments`."""
        found = [
            a
            for a in self._attachments.values()
            if a.org_id == org_id
            and a.entity == entity
            and a.entity_id == entity_id
            and (slot is None or a.slot == slot)
        ]
        return sorted(found, key=lambda a: (a.created_at, a.id))

    async def remove(self, tx: Transaction, org_id: str, attachment_id: str) -> File:
        """See `FileStore.remove`."""
        tx.check_writable("removing a file")
        att = await self.get_attachment(org_id, attachment_id)
        if att is None:
            raise not_found("attachment", attachment_id)
        return await self.remove_file(tx, org_id, att.file_id)

    async def remove_file(self, tx: Transaction, org_id: str, file_id: str) -> File:
        """See `FileStore.remove_file`."""
        tx.check_writable("removing a file")
        file = await self.get_file(org_id, file_id)
        if file is None:
            raise not_found("file", file_id)
        for att in [a for a in self._attachments.values() if a.file_id == file_id]:
            tx.undo_item(self._attachments, att.id)
            del self._attachments[att.id]
        tx.undo_item(self._files, file_id)
        del self._files[file_id]
        return file

    async def update_file(
        self,
        tx: Transaction,
        org_id: str,
        file_id: str,
        *,
        state: FileState | None = None,
        legal_hold: bool | None = None,
    ) -> File:
        """See `FileStore.update_file`."""
        tx.check_writable("updating a file")
        file = await self.get_file(org_id, file_id)
        if file is None:
            raise not_found("file", file_id)
        changes: dict[str, object] = {}
        if state is not None:
            changes["state"] = FileState(state)
        if legal_hold is not None:
            changes["legal_hold"] = legal_hold
        updated = file.model_copy(update=changes)
        tx.undo_item(self._files, file_id)
        self._files[file_id] = updated
        return updated

    async def known_keys(self, backend: str, keys: Sequence[str]) -> set[str]:
        """See `FileStore.known_keys`."""
        wanted = set(keys)
        return {f.key for f in self._files.values() if f.backend == backend and f.key in wanted}

    async def expiring(
        self, slot: str, created_before: datetime, *, state: FileState, limit: int
    ) -> list[File]:
        """See `FileStore.expiring`."""
        found = [
            f
            for f in self._files.values()
            if f.slot == slot
            and f.state == state
            and not f.legal_hold
            and f.created_at < created_before
        ]
        return sorted(found, key=lambda f: (f.created_at, f.id))[:limit]
