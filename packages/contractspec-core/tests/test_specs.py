"""Definition-time checks of specs and the registry: clear SpecDefinitionErrors, never surprises."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from contractspec.core import (
    PII,
    EventRef,
    HandlerCtx,
    Index,
    OperationKind,
    SpecDefinitionError,
    SpecRegistry,
    Stability,
    UnknownOperationError,
    authenticated,
    define_command,
    define_entity,
    define_event,
    define_query,
    public,
    requires,
)
from contractspec.core.specs import parse_key


class In(BaseModel):
    name: str


class Out(BaseModel):
    id: str


class Nested(BaseModel):
    email: Annotated[str, PII]
    phone: str


class WithPii(BaseModel):
    owner: Nested
    others: list[Nested] = []
    note: str = ""


class Payload(BaseModel):
    deal_id: str


@pytest.mark.parametrize(
    "name",
    ["Deal.create", "deal", "deal..create", "1deal.create", "deal.create-now", "", "deal.créer"],
)
def test_operation_names_must_be_dotted_lowercase(name: str) -> None:
    """Names need two or more lowercase dotted segments; the error shows an example."""
    with pytest.raises(SpecDefinitionError, match=re.escape("'crm.deal.create'")):
        define_command(name, input=In, output=Out)


def test_reserved_prefixes_are_refused() -> None:
    """`contractspec.` and `cs.` are kept for ContractSpec's own specs."""
    with pytest.raises(SpecDefinitionError, match="reserved"):
        define_command("contractspec.thing.do", input=In, output=Out)
    with pytest.raises(SpecDefinitionError, match="reserved"):
        define_event("cs.thing.done", payload=Payload)


@pytest.mark.parametrize("version", [0, -1, True, 1.5, "2"])
def test_versions_are_positive_integers(version: object) -> None:
    """Version 0, negatives, bools, floats and strings are rejected."""
    with pytest.raises(SpecDefinitionError, match="version must be a positive integer"):
        define_command("crm.deal.create", input=In, output=Out, version=version)  # type: ignore[arg-type]


def test_input_must_be_a_pydantic_model() -> None:
    """A dict or a plain class as input is refused with the fix."""
    with pytest.raises(SpecDefinitionError, match="input must be a pydantic BaseModel subclass"):
        define_command("crm.deal.create", input=dict, output=Out)  # type: ignore[arg-type]


def test_defaults_and_kinds() -> None:
    """Commands are audited and need authentication by default; queries are idempotent, unaudited."""
    cmd = define_command("crm.deal.create", input=In, output=Out)
    query = define_query("crm.deal.list", input=In, output=Out)
    assert cmd.kind is OperationKind.COMMAND
    assert cmd.auth == authenticated()
    assert (cmd.audit, cmd.idempotent, cmd.stability) == (True, False, Stability.STABLE)
    assert query.kind is OperationKind.QUERY
    assert (query.audit, query.idempotent) == (False, True)
    assert cmd.ref == "crm.deal.create@1"
    assert cmd.domain == "crm"


def test_queries_cannot_emit_events() -> None:
    """define_query has no emits; a query spec built with emits would be a contradiction."""
    event = define_event("crm.deal.listed", payload=Payload)
    cmd = define_command("crm.deal.create", input=In, output=Out, emits=[event, "crm.deal.other@2"])
    assert cmd.emits == (event, EventRef("crm.deal.other", 2))


def test_emits_may_not_repeat_an_event() -> None:
    """A bare event name beside a versioned entry of it is refused (two explicit versions are not)."""
    with pytest.raises(SpecDefinitionError, match="more than once"):
        define_command(
            "crm.deal.create", input=In, output=Out, emits=["crm.x.done", "crm.x.done@2"]
        )


