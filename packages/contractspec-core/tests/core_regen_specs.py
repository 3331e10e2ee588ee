"""Spec builders for the IR, diff, codegen and HTTP tests (safe regeneration)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, ClassVar

import pydantic
from attrs import define
from pydantic import BaseModel

from contractspec.core import (
    SpecRegistry,
    define_command,
    define_entity,
    define_event,
    define_query,
    requires,
)

#: Two enums with the same schema name, the second with one more value.
Color = enum.StrEnum("Color", {"RED": "red", "BLUE": "blue"})
ColorPlus = enum.StrEnum("Color", {"RED": "red", "BLUE": "blue", "GREEN": "green"})

#: Two nested models with the same schema name, the second without field `b`.
Inner = pydantic.create_model("Inner", a=(int, ...), b=(str, ...))
InnerSmall = pydantic.create_model("Inner", a=(int, ...))


def model(name: str, fields: Mapping[str, Any], **config: Any) -> type[BaseModel]:
    """A pydantic model `name` with an `id: str` key plus `fields` (`{"x": (int, ...)}`)."""
    definitions: dict[str, Any] = {"id": (str, ...), **fields}
    if config:
        return pydantic.create_model(name, __config__=pydantic.ConfigDict(**config), **definitions)
    return pydantic.create_model(name, **definitions)


@define(frozen=True)
class JobSpec:
    """A spec kind core does not know (like contractspec-jobs' job specs)."""

    kind: ClassVar[str] = "job"

    name: str
    version: int
    payload: type[BaseModel]
    queue: str = "default"
    max_attempts: int = 3


def registry_with(role: str, fields: Mapping[str, Any], **config: Any) -> SpecRegistry:
    """A registry where the model under test plays `role`.

    Roles: `input`/`output` of the command `t.thing.save`, `payload` of the event `t.thing.saved`,
    `model` of the entity `t.thing`, or `job` (the payload of the job `t.thing.sync`).
    """
    under_test = model("Thing", fields, **config)
    plain = model("Plain", {})
    registry = SpecRegistry()
    if role == "input":
        registry.register(define_command("t.thing.save", input=under_test, output=plain))
    elif role == "output":
        registry.register(define_command("t.thing.save", input=plain, output=under_test))
    elif role == "payload":
        registry.register(define_event("t.thing.saved", payload=under_test))
    elif role == "model":
        registry.register(define_entity("t.thing", under_test))
    elif role == "job":
        registry.register(JobSpec("t.thing.sync", 1, under_test))
    else:  # pragma: no cover - test bug
        raise ValueError(role)
    return registry


def crm_like(
    *,
    create_version: int = 1,
    deprecated: bool = False,
    extra_ops: bool = True,
    **overrides: Any,
) -> SpecRegistry:
    """A small registry with one of each core kind, tweaked by keyword overrides."""

    class DealIn(BaseModel):
        title: str

    class DealOut(BaseModel):
        id: str
        title: str

    class Created(BaseModel):
        deal_id: str

    class DealRecord(BaseModel):
        id: str
        title: str
        email: str | None = None

    created = define_event(
        "crm.deal.created",
        payload=Created,
        key=overrides.get("event_key", "deal_id"),
        retention=overrides.get("retention"),
        severity=overrides.get("severity", "info"),
        description=overrides.get("event_description", ""),
    )
    entity = define_entity(
        "crm.deal",
        DealRecord,
        indexes=overrides.get("indexes", ()),
        tenant_scoped=overrides.get("tenant_scoped", True),
        pii=overrides.get("entity_pii", ()),
    )
    registry = SpecRegistry(entity)
    if overrides.get("with_event", True):
        registry.register(created)
    registry.register(
        define_command(
            "crm.deal.create",
            version=create_version,
            input=DealIn,
            output=DealOut,
            emits=overrides.get("emits", [created]),
            auth=overrides.get("auth", requires("deal.write")),
            idempotent=overrides.get("idempotent", True),
            errors=overrides.get("errors", ["conflict"]),
            audit=overrides.get("audit", True),
            stability="deprecated" if deprecated else overrides.get("stability", "stable"),
            description=overrides.get("description", "Open a deal."),
            pii=overrides.get("pii", ()),
        )
    )
    if extra_ops:
        registry.register(define_query("crm.deal.search", input=DealIn, output=DealOut))
    return registry
