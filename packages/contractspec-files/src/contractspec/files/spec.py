"""Attachment slots: which entities accept files, of which media types, how large, how many, who
may upload, view and delete them, and how long they are kept.

```python
from contractspec.files import Retention, define_attachment_slot

contract_pdf = define_attachment_slot(
    project, "contracts",
    media_types=["application/pdf", "image/*"],
    max_size=10 * 1024 * 1024,
    max_count=5,
    upload="project.files.upload", view="project.files.view", delete="project.files.delete",
    retention=Retention(days=365, action="archive"),
)
registry.register(contract_pdf)     # the slot appears in registry.to_ir() as kind "attachment_slot"
```

A slot is a spec of its own (kind `attachment_slot`, name `<entity>.<slot>`), registered in the
app's `SpecRegistry` next to the entity it belongs to, so slots can be added to existing entities
without touching their definition. An entity can also declare its slots itself, with
`attachment_slot` (same arguments, no entity) in `define_entity(..., attachments=[...])`:

```py
project = define_entity("project", Project, attachments=[
    attachment_slot("contracts", media_types=["application/pdf"], max_size=10 * 1024 * 1024),
])
registry = SpecRegistry(project)        # registers project and the slot project.contracts
files = Files(..., slots=attachment_slots(registry))
```
"""

from __future__ import annotations

import fnmatch
import re
import typing
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any, Final, Literal

from attrs import define, field

from contractspec.core import EntitySpec, SpecDefinitionError, SpecRegistry

__all__ = [
    "ARCHIVE_MEDIA_TYPES",
    "ArchiveLimits",
    "AttachmentSlot",
    "Retention",
    "SlotDeclaration",
    "attachment_slot",
    "attachment_slots",
    "define_attachment_slot",
]

_SLOT_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*\Z")
_MEDIA_TYPE: Final = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)\Z")
_PERMISSION: Final = re.compile(r"^[A-Za-z0-9_.:*-]+\Z")
#: Media types treated as zip archives: their members are inspected before they are accepted.
ARCHIVE_MEDIA_TYPES: Final = frozenset({"application/zip", "application/x-zip-compressed"})


@define(frozen=True)
class Retention:
    """How long files of a slot are kept.

    Attributes:
        days: Age in days (from `File.created_at`) after which `action` applies; at least 1.
        action: `delete` (record and blob removed) or `archive` (record kept with state
            `archived`, the attachment stays listed but downloads are refused).
    """

    days: int
    action: Literal["delete", "archive"] = "delete"

    def __attrs_post_init__(self) -> None:
        if isinstance(self.days, bool) or not isinstance(self.days, int) or self.days < 1:
            raise SpecDefinitionError(
                f"Retention(days={self.days!r}): days must be a positive integer",
                details={"field": "retention.days"},
            )
        if self.action not in ("delete", "archive"):
            raise SpecDefinitionError(
                f"Retention(action={self.action!r}): action must be 'delete' or 'archive'",
                details={"field": "retention.action"},
            )


@define(frozen=True)
class ArchiveLimits:
    """Limits a zip archive must respect to be accepted (zip-bomb defence).

    Members are inspected from the zip central directory (`zipfile`), never extracted. The sizes
    checked are the declared ones; Python's `zipfile` reads a member only up to its declared size,
    so they also bound what a later extraction with `zipfile` writes (other unzip tools may trust
    the data stream instead: cap their output too).

    Attributes:
        max_members: Most entries an archive may hold.
        max_uncompressed: Most bytes all members may expand to, in total.
        max_ratio: Highest allowed `uncompressed / compressed` ratio, per member and overall
            (deflate reaches about 1032:1 on zeros; ordinary documents stay under 20:1).
    """

    max_members: int = 1_000
    max_uncompressed: int = 100 * 1024 * 1024
    max_ratio: float = 100.0


