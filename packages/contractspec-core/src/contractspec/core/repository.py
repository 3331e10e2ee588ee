"""Repositories: typed access to entity records inside one transaction and one tenant.

Handlers get a repository with `ctx.repo(deal_entity)`. The memory and SQL stores implement the same
[`Repository`][contractspec.core.repository.Repository] protocol and pass the same conformance suite,
so code and tests written against one run unchanged on the other.

Filters are mappings of `field` or `field__op` to a value (Django-style lookups):

| lookup | meaning |
|---|---|
| `stage="won"` / `stage__eq` | equal |
| `stage__ne` | not equal (rows where the field is NULL do not match) |
| `amount__lt`, `__le`, `__gt`, `__ge` | comparisons |
| `stage__in=["won", "lost"]`, `stage__not_in` | membership |
| `closed_at__is_null=True` | NULL test |
| `title__icontains="acme"` | case-insensitive substring (ASCII case folding on SQLite) |

Ordering takes field names, `-field` for descending; NULLs sort last ascending and first
descending on every backend, and the primary key breaks ties so pagination is stable.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Literal,
    Protocol,
    TypeVar,
    cast,
    runtime_checkable,
)

from attrs import define
from pydantic import BaseModel, TypeAdapter, ValidationError

from contractspec.core._fields import NUMERIC_KINDS, SCALAR_KINDS, FieldKind, entity_columns
from contractspec.core.errors import (
    HandlerContractError,
    NotFoundError,
    SpecValidationError,
    TenantScopeError,
)
from contractspec.core.records import EntityChange, redact

if TYPE_CHECKING:
    from contractspec.core.specs import EntitySpec
    from contractspec.core.transactions import Transaction

__all__ = [
    "LOOKUPS",
    "BaseRepository",
    "Condition",
    "OrderTerm",
    "Repository",
    "check_aggregate",
    "check_storable",
    "parse_order_by",
    "parse_where",
]

M = TypeVar("M", bound=BaseModel)

Lookup = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "is_null", "icontains"]
#: Supported `field__lookup` suffixes.
LOOKUPS: frozenset[str] = frozenset(
    {"eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "is_null", "icontains"}
)


#: Characters no database stores in text: NUL (PostgreSQL refuses it, in `text` and `jsonb`) and
#: UTF-16 surrogates (not valid in UTF-8, so no driver can encode them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


_STR_KINDS = frozenset({"str"})
_SCALAR_SKIP = frozenset(
    {"bool", "int", "float", "decimal", "datetime", "date", "time", "uuid", "bytes", "enum"}
)
_PLANS: dict[type[BaseModel], tuple[tuple[str, bool], ...]] = {}


def _plan(model: type[BaseModel]) -> tuple[tuple[str, bool], ...]:
    """`(field, is_plain_string)` for the fields of `model` that can hold text."""
    plan = _PLANS.get(model)
    if plan is None:
        plan = _PLANS[model] = tuple(
            (name, kind.kind in _STR_KINDS)
            for name, kind in entity_columns(model).items()
            if kind.kind not in _SCALAR_SKIP
        )
    return plan


def _first_unstorable(value: Any, path: str) -> str | None:
    """The dotted path of the first string holding an unstorable character, or `None`."""
    if isinstance(value, str):
        return path if _UNSTORABLE.search(value) else None
    if isinstance(value, BaseModel):
        prefix = f"{path}." if path else ""
        data = value.__dict__
        plan = _PLANS.get(type(value))
        for name, plain in plan if plan is not None else _plan(type(value)):
            item = data.get(name)
            if item is None:
                continue
            if plain and type(item) is str:
                if _UNSTORABLE.search(item):
                    return prefix + name
            else:
                found = _first_unstorable(item, prefix + name)
                if found is not None:
                    return found
        return None
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple | set | frozenset):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and _UNSTORABLE.search(key):
            return f"{path}.{key}" if path else key
        if isinstance(item, int | float | bool | Decimal) or item is None:
            continue
        found = _first_unstorable(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def check_storable(value: Any, what: str | Callable[[], str]) -> None:
    """Refuse strings that no backend can store: NUL characters and lone UTF-16 surrogates.

    PostgreSQL rejects NUL in `text` and `jsonb`, and no driver encodes a lone surrogate, so such a
    value would fail late (as a driver error) on one backend and pass on another. Checking before
    anything is written makes every backend answer the same way.

    Args:
        value: A model, mapping, sequence or scalar (walked recursively).
        what: What is being stored, for the message (`"crm.deal"`, `"event crm.deal.moved@1"`),
            or a function returning it (called only when the value is refused).

    Raises:
        SpecValidationError: Naming the first offending field (code `validation_error`).
    """
    found = _first_unstorable(value, "")
    if found is not None:
        if not isinstance(what, str):
            what = what()
        raise SpecValidationError(
            f"{what}: field {found or '(value)'!r} holds a NUL character or an unpaired surrogate, "
            "which cannot be stored; remove it",
            errors=[{"field": found, "type": "unstorable_string", "msg": "unstorable character"}],
            details={"field": found},
        )


@define(frozen=True)
class Condition:
    """One parsed filter condition: `field <op> value` with `value` coerced to the field's type."""

    field: str
    op: Lookup
    value: Any


