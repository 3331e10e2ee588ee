"""Pipeline stages in detail: auth defaults, contracts, events, audit, variants, middleware, sinks."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from contractspec.core import (
    REDACTED,
    Actor,
    AllowAll,
    CallContext,
    ConfigurationError,
    Decision,
    EventEnvelope,
    Executor,
    HandlerContractError,
    HandlerCtx,
    InternalError,
    Invocation,
    MemoryBackend,
    MemoryTelemetrySink,
    MemoryTrafficSink,
    PolicyDeniedError,
    Resource,
    SpecRegistry,
    SpecValidationError,
    UnknownOperationError,
    authenticated,
    define_command,
    define_entity,
    define_event,
    define_query,
    public,
    requires,
)
from contractspec.core.testing import FakeClock, SequentialIds


class Item(BaseModel):
    id: str
    name: str


class AddItem(BaseModel):
    name: str
    secret: str = ""


class Empty(BaseModel):
    pass


class Added(BaseModel):
    id: str


item_entity = define_entity("shop.item", Item)
item_added = define_event("shop.item.added", payload=Added, key="id")
ACTOR = CallContext(
    actor=Actor.user("u1", roles="clerk"),
    org_id="o1",
    request_id="req-1",
    trace_id="trace-1",
)


def build(handler: Any, **spec_kwargs: Any) -> tuple[SpecRegistry, Any]:
    spec_kwargs.setdefault("auth", public())
    spec = define_command(
        "shop.item.add", input=AddItem, output=Item, emits=[item_added], **spec_kwargs
    )
    registry = SpecRegistry(item_entity, spec)
    registry.bind(spec, handler)
    return registry, spec


async def good(inp: AddItem, ctx: HandlerCtx) -> Item:
    item = Item(id=ctx.new_id(), name=inp.name)
    await ctx.repo(item_entity).add(item)
    ctx.emit("shop.item.added", {"id": item.id})
    return item


def executor(registry: SpecRegistry, **kwargs: Any) -> Executor:
    kwargs.setdefault("clock", FakeClock())
    kwargs.setdefault("ids", SequentialIds())
    return Executor(registry, **kwargs)


async def count_items(ex: Executor, org: str = "o1") -> int:
    tx = await ex.unit_of_work.begin(readonly=True)
    try:
        return await ex.entities.repository(item_entity, tx, org).count()
    finally:
        await tx.rollback()


async def test_anonymous_callers_are_denied_unless_public() -> None:
    """authenticated() and requires() need an actor; public() does not."""
    registry, _ = build(good, auth=authenticated())
    ex = executor(registry)
    with pytest.raises(PolicyDeniedError, match="requires an authenticated actor"):
        await ex.execute("shop.item.add", {"name": "a"}, CallContext(org_id="o1"))
    registry, _ = build(good)
    assert isinstance(
        await executor(registry).execute("shop.item.add", {"name": "a"}, CallContext(org_id="o1")),
        Item,
    )


async def test_permissions_without_a_decider_are_denied() -> None:
    """Deny by default: requires() with no PolicyDecider configured never runs the handler."""
    registry, _ = build(good, auth=requires("item.write"))
    ex = executor(registry)
    with pytest.raises(PolicyDeniedError, match="no PolicyDecider is configured"):
        await ex.execute("shop.item.add", {"name": "a"}, ACTOR)
    assert await count_items(ex) == 0


async def test_async_deciders_see_the_resource_and_context() -> None:
    """Deciders may be async; they get the actor, the permission and the org-scoped resource."""
    seen: list[tuple[str, str, Resource, str | None]] = []

    class Recording:
        async def decide(
            self, subject: Actor, action: str, resource: Resource, ctx: CallContext
        ) -> Decision:
            seen.append((subject.id, action, resource, ctx.request_id))
            await asyncio.sleep(0)
            return (
                Decision.allow("ok") if action == "item.write" else Decision.deny("read only", "r1")
            )

    registry, _ = build(good, auth=requires("item.write", "item.audit", resource="item"))
    ex = executor(registry, policy=Recording())
    with pytest.raises(PolicyDeniedError) as info:
        await ex.execute("shop.item.add", {"name": "a"}, ACTOR)
    assert info.value.reason == "read only"
    assert seen == [
        ("u1", "item.write", Resource("item", None, "o1"), "req-1"),
        ("u1", "item.audit", Resource("item", None, "o1"), "req-1"),
    ]
    denial = ex.backend.audit.records[-1]  # type: ignore[attr-defined]
    assert (denial.outcome, denial.details["permission"], denial.details["matched_rule"]) == (
        "denied",
        "item.audit",
        "r1",
    )


async def test_a_decider_returning_garbage_is_a_configuration_error() -> None:
    """A decider must return a Decision."""

    class Broken:
        def decide(self, *args: Any) -> bool:
            return True

    registry, _ = build(good, auth=requires("item.write"))
    with pytest.raises(ConfigurationError, match="must return a Decision"):
        await executor(registry, policy=Broken()).execute("shop.item.add", {"name": "a"}, ACTOR)  # type: ignore[arg-type]


async def test_wrong_output_shape_is_a_contract_violation_and_rolls_back() -> None:
    """A handler returning the wrong shape raises HandlerContractError; its writes and events vanish."""

    async def wrong(inp: AddItem, ctx: HandlerCtx) -> Any:
        await good(inp, ctx)
        return {"id": 42}

    registry, _ = build(wrong)
    ex = executor(registry)
    with pytest.raises(
        HandlerContractError,
        match=re.escape(
            "the handler of shop.item.add@1 returned an invalid output: "
            "id: Input should be a valid string; name: Field required"
        ),
    ):
        await ex.execute("shop.item.add", {"name": "a"}, ACTOR)
    assert await count_items(ex) == 0
    assert ex.backend.events.events == []  # type: ignore[attr-defined]
    assert len(ex.backend.audit) == 0  # type: ignore[arg-type]


async def test_dicts_and_compatible_models_are_accepted_as_output() -> None:
    """Returning a mapping or another model with the right fields is validated into the output."""

    async def as_dict(inp: AddItem, ctx: HandlerCtx) -> Any:
        return {"id": "x1", "name": inp.name}

    registry, _ = build(as_dict)
    assert await executor(registry).execute("shop.item.add", {"name": "a"}, ACTOR) == Item(
        id="x1", name="a"
    )


async def test_undeclared_events_are_refused() -> None:
    """Emitting an event not in emits raises HandlerContractError naming the declared ones."""

    async def sneaky(inp: AddItem, ctx: HandlerCtx) -> Item:
        ctx.emit("shop.item.deleted", {"id": "x"})
        return Item(id="x", name="y")

    registry, _ = build(sneaky)
    with pytest.raises(HandlerContractError, match=re.escape("declared: shop.item.added@1")):
        await executor(registry).execute("shop.item.add", {"name": "a"}, ACTOR)


async def test_invalid_event_payload_is_a_contract_violation() -> None:
    """An event payload that does not match its spec is refused."""

    async def bad_payload(inp: AddItem, ctx: HandlerCtx) -> Item:
        ctx.emit("shop.item.added", {"identifier": "x"})
        return Item(id="x", name="y")

    registry, _ = build(bad_payload)
    with pytest.raises(
        HandlerContractError,
        match=re.escape("emitted shop.item.added@1 with an invalid payload: id: Field required"),
    ):
        await executor(registry).execute("shop.item.add", {"name": "a"}, ACTOR)


async def test_unexpected_exceptions_become_internal_errors_with_the_cause() -> None:
    """A bug in a handler surfaces as InternalError (code internal_error), cause chained."""

    async def buggy(inp: AddItem, ctx: HandlerCtx) -> Item:
        await ctx.repo(item_entity).add(Item(id="i1", name="x"))
        raise KeyError("password=hunter2")

    registry, _ = build(buggy)
    ex = executor(registry)
    with pytest.raises(InternalError) as info:
        await ex.execute("shop.item.add", {"name": "a"}, ACTOR)
    assert info.value.code == "internal_error"
    assert "hunter2" not in info.value.message
    assert isinstance(info.value.__cause__, KeyError)
    assert await count_items(ex) == 0


async def test_envelopes_carry_the_call_metadata() -> None:
    """Events get ids, time, org, actor, trace/correlation/causation ids and the ordering key."""
    registry, _ = build(good)
    ex = executor(registry)
    await ex.execute("shop.item.add", {"name": "a"}, ACTOR)
    (env,) = ex.backend.events.events  # type: ignore[attr-defined]
    assert isinstance(env, EventEnvelope)
    assert env.to_dict() == {
        "id": "id-000002",
        "name": "shop.item.added",
        "version": 1,
        "occurred_at": "2024-01-01T00:00:00+00:00",
        "payload": {"id": "id-000001"},
        "org_id": "o1",
        "actor_id": "u1",
        "actor_kind": "user",
        "trace_id": "trace-1",
        "correlation_id": "trace-1",
        "causation_id": "req-1",
        "request_id": "req-1",
        "key": "id-000001",
        "operation": "shop.item.add@1",
    }


async def test_audit_records_changes_and_redacts_pii() -> None:
    """The audit record names the target, lists the entity change and hides PII input paths."""

    class Person(BaseModel):
        id: str
        email: str

    person = define_entity("crm.person", Person, pii=["email"])
    spec = define_command("crm.person.add", input=Person, output=Person, auth=public())
    registry = SpecRegistry(person, spec)

    @registry.handler(spec)
    async def add(inp: Person, ctx: HandlerCtx) -> Person:
        return await ctx.repo(person).add(inp)

    ex = executor(registry)
    await ex.execute("crm.person.add", {"id": "p1", "email": "ada@example.com"}, ACTOR)
    (record,) = ex.backend.audit.records  # type: ignore[attr-defined]
    assert (record.action, record.outcome, record.target_type, record.target_id) == (
        "crm.person.add",
        "success",
        "crm.person",
        "p1",
    )
    assert record.changes[0].diff() == {"email": [None, REDACTED], "id": [None, "p1"]}
    assert (await ex.backend.audit.verify("o1")).ok is True  # type: ignore[attr-defined]


async def test_queries_run_read_only() -> None:
    """A query handler that writes gets HandlerContractError."""
    spec = define_query("shop.item.peek", input=Empty, output=Empty, auth=public())
    registry = SpecRegistry(item_entity, spec)

    @registry.handler(spec)
    async def peek(inp: Empty, ctx: HandlerCtx) -> Empty:
        await ctx.repo(item_entity).add(Item(id="x", name="x"))
        return Empty()

    with pytest.raises(HandlerContractError, match="read-only"):
        await executor(registry).execute("shop.item.peek", {}, ACTOR)


async def test_idempotency_keys_need_an_idempotent_command() -> None:
    """Passing a key to a command not declared idempotent is refused before it runs."""
    registry, _ = build(good)
    ex = executor(registry)
    with pytest.raises(SpecValidationError, match="not declared idempotent"):
        await ex.execute("shop.item.add", {"name": "a"}, ACTOR.replace(idempotency_key="k"))
    assert await count_items(ex) == 0


async def test_concurrent_repeats_with_one_key_run_the_handler_once() -> None:
    """Many concurrent calls with the same key: one handler run, everyone gets the same result."""
    runs = 0

    async def slow(inp: AddItem, ctx: HandlerCtx) -> Item:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.01)
        return await good(inp, ctx)

    registry, _ = build(slow, idempotent=True)
    ex = executor(registry)
    keyed = ACTOR.replace(idempotency_key="k-1")
    results = await asyncio.gather(
        *(ex.execute("shop.item.add", {"name": "a"}, keyed) for _ in range(5)),
        return_exceptions=True,
    )
    items = [r for r in results if isinstance(r, Item)]
    assert len(items) == 5, results
    assert len({i.id for i in items}) == 1
    assert await count_items(ex) == 1


async def test_versions_and_variants_select_the_handler() -> None:
    """Explicit versions win; otherwise the VariantResolver picks; otherwise the latest runs."""
    v1 = define_command("shop.item.add", input=AddItem, output=Item, auth=public())
    v2 = define_command("shop.item.add", input=AddItem, output=Item, auth=public(), version=2)
    registry = SpecRegistry(v1, v2)

    @registry.handler(v1)
    async def one(inp: AddItem, ctx: HandlerCtx) -> Item:
        return Item(id="v1", name=inp.name)

    @registry.handler(v2)
    async def two(inp: AddItem, ctx: HandlerCtx) -> Item:
        return Item(id="v2", name=inp.name)

    class PinOld:
        def resolve(self, name: str, ctx: CallContext) -> int | None:
            return 1 if ctx.actor.id == "old" else None

    telemetry = MemoryTelemetrySink()
    ex = executor(registry, variants=PinOld(), telemetry=telemetry)
    assert (await ex.execute("shop.item.add", {"name": "a"}, ACTOR)).model_dump()["id"] == "v2"
    old = CallContext(actor=Actor.user("old"))
    assert (await ex.execute("shop.item.add", {"name": "a"}, old)).model_dump()["id"] == "v1"
    assert (await ex.execute("shop.item.add", {"name": "a"}, old, version=2)).model_dump()[
        "id"
    ] == "v2"
    assert [(s.version, s.variant) for s in telemetry.samples] == [(2, None), (1, 1), (2, None)]
    with pytest.raises(UnknownOperationError, match="has no version 3"):
        await ex.execute("shop.item.add", {"name": "a"}, ACTOR, version=3)


async def test_middleware_wraps_the_handler_in_order() -> None:
    """Middleware run outermost first, see the invocation, and can change the result."""
    trail: list[str] = []

    class Tag:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __call__(self, inv: Invocation, call_next: Any) -> BaseModel:
            trail.append(f"{self.name}>{inv.spec.name}")
            out = await call_next(inv)
            trail.append(f"<{self.name}")
            return out

    registry, _ = build(good)
    ex = executor(registry, middleware=[Tag("outer"), Tag("inner")])
    await ex.execute("shop.item.add", {"name": "a"}, ACTOR)
    assert trail == ["outer>shop.item.add", "inner>shop.item.add", "<inner", "<outer"]


async def test_telemetry_and_traffic_sinks_see_every_call() -> None:
    """Successes and failures are reported with their error codes; a failing sink never fails a call."""
    telemetry = MemoryTelemetrySink()
    traffic = MemoryTrafficSink()
    registry, _ = build(good, auth=requires("item.write"))
    ex = executor(registry, telemetry=telemetry, traffic=traffic, policy=AllowAll())
    await ex.execute("shop.item.add", {"name": "a"}, ACTOR.replace(channel="http"))
    with pytest.raises(SpecValidationError):
        await ex.execute("shop.item.add", {"name": 5}, ACTOR)
    assert [(s.success, s.error_code, s.channel) for s in telemetry.samples] == [
        (True, None, "http"),
        (False, "validation_error", "api"),
    ]
    assert telemetry.samples[0].timestamp.tzinfo is not None
    assert [type(c.input).__name__ for c in traffic.calls] == ["AddItem", "dict"]
    assert traffic.calls[1].error is not None

    class Exploding:
        def record(self, sample: Any) -> None:
            raise RuntimeError("sink down")

    ok = executor(registry, telemetry=Exploding(), policy=AllowAll())
    assert isinstance(await ok.execute("shop.item.add", {"name": "a"}, ACTOR), Item)


async def test_input_forms() -> None:
    """Input may be a mapping, the model itself, another model, or JSON text."""
    registry, _ = build(good)
    ex = executor(registry)
    for raw in ({"name": "a"}, AddItem(name="a"), b'{"name": "a"}', '{"name": "a"}', Empty()):
        if isinstance(raw, Empty):
            with pytest.raises(SpecValidationError, match="name: Field required"):
                await ex.execute("shop.item.add", raw, ACTOR)
        else:
            out = await ex.execute("shop.item.add", raw, ACTOR)
            assert out.model_dump()["name"] == "a"


def test_execute_sync_runs_in_scripts_and_inside_a_running_event_loop() -> None:
    """execute_sync works from plain scripts and inside a running loop (a Jupyter kernel runs one),
    on one loop for every call; from a coroutine on that very loop it refuses with the fix."""
    registry, _ = build(good)
    ex = executor(registry)
    try:
        out = ex.execute_sync("shop.item.add", {"name": "a"}, ACTOR)
        assert out.model_dump()["name"] == "a"
        assert ex.execute_sync("shop.item.add", {"name": "b"}, ACTOR).model_dump()["name"] == "b"

        async def inside() -> str:
            return str(ex.execute_sync("shop.item.add", {"name": "c"}, ACTOR).model_dump()["name"])

        assert asyncio.run(inside()) == "c"

        loops: list[asyncio.AbstractEventLoop] = []

        async def where() -> None:
            loops.append(asyncio.get_running_loop())

        assert ex._runner is not None
        ex._runner.run(where())
        ex._runner.run(where())
        assert loops[0] is loops[1]  # one loop for every sync call of this executor

        async def on_its_own_loop() -> None:
            ex.execute_sync("shop.item.add", {"name": "d"}, ACTOR)

        with pytest.raises(ConfigurationError, match="await the async method"):
            ex._runner.run(on_its_own_loop())
    finally:
        ex.close()


async def test_execute_sync_inside_a_running_loop_keeps_sqlite_connections_valid(
    tmp_path: Path,
) -> None:
    """In a notebook cell (a running loop) sync calls on a SQLite file store and read back."""
    from contractspec.core.sql import SqlBackend, sqlite_engine

    registry, _ = build(good)
    engine = sqlite_engine(tmp_path / "sync.db")
    backend = SqlBackend(engine, registry)
    await backend.create_all()
    ex = executor(registry, backend=backend)
    try:
        first = ex.execute_sync("shop.item.add", {"name": "a"}, ACTOR)
        second = ex.execute_sync("shop.item.add", {"name": "b"}, ACTOR)
        assert {first.model_dump()["name"], second.model_dump()["name"]} == {"a", "b"}
        assert await count_items(ex) == 2
    finally:
        ex.close()
        await engine.dispose()


async def test_missing_handler_and_bad_registry() -> None:
    """Running an operation without a handler, or building an executor without a registry, fails clearly."""
    spec = define_command("shop.item.add", input=AddItem, output=Item, auth=public())
    with pytest.raises(ConfigurationError, match="has no handler"):
        await Executor(SpecRegistry(spec)).execute("shop.item.add", {"name": "a"})
    with pytest.raises(ConfigurationError, match="needs a SpecRegistry"):
        Executor({})  # type: ignore[arg-type]


async def test_jobs_need_a_job_enqueuer() -> None:
    """ctx.enqueue without a JobEnqueuer names the fix; with one, it passes the transaction."""
    seen: list[tuple[str, Any]] = []

    async def enqueuing(inp: AddItem, ctx: HandlerCtx) -> Item:
        await ctx.enqueue("email.send", {"to": inp.name})
        return Item(id="x", name=inp.name)

    registry, _ = build(enqueuing)
    with pytest.raises(ConfigurationError, match="has no JobEnqueuer"):
        await executor(registry).execute("shop.item.add", {"name": "a"}, ACTOR)

    class Jobs:
        async def enqueue(
            self, job_type: str, payload: Any, *, tx: Any = None, **options: Any
        ) -> str:
            seen.append((job_type, payload))
            return "job-1"

    await executor(registry, jobs=Jobs()).execute("shop.item.add", {"name": "a"}, ACTOR)
    assert seen == [("email.send", {"to": "a"})]


def test_memory_backend_is_the_default() -> None:
    """Without a backend the executor keeps everything in memory."""
    registry, _ = build(good)
    assert isinstance(Executor(registry).backend, MemoryBackend)


async def test_several_sinks_and_traffic_wants() -> None:
    """Telemetry and traffic accept several sinks; a sink's wants() skips successful calls only."""

    class Picky:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def wants(self, spec: Any, trace_id: str | None) -> bool:
            return trace_id == "keep"

        def record(self, call: Any) -> None:
            self.calls.append(f"{call.trace_id}:{call.error is None}:{call.actor_kind}")

    first, second = MemoryTelemetrySink(), MemoryTelemetrySink()
    picky, everything = Picky(), MemoryTrafficSink()
    registry, _ = build(good)
    ex = executor(registry, telemetry=[first, second], traffic=[picky, everything])
    await ex.execute("shop.item.add", {"name": "a"}, ACTOR.replace(trace_id="keep"))
    await ex.execute("shop.item.add", {"name": "b"}, ACTOR.replace(trace_id="drop"))
    with pytest.raises(SpecValidationError):
        await ex.execute("shop.item.add", {}, ACTOR.replace(trace_id="drop"))
    assert len(first.samples) == len(second.samples) == 3
    assert picky.calls == ["keep:True:user", "drop:False:user"]
    assert len(everything.calls) == 3
    assert everything.calls[0].actor_roles == frozenset({"clerk"})

    only = Picky()
    solo = executor(registry, traffic=only)
    await solo.execute("shop.item.add", {"name": "a"}, ACTOR.replace(trace_id="drop"))
    assert only.calls == []


async def test_beta_versions_are_not_served_by_default() -> None:
    """Without a resolver the latest stable version runs; a beta version needs an explicit pick."""
    v1 = define_command("shop.item.add", input=AddItem, output=Item, auth=public())
    v2 = define_command(
        "shop.item.add", input=AddItem, output=Item, auth=public(), version=2, stability="beta"
    )
    registry = SpecRegistry(v1, v2)

    @registry.handler(v1)
    async def one(inp: AddItem, ctx: HandlerCtx) -> Item:
        return Item(id="v1", name=inp.name)

    @registry.handler(v2)
    async def two(inp: AddItem, ctx: HandlerCtx) -> Item:
        return Item(id="v2", name=inp.name)

    ex = executor(registry)
    assert (await ex.execute("shop.item.add", {"name": "a"}, ACTOR)).model_dump()["id"] == "v1"
    assert (await ex.execute("shop.item.add", {"name": "a"}, ACTOR, version=2)).model_dump()[
        "id"
    ] == "v2"
    only_beta = SpecRegistry(v2)
    only_beta.bind(v2, two)
    assert (await executor(only_beta).execute("shop.item.add", {"name": "a"}, ACTOR)).model_dump()[
        "id"
    ] == "v2"
