"""The `Executor`: runs one operation through the policy-safe pipeline.

```text
input -> resolve spec (+ variant) -> validate input -> authorize (policy) -> [idempotency]
      -> handler (inside a transaction, through middleware) -> validate output
      -> declared events (outbox) -> audit -> commit -> telemetry / traffic -> result
```

Every stage talks to a port from `contractspec.core.ports`, so other packages plug in without
core importing them. Everything a call writes, the events it emits, its audit record and its
idempotency record commit together, or not at all.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from time import perf_counter
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

import structlog
from attrs import define
from pydantic import BaseModel, ValidationError

from contractspec.core.context import Actor, CallContext, Resource
from contractspec.core.errors import (
    ConfigurationError,
    ConflictError,
    ContractSpecError,
    HandlerContractError,
    IdempotencyConflictError,
    InternalError,
    PolicyDeniedError,
    SpecValidationError,
)
from contractspec.core.memory import MemoryBackend
from contractspec.core.ports import (
    AuditSink,
    Clock,
    EntityStore,
    EventPublisher,
    IdempotencyRecord,
    IdempotencyStore,
    IdGenerator,
    JobEnqueuer,
    PolicyDecider,
    SystemClock,
    TelemetrySink,
    TrafficSink,
    UnitOfWork,
    UuidGenerator,
    VariantResolver,
)
from contractspec.core.records import (
    AuditRecord,
    CallRecord,
    Decision,
    EntityChange,
    EventEnvelope,
    TelemetrySample,
)
from contractspec.core.registry import Handler, SpecRegistry
from contractspec.core.repository import Repository
from contractspec.core.specs import EntitySpec, EventSpec, OperationSpec, Stability
from contractspec.core.transactions import Savepoint, Transaction

__all__ = [
    "Backend",
    "Batch",
    "Executor",
    "FanOutTelemetrySink",
    "FanOutTrafficSink",
    "HandlerCtx",
    "Invocation",
    "Middleware",
]

_log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)
_DEFAULT_CTX = CallContext()


@runtime_checkable
class Backend(Protocol):
    """A bundle of persistence adapters (`MemoryBackend`, `contractspec.core.sql.SqlBackend`)."""

    @property
    def unit_of_work(self) -> UnitOfWork: ...
    @property
    def entities(self) -> EntityStore: ...
    @property
    def idempotency(self) -> IdempotencyStore: ...
    @property
    def events(self) -> EventPublisher: ...
    @property
    def audit(self) -> AuditSink: ...


@define(frozen=True)
class Invocation:
    """What middleware sees: the operation, its validated input and the handler context."""

    spec: OperationSpec
    input: BaseModel
    ctx: HandlerCtx


NextFn = Callable[[Invocation], Awaitable[BaseModel]]


@runtime_checkable
class Middleware(Protocol):
    """Wraps the handler stage (inside the transaction, after validation and authorization).

    Example:
        ```python
        class Timing:
            async def __call__(self, inv: Invocation, call_next: NextFn) -> BaseModel:
                started = time.perf_counter()
                try:
                    return await call_next(inv)
                finally:
                    print(inv.spec.ref, time.perf_counter() - started)
        ```
    """

    async def __call__(self, invocation: Invocation, call_next: NextFn) -> BaseModel: ...


def _error_message(
    role: str, exc: ValidationError, pii: frozenset[str]
) -> tuple[str, list[dict[str, Any]]]:
    errors: list[dict[str, Any]] = []
    parts: list[str] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        item: dict[str, Any] = {k: v for k, v in err.items() if k != "input"}
        item["field"] = loc
        if f"{role}.{loc}" not in pii and "input" in err and _jsonable_scalar(err["input"]):
            item["input"] = err["input"]
        item["loc"] = list(err.get("loc", ()))
        if "ctx" in item:
            item["ctx"] = {
                k: (v if _jsonable_scalar(v) else str(v)) for k, v in item["ctx"].items()
            }
        errors.append(item)
        parts.append(f"{loc or '(root)'}: {err.get('msg', 'invalid')}")
    shown = "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "")
    return shown, errors


def _jsonable_scalar(value: Any) -> bool:
    return value is None or (
        isinstance(value, str | int | float | bool)
        and not (isinstance(value, str) and len(value) > 200)
    )


class _Plan:
    """Everything resolved once per operation version: spec, handler, declared events."""

    __slots__ = (
        "_resources",
        "audit",
        "auth_kind",
        "events",
        "handler",
        "idempotent",
        "is_command",
        "permissions",
        "resource_type",
        "spec",
    )

    def __init__(self, spec: OperationSpec, handler: Handler, events: dict[str, EventSpec]) -> None:
        self.spec = spec
        self.handler = handler
        self.events = events
        self.is_command = spec.is_command
        self.auth_kind = spec.auth.kind
        self.permissions = spec.auth.permissions
        self.resource_type = spec.auth.resource or spec.name
        self.audit = spec.audit
        self.idempotent = spec.idempotent and spec.is_command
        self._resources: dict[str | None, Resource] = {}

    def resource(self, org_id: str | None) -> Resource:
        """The operation-level `Resource` for an org (cached; resources are immutable)."""
        res = self._resources.get(org_id)
        if res is None:
            if len(self._resources) >= 4096:
                self._resources.clear()
            res = self._resources[org_id] = Resource(self.resource_type, None, org_id)
        return res

    def validate_input(self, raw: Any) -> BaseModel:
        model = self.spec.input
        if type(raw) is model:
            return raw  # type(raw) is the input model
        try:
            if isinstance(raw, str | bytes | bytearray):
                return model.model_validate_json(raw)
            if isinstance(raw, BaseModel):
                raw = raw.model_dump()
            return model.model_validate(raw)
        except ValidationError as exc:
            shown, errors = _error_message("input", exc, self.spec.pii)
            raise SpecValidationError(
                f"invalid input for {self.spec.ref}: {shown}",
                errors=errors,
                details={"operation": self.spec.ref},
            ) from None

    def check_output(self, out: Any) -> BaseModel:
        model = self.spec.output
        if type(out) is model:
            return out  # type(out) is the output model
        try:
            if isinstance(out, BaseModel):
                return model.model_validate(out.model_dump())
            if isinstance(out, Mapping):
                return model.model_validate(out)
        except ValidationError as exc:
            shown, errors = _error_message("output", exc, self.spec.pii)
            raise HandlerContractError(
                f"the handler of {self.spec.ref} returned an invalid output: {shown}",
                details={"operation": self.spec.ref, "errors": errors},
            ) from None
        raise HandlerContractError(
            f"the handler of {self.spec.ref} returned {type(out).__name__}; it must return "
            f"{model.__name__}",
            details={"operation": self.spec.ref},
        )


class HandlerCtx:
    """The context a handler receives as its second argument.

    Attributes:
        call: The caller's `CallContext`.
        actor: Shortcut for `call.actor`.
        org_id: Shortcut for `call.org_id` (the tenant).
        operation: The `OperationSpec` being executed.
        tx: The call's `Transaction` (adapters write through it).
    """

    __slots__ = (
        "_audit_target",
        "_events",
        "_executor",
        "_plan",
        "_repos",
        "_stamp",
        "actor",
        "call",
        "operation",
        "org_id",
        "tx",
    )

    def __init__(self, executor: Executor, plan: _Plan, call: CallContext, tx: Transaction) -> None:
        self._executor = executor
        self._plan = plan
        self.call = call
        self.actor: Actor = call.actor
        self.org_id = call.org_id
        self.operation = plan.spec
        self.tx = tx
        self._events: list[EventEnvelope] = []
        self._repos: dict[str, Repository[Any]] | None = None
        self._audit_target: tuple[str, str] | None = None
        self._stamp: datetime | None = None

    def _timestamp(self) -> datetime:
        """The call's logical time: read once from the clock, shared by its events and audit record."""
        stamp = self._stamp
        if stamp is None:
            stamp = self._stamp = self._executor.clock.now()
        return stamp

    @property
    def request_id(self) -> str | None:
        """The caller's request id."""
        return self.call.request_id

    @property
    def trace_id(self) -> str | None:
        """The caller's trace id."""
        return self.call.trace_id

    @property
    def idempotency_key(self) -> str | None:
        """The caller's idempotency key."""
        return self.call.idempotency_key

    @property
    def clock(self) -> Clock:
        """The executor's clock."""
        return self._executor.clock

    def now(self) -> datetime:
        """The current UTC time from the executor's clock (use it instead of `datetime.now`)."""
        return self._executor.clock.now()

    def new_id(self) -> str:
        """A new unique id from the executor's `IdGenerator`."""
        return self._executor.ids.new_id()

    @property
    def log(self) -> Any:
        """A structlog logger bound to the operation, org and request."""
        return _log.bind(
            operation=self._plan.spec.ref, org_id=self.org_id, request_id=self.call.request_id
        )

    def repo(self, entity: EntitySpec[M]) -> Repository[M]:
        """The repository of `entity` inside this call's transaction and tenant.

        Raises:
            TenantScopeError: The entity is tenant-scoped and the call has no `org_id`.
        """
        repos = self._repos
        if repos is None:
            repos = self._repos = {}
        repo = repos.get(entity.name)
        if repo is None:
            repo = repos[entity.name] = self._executor.entities.repository(
                entity, self.tx, self.org_id
            )
        return cast(Repository[M], repo)

    def emit(self, event: str | EventSpec, payload: BaseModel | Mapping[str, Any]) -> EventEnvelope:
        """Emit one of the operation's declared events; it is published only if the call commits.

        Args:
            event: The event spec or its name.
            payload: A payload model instance or a mapping validated into one.

        Returns:
            The `EventEnvelope` that will be published.

        Raises:
            HandlerContractError: The event is not in the operation's `emits`, or the payload is
                invalid.
        """
        name = event.name if isinstance(event, EventSpec) else event
        spec = self._plan.events.get(name)
        if spec is None or (isinstance(event, EventSpec) and event.version != spec.version):
            declared = ", ".join(e.ref for e in self._plan.events.values()) or "none"
            raise HandlerContractError(
                f"{self._plan.spec.ref} emitted {name!r}, which it does not declare; add it to "
                f"emits= (declared: {declared})",
                details={"operation": self._plan.spec.ref, "event": name},
            )
        model = spec.payload
        if type(payload) is not model:
            try:
                payload = model.model_validate(
                    payload.model_dump() if isinstance(payload, BaseModel) else payload
                )
            except ValidationError as exc:
                shown, errors = _error_message("payload", exc, spec.pii)
                raise HandlerContractError(
                    f"{self._plan.spec.ref} emitted {spec.ref} with an invalid payload: {shown}",
                    details={"operation": self._plan.spec.ref, "event": spec.ref, "errors": errors},
                ) from None
        call = self.call
        executor = self._executor
        key = None
        if spec.key is not None:
            raw_key = getattr(payload, spec.key)
            key = None if raw_key is None else str(raw_key)
        envelope = EventEnvelope(
            id=executor.ids.new_id(),
            name=spec.name,
            version=spec.version,
            occurred_at=self._timestamp(),
            payload=payload,
            org_id=call.org_id,
            actor_id=call.actor.id,
            actor_kind=call.actor.kind.value,
            trace_id=call.trace_id,
            correlation_id=call.correlation_id or call.trace_id or call.request_id,
            causation_id=call.causation_id or call.request_id,
            request_id=call.request_id,
            key=key,
            operation=self._plan.spec.ref,
        )
        self._events.append(envelope)
        return envelope

    async def authorize(self, action: str, resource: Resource | None = None) -> Decision:
        """Check a resource-level permission inside a handler.

        Args:
            action: Permission to check, e.g. `"deal.write"`.
            resource: The resource; defaults to the operation's resource type in this org.

        Returns:
            The allowing `Decision`.

        Raises:
            PolicyDeniedError: Denied, or no `PolicyDecider` is configured.
        """
        res = resource or self._plan.resource(self.org_id)
        return await self._executor._decide(self._plan.spec, self.call, action, res)

    async def enqueue(
        self, job_type: str, payload: BaseModel | dict[str, Any], **options: Any
    ) -> str:
        """Enqueue a background job inside this call's transaction (through the `JobEnqueuer` port).

        Raises:
            ConfigurationError: No `JobEnqueuer` is configured on the executor.
        """
        jobs = self._executor.jobs
        if jobs is None:
            raise ConfigurationError(
                f"{self._plan.spec.ref} enqueued {job_type!r} but the executor has no JobEnqueuer; "
                "pass Executor(jobs=...) (contractspec-jobs provides one)"
            )
        return await jobs.enqueue(job_type, payload, tx=self.tx, **options)

    def set_audit_target(self, resource_type: str, resource_id: str) -> None:
        """Name the resource this call acted on, for its audit record."""
        self._audit_target = (resource_type, str(resource_id))

    @property
    def events(self) -> list[EventEnvelope]:
        """Events emitted so far by this call."""
        return list(self._events)