def test_pii_paths_are_checked_and_markers_discovered() -> None:
    """Declared pii paths must exist; fields annotated with PII are found through nesting."""
    cmd = define_command(
        "crm.deal.create", input=WithPii, output=Out, pii=["input.note", "input.owner.phone"]
    )
    assert cmd.pii == frozenset(
        {"input.note", "input.owner.phone", "input.owner.email", "input.others.email"}
    )
    with pytest.raises(SpecDefinitionError, match=r"segment 'mail'"):
        define_command("crm.deal.create", input=WithPii, output=Out, pii=["input.owner.mail"])
    with pytest.raises(
        SpecDefinitionError, match=re.escape("must start with 'input.' or 'output.'")
    ):
        define_command("crm.deal.create", input=WithPii, output=Out, pii=["owner.email"])


def test_requires_validates_permissions() -> None:
    """requires() needs at least one well-formed permission."""
    assert requires("deal.write", "deal:read").permissions == ("deal.write", "deal:read")
    assert public().needs_actor is False
    with pytest.raises(SpecDefinitionError, match="at least one permission"):
        requires()
    with pytest.raises(SpecDefinitionError, match="not valid"):
        requires("deal write")


def test_event_key_and_retention_are_checked() -> None:
    """The ordering key must be a payload field; retention must be positive."""
    with pytest.raises(SpecDefinitionError, match="key 'id' is not a payload field"):
        define_event("crm.deal.created", payload=Payload, key="id")
    with pytest.raises(SpecDefinitionError, match="retention must be positive"):
        define_event("crm.deal.created", payload=Payload, retention=timedelta(0))
    with pytest.raises(SpecDefinitionError, match="severity"):
        define_event("crm.deal.created", payload=Payload, severity="loud")


def test_entities_from_fields_and_their_checks() -> None:
    """Entities accept a fields mapping; primary key and index fields must exist."""
    entity = define_entity(
        "crm.deal", fields={"id": str, "amount": (Decimal, Decimal(0))}, indexes=["amount"]
    )
    assert entity.model.model_validate({"id": "d1"}).model_dump() == {
        "id": "d1",
        "amount": Decimal(0),
    }
    assert entity.indexes == (Index(("amount",)),)
    assert entity.table_name == "crm_deal"
    with pytest.raises(SpecDefinitionError, match="primary key 'id' is not a field"):
        define_entity("crm.thing", fields={"key": str})
    with pytest.raises(SpecDefinitionError, match="index field 'missing'"):
        define_entity("crm.thing", fields={"id": str}, indexes=[("missing",)])
    with pytest.raises(SpecDefinitionError, match="must not be optional"):
        define_entity("crm.thing", fields={"id": (str | None, None)})
    with pytest.raises(SpecDefinitionError, match="exactly one of model="):
        define_entity("crm.thing")


def test_parse_key() -> None:
    """`name@version` splits into name and integer version; a bad version is an error."""
    assert parse_key("crm.deal.create@3") == ("crm.deal.create", 3)
    assert parse_key("crm.deal.create") == ("crm.deal.create", None)
    with pytest.raises(SpecDefinitionError, match="invalid version"):
        parse_key("crm.deal.create@v3")


# -- registry --------------------------------------------------------------------------------


async def handler(inp: In, ctx: HandlerCtx) -> Out:
    return Out(id=inp.name)


def test_duplicate_name_and_version_is_refused() -> None:
    """A second, different spec under the same name@version raises; the same object is fine."""
    first = define_command("crm.deal.create", input=In, output=Out)
    registry = SpecRegistry(first)
    registry.register(first)
    with pytest.raises(SpecDefinitionError, match="already registered; bump the version"):
        registry.register(
            define_command("crm.deal.create", input=In, output=Out, description="other")
        )
    registry.register(define_command("crm.deal.create", input=In, output=Out, version=2))
    assert registry.versions("crm.deal.create") == [1, 2]
    assert registry.get("crm.deal.create").version == 2
    assert registry.get("crm.deal.create", 1) is first


def test_operation_and_event_names_do_not_collide() -> None:
    """An operation and an event may not share a name."""
    registry = SpecRegistry(define_event("crm.deal.created", payload=Payload))
    with pytest.raises(SpecDefinitionError, match="already the name of an event"):
        registry.register(define_command("crm.deal.created", input=In, output=Out))