@define(frozen=True)
class AttachmentSlot:
    """A named place for files on an entity (`project.contracts`).

    Attributes:
        entity: Name of the entity the files attach to.
        slot: Slot name, unique per entity.
        media_types: Allowed media types, sniffed from content (`image/*` wildcards allowed).
        max_size: Largest accepted file, in bytes.
        max_count: Most attachments one entity may hold in this slot (`None`: no limit).
        upload_permission, view_permission, delete_permission: Permissions checked by the
            `files.*` operations on a `Resource(type=<entity>, id=<entity id>)`; `None` means any
            authenticated member of the tenant.
        retention: When files expire, or `None` to keep them.
        legal_hold: New files start under legal hold (never deleted until released).
        archive_limits: Limits for zip archives (used when a zip media type is allowed).
        description: Reference-doc paragraph.
    """

    kind: typing.ClassVar[str] = "attachment_slot"

    entity: str
    slot: str
    media_types: tuple[str, ...]
    max_size: int
    max_count: int | None = None
    upload_permission: str | None = None
    view_permission: str | None = None
    delete_permission: str | None = None
    retention: Retention | None = None
    legal_hold: bool = False
    archive_limits: ArchiveLimits = field(factory=ArchiveLimits)
    description: str = ""
    version: int = 1

    @property
    def name(self) -> str:
        """`<entity>.<slot>`, the slot's name in the registry and the IR."""
        return f"{self.entity}.{self.slot}"

    @property
    def ref(self) -> str:
        """`name@version`."""
        return f"{self.name}@{self.version}"

    def allows(self, media_type: str) -> bool:
        """Whether a (sniffed) media type is accepted; `image/*` matches `image/png`."""
        return any(fnmatch.fnmatchcase(media_type, pattern) for pattern in self.media_types)

    @property
    def accepts_archives(self) -> bool:
        """Whether a zip media type is allowed (its members are then inspected)."""
        return any(self.allows(m) for m in ARCHIVE_MEDIA_TYPES)

    def to_ir(self) -> dict[str, Any]:
        """Plain JSON for `registry.to_ir()`."""
        return {
            "entity": self.entity,
            "slot": self.slot,
            "media_types": sorted(self.media_types),
            "max_size": self.max_size,
            "max_count": self.max_count,
            "permissions": {
                "upload": self.upload_permission,
                "view": self.view_permission,
                "delete": self.delete_permission,
            },
            "retention": None
            if self.retention is None
            else {"days": self.retention.days, "action": self.retention.action},
            "legal_hold": self.legal_hold,
            "archive_limits": {
                "max_members": self.archive_limits.max_members,
                "max_uncompressed": self.archive_limits.max_uncompressed,
                "max_ratio": self.archive_limits.max_ratio,
            }
            if self.accepts_archives
            else None,
            "description": self.description,
        }