class Batch:
    """Group commit: many calls share one transaction, each in its own savepoint.

    Made by `Executor.batch()`. A failed call rolls back only its own writes, events and audit
    record (the caller sees its error as usual); successful calls commit every `commit_every` calls
    and when the batch ends. Calls inside a batch must run one after the other.

    Attributes:
        calls: Successful calls so far.
        commits: Commits done so far.
    """

    __slots__ = ("_executor", "_tx", "calls", "commit_every", "commits", "pending")

    def __init__(self, executor: Executor, commit_every: int) -> None:
        self._executor = executor
        self._tx: Transaction | None = None
        self.commit_every = commit_every
        self.calls = 0
        self.pending = 0
        self.commits = 0

    async def _transaction(self) -> Transaction:
        if self._tx is None:
            self._tx = await self._executor.unit_of_work.begin()
        return self._tx

    async def _succeeded(self) -> None:
        self.calls += 1
        self.pending += 1
        if self.pending >= self.commit_every:
            await self.commit()

    async def commit(self) -> None:
        """Commit what the batch holds now; the batch goes on with a new transaction."""
        tx, self._tx = self._tx, None
        if tx is not None:
            self.pending = 0
            await tx.commit()
            self.commits += 1

    async def rollback(self) -> None:
        """Roll back the calls since the last commit."""
        tx, self._tx = self._tx, None
        self.pending = 0
        if tx is not None:
            await tx.rollback()