@define(frozen=True)
class OrderTerm:
    """One ordering term."""

    field: str
    descending: bool = False


class _FieldTypes:
    """Per-entity cache of TypeAdapters used to coerce filter values."""

    _cache: ClassVar[dict[tuple[type[BaseModel], str], TypeAdapter[Any]]] = {}

    @classmethod
    def adapter(cls, model: type[BaseModel], field: str) -> TypeAdapter[Any]:
        key = (model, field)
        adapter = cls._cache.get(key)
        if adapter is None:
            adapter = TypeAdapter(cast(Any, model.model_fields[field].annotation))
            cls._cache[key] = adapter
        return adapter


_COLUMNS: dict[type[BaseModel], dict[str, FieldKind]] = {}


def _columns(model: type[BaseModel]) -> dict[str, FieldKind]:
    columns = _COLUMNS.get(model)
    if columns is None:
        columns = _COLUMNS[model] = entity_columns(model)
    return columns


_LIMITS: dict[type[BaseModel], tuple[tuple[str, int | None], ...]] = {}


def _limits(entity: EntitySpec[Any]) -> tuple[tuple[str, int | None], ...]:
    """`(field, decimal scale or None)` of the fields stored as 64-bit integers."""
    limits = _LIMITS.get(entity.model)
    if limits is None:
        limits = _LIMITS[entity.model] = tuple(
            (name, kind.decimal_places if kind.kind == "decimal" else None)
            for name, kind in _columns(entity.model).items()
            if kind.kind == "int" or (kind.kind == "decimal" and kind.decimal_places is not None)
        )
    return limits


def _known_fields(entity: EntitySpec[Any]) -> list[str]:
    """Fields that can be filtered and ordered on: scalar columns, plus `org_id`."""
    fields = [name for name, kind in _columns(entity.model).items() if kind.kind in SCALAR_KINDS]
    if entity.tenant_scoped and "org_id" not in fields:
        fields.append("org_id")
    return fields


def _unknown_field(entity: EntitySpec[Any], field: str, what: str) -> SpecValidationError:
    if field in entity.model.model_fields:
        return SpecValidationError(
            f"{what} on {entity.name}: field {field!r} holds structured data (stored as JSON); "
            "filter and order on scalar fields only",
            details={"field": field},
        )
    return SpecValidationError(
        f"{what} on {entity.name}: unknown field {field!r}; known fields: "
        f"{', '.join(_known_fields(entity))}",
        details={"field": field},
    )


def _coerce(entity: EntitySpec[Any], field: str, value: Any) -> Any:
    if field == "org_id" and field not in entity.model.model_fields:
        return value
    try:
        return _FieldTypes.adapter(entity.model, field).validate_python(value)
    except ValidationError as exc:
        raise SpecValidationError(
            f"filter on {entity.name}.{field}: {value!r} is not a valid value for this field",
            errors=exc.errors(include_url=False, include_input=False),
            details={"field": field},
        ) from None