def test_unknown_operation_suggests_the_closest_name() -> None:
    """Unknown names and versions list what exists."""
    registry = SpecRegistry(define_command("crm.deal.create", input=In, output=Out))
    with pytest.raises(UnknownOperationError, match=re.escape("did you mean 'crm.deal.create'")):
        registry.get("crm.deal.creat")
    with pytest.raises(UnknownOperationError, match="registered versions: 1"):
        registry.get("crm.deal.create", 4)


def test_validate_finds_unregistered_events_and_missing_handlers() -> None:
    """emits naming an unknown event, and operations without handlers, fail validation."""
    cmd = define_command("crm.deal.create", input=In, output=Out, emits=["crm.deal.created"])
    registry = SpecRegistry(cmd)
    with pytest.raises(SpecDefinitionError, match="not a registered event"):
        registry.validate()
    registry.register(define_event("crm.deal.created", payload=Payload))
    registry.validate()
    with pytest.raises(SpecDefinitionError, match="has no handler"):
        registry.validate(require_handlers=True)
    registry.bind(cmd, handler)
    registry.validate(require_handlers=True)


def test_handler_signatures_are_checked() -> None:
    """Handlers must be async, take (input, ctx) and match the declared models."""
    cmd = define_command("crm.deal.create", input=In, output=Out)
    registry = SpecRegistry(cmd)

    def sync_handler(inp: In, ctx: HandlerCtx) -> Out:
        return Out(id="x")

    async def one_arg(inp: In) -> Out:
        return Out(id="x")

    async def wrong_input(inp: Out, ctx: HandlerCtx) -> Out:
        return Out(id="x")

    async def wrong_output(inp: In, ctx: HandlerCtx) -> In:
        return inp

    with pytest.raises(SpecDefinitionError, match="must be an async function"):
        registry.bind(cmd, sync_handler)  # type: ignore[arg-type]
    with pytest.raises(SpecDefinitionError, match="exactly two arguments"):
        registry.bind(cmd, one_arg)  # type: ignore[arg-type]
    with pytest.raises(SpecDefinitionError, match="input is annotated Out"):
        registry.bind(cmd, wrong_input)
    with pytest.raises(SpecDefinitionError, match="annotated to return In"):
        registry.bind(cmd, wrong_output)
    registry.bind(cmd, handler)
    registry.bind(cmd, handler)  # binding the same function again is harmless

    async def other(inp: In, ctx: HandlerCtx) -> Out:
        return Out(id="other")

    with pytest.raises(SpecDefinitionError, match="already has a handler"):
        registry.bind("crm.deal.create@1", other)


def test_registry_iteration_and_membership() -> None:
    """Iteration is sorted by kind then name; membership works by ref or object."""
    event = define_event("crm.deal.created", payload=Payload)
    cmd = define_command("crm.deal.create", input=In, output=Out, emits=[event])
    entity = define_entity("crm.deal", fields={"id": str})
    registry = SpecRegistry(cmd, entity)
    assert [s.name for s in registry] == ["crm.deal", "crm.deal.created", "crm.deal.create"]
    assert len(registry) == 3
    assert "crm.deal.create@1" in registry
    assert "crm.deal.create@2" not in registry
    assert event in registry
    assert registry.kinds() == ["entity", "event", "operation"]
    assert registry.get_entity("crm.deal") is entity
    with pytest.raises(SpecDefinitionError, match=re.escape("registered entity specs: crm.deal")):
        registry.get_entity("crm.contact")


@pytest.mark.parametrize(
    "define",
    [
        lambda name: define_event(name, payload=_TrailingPayload),
        lambda name: define_entity(name, fields={"id": str}),
    ],
    ids=["event", "entity"],
)
def test_a_name_with_a_trailing_newline_is_refused(define: Any) -> None:
    """`$` matches before a final newline: names are checked to the end of the string (`\\Z`)."""
    with pytest.raises(SpecDefinitionError) as info:
        define("crm.deal.created\n")
    assert info.value.details["field"] == "name"


class _TrailingPayload(BaseModel):
    id: str