_BATCH: contextvars.ContextVar[Batch | None] = contextvars.ContextVar(
    "contractspec_batch", default=None
)


class Executor:
    """Runs operations of a `SpecRegistry` through the pipeline, with pluggable ports.

    Args:
        registry: The specs and their handlers.
        backend: Persistence bundle (`MemoryBackend()` by default, or
            `contractspec.core.sql.SqlBackend`); the explicit arguments below override its parts.
        unit_of_work: Overrides the backend's unit of work.
        entities: Overrides the backend's entity store.
        idempotency: Overrides the backend's idempotency store.
        events: Overrides the backend's event publisher (e.g. the bus package's).
        audit: Overrides the backend's audit sink.
        policy: The `PolicyDecider`; without one, operations that `requires(...)` are denied.
        telemetry: One `TelemetrySink` or several; each receives one `TelemetrySample` per call.
        traffic: One `TrafficSink` or several; each receives one `CallRecord` per call it wants.
        variants: Chooses the version of an operation per caller. Without it (or when it returns
            `None`) the latest *released* version runs: the highest version whose stability is
            `stable` or `deprecated`, else the highest version. Register a new version as
            `stability="beta"` (or `experimental`) to roll it out before it becomes the default.
        jobs: Lets handlers enqueue background jobs (`ctx.enqueue`).
        clock: Time source (a fake one in tests).
        ids: Id source (a deterministic one in tests).
        middleware: Wrappers around the handler stage, outermost first.
        audit_enabled: Set `False` to skip audit records entirely.

    Example:
        ```python
        executor = Executor(registry, policy=RolePermissions({"sales": {"deal.*"}}))
        deal = await executor.execute(
            "crm.deal.create", {"title": "ACME"}, CallContext(actor=Actor.user("u1", roles="sales"), org_id="o1")
        )
        ```
    """

    def __init__(
        self,
        registry: SpecRegistry,
        *,
        backend: Backend | None = None,
        unit_of_work: UnitOfWork | None = None,
        entities: EntityStore | None = None,
        idempotency: IdempotencyStore | None = None,
        events: EventPublisher | None = None,
        audit: AuditSink | None = None,
        policy: PolicyDecider | None = None,
        telemetry: TelemetrySink | Sequence[TelemetrySink] | None = None,
        traffic: TrafficSink | Sequence[TrafficSink] | None = None,
        variants: VariantResolver | None = None,
        jobs: JobEnqueuer | None = None,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
        middleware: Sequence[Middleware] = (),
        audit_enabled: bool = True,
    ) -> None:
        if not isinstance(registry, SpecRegistry):
            raise ConfigurationError(
                f"Executor needs a SpecRegistry, got {type(registry).__name__}"
            )
        base: Backend = backend if backend is not None else MemoryBackend()
        self.registry = registry
        self.backend = base
        self.unit_of_work: UnitOfWork = unit_of_work or base.unit_of_work
        self.entities: EntityStore = entities or base.entities
        self.idempotency: IdempotencyStore = idempotency or base.idempotency
        self.events: EventPublisher = events or base.events
        self.audit: AuditSink | None = (audit or base.audit) if audit_enabled else None
        self.policy = policy
        self.telemetry: TelemetrySink | None = _fan_out_telemetry(telemetry)
        self.traffic: TrafficSink | None = _fan_out_traffic(traffic)
        wants = getattr(self.traffic, "wants", None)
        self._traffic_wants: Callable[[OperationSpec, str | None], bool] | None = (
            wants if callable(wants) else None
        )
        self._reporting = self.telemetry is not None or self.traffic is not None
        self.variants = variants
        self.jobs = jobs
        self.clock: Clock = clock or SystemClock()
        self.ids: IdGenerator = ids or UuidGenerator()
        self.middleware: tuple[Middleware, ...] = tuple(middleware)
        self._plans: dict[tuple[str, int | None], _Plan] = {}
        self._registry_generation = -1
        self._runner: asyncio.Runner | None = None

    # -- plans ---------------------------------------------------------------------------------

    def _plan(self, name: str, version: int | None) -> _Plan:
        generation = self.registry.generation
        if generation != self._registry_generation:
            self._plans.clear()
            self._registry_generation = generation
        plan = self._plans.get((name, version))
        if plan is None:
            spec = self.registry.get(name, version) if version is not None else self._default(name)
            handler = self.registry.handler_for(spec)
            if handler is None:
                raise ConfigurationError(
                    f"{spec.ref} has no handler; bind one with @registry.handler({spec.name!r})",
                    details={"operation": spec.ref},
                )
            events = {}
            for ref in spec.emits:
                event = self.registry.resolve_event(spec, ref)
                events[event.name] = event
            plan = _Plan(spec, handler, events)
            self._plans[(name, version)] = plan
        return plan

    def _default(self, name: str) -> OperationSpec:
        """The latest released version: the highest `stable`/`deprecated` one, else the highest."""
        latest = self.registry.get(name)
        for version in reversed(self.registry.versions(name)):
            spec = self.registry.get(name, version)
            if spec.stability in (Stability.STABLE, Stability.DEPRECATED):
                return spec
        return latest

    # -- public API ----------------------------------------------------------------------------

    async def execute(
        self,
        name: str,
        raw_input: Any,
        ctx: CallContext | None = None,
        *,
        version: int | None = None,
    ) -> BaseModel:
        """Run one operation and return its validated output model.

        Args:
            name: Operation name (`crm.deal.create`).
            raw_input: A mapping, the input model, or JSON text/bytes.
            ctx: The caller's context; anonymous when omitted.
            version: Run this version; by default the `VariantResolver` decides, else the latest.

        Returns:
            An instance of the operation's output model.

        Raises:
            UnknownOperationError: No such operation or version.
            SpecValidationError: The input is invalid (the handler never runs).
            PolicyDeniedError: The caller may not run the operation.
            IdempotencyConflictError: The idempotency key was used with another input.
            HandlerContractError: The handler broke the contract (wrong output, undeclared event).
            ContractSpecError: Any other error a handler or adapter raised on purpose.
            InternalError: The handler failed unexpectedly (the cause is chained).
        """
        call = ctx if ctx is not None else _DEFAULT_CTX
        started = perf_counter()
        # Telemetry is stamped when the call starts; traffic records only when a sink wants them.
        started_at = self.clock.now() if self.telemetry is not None else None
        variant: int | None = None
        if version is None and self.variants is not None:
            variant = version = self.variants.resolve(name, call)
        spec: OperationSpec | None = None
        value: Any = raw_input
        output: BaseModel | None = None
        error: ContractSpecError | None = None
        try:
            plan = self._plan(name, version)
            spec = plan.spec
            value = plan.validate_input(raw_input)
            if plan.auth_kind != "public":
                await self._authorize(plan, call)
            output = await self._run(plan, value, call)
            return output
        except ContractSpecError as exc:
            error = exc
            raise
        except Exception as exc:
            error = InternalError(
                f"{spec.ref if spec else name} failed unexpectedly ({type(exc).__name__}); "
                "see the chained exception and the logs",
                details={"operation": spec.ref if spec else name, "exception": type(exc).__name__},
            )
            _log.error(
                "contractspec.handler_failed",
                operation=spec.ref if spec else name,
                org_id=call.org_id,
                request_id=call.request_id,
                exc_info=exc,
            )
            raise error from exc
        finally:
            if spec is not None and self._reporting:
                wants = self._traffic_wants
                if (
                    started_at is not None
                    or error is not None
                    or wants is None
                    or wants(spec, call.trace_id)
                ):
                    self._report(spec, call, variant, started, started_at, value, output, error)

    def execute_sync(
        self,
        name: str,
        raw_input: Any,
        ctx: CallContext | None = None,
        *,
        version: int | None = None,
    ) -> BaseModel:
        """`execute` for scripts and notebooks without a running event loop.

        All sync calls of one executor share one event loop (so pooled SQL connections stay
        valid); `close()` ends it.

        Raises:
            ConfigurationError: Called from inside a running event loop (use `await execute`);
                otherwise the same errors as `execute`.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ConfigurationError(
                "execute_sync() was called inside a running event loop; use await executor.execute()"
            )
        if self._runner is None:
            self._runner = asyncio.Runner()
            # Close the loop when the executor is garbage-collected, if close() was not called.
            weakref.finalize(self, self._runner.close)
        return self._runner.run(self.execute(name, raw_input, ctx, version=version))

    def close(self) -> None:
        """Close the event loop used by `execute_sync` (if one was started)."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    @asynccontextmanager
    async def batch(self, *, commit_every: int = 500) -> AsyncIterator[Batch]:
        """Group commit for bulk work: calls inside share transactions of `commit_every` calls.

        Each call still runs in its own savepoint, so a failed call leaves nothing behind while the
        calls around it go on; successful calls are committed every `commit_every` calls and when
        the block ends. If the block raises, calls since the last commit are rolled back.

        Raises:
            ConfigurationError: `commit_every` is not a positive integer, or batches are nested.
        """
        if isinstance(commit_every, bool) or not isinstance(commit_every, int) or commit_every < 1:
            raise ConfigurationError(
                f"commit_every must be a positive integer, got {commit_every!r}"
            )
        if _BATCH.get() is not None:
            raise ConfigurationError("batches cannot be nested; use one executor.batch() at a time")
        batch = Batch(self, commit_every)
        token = _BATCH.set(batch)
        try:
            yield batch
        except BaseException:
            await batch.rollback()
            raise
        else:
            await batch.commit()
        finally:
            _BATCH.reset(token)

    # -- stages --------------------------------------------------------------------------------

    async def _authorize(self, plan: _Plan, call: CallContext) -> None:
        spec = plan.spec
        if call.actor.is_anonymous:
            raise await self._denied(
                spec,
                call,
                spec.auth.permissions[0] if spec.auth.permissions else "authenticate",
                f"{spec.ref} requires an authenticated actor; pass CallContext(actor=...)",
            )
        if plan.auth_kind == "authenticated":
            return
        resource = plan.resource(call.org_id)
        policy = self.policy
        for permission in plan.permissions:
            # Fast path: a synchronous decider that allows needs no extra coroutine.
            if policy is not None:
                decision = policy.decide(call.actor, permission, resource, call)
                if type(decision) is Decision and decision.allowed:
                    continue
                if type(decision) is not Decision and inspect.isawaitable(decision):
                    decision = await decision
                await self._check_decision(spec, call, permission, decision)
            else:
                await self._decide(spec, call, permission, resource)

    async def _decide(
        self, spec: OperationSpec, call: CallContext, action: str, resource: Resource
    ) -> Decision:
        policy = self.policy
        if policy is None:
            raise await self._denied(
                spec,
                call,
                action,
                f"{spec.ref} requires {action!r} and no PolicyDecider is configured "
                "(deny by default); pass Executor(policy=...)",
            )
        decision: Any = policy.decide(call.actor, action, resource, call)
        if type(decision) is not Decision and inspect.isawaitable(decision):
            decision = await decision
        return await self._check_decision(spec, call, action, decision)

    async def _check_decision(
        self, spec: OperationSpec, call: CallContext, action: str, decision: Any
    ) -> Decision:
        if not isinstance(decision, Decision):
            raise ConfigurationError(
                f"the PolicyDecider returned {type(decision).__name__}; it must return a Decision"
            )
        if not decision.allowed:
            raise await self._denied(
                spec,
                call,
                action,
                f"{call.actor.kind.value} {call.actor.id!r} may not {action!r} on {spec.ref}: "
                f"{decision.reason}",
                decision,
            )
        return decision

    async def _denied(
        self,
        spec: OperationSpec,
        call: CallContext,
        action: str,
        message: str,
        decision: Decision | None = None,
    ) -> PolicyDeniedError:
        reason = decision.reason if decision else message
        if self.audit is not None:
            await self.audit.record(
                AuditRecord(
                    id=self.ids.new_id(),
                    occurred_at=self.clock.now(),
                    action=spec.name,
                    outcome="denied",
                    org_id=call.org_id,
                    actor_id=call.actor.id,
                    actor_kind=call.actor.kind.value,
                    operation_version=spec.version,
                    request_id=call.request_id,
                    trace_id=call.trace_id,
                    details={
                        "permission": action,
                        "reason": reason,
                        "matched_rule": decision.matched_rule if decision else None,
                    },
                ),
                None,
            )
        return PolicyDeniedError(
            message, reason=reason, action=action, details={"operation": spec.ref}
        )

    async def _run(self, plan: _Plan, value: BaseModel, call: CallContext) -> BaseModel:
        key = call.idempotency_key if plan.is_command else None
        if key is not None and not plan.idempotent:
            raise SpecValidationError(
                f"{plan.spec.ref} is not declared idempotent, so it cannot take an idempotency key; "
                "declare it with idempotent=True or drop the key",
                details={"operation": plan.spec.ref, "field": "idempotency_key"},
            )
        batch = _BATCH.get()
        if batch is not None and batch._executor is self:
            return await self._run_in_batch(batch, plan, value, call, key)
        tx = await self.unit_of_work.begin(readonly=not plan.is_command)
        try:
            if key is not None:
                replay = await self._replay(tx, plan, value, call, key)
                if replay is not None:
                    await tx.rollback()
                    return replay
            output = await self._invoke(plan, value, call, tx, 0, key)
            if plan.is_command:
                await tx.commit()
            else:
                await tx.rollback()
            return output
        except ConflictError:
            await tx.rollback()
            if key is None:
                raise
            # A concurrent call with the same key committed first: answer like a repeat.
            tx = await self.unit_of_work.begin(readonly=True)
            try:
                replay = await self._replay(tx, plan, value, call, key)
            finally:
                await tx.rollback()
            if replay is None:
                raise
            return replay
        except BaseException:
            await tx.rollback()
            raise

    async def _run_in_batch(
        self, batch: Batch, plan: _Plan, value: BaseModel, call: CallContext, key: str | None
    ) -> BaseModel:
        tx = await batch._transaction()
        savepoint: Savepoint = await tx.savepoint()
        tx.readonly = not plan.is_command
        try:
            if key is not None:
                replay = await self._replay(tx, plan, value, call, key)
                if replay is not None:
                    await savepoint.release()
                    return replay
            output = await self._invoke(plan, value, call, tx, len(tx.changes), key)
            await savepoint.release()
        except BaseException:
            await savepoint.rollback()
            raise
        finally:
            tx.readonly = False
        await batch._succeeded()
        return output

    async def _replay(
        self, tx: Transaction, plan: _Plan, value: BaseModel, call: CallContext, key: str
    ) -> BaseModel | None:
        record = await self.idempotency.get(tx, call.org_id, plan.spec.name, key)
        if record is None:
            return None
        if record.fingerprint != _fingerprint(plan.spec, value):
            raise IdempotencyConflictError(
                f"idempotency key {key!r} was already used for {plan.spec.name} with a different "
                "input; use a new key for a new request",
                details={"operation": plan.spec.ref, "field": "idempotency_key"},
            )
        return plan.spec.output.model_validate(record.output)

    async def _invoke(
        self,
        plan: _Plan,
        value: BaseModel,
        call: CallContext,
        tx: Transaction,
        change_mark: int,
        key: str | None,
    ) -> BaseModel:
        hctx = HandlerCtx(self, plan, call, tx)
        if self.middleware:
            output = await self._through_middleware(plan, Invocation(plan.spec, value, hctx))
        else:
            output = await plan.handler(value, hctx)
        output = plan.check_output(output)
        if hctx._events:
            await self.events.publish(hctx._events, tx)
        if plan.audit and self.audit is not None:
            await self.audit.record(
                self._audit_record(plan, call, hctx, tx.changes[change_mark:]), tx
            )
        if key is not None:
            await self.idempotency.put(
                tx,
                IdempotencyRecord(
                    org_id=call.org_id,
                    operation=plan.spec.name,
                    key=key,
                    fingerprint=_fingerprint(plan.spec, value),
                    output=output.model_dump(mode="json"),
                    created_at=self.clock.now(),
                ),
            )
        return output

    async def _through_middleware(self, plan: _Plan, invocation: Invocation) -> BaseModel:
        handler = plan.handler

        async def innermost(inv: Invocation) -> BaseModel:
            return await handler(inv.input, inv.ctx)

        call_next: NextFn = innermost
        for mw in reversed(self.middleware):
            call_next = _wrap(mw, call_next)
        return await call_next(invocation)

    def _audit_record(
        self, plan: _Plan, call: CallContext, hctx: HandlerCtx, changes: list[EntityChange]
    ) -> AuditRecord:
        target = hctx._audit_target
        if target is None and changes:
            target = (changes[0].entity, changes[0].entity_id)
        return AuditRecord(
            id=self.ids.new_id(),
            occurred_at=hctx._timestamp(),
            action=plan.spec.name,
            outcome="success",
            org_id=call.org_id,
            actor_id=call.actor.id,
            actor_kind=call.actor.kind.value,
            operation_version=plan.spec.version,
            target_type=target[0] if target else None,
            target_id=target[1] if target else None,
            changes=tuple(changes),
            request_id=call.request_id,
            trace_id=call.trace_id,
            details={"events": [e.name for e in hctx._events]} if hctx._events else {},
        )

    def _report(
        self,
        spec: OperationSpec,
        call: CallContext,
        variant: int | None,
        started: float,
        started_at: datetime | None,
        value: Any,
        output: BaseModel | None,
        error: ContractSpecError | None,
    ) -> None:
        duration_ms = (perf_counter() - started) * 1000.0
        if started_at is None:
            started_at = self.clock.now() - timedelta(milliseconds=duration_ms)
        try:
            if self.telemetry is not None:
                size = call.attributes.get("payload_size")
                self.telemetry.record(
                    TelemetrySample(
                        operation=spec.name,
                        version=spec.version,
                        variant=variant,
                        org_id=call.org_id,
                        actor_id=call.actor.id,
                        channel=call.channel,
                        duration_ms=duration_ms,
                        success=error is None,
                        error_code=error.code if error is not None else None,
                        payload_size=size if isinstance(size, int) else None,
                        trace_id=call.trace_id,
                        timestamp=started_at,
                    )
                )
            if self.traffic is not None and (
                error is not None
                or self._traffic_wants is None
                or self._traffic_wants(spec, call.trace_id)
            ):
                self.traffic.record(
                    CallRecord(
                        spec=spec,
                        input=value,
                        output=output,
                        error=error,
                        org_id=call.org_id,
                        actor_id=call.actor.id,
                        trace_id=call.trace_id,
                        request_id=call.request_id,
                        channel=call.channel,
                        actor_kind=call.actor.kind.value,
                        actor_roles=call.actor.roles,
                        started_at=started_at,
                        duration_ms=duration_ms,
                        variant=variant,
                    )
                )
        except Exception:  # sinks must never fail a call
            _log.exception("contractspec.sink_failed", operation=spec.ref)