def parse_where(entity: EntitySpec[Any], where: Mapping[str, Any] | None) -> list[Condition]:
    """Parse a filter mapping into conditions with values coerced to the field types.

    Raises:
        SpecValidationError: Unknown field or lookup, or a value the field cannot hold.
    """
    if not where:
        return []
    known = _known_fields(entity)
    conditions: list[Condition] = []
    for key, value in where.items():
        field, _, op = key.partition("__")
        op = op or "eq"
        if field not in known:
            raise _unknown_field(entity, field, "filter")
        if op not in LOOKUPS:
            raise SpecValidationError(
                f"filter {key!r} on {entity.name}: unknown lookup {op!r}; use one of "
                f"{', '.join(sorted(LOOKUPS))}",
                details={"field": field},
            )
        if op in ("in", "not_in"):
            if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
                raise SpecValidationError(
                    f"filter {key!r} on {entity.name}: give a list of values",
                    details={"field": field},
                )
            coerced: Any = [_coerce(entity, field, v) for v in value]
        elif op == "is_null":
            coerced = bool(value)
        elif op == "icontains":
            if (
                field == "org_id"
                or _columns(entity.model)[field].kind != "str"
                or not isinstance(value, str)
            ):
                raise SpecValidationError(
                    f"filter {key!r} on {entity.name}: icontains needs a string field and a "
                    "string value",
                    details={"field": field},
                )
            coerced = value
        elif value is None:
            raise SpecValidationError(
                f"filter {key!r} on {entity.name}: compare with None through "
                f"{field}__is_null=True instead",
                details={"field": field},
            )
        else:
            coerced = _coerce(entity, field, value)
        conditions.append(Condition(field, op, coerced))  # type: ignore[arg-type]  # op checked in LOOKUPS
    return conditions


def parse_order_by(
    entity: EntitySpec[Any], order_by: str | Sequence[str] | None
) -> list[OrderTerm]:
    """Parse `"-created_at"` or `["stage", "-amount"]`, then add the primary key as tie-breaker.

    Raises:
        SpecValidationError: Unknown field.
    """
    items: Sequence[str] = (order_by,) if isinstance(order_by, str) else (order_by or ())
    known = _known_fields(entity)
    terms: list[OrderTerm] = []
    for item in items:
        descending = item.startswith("-")
        field = item.lstrip("-+")
        if field not in known:
            raise _unknown_field(entity, field, "order_by")
        terms.append(OrderTerm(field, descending))
    if not any(t.field == entity.primary_key for t in terms):
        terms.append(OrderTerm(entity.primary_key))
    return terms


def check_aggregate(entity: EntitySpec[Any], group_by: Sequence[str], sums: Sequence[str]) -> None:
    """Validate `aggregate()` arguments.

    Raises:
        SpecValidationError: Unknown or structured group field, or a non-numeric summed field.
    """
    if isinstance(group_by, str) or isinstance(sums, str):
        raise SpecValidationError(
            f"aggregate on {entity.name}: group_by and sum take lists of field names, e.g. ['stage']"
        )
    known = _known_fields(entity)
    for field in group_by:
        if field not in known:
            raise _unknown_field(entity, field, "aggregate group_by")
    columns = _columns(entity.model)
    for field in sums:
        if field not in columns or columns[field].kind not in NUMERIC_KINDS:
            raise SpecValidationError(
                f"aggregate on {entity.name}: cannot sum {field!r}; sum numeric fields only "
                f"({', '.join(n for n, k in columns.items() if k.kind in NUMERIC_KINDS) or 'none'})",
                details={"field": field},
            )


