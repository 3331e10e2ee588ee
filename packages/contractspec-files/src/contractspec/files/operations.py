"""The files operations: upload (phase 2), get (with a signed link), list, delete, legal hold.

```python
from contractspec.files import register_file_operations

register_file_operations(registry, files)     # the slots' entities must be registered first
staged = await files.stage("project.contracts", chunks, org_id=..., actor_id=..., filename=...)
out = await executor.execute("files.upload", {"token": staged.token, "entity_id": "p1"}, ctx)
```

| operation | kind | permission checked | effect |
|---|---|---|---|
| `files.upload` | command | slot's `upload` | `File` + `Attachment` rows in the call's transaction; emits `files.uploaded` |
| `files.get` | query | slot's `view` | the attachment, its file and a signed download path |
| `files.attachments.list` | query | slot's `view` | attachments of one entity record (optionally one slot) |
| `files.delete` | command | slot's `delete` | rows deleted; the blob after commit; emits `files.deleted` |
| `files.legal_hold.set` | command | `files.legal_hold` | puts a file under legal hold or releases it |
| `files.expire` | command | system actors only | applies the slot's retention to one file; emits `files.expired` |

Slot permissions are checked with `ctx.authorize(permission, Resource(type=<entity>, id=<entity
id>, org_id=<tenant>))`; a slot without a permission lets any authenticated member of the tenant
act. The tenant of every record is the caller's (`ctx.org_id`): a staged upload of another tenant
or caller is refused, and an entity id of another tenant is not found (the entity's repository is
tenant-scoped), so an attachment never crosses tenants.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from attrs import define
from pydantic import BaseModel, Field

from contractspec.core import (
    ActorKind,
    HandlerCtx,
    NotFoundError,
    PolicyDeniedError,
    Resource,
    SpecRegistry,
    TenantScopeError,
    authenticated,
    define_command,
    define_event,
    define_query,
    requires,
)
from contractspec.core.specs import EventSpec, OperationSpec
from contractspec.files.errors import AttachmentLimitError, LegalHoldError
from contractspec.files.records import Attachment, File, FileState, not_found
from contractspec.files.service import Files
from contractspec.files.spec import AttachmentSlot

__all__ = [
    "LEGAL_HOLD_PERMISSION",
    "AttachmentList",
    "AttachmentView",
    "ExpireResult",
    "FileDeleted",
    "FileExpired",
    "FileOperations",
    "FileUploaded",
    "register_file_operations",
]

#: Permission of `files.legal_hold.set`.
LEGAL_HOLD_PERMISSION = "files.legal_hold"
_DOWNLOAD_PATH = "/files/download/"


class UploadInput(BaseModel):
    """Input of `files.upload`."""

    token: str = Field(min_length=1, max_length=4096, description="`StagedUpload.token`.")
    entity_id: str = Field(min_length=1, max_length=200, description="The record to attach to.")


class AttachmentRef(BaseModel):
    """Input of `files.get` and `files.delete`."""

    attachment_id: str = Field(min_length=1, max_length=64)


class ListInput(BaseModel):
    """Input of `files.attachments.list`."""

    entity: str = Field(min_length=1, max_length=200)
    entity_id: str = Field(min_length=1, max_length=200)
    slot: str | None = Field(None, max_length=300, description="Only this slot (`project.docs`).")


class LegalHoldInput(BaseModel):
    """Input of `files.legal_hold.set`."""

    attachment_id: str = Field(min_length=1, max_length=64)
    hold: bool


class ExpireInput(BaseModel):
    """Input of `files.expire`."""

    file_id: str = Field(min_length=1, max_length=64)


class ExpireResult(BaseModel):
    """What `files.expire` did: `deleted`, `archived`, or `skipped` with the reason."""

    file_id: str
    outcome: Literal["deleted", "archived", "skipped"]
    reason: str | None = Field(
        None, description="Why it was skipped: gone, no_retention, legal_hold, not_due, archived."
    )


class AttachmentView(BaseModel):
    """An attachment with its file; `download_path` is a signed, time-limited path (active files)."""

    attachment: Attachment
    file: File
    download_path: str | None = None


class AttachmentList(BaseModel):
    """Attachments of one record, oldest first."""

    items: list[AttachmentView]


class FileUploaded(BaseModel):
    """Payload of `files.uploaded`."""

    file_id: str
    attachment_id: str
    slot: str
    entity: str
    entity_id: str
    media_type: str
    size: int
    sha256: str


class FileDeleted(BaseModel):
    """Payload of `files.deleted`."""

    file_id: str
    attachment_id: str
    slot: str
    entity_id: str


class FileExpired(BaseModel):
    """Payload of `files.expired`."""

    file_id: str
    slot: str
    action: Literal["delete", "archive"]


@define(frozen=True)
class FileOperations:
    """The specs of the `files.*` operations and their events."""

    upload: OperationSpec
    get: OperationSpec
    list: OperationSpec
    delete: OperationSpec
    legal_hold: OperationSpec
    expire: OperationSpec
    uploaded: EventSpec
    deleted: EventSpec
    expired: EventSpec

    @property
    def specs(self) -> tuple[EventSpec | OperationSpec, ...]:
        """Every spec, events first (the order `SpecRegistry.register` takes them in)."""
        return (
            self.uploaded, self.deleted, self.expired,
            self.upload, self.get, self.list, self.delete, self.legal_hold, self.expire,
        )  # fmt: skip


def file_operation_specs() -> FileOperations:
    """The `files.*` operation and event specs, without a `Files` runtime or handlers.

    For spec-only registries (IR export, lock files, client generation, the breaking-change
    diff): `SpecRegistry(project, docs_slot, *file_operation_specs().specs)` describes the same
    operations as a registry where `register_file_operations` ran (which also binds the
    handlers); registering both into one registry is allowed (the specs are equal).

    Returns:
        A `FileOperations` with fresh, equal specs on every call.
    """
    return _specs()


def _specs() -> FileOperations:
    uploaded = define_event("files.uploaded", payload=FileUploaded, key="entity_id")
    deleted = define_event("files.deleted", payload=FileDeleted, key="entity_id")
    expired = define_event("files.expired", payload=FileExpired, key="file_id")
    tags = ("files",)
    return FileOperations(
        upload=define_command(
            "files.upload",
            input=UploadInput,
            output=AttachmentView,
            emits=[uploaded],
            auth=authenticated(),
            idempotent=True,
            tags=tags,
            description="Record a staged upload as a file attached to an entity record.",
        ),
        get=define_query(
            "files.get",
            input=AttachmentRef,
            output=AttachmentView,
            auth=authenticated(),
            tags=tags,
            description="One attachment with its file and a signed download path.",
        ),
        list=define_query(
            "files.attachments.list",
            input=ListInput,
            output=AttachmentList,
            auth=authenticated(),
            tags=tags,
            description="The attachments of one entity record.",
        ),
        delete=define_command(
            "files.delete",
            input=AttachmentRef,
            output=AttachmentView,
            emits=[deleted],
            auth=authenticated(),
            tags=tags,
            description="Delete an attachment and its file; the blob goes after commit.",
        ),
        legal_hold=define_command(
            "files.legal_hold.set",
            input=LegalHoldInput,
            output=AttachmentView,
            auth=requires(LEGAL_HOLD_PERMISSION, resource="files.file"),
            tags=tags,
            description="Put a file under legal hold (no deletion) or release it.",
        ),
        expire=define_command(
            "files.expire",
            input=ExpireInput,
            output=ExpireResult,
            emits=[expired],
            auth=authenticated(),
            tags=tags,
            description="Apply the slot's retention to one file (system actors only: "
            "Files.apply_retention runs it).",
        ),
        uploaded=uploaded,
        deleted=deleted,
        expired=expired,
    )


def register_file_operations(
    registry: SpecRegistry, files: Files, *, slots: tuple[AttachmentSlot, ...] = ()
) -> FileOperations:
    """Register the `files.*` operations, their events and the slots, with handlers.

    Args:
        registry: The app's registry; every slot's entity must be registered in it.
        files: The `Files` runtime (storage, record store, signing key).
        slots: More slots to register (those already known to `files` are registered too).

    Returns:
        The registered specs.

    Raises:
        SpecDefinitionError: A slot names an entity that is not registered, or the operations
            are registered already.
    """
    for slot in slots:
        files.add_slot(slot)
    for slot in files.slots.values():
        registry.get_entity(slot.entity)  # fail now, not at the first upload
        registry.register(slot)
    ops = _specs()
    registry.register(*ops.specs)

    def tenant(ctx: HandlerCtx) -> str:
        if ctx.org_id is None:
            raise TenantScopeError(
                f"{ctx.operation.name} needs a tenant: call it with CallContext(org_id=...)",
                reason="no_tenant",
                action=ctx.operation.name,
            )
        return ctx.org_id

    async def allow(
        ctx: HandlerCtx, permission: str | None, slot: AttachmentSlot, eid: str
    ) -> None:
        if permission is not None:
            await ctx.authorize(permission, Resource(type=slot.entity, id=eid, org_id=ctx.org_id))

    def view(att: Attachment, file: File) -> AttachmentView:
        path = (
            _DOWNLOAD_PATH + files.download_token(file) if file.state is FileState.ACTIVE else None
        )
        return AttachmentView(attachment=att, file=file, download_path=path)

    async def load(ctx: HandlerCtx, attachment_id: str) -> tuple[Attachment, File, AttachmentSlot]:
        org = tenant(ctx)
        att = await files.store.get_attachment(org, attachment_id, tx=ctx.tx)
        file = None if att is None else await files.store.get_file(org, att.file_id, tx=ctx.tx)
        if att is None or file is None:
            raise not_found("attachment", attachment_id)
        return att, file, files.slot(att.slot)

    @registry.handler(ops.upload)
    async def upload(inp: UploadInput, ctx: HandlerCtx) -> AttachmentView:
        org = tenant(ctx)
        data: dict[str, Any] = files.read_upload_token(inp.token)
        if data["o"] != org or data["a"] != ctx.actor.id:
            raise PolicyDeniedError(
                "this upload was staged by another caller or tenant; upload the file again",
                reason="foreign_upload",
                action="files.upload",
            )
        slot = files.slot(str(data["s"]))
        await allow(ctx, slot.upload_permission, slot, inp.entity_id)
        entity = registry.get_entity(slot.entity)
        # lock the record: concurrent uploads to one record count attachments one at a time
        if await ctx.repo(entity).get_for_update(inp.entity_id) is None:
            raise NotFoundError(
                f"{slot.entity} {inp.entity_id!r} does not exist in this org",
                details={"field": "entity_id"},
            )
        existing = await files.store.list_attachments(
            org, slot.entity, inp.entity_id, slot=slot.name, tx=ctx.tx
        )
        if slot.max_count is not None and len(existing) >= slot.max_count:
            raise AttachmentLimitError(
                f"{slot.entity} {inp.entity_id!r} already has {len(existing)} files in slot "
                f"{slot.name} (max_count={slot.max_count}); delete one first",
                details={"field": "entity_id", "max_count": slot.max_count},
            )
        now: datetime = ctx.now()
        file = File(
            id=str(data["f"]),
            org_id=org,
            owner_id=ctx.actor.id,
            slot=slot.name,
            filename=str(data["n"]),
            media_type=str(data["m"]),
            size=int(data["z"]),
            sha256=str(data["h"]),
            backend=files.storage.name,
            key=str(data["k"]),
            created_at=now,
            legal_hold=slot.legal_hold,
        )
        att = Attachment(
            id=files.ids.new_id(),
            org_id=org,
            file_id=file.id,
            slot=slot.name,
            entity=slot.entity,
            entity_id=inp.entity_id,
            created_at=now,
            created_by=ctx.actor.id,
        )
        await files.store.add(ctx.tx, file, att)
        ctx.set_audit_target("files.file", file.id)
        ctx.emit(
            ops.uploaded,
            FileUploaded(
                file_id=file.id,
                attachment_id=att.id,
                slot=slot.name,
                entity=slot.entity,
                entity_id=inp.entity_id,
                media_type=file.media_type,
                size=file.size,
                sha256=file.sha256,
            ),
        )
        return view(att, file)

    @registry.handler(ops.get)
    async def get(inp: AttachmentRef, ctx: HandlerCtx) -> AttachmentView:
        att, file, slot = await load(ctx, inp.attachment_id)
        await allow(ctx, slot.view_permission, slot, att.entity_id)
        return view(att, file)

    @registry.handler(ops.list)
    async def list_attachments(inp: ListInput, ctx: HandlerCtx) -> AttachmentList:
        org = tenant(ctx)
        slots = [
            s
            for s in files.slots.values()
            if s.entity == inp.entity and (inp.slot is None or s.name == inp.slot)
        ]
        if not slots:
            raise NotFoundError(
                f"no attachment slot matches entity {inp.entity!r}"
                + (f" and slot {inp.slot!r}" if inp.slot else ""),
                details={"field": "slot" if inp.slot else "entity"},
            )
        for slot in slots:
            await allow(ctx, slot.view_permission, slot, inp.entity_id)
        items = []
        for att in await files.store.list_attachments(
            org, inp.entity, inp.entity_id, slot=inp.slot, tx=ctx.tx
        ):
            file = await files.store.get_file(org, att.file_id, tx=ctx.tx)
            if file is not None:
                items.append(view(att, file))
        return AttachmentList(items=items)

    @registry.handler(ops.delete)
    async def delete(inp: AttachmentRef, ctx: HandlerCtx) -> AttachmentView:
        att, file, slot = await load(ctx, inp.attachment_id)
        await allow(ctx, slot.delete_permission, slot, att.entity_id)
        if file.legal_hold:
            raise LegalHoldError(
                f"file {file.id!r} is under legal hold and cannot be deleted; release the hold "
                "first (files.legal_hold.set)",
                details={"field": "attachment_id"},
            )
        removed = await files.store.remove(ctx.tx, file.org_id, att.id)
        files.delete_blob_after_commit(ctx.tx, removed)
        ctx.set_audit_target("files.file", file.id)
        ctx.emit(
            ops.deleted,
            FileDeleted(
                file_id=file.id, attachment_id=att.id, slot=slot.name, entity_id=att.entity_id
            ),
        )
        return AttachmentView(attachment=att, file=removed)

    @registry.handler(ops.legal_hold)
    async def legal_hold(inp: LegalHoldInput, ctx: HandlerCtx) -> AttachmentView:
        att, file, _slot = await load(ctx, inp.attachment_id)
        updated = await files.store.update_file(ctx.tx, file.org_id, file.id, legal_hold=inp.hold)
        ctx.set_audit_target("files.file", file.id)
        return view(att, updated)

    @registry.handler(ops.expire)
    async def expire(inp: ExpireInput, ctx: HandlerCtx) -> ExpireResult:
        if ctx.actor.kind is not ActorKind.SYSTEM:
            raise PolicyDeniedError(
                "files.expire runs only as a system actor (Files.apply_retention)",
                reason="system_only",
                action="files.expire",
            )
        org = tenant(ctx)

        def skipped(reason: str) -> ExpireResult:
            return ExpireResult(file_id=inp.file_id, outcome="skipped", reason=reason)

        file = await files.store.get_file(org, inp.file_id, tx=ctx.tx)
        if file is None:
            return skipped("gone")
        retention = files.slot(file.slot).retention
        if retention is None:
            return skipped("no_retention")
        if file.legal_hold:
            return skipped("legal_hold")
        if file.state is not FileState.ACTIVE:
            return skipped("archived")
        if file.created_at >= ctx.now() - timedelta(days=retention.days):
            return skipped("not_due")
        ctx.set_audit_target("files.file", file.id)
        ctx.emit(ops.expired, FileExpired(file_id=file.id, slot=file.slot, action=retention.action))
        if retention.action == "archive":
            await files.store.update_file(ctx.tx, org, file.id, state=FileState.ARCHIVED)
            return ExpireResult(file_id=file.id, outcome="archived")
        await files.store.remove_file(ctx.tx, org, file.id)
        files.delete_blob_after_commit(ctx.tx, file)
        return ExpireResult(file_id=file.id, outcome="deleted")

    return ops