class FanOutTelemetrySink:
    """A `TelemetrySink` handing each sample to several sinks, in order.

    One sink that raises is logged and skipped; the others still get the sample.
    `Executor(telemetry=[a, b])` builds one for you.
    """

    __slots__ = ("sinks",)

    def __init__(self, *sinks: TelemetrySink) -> None:
        self.sinks: tuple[TelemetrySink, ...] = sinks

    def record(self, sample: TelemetrySample) -> None:
        """Hand `sample` to every sink."""
        for sink in self.sinks:
            try:
                sink.record(sample)
            except Exception:
                _log.exception("contractspec.sink_failed", sink=repr(sink))


class FanOutTrafficSink:
    """A `TrafficSink` handing each call record to the sinks that want it, in order.

    Its `wants()` is true when any sink wants the call; failed calls go to every sink.
    `Executor(traffic=[a, b])` builds one for you.
    """

    __slots__ = ("_wants", "sinks")

    def __init__(self, *sinks: TrafficSink) -> None:
        self.sinks: tuple[TrafficSink, ...] = sinks
        self._wants = [getattr(s, "wants", None) for s in self.sinks]

    def wants(self, spec: OperationSpec, trace_id: str | None) -> bool:
        """Whether any sink wants a successful call of `spec` with this trace id."""
        return any(w is None or w(spec, trace_id) for w in self._wants)

    def record(self, record: CallRecord) -> None:
        """Hand `record` to every sink that wants it."""
        for sink, wants in zip(self.sinks, self._wants, strict=True):
            try:
                if record.error is not None or wants is None or wants(record.spec, record.trace_id):
                    sink.record(record)
            except Exception:
                _log.exception("contractspec.sink_failed", sink=repr(sink))


def _fan_out_telemetry(
    sinks: TelemetrySink | Sequence[TelemetrySink] | None,
) -> TelemetrySink | None:
    if sinks is None or not isinstance(sinks, Sequence):
        return sinks
    items = list(sinks)
    if not items:
        return None
    return items[0] if len(items) == 1 else FanOutTelemetrySink(*items)


def _fan_out_traffic(sinks: TrafficSink | Sequence[TrafficSink] | None) -> TrafficSink | None:
    if sinks is None or not isinstance(sinks, Sequence):
        return sinks
    items = list(sinks)
    if not items:
        return None
    return items[0] if len(items) == 1 else FanOutTrafficSink(*items)


def _wrap(mw: Middleware, call_next: NextFn) -> NextFn:
    async def step(inv: Invocation) -> BaseModel:
        return await mw(inv, call_next)

    return step


def _fingerprint(spec: OperationSpec, value: BaseModel) -> str:
    digest = hashlib.sha256(f"{spec.name}@{spec.version}\n".encode())
    digest.update(value.model_dump_json().encode())
    return digest.hexdigest()
