"""Spec objects: entities, operations (commands and queries) and events.

Specs are frozen `attrs` value objects built by the `define_*` functions. They reference pydantic
models for every input, output, payload and entity, so JSON Schema, validation and code generation
all come from one place. Definition-time checks raise
[`SpecDefinitionError`][contractspec.core.errors.SpecDefinitionError] with the field and the fix.

Example:
    ```python
    from pydantic import BaseModel
    from contractspec.core import define_command, define_event, requires

    class DealCreated(BaseModel):
        deal_id: str

    deal_created = define_event("crm.deal.created", payload=DealCreated)

    class CreateDeal(BaseModel):
        title: str

    class DealOut(BaseModel):
        id: str

    create_deal = define_command(
        "crm.deal.create",
        input=CreateDeal,
        output=DealOut,
        emits=[deal_created],
        auth=requires("deal.write"),
    )
    ```
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar, Union, get_args, get_origin

import pydantic
from attrs import define, evolve, field
from pydantic import BaseModel

from contractspec.core.errors import SpecDefinitionError

__all__ = [
    "PII",
    "AuthRequirement",
    "EntityAttachment",
    "EntitySpec",
    "EventRef",
    "EventSeverity",
    "EventSpec",
    "Index",
    "OperationKind",
    "OperationSpec",
    "PiiMarker",
    "Stability",
    "authenticated",
    "define_command",
    "define_entity",
    "define_event",
    "define_query",
    "parse_key",
    "public",
    "requires",
]

#: `name` of operations and events: dotted lowercase segments, at least two (`crm.deal.create`).
_DOTTED_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z")
#: `name` of entities: one or more dotted lowercase segments (`deal`, `crm.deal`).
_ENTITY_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\Z")
_PERMISSION: Final = re.compile(r"^[A-Za-z0-9_.:*-]+\Z")
#: Prefixes reserved for specs that ContractSpec's own packages declare.
RESERVED_PREFIXES: Final = ("contractspec.", "cs.")
#: Entity field names the SQL layer manages itself.
RESERVED_FIELDS: Final = frozenset({"org_id"})


class Stability(enum.StrEnum):
    """Maturity of an operation; `deprecated` starts the deprecation period before removal."""

    EXPERIMENTAL = "experimental"
    BETA = "beta"
    STABLE = "stable"
    DEPRECATED = "deprecated"


class OperationKind(enum.StrEnum):
    """Commands change state; queries only read it (and are therefore always idempotent)."""

    COMMAND = "command"
    QUERY = "query"


class EventSeverity(enum.StrEnum):
    """How much attention an event deserves downstream (notifications, alerting)."""

    DEBUG = "debug"
    INFO = "info"
    NOTICE = "notice"
    WARNING = "warning"
    CRITICAL = "critical"


@define(frozen=True)
class PiiMarker:
    """Marks a model field as personal data: `email: Annotated[str, PII]`.

    Fields marked this way (or listed in a spec's `pii=`) are redacted in audit records,
    recorded traffic and error messages.
    """


#: Annotate a field with `Annotated[str, PII]` to mark it as personal data.
PII: Final = PiiMarker()


# --------------------------------------------------------------------------------------------
# Authorization requirements
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class AuthRequirement:
    """What an operation requires before its handler may run.

    Attributes:
        kind: `public` (anyone, no decider consulted), `authenticated` (an actor must be present),
            or `permissions` (an actor must be present **and** the `PolicyDecider` must allow every
            permission in `permissions`; with no decider configured the call is denied).
        permissions: Permission strings checked in order, e.g. `("deal.write",)`.
        resource: Resource type the permissions apply to (defaults to the operation's name).
    """

    kind: Literal["public", "authenticated", "permissions"]
    permissions: tuple[str, ...] = ()
    resource: str | None = None

    @property
    def needs_actor(self) -> bool:
        """True unless the operation is public."""
        return self.kind != "public"

    def describe(self) -> str:
        """Human-readable form used in docs and error messages."""
        if self.kind == "permissions":
            return "requires(" + ", ".join(self.permissions) + ")"
        return self.kind


def public() -> AuthRequirement:
    """Anyone may call the operation, including anonymous callers. No decider is consulted."""
    return AuthRequirement("public")


def authenticated() -> AuthRequirement:
    """Any identified actor may call the operation; anonymous callers are denied."""
    return AuthRequirement("authenticated")


def requires(*permissions: str, resource: str | None = None) -> AuthRequirement:
    """Require every listed permission from the configured `PolicyDecider`.

    Args:
        *permissions: One or more permission strings (`"deal.write"`); letters, digits and
            `_ . : * -` only.
        resource: Resource type the permission is checked on; defaults to the operation name.

    Raises:
        SpecDefinitionError: No permission given, or a permission with forbidden characters.
    """
    if not permissions:
        raise SpecDefinitionError(
            "requires() needs at least one permission, e.g. requires('deal.write'); "
            "use authenticated() or public() for operations without a permission"
        )
    for perm in permissions:
        if not isinstance(perm, str) or not _PERMISSION.match(perm):
            raise SpecDefinitionError(
                f"permission {perm!r} is not valid: use letters, digits and '_.:*-' "
                "(e.g. 'deal.write')"
            )
    return AuthRequirement("permissions", tuple(permissions), resource)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _tuple_of_str(value: Iterable[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _check_name(name: object, *, what: str, pattern: re.Pattern[str], example: str) -> str:
    if not isinstance(name, str) or not pattern.match(name):
        raise SpecDefinitionError(
            f"{what} name {name!r} is not valid: use lowercase dotted segments of letters, digits "
            f"and underscores, e.g. {example!r}",
            details={"field": "name", "value": repr(name)},
        )
    return name


def _check_version(version: object, *, key: str) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecDefinitionError(
            f"{key}: version must be a positive integer (1, 2, ...), got {version!r}",
            details={"field": "version"},
        )
    return version


def _check_model(model: object, *, key: str, role: str) -> type[BaseModel]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise SpecDefinitionError(
            f"{key}: {role} must be a pydantic BaseModel subclass, got {model!r}; "
            f"wrap plain fields in a model (class {role.title()}(BaseModel): ...)",
            details={"field": role},
        )
    return model


def _annotation_models(annotation: Any) -> list[type[BaseModel]]:
    """Return the pydantic models an annotation can hold (through Optional, list, dict, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found.extend(_annotation_models(arg))
    return found


def _has_pii_marker(info: pydantic.fields.FieldInfo) -> bool:
    return any(isinstance(m, PiiMarker) for m in info.metadata)


def _discover_pii(
    model: type[BaseModel], prefix: str = "", seen: frozenset[type] = frozenset()
) -> set[str]:
    """Field paths marked with `PII` in a model and the models nested inside it."""
    if model in seen:
        return set()
    paths: set[str] = set()
    for fname, info in model.model_fields.items():
        path = f"{prefix}{fname}"
        if _has_pii_marker(info):
            paths.add(path)
        for nested in _annotation_models(info.annotation):
            paths |= _discover_pii(nested, path + ".", seen | {model})
    return paths


def _check_path(model: type[BaseModel], path: str, *, key: str, role: str) -> None:
    current: list[type[BaseModel]] = [model]
    for segment in path.split("."):
        matches = [m for m in current if segment in m.model_fields]
        if not matches:
            known = sorted({f for m in current for f in m.model_fields})
            raise SpecDefinitionError(
                f"{key}: pii path {path!r} does not exist in {role} (segment {segment!r}); "
                f"known fields here: {', '.join(known) or 'none'}",
                details={"field": "pii", "path": path},
            )
        current = [
            n for m in matches for n in _annotation_models(m.model_fields[segment].annotation)
        ]


def _pii_paths(
    model: type[BaseModel], declared: Iterable[str] | str | None, *, key: str, role: str
) -> frozenset[str]:
    explicit = _tuple_of_str(declared)
    for path in explicit:
        _check_path(model, path, key=key, role=role)
    return frozenset(explicit) | frozenset(_discover_pii(model))


def _check_reserved(name: str, internal: bool) -> None:
    if not internal and name.startswith(RESERVED_PREFIXES):
        raise SpecDefinitionError(
            f"name {name!r} uses a prefix reserved for ContractSpec's own specs "
            f"({', '.join(RESERVED_PREFIXES)}); choose your own domain prefix, e.g. 'crm.'",
            details={"field": "name"},
        )


def parse_key(key: str) -> tuple[str, int | None]:
    """Split `"crm.deal.create@2"` into `("crm.deal.create", 2)`; no `@` gives version `None`.

    Raises:
        SpecDefinitionError: The version part is not a positive integer.
    """
    name, sep, version = key.partition("@")
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise SpecDefinitionError(
            f"spec reference {key!r} has an invalid version: write 'name@<positive integer>'"
        )
    return name, int(version)


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class EventSpec:
    """A domain event: what happened, its payload schema, how sensitive and how long it is kept.

    Attributes:
        name: Dotted name, e.g. `crm.deal.created`.
        version: Positive integer; bump it for a breaking payload change.
        payload: pydantic model of the payload.
        description: One paragraph for the reference docs.
        severity: Downstream attention level.
        pii: Dotted field paths of personal data in the payload (declared or marked with `PII`).
        retention: How long consumers and stores should keep the event (`None`: no limit).
        key: Payload field whose value orders delivery (events with the same key are delivered in
            order by the outbox relay), e.g. `"deal_id"`.
        owners, tags: Free-form metadata for docs and ownership.
    """

    kind: typing.ClassVar[str] = "event"

    name: str
    version: int
    payload: type[BaseModel]
    description: str = ""
    severity: EventSeverity = EventSeverity.INFO
    pii: frozenset[str] = frozenset()
    retention: timedelta | None = None
    key: str | None = None
    owners: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        """`name@version`."""
        return f"{self.name}@{self.version}"


def define_event(
    name: str,
    *,
    payload: type[BaseModel],
    version: int = 1,
    description: str = "",
    severity: EventSeverity | str = EventSeverity.INFO,
    pii: Iterable[str] | str | None = None,
    retention: timedelta | None = None,
    key: str | None = None,
    owners: Iterable[str] | str | None = None,
    tags: Iterable[str] | str | None = None,
    _internal: bool = False,
) -> EventSpec:
    """Declare a domain event.

    Args:
        name: Dotted lowercase name with at least two segments (`crm.deal.created`).
        payload: pydantic model of the payload.
        version: Positive integer version (default 1).
        description: Reference-doc paragraph.
        severity: One of `EventSeverity` (or its string value).
        pii: Dotted paths of personal-data fields; fields annotated with `PII` are added.
        retention: How long the event should be kept, or `None`.
        key: Payload field that orders delivery per aggregate.
        owners: Owning teams or people.
        tags: Free-form tags.

    Returns:
        A frozen `EventSpec`.

    Raises:
        SpecDefinitionError: Invalid name or version, reserved prefix, a payload that is not a
            pydantic model, unknown `pii` path or `key` field, negative retention.
    """
    _check_name(name, what="event", pattern=_DOTTED_NAME, example="crm.deal.created")
    _check_reserved(name, _internal)
    ref = f"{name}@{version}"
    _check_version(version, key=ref)
    model = _check_model(payload, key=ref, role="payload")
    try:
        sev = EventSeverity(severity)
    except ValueError:
        raise SpecDefinitionError(
            f"{ref}: severity {severity!r} is not one of {', '.join(s.value for s in EventSeverity)}",
            details={"field": "severity"},
        ) from None
    if retention is not None and retention <= timedelta(0):
        raise SpecDefinitionError(f"{ref}: retention must be positive or None, got {retention}")
    if key is not None and key not in model.model_fields:
        raise SpecDefinitionError(
            f"{ref}: key {key!r} is not a payload field; choose one of "
            f"{', '.join(model.model_fields)}",
            details={"field": "key"},
        )
    return EventSpec(
        name=name,
        version=version,
        payload=model,
        description=description,
        severity=sev,
        pii=_pii_paths(model, pii, key=ref, role="payload"),
        retention=retention,
        key=key,
        owners=_tuple_of_str(owners),
        tags=_tuple_of_str(tags),
    )


@define(frozen=True)
class EventRef:
    """A by-name reference to an event in `emits=`, resolved by the registry (`version=None`: latest)."""

    name: str
    version: int | None = None

    @property
    def ref(self) -> str:
        """`name` or `name@version`."""
        return self.name if self.version is None else f"{self.name}@{self.version}"


EmitsItem: TypeAlias = EventSpec | EventRef | str


def _event_refs(emits: Iterable[EmitsItem] | None, *, key: str) -> tuple[EventSpec | EventRef, ...]:
    out: list[EventSpec | EventRef] = []
    for item in emits or ():
        if isinstance(item, EventSpec | EventRef):
            out.append(item)
        elif isinstance(item, str):
            name, version = parse_key(item)
            _check_name(name, what="event", pattern=_DOTTED_NAME, example="crm.deal.created")
            out.append(EventRef(name, version))
        else:
            raise SpecDefinitionError(
                f"{key}: emits must list EventSpec objects or 'name[@version]' strings, got {item!r}",
                details={"field": "emits"},
            )
    # Two explicit versions of one event may be declared (a side-by-side event migration); the
    # same version twice, or an unversioned reference beside another one, is refused.
    refs = [(e.name, e.version) for e in out]
    dupes = sorted(
        {
            f"{n}@{v}" if v is not None else n
            for n, v in refs
            if refs.count((n, v)) > 1 or (v is None and [m for m, _ in refs].count(n) > 1)
        }
    )
    if dupes:
        raise SpecDefinitionError(
            f"{key}: emits lists {', '.join(dupes)} more than once; list each event once, or two "
            "versions of one event each with its version ('x.y.done@1', 'x.y.done@2')",
            details={"field": "emits"},
        )
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class OperationSpec:
    """A command or query: its schemas, auth requirement, events, idempotency and metadata.

    Attributes:
        kind: `command` or `query`.
        name: Dotted name, e.g. `crm.deal.create`.
        version: Positive integer; several versions of one name may be registered at once.
        input, output: pydantic models validated on every call.
        description: Reference-doc paragraph.
        owners, tags: Ownership and grouping metadata.
        stability: Maturity; `deprecated` marks the start of the deprecation period.
        auth: What the caller needs (`public()`, `authenticated()`, `requires(...)`).
        emits: Events the handler may emit; emitting anything else raises `HandlerContractError`.
        idempotent: Queries always are. A command declared idempotent honours idempotency keys: a
            repeated key with the same input returns the stored result without running the handler.
        pii: Dotted paths of personal data in input or output (prefixed `input.` / `output.` when
            ambiguous is not needed: paths are checked against both models).
        errors: Error codes the operation may return on purpose (docs, diff, HTTP mapping).
        audit: Whether successful calls leave an audit record (default: commands yes, queries no).
    """

    kind: OperationKind
    name: str
    version: int
    input: type[BaseModel]
    output: type[BaseModel]
    description: str = ""
    owners: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    stability: Stability = Stability.STABLE
    auth: AuthRequirement = field(factory=authenticated)
    emits: tuple[EventSpec | EventRef, ...] = ()
    idempotent: bool = False
    pii: frozenset[str] = frozenset()
    errors: tuple[str, ...] = ()
    audit: bool = True

    @property
    def ref(self) -> str:
        """`name@version`."""
        return f"{self.name}@{self.version}"

    @property
    def is_command(self) -> bool:
        """True for commands."""
        return self.kind is OperationKind.COMMAND

    @property
    def domain(self) -> str:
        """First segment of the name (`crm` for `crm.deal.create`)."""
        return self.name.split(".", 1)[0]


def _error_codes(errors: Iterable[type[Exception] | str] | None, *, key: str) -> tuple[str, ...]:
    codes: list[str] = []
    for err in errors or ():
        if isinstance(err, str):
            codes.append(err)
        elif isinstance(err, type) and isinstance(getattr(err, "code", None), str):
            codes.append(err.code)  # type: ignore[attr-defined]  # checked just above
        else:
            raise SpecDefinitionError(
                f"{key}: errors must list ContractSpecError subclasses or error codes, got {err!r}",
                details={"field": "errors"},
            )
    return tuple(dict.fromkeys(codes))


def _operation_pii(
    inp: type[BaseModel], out: type[BaseModel], declared: Iterable[str] | str | None, *, key: str
) -> frozenset[str]:
    explicit = _tuple_of_str(declared)
    for path in explicit:
        role, _, rest = path.partition(".")
        if role not in ("input", "output") or not rest:
            raise SpecDefinitionError(
                f"{key}: pii path {path!r} must start with 'input.' or 'output.', "
                "e.g. 'input.email'",
                details={"field": "pii", "path": path},
            )
        _check_path(inp if role == "input" else out, rest, key=key, role=role)
    discovered = {f"input.{p}" for p in _discover_pii(inp)} | {
        f"output.{p}" for p in _discover_pii(out)
    }
    return frozenset(explicit) | frozenset(discovered)


def _define_operation(
    kind: OperationKind,
    name: str,
    *,
    input: type[BaseModel],
    output: type[BaseModel],
    version: int,
    description: str,
    owners: Iterable[str] | str | None,
    tags: Iterable[str] | str | None,
    stability: Stability | str,
    auth: AuthRequirement | None,
    emits: Iterable[EmitsItem] | None,
    idempotent: bool,
    pii: Iterable[str] | str | None,
    errors: Iterable[type[Exception] | str] | None,
    audit: bool | None,
    internal: bool,
) -> OperationSpec:
    _check_name(name, what=kind.value, pattern=_DOTTED_NAME, example="crm.deal.create")
    _check_reserved(name, internal)
    ref = f"{name}@{version}"
    _check_version(version, key=ref)
    inp = _check_model(input, key=ref, role="input")
    out = _check_model(output, key=ref, role="output")
    try:
        stab = Stability(stability)
    except ValueError:
        raise SpecDefinitionError(
            f"{ref}: stability {stability!r} is not one of {', '.join(s.value for s in Stability)}",
            details={"field": "stability"},
        ) from None
    if auth is None:
        auth = authenticated()
    elif not isinstance(auth, AuthRequirement):
        raise SpecDefinitionError(
            f"{ref}: auth must be public(), authenticated() or requires(...), got {auth!r}",
            details={"field": "auth"},
        )
    refs = _event_refs(emits, key=ref)
    if kind is OperationKind.QUERY and refs:
        raise SpecDefinitionError(
            f"{ref}: queries cannot emit events; make it a command or drop emits=",
            details={"field": "emits"},
        )
    return OperationSpec(
        kind=kind,
        name=name,
        version=version,
        input=inp,
        output=out,
        description=description,
        owners=_tuple_of_str(owners),
        tags=_tuple_of_str(tags),
        stability=stab,
        auth=auth,
        emits=refs,
        idempotent=True if kind is OperationKind.QUERY else bool(idempotent),
        pii=_operation_pii(inp, out, pii, key=ref),
        errors=_error_codes(errors, key=ref),
        audit=(kind is OperationKind.COMMAND) if audit is None else bool(audit),
    )


def define_command(
    name: str,
    *,
    input: type[BaseModel],
    output: type[BaseModel],
    version: int = 1,
    description: str = "",
    owners: Iterable[str] | str | None = None,
    tags: Iterable[str] | str | None = None,
    stability: Stability | str = Stability.STABLE,
    auth: AuthRequirement | None = None,
    emits: Iterable[EmitsItem] | None = None,
    idempotent: bool = False,
    pii: Iterable[str] | str | None = None,
    errors: Iterable[type[Exception] | str] | None = None,
    audit: bool | None = None,
    _internal: bool = False,
) -> OperationSpec:
    """Declare a command: an operation that changes state.

    Args:
        name: Dotted lowercase name with at least two segments (`crm.deal.create`).
        input: pydantic model validated before the handler runs.
        output: pydantic model the handler must return.
        version: Positive integer version (default 1).
        description: Reference-doc paragraph.
        owners: Owning teams or people.
        tags: Free-form tags.
        stability: `experimental`, `beta`, `stable` (default) or `deprecated`.
        auth: `public()`, `authenticated()` (default) or `requires("perm", ...)`.
        emits: Events the handler may emit (`EventSpec` objects or `"name[@version]"`); two
            versions of one event may be listed for a side-by-side migration (the handler then
            emits each by its `EventSpec` or `"name@version"`).
        idempotent: Honour idempotency keys (repeat → stored result; same key, other input →
            `IdempotencyConflictError`).
        pii: Paths of personal data, prefixed `input.` or `output.`; `PII`-annotated fields are added.
        errors: Error classes or codes the operation may return on purpose.
        audit: Leave an audit record for each successful call (default `True` for commands).

    Returns:
        A frozen `OperationSpec` of kind `command`.

    Raises:
        SpecDefinitionError: Invalid name, version, model, auth, `emits`, `pii` or `errors`.
    """
    return _define_operation(
        OperationKind.COMMAND, name, input=input, output=output, version=version,
        description=description, owners=owners, tags=tags, stability=stability, auth=auth,
        emits=emits, idempotent=idempotent, pii=pii, errors=errors, audit=audit, internal=_internal,
    )  # fmt: skip


def define_query(
    name: str,
    *,
    input: type[BaseModel],
    output: type[BaseModel],
    version: int = 1,
    description: str = "",
    owners: Iterable[str] | str | None = None,
    tags: Iterable[str] | str | None = None,
    stability: Stability | str = Stability.STABLE,
    auth: AuthRequirement | None = None,
    pii: Iterable[str] | str | None = None,
    errors: Iterable[type[Exception] | str] | None = None,
    audit: bool | None = None,
    _internal: bool = False,
) -> OperationSpec:
    """Declare a query: a read-only operation (always idempotent, never emits events).

    Arguments are those of [`define_command`][contractspec.core.specs.define_command] minus
    `emits` and `idempotent`; `audit` defaults to `False`.

    Returns:
        A frozen `OperationSpec` of kind `query`.

    Raises:
        SpecDefinitionError: Invalid name, version, model, auth, `pii` or `errors`.
    """
    return _define_operation(
        OperationKind.QUERY, name, input=input, output=output, version=version,
        description=description, owners=owners, tags=tags, stability=stability, auth=auth,
        emits=None, idempotent=True, pii=pii, errors=errors, audit=audit, internal=_internal,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Entities
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class Index:
    """A secondary index over one or more entity fields.

    Attributes:
        fields: Field names in index order.
        unique: Enforce uniqueness (per tenant for tenant-scoped entities).
        name: Optional explicit name; by default the naming convention derives one.
    """

    fields: tuple[str, ...]
    unique: bool = False
    name: str | None = None


IndexLike: TypeAlias = Index | str | Sequence[str]


M = TypeVar("M", bound=BaseModel)


@define(frozen=True)
class EntitySpec(Generic[M]):
    """A persisted domain entity backed by a pydantic model.

    Attributes:
        name: Dotted lowercase name (`crm.deal`); SQL tables are named after it (`crm_deal`).
        model: pydantic model of one record; its fields become columns.
        primary_key: Name of the primary-key field (default `id`).
        indexes: Secondary indexes (unique ones become unique constraints).
        tenant_scoped: Records belong to an org: every query is filtered by the context's `org_id`.
        pii: Dotted paths of personal data (declared or marked with `PII`).
        description, owners, tags: Metadata.
        version: Positive integer version of the entity's shape.
        attachments: Specs declared with the entity by another package (attachment slots of
            `contractspec-files`), bound to it; `SpecRegistry.register` registers them too.
    """

    kind: typing.ClassVar[str] = "entity"

    name: str
    model: type[M]
    primary_key: str = "id"
    indexes: tuple[Index, ...] = ()
    tenant_scoped: bool = True
    pii: frozenset[str] = frozenset()
    description: str = ""
    owners: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    version: int = 1
    attachments: tuple[Any, ...] = ()

    @property
    def ref(self) -> str:
        """`name@version`."""
        return f"{self.name}@{self.version}"

    @property
    def table_name(self) -> str:
        """Default SQL table name: the dotted name with dots replaced by underscores."""
        return self.name.replace(".", "_")


FieldDef: TypeAlias = type | Any


def _model_from_fields(name: str, fields: Mapping[str, Any]) -> type[BaseModel]:
    definitions: dict[str, Any] = {}
    for fname, fdef in fields.items():
        if isinstance(fdef, tuple) and len(fdef) == 2:
            definitions[fname] = fdef
        else:
            definitions[fname] = (fdef, ...)
    class_name = "".join(part.title() for part in re.split(r"[._]", name))
    try:
        return pydantic.create_model(class_name, **definitions)
    except (pydantic.PydanticUserError, TypeError, NameError) as exc:
        raise SpecDefinitionError(
            f"entity {name!r}: fields could not be turned into a model: {exc}; give each field "
            "as a type or a (type, default) pair",
            details={"field": "fields"},
        ) from exc


def _is_optional(annotation: Any) -> bool:
    origin = get_origin(annotation)
    return origin in (Union, types.UnionType) and type(None) in get_args(annotation)


def define_entity(
    name: str,
    model: type[M] | None = None,
    *,
    fields: Mapping[str, Any] | None = None,
    primary_key: str = "id",
    indexes: Iterable[IndexLike] | None = None,
    tenant_scoped: bool = True,
    pii: Iterable[str] | str | None = None,
    description: str = "",
    owners: Iterable[str] | str | None = None,
    tags: Iterable[str] | str | None = None,
    version: int = 1,
    attachments: Iterable[EntityAttachment] | None = None,
    _internal: bool = False,
) -> EntitySpec[M]:
    """Declare a persisted entity from a pydantic model or a `fields` mapping.

    Args:
        name: Dotted lowercase name (`deal`, `crm.deal`).
        model: pydantic model of one record (give either `model` or `fields`).
        fields: `{"title": str, "amount": (Decimal, Decimal("0"))}`: types or `(type, default)`.
        primary_key: Primary-key field; it must exist and must not be optional.
        indexes: `"stage"`, `("stage", "owner_id")` or `Index(("email",), unique=True)`.
        tenant_scoped: Filter every query by the context's `org_id` (default `True`).
        pii: Dotted paths of personal data; `PII`-annotated fields are added.
        description: Reference-doc paragraph.
        owners: Owning teams or people.
        tags: Free-form tags.
        version: Positive integer version of the shape.
        attachments: Declarations another package binds to this entity, such as
            `contractspec.files.attachment_slot("docs", media_types=[...], max_size=...)`; each is
            bound with `declaration.bind(entity)` and kept in `EntitySpec.attachments`.

    Returns:
        A frozen `EntitySpec`.

    Raises:
        SpecDefinitionError: Both or neither of `model`/`fields`, unknown primary key or index
            field, an optional primary key, a reserved field name, invalid `pii` path.
    """
    _check_name(name, what="entity", pattern=_ENTITY_NAME, example="crm.deal")
    _check_reserved(name, _internal)
    ref = f"{name}@{version}"
    _check_version(version, key=ref)
    if (model is None) == (fields is None):
        raise SpecDefinitionError(
            f"entity {name!r}: give exactly one of model= (a pydantic model) or fields= (a mapping)",
            details={"field": "model"},
        )
    resolved: type[Any] = (
        _check_model(model, key=ref, role="model")
        if model is not None
        else _model_from_fields(name, fields or {})
    )
    known = resolved.model_fields
    if primary_key not in known:
        raise SpecDefinitionError(
            f"entity {name!r}: primary key {primary_key!r} is not a field; add it to the model "
            f"or pass primary_key= one of {', '.join(known)}",
            details={"field": "primary_key"},
        )
    if _is_optional(known[primary_key].annotation):
        raise SpecDefinitionError(
            f"entity {name!r}: primary key {primary_key!r} must not be optional",
            details={"field": "primary_key"},
        )
    if primary_key in RESERVED_FIELDS:
        raise SpecDefinitionError(f"entity {name!r}: {primary_key!r} cannot be the primary key")
    idx: list[Index] = []
    for item in indexes or ():
        if isinstance(item, Index):
            index = item
        elif isinstance(item, str):
            index = Index((item,))
        else:
            index = Index(tuple(item))
        for fname in index.fields:
            if fname not in known and fname not in RESERVED_FIELDS:
                raise SpecDefinitionError(
                    f"entity {name!r}: index field {fname!r} is not a field; known fields: "
                    f"{', '.join(known)}",
                    details={"field": "indexes"},
                )
        if not index.fields:
            raise SpecDefinitionError(f"entity {name!r}: an index needs at least one field")
        idx.append(index)
    entity: EntitySpec[M] = EntitySpec(
        name=name,
        model=resolved,
        primary_key=primary_key,
        indexes=tuple(idx),
        tenant_scoped=tenant_scoped,
        pii=_pii_paths(resolved, pii, key=ref, role="model"),
        description=description,
        owners=_tuple_of_str(owners),
        tags=_tuple_of_str(tags),
        version=version,
    )
    return _bind_attachments(entity, attachments)


@typing.runtime_checkable
class EntityAttachment(typing.Protocol):
    """A declaration made with an entity and bound to it (`contractspec.files.attachment_slot`)."""

    def bind(self, entity: EntitySpec[Any]) -> Any:
        """The spec this declaration becomes on `entity` (it has `kind`, `name`, `version`)."""
        ...


def _bind_attachments(
    entity: EntitySpec[M], attachments: Iterable[EntityAttachment] | None
) -> EntitySpec[M]:
    if attachments is None:
        return entity
    candidates: object = attachments
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Iterable):
        raise SpecDefinitionError(
            f"entity {entity.name!r}: attachments must be a list of declarations such as "
            "contractspec.files.attachment_slot(...)",
            details={"field": "attachments"},
        )
    bound: list[Any] = []
    for item in attachments:
        if not isinstance(item, EntityAttachment):
            raise SpecDefinitionError(
                f"entity {entity.name!r}: attachments item {item!r} is not a declaration; use "
                "contractspec.files.attachment_slot(name, media_types=..., max_size=...)",
                details={"field": "attachments"},
            )
        spec = item.bind(entity)
        key = (getattr(spec, "kind", None), getattr(spec, "name", None))
        if any((getattr(b, "kind", None), getattr(b, "name", None)) == key for b in bound):
            raise SpecDefinitionError(
                f"entity {entity.name!r}: attachments declare {key[1]!r} twice; give each "
                "declaration its own name",
                details={"field": "attachments"},
            )
        bound.append(spec)
    return evolve(entity, attachments=tuple(bound))