@runtime_checkable
class Repository(Protocol[M]):
    """Typed CRUD, filtering and aggregation over one entity, in one transaction and tenant.

    Every read and write is scoped to the repository's `org_id` for tenant-scoped entities: records
    of other tenants are invisible (reads return nothing, writes raise `NotFoundError`).
    """

    @property
    def entity(self) -> EntitySpec[M]:
        """The entity spec this repository serves."""
        ...

    async def get(self, id: Any) -> M | None:
        """The record with primary key `id`, or `None`."""
        ...

    async def require(self, id: Any) -> M:
        """The record with primary key `id`.

        Raises:
            NotFoundError: No such record in this tenant.
        """
        ...

    async def get_for_update(self, id: Any) -> M | None:
        """The record with primary key `id`, locked until the transaction ends, or `None`.

        Use it in handlers that read a record, decide, and write it back: concurrent calls then
        wait for each other instead of failing with `ConcurrentUpdateError` (PostgreSQL
        `SELECT … FOR UPDATE`; SQLite writers are serialised already; memory claims the row).
        """
        ...

    async def add(self, obj: M | Mapping[str, Any]) -> M:
        """Insert a new record (a model instance or a mapping validated into one).

        Raises:
            ConflictError: The primary key or a unique index is taken (SQL stores may report it
                when the transaction flushes, at the latest on commit).
        """
        ...

    async def update(self, obj: M) -> M:
        """Replace the stored record that has `obj`'s primary key.

        Every record carries a version the repository maintains. The write applies only if the
        record is still at the version this transaction read (or, when it was not read before, the
        version it has now); otherwise a concurrent call changed it first.

        Raises:
            NotFoundError: No such record in this tenant.
            ConcurrentUpdateError: The record changed since this transaction read it (SQL stores
                may report it when the transaction flushes, at the latest on commit).
        """
        ...

    async def patch(self, id: Any, /, **changes: Any) -> M:
        """Change some fields of a record; the result is validated against the model.

        Raises:
            NotFoundError: No such record. SpecValidationError: The changed record is invalid.
        """
        ...

    async def delete(self, id: Any) -> bool:
        """Delete the record; return whether it existed.

        Raises:
            ConcurrentUpdateError: The record changed since this transaction read it.
        """
        ...

    async def find(
        self,
        where: Mapping[str, Any] | None = None,
        *,
        order_by: str | Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[M]:
        """Records matching `where`, ordered, paginated."""
        ...

    async def first(
        self, where: Mapping[str, Any] | None = None, *, order_by: str | Sequence[str] | None = None
    ) -> M | None:
        """The first matching record, or `None`."""
        ...

    async def count(self, where: Mapping[str, Any] | None = None) -> int:
        """Number of matching records."""
        ...

    async def aggregate(
        self,
        *,
        group_by: Sequence[str] = (),
        sum: Sequence[str] = (),
        where: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Grouped counts and sums, computed by the store (in SQL: one `GROUP BY` query).

        Returns:
            One dict per group, ordered by the group fields: the group fields, `count`, and
            `sum_<field>` for each summed field (`None` when every value is NULL).
        """
        ...


class BaseRepository(ABC, Generic[M]):
    """Shared logic of the memory and SQL repositories: validation, tenancy, change tracking."""

    __slots__ = ("_entity", "_org_id", "_tx")

    def __init__(self, entity: EntitySpec[M], tx: Transaction, org_id: str | None) -> None:
        if entity.tenant_scoped and org_id is None:
            raise TenantScopeError(
                f"{entity.name} is tenant data: the call context needs an org_id "
                "(CallContext(org_id=...)) to read or write it",
                action=f"{entity.name}.access",
                reason="no org_id in the execution context",
            )
        if org_id is not None and _UNSTORABLE.search(org_id):
            raise SpecValidationError(
                "org_id holds a NUL character or an unpaired surrogate; tenant ids must be "
                "storable text",
                details={"field": "org_id"},
            )
        self._entity = entity
        self._tx = tx
        self._org_id = org_id if entity.tenant_scoped else None

    @property
    def entity(self) -> EntitySpec[M]:
        """The entity spec this repository serves."""
        return self._entity

    @property
    def org_id(self) -> str | None:
        """Tenant the repository is scoped to (`None` for global entities)."""
        return self._org_id

    # -- helpers for subclasses -----------------------------------------------------------------

    def _coerce_new(self, obj: M | Mapping[str, Any]) -> M:
        """`obj` as the entity's model, checked to be storable on every backend; tenant-scoped
        models that declare `org_id` get the repository's tenant (never the payload's)."""
        entity = self._entity
        model = entity.model
        if not isinstance(obj, model):
            if isinstance(obj, BaseModel):
                raise HandlerContractError(
                    f"{entity.name}: expected a {model.__name__} instance, got "
                    f"{type(obj).__name__}; convert it with {model.__name__}.model_validate(...)"
                )
            try:
                obj = model.model_validate(obj)
            except ValidationError as exc:
                raise SpecValidationError(
                    f"{entity.name}: the record is invalid: {exc.error_count()} error(s)",
                    errors=exc.errors(include_url=False, include_input=False),
                ) from None
        check_storable(obj, entity.name)
        limits = _limits(entity)
        if limits:
            for name, scale in limits:
                value = getattr(obj, name)
                if value is None:
                    continue
                scaled = value if scale is None else int(value.scaleb(scale))
                if not _INT64_MIN <= scaled <= _INT64_MAX:
                    raise SpecValidationError(
                        f"{entity.name}: field {name!r} is out of the storable range (64-bit "
                        "integers; for decimals, the value times 10**decimal_places)",
                        errors=[{"field": name, "type": "out_of_range", "msg": "out of range"}],
                        details={"field": name},
                    )
        if (
            entity.tenant_scoped
            and "org_id" in model.model_fields
            and getattr(obj, "org_id", None) != self._org_id
        ):
            obj = obj.model_copy(update={"org_id": self._org_id})
        return obj

    def _pk_of(self, obj: BaseModel) -> Any:
        return getattr(obj, self._entity.primary_key)

    def _coerce_pk(self, id: Any) -> Any:
        return _coerce(self._entity, self._entity.primary_key, id)

    def _json(self, obj: BaseModel | None) -> dict[str, Any] | None:
        if obj is None:
            return None
        data = obj.model_dump(mode="json")
        return redact(data, self._entity.pii) if self._entity.pii else data

    def _record(
        self, op: Literal["create", "update", "delete"], pk: Any, before: M | None, after: M | None
    ) -> None:
        self._tx.record_change(
            EntityChange(self._entity.name, str(pk), op, self._json(before), self._json(after))
        )

    def _not_found(self, id: Any) -> NotFoundError:
        return NotFoundError(
            f"{self._entity.name} {id!r} not found"
            + (" in this organization" if self._entity.tenant_scoped else ""),
            details={"entity": self._entity.name, "id": str(id)},
        )

    # -- primitives each adapter provides ----------------------------------------------------

    @abstractmethod
    async def get(self, id: Any) -> M | None:
        """The record with primary key `id` in this tenant, or `None`."""

    @abstractmethod
    async def get_for_update(self, id: Any) -> M | None:
        """The record with primary key `id`, locked until the transaction ends, or `None`."""

    @abstractmethod
    async def update(self, obj: M) -> M:
        """Replace the record with `obj`'s primary key; `NotFoundError` if absent."""

    @abstractmethod
    async def find(
        self,
        where: Mapping[str, Any] | None = None,
        *,
        order_by: str | Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[M]:
        """Matching records, ordered and paginated."""

    # -- protocol methods built on the primitives ---------------------------------------------

    async def require(self, id: Any) -> M:
        """The record with primary key `id`; `NotFoundError` when absent."""
        found = await self.get(id)
        if found is None:
            raise self._not_found(id)
        return found

    async def patch(self, id: Any, /, **changes: Any) -> M:
        """Change some fields; validated against the model."""
        current = await self.require(id)
        if self._entity.primary_key in changes and changes[self._entity.primary_key] != self._pk_of(
            current
        ):
            raise SpecValidationError(
                f"{self._entity.name}: the primary key {self._entity.primary_key!r} cannot be changed",
                details={"field": self._entity.primary_key},
            )
        unknown = sorted(set(changes) - set(self._entity.model.model_fields))
        if unknown:
            raise SpecValidationError(
                f"{self._entity.name}: unknown field(s) {', '.join(unknown)}",
                details={"fields": unknown},
            )
        data = current.model_dump()
        data.update(changes)
        try:
            updated = self._entity.model.model_validate(data)
        except ValidationError as exc:
            raise SpecValidationError(
                f"{self._entity.name}: the patched record is invalid",
                errors=exc.errors(include_url=False, include_input=False),
            ) from None
        return await self.update(updated)

    async def first(
        self, where: Mapping[str, Any] | None = None, *, order_by: str | Sequence[str] | None = None
    ) -> M | None:
        """The first matching record, or `None`."""
        rows = await self.find(where, order_by=order_by, limit=1)
        return rows[0] if rows else None

    @staticmethod
    def _check_page(limit: int | None, offset: int) -> None:
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise SpecValidationError(f"limit must be a non-negative integer, got {limit!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise SpecValidationError(f"offset must be a non-negative integer, got {offset!r}")