def _permission(value: str | None, role: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _PERMISSION.match(value):
        raise SpecDefinitionError(
            f"{where}: {role} permission {value!r} is not valid: use letters, digits and '_.:*-' "
            "(e.g. 'project.files.upload'), or None for any member of the tenant",
            details={"field": role},
        )
    return value


def define_attachment_slot(
    entity: EntitySpec[Any] | str,
    name: str,
    *,
    media_types: Iterable[str],
    max_size: int,
    max_count: int | None = None,
    upload: str | None = None,
    view: str | None = None,
    delete: str | None = None,
    retention: Retention | None = None,
    legal_hold: bool = False,
    archive_limits: ArchiveLimits | None = None,
    description: str = "",
    version: int = 1,
) -> AttachmentSlot:
    """Declare that `entity` accepts files in the slot `name`.

    Args:
        entity: The entity spec (or its name); it must be tenant-scoped, since files belong to
            an org.
        name: Slot name: lowercase letters, digits and underscores (`contracts`).
        media_types: Allowed media types, e.g. `["application/pdf", "image/*"]`. The type is
            sniffed from the bytes (puremagic), never taken from the client.
        max_size: Largest accepted file in bytes (enforced while streaming).
        max_count: Most files per entity in this slot, or `None`.
        upload: Permission to upload (`None`: any authenticated member of the tenant).
        view: Permission to list and download.
        delete: Permission to delete.
        retention: `Retention(days, action="delete"|"archive")`, or `None` to keep files.
        legal_hold: New files start under legal hold.
        archive_limits: Zip-bomb limits; defaults to `ArchiveLimits()` when a zip type is allowed.
        description: Reference-doc paragraph.
        version: The slot's version (`project.contracts@2`). A slot that accepts less than
            before (a media type dropped, a smaller size or count) is a breaking change for
            uploaders: keep `@1` registered beside `@2` for a release, as the spec diff advises;
            `attachment_slots` hands `Files` the newest version of each slot.

    Returns:
        A frozen `AttachmentSlot`; register it in your `SpecRegistry`.

    Raises:
        SpecDefinitionError: Bad slot name, media type, size, count, permission or version, or
            an entity that is not tenant-scoped.
    """
    if isinstance(entity, EntitySpec):
        if not entity.tenant_scoped:
            raise SpecDefinitionError(
                f"attachment slot {entity.name}.{name}: entity {entity.name!r} is not "
                "tenant-scoped; files belong to an org, so attach them to tenant-scoped entities",
                details={"field": "entity"},
            )
        entity_name = entity.name
    elif isinstance(entity, str) and entity:
        entity_name = entity
    else:
        raise SpecDefinitionError(
            f"attachment slot: entity must be an EntitySpec or its name, got {entity!r}",
            details={"field": "entity"},
        )
    where = f"attachment slot {entity_name}.{name}"
    if not isinstance(name, str) or not _SLOT_NAME.match(name):
        raise SpecDefinitionError(
            f"{where}: slot name must be lowercase letters, digits and underscores "
            "(e.g. 'contracts')",
            details={"field": "name"},
        )
    types = tuple(media_types) if not isinstance(media_types, str) else (media_types,)
    if not types:
        raise SpecDefinitionError(
            f"{where}: media_types is empty; list what the slot accepts, e.g. ['application/pdf']",
            details={"field": "media_types"},
        )
    for media_type in types:
        if not isinstance(media_type, str) or not _MEDIA_TYPE.match(media_type):
            raise SpecDefinitionError(
                f"{where}: media type {media_type!r} is not valid: write 'type/subtype' or "
                "'type/*' in lowercase (e.g. 'image/png', 'image/*')",
                details={"field": "media_types"},
            )
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise SpecDefinitionError(
            f"{where}: max_size must be a positive number of bytes, got {max_size!r}",
            details={"field": "max_size"},
        )
    if max_count is not None and (
        isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1
    ):
        raise SpecDefinitionError(
            f"{where}: max_count must be a positive integer or None, got {max_count!r}",
            details={"field": "max_count"},
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecDefinitionError(
            f"{where}: version must be a positive integer (1, 2, ...), got {version!r}",
            details={"field": "version"},
        )
    if retention is not None and not isinstance(retention, Retention):
        raise SpecDefinitionError(
            f"{where}: retention must be Retention(days=..., action=...) or None",
            details={"field": "retention"},
        )
    return AttachmentSlot(
        entity=entity_name,
        slot=name,
        media_types=types,
        max_size=max_size,
        max_count=max_count,
        upload_permission=_permission(upload, "upload", where),
        view_permission=_permission(view, "view", where),
        delete_permission=_permission(delete, "delete", where),
        retention=retention,
        legal_hold=bool(legal_hold),
        archive_limits=archive_limits or ArchiveLimits(),
        description=description,
        version=version,
    )


def _read_only(options: typing.Mapping[str, Any]) -> typing.Mapping[str, Any]:
    return MappingProxyType(dict(options))


@define(frozen=True)
class SlotDeclaration:
    """An attachment slot declared inside `define_entity(..., attachments=[...])`, not yet bound
    to its entity (core calls `bind` with the new `EntitySpec`).

    Attributes:
        slot: Slot name.
        options: The keyword arguments of `define_attachment_slot`, already validated.
    """

    slot: str
    options: typing.Mapping[str, Any] = field(converter=_read_only)

    def bind(self, entity: EntitySpec[Any]) -> AttachmentSlot:
        """The `AttachmentSlot` of this declaration on `entity`.

        Raises:
            SpecDefinitionError: The entity is not tenant-scoped.
        """
        return define_attachment_slot(entity, self.slot, **self.options)


def attachment_slot(
    name: str,
    *,
    media_types: Iterable[str],
    max_size: int,
    max_count: int | None = None,
    upload: str | None = None,
    view: str | None = None,
    delete: str | None = None,
    retention: Retention | None = None,
    legal_hold: bool = False,
    archive_limits: ArchiveLimits | None = None,
    description: str = "",
    version: int = 1,
) -> SlotDeclaration:
    """Declare an attachment slot inside `define_entity(..., attachments=[...])`.

    Takes the arguments of `define_attachment_slot` without the entity; they are checked at
    once (the same `SpecDefinitionError`s, naming the field), the slot is bound when the entity
    is defined, and `SpecRegistry.register(entity)` registers it as `<entity>.<name>`.

    Returns:
        A `SlotDeclaration` for the entity's `attachments=`.
    """
    options: dict[str, Any] = {
        "media_types": tuple(media_types) if not isinstance(media_types, str) else media_types,
        "max_size": max_size,
        "max_count": max_count,
        "upload": upload,
        "view": view,
        "delete": delete,
        "retention": retention,
        "legal_hold": legal_hold,
        "archive_limits": archive_limits,
        "description": description,
        "version": version,
    }
    define_attachment_slot("entity", name, **options)  # validates now, with the same messages
    return SlotDeclaration(name, options)


def attachment_slots(registry: SpecRegistry) -> list[AttachmentSlot]:
    """The attachment slots registered in `registry` (declared with `define_attachment_slot`
    or with an entity's `attachments=`), sorted by name: pass them to `Files(slots=...)`.

    Of a slot registered in several versions (`project.contracts@1` and `@2`), the newest:
    uploads follow its rules, files stored earlier stay attached to the same slot name."""
    newest: dict[str, AttachmentSlot] = {}
    for s in registry.specs("attachment_slot"):  # sorted by name, then version
        if isinstance(s, AttachmentSlot):
            newest[s.name] = s
    return [newest[name] for name in sorted(newest)]
