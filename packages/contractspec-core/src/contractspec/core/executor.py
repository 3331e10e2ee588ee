"""The `Executor`: runs one operation through the policy-safe pipeline.

```text
input -> plan (resolve spec + variant, validate input) -> authorize (actor, tenant, permissions)
      -> invoke (transaction or batch savepoint: [idempotency reservation] -> handler through
         middleware -> output check -> declared events (outbox) -> audit -> commit)
      -> report (telemetry / traffic) -> result
```

Each stage lives in its own module under `contractspec.core.pipeline`, in that order. Every
stage talks to a port from `contractspec.core.ports`, so other packages plug in without core
importing them. Everything a call writes, the events it emits, its audit record and its
idempotency record commit together, or not at all.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel

from contractspec.core._log import get_logger
from contractspec.core.batch import BATCH, Batch
from contractspec.core.context import Actor, CallContext
from contractspec.core.errors import (
    ConfigurationError,
    ContractSpecError,
    InternalError,
    PolicyDeniedError,
)
from contractspec.core.handler import Middleware
from contractspec.core.memory import MemoryBackend
from contractspec.core.pipeline.authorize import authorize, pending_denial, record_denials
from contractspec.core.pipeline.invoke import check_joinable, defer_denials, run
from contractspec.core.pipeline.plan import Plan, Plans
from contractspec.core.pipeline.report import fan_out_telemetry, fan_out_traffic, report
from contractspec.core.ports import (
    AuditSink,
    Clock,
    EntityStore,
    EventPublisher,
    IdempotencyStore,
    IdGenerator,
    JobEnqueuer,
    MembershipChecker,
    PolicyDecider,
    SystemClock,
    TelemetrySink,
    TrafficSink,
    UnitOfWork,
    UuidGenerator,
    VariantResolver,
)
from contractspec.core.records import AuditRecord, EventEnvelope
from contractspec.core.registry import SpecRegistry
from contractspec.core.specs import OperationSpec
from contractspec.core.sync import SyncRunner

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    from contractspec.core.otel import OtelTracing

__all__ = ["Backend", "Executor"]

_log = get_logger(__name__)

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
        policy: The `PolicyDecider`; without one, operations that `requires(...)` are denied. When
            it also knows memberships (`MembershipChecker`, as the identity `PolicyEngine` does),
            every non-public call naming a tenant is denied unless the actor is its member.
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

    Attributes:
        unauthenticated_denials: Calls denied because no actor was authenticated. They are counted
            and logged (`contractspec.denied_unauthenticated`), never written to an audit chain.

    Example:
        ```python
        executor = Executor(registry, policy=RolePermissions({"sales": {"deal.*"}}))
        deal = await executor.execute(
            "crm.deal.create", {"title": "ACME"}, CallContext(actor=Actor.user("u1", roles="sales"), org_id="o1")
        )
        ```
    """

    #: The tracer of `contractspec.core.otel.instrument` (`None`: calls are not traced).
    _tracing: OtelTracing | None = None

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
        self.telemetry: TelemetrySink | None = fan_out_telemetry(telemetry)
        self.traffic = fan_out_traffic(traffic)
        self.variants = variants
        self.jobs = jobs
        self.clock: Clock = clock or SystemClock()
        self.ids: IdGenerator = ids or UuidGenerator()
        self.middleware: tuple[Middleware, ...] = tuple(middleware)
        self.unauthenticated_denials = 0
        self._plans = Plans(registry)
        self._runner: SyncRunner | None = None

    @property
    def policy(self) -> PolicyDecider | None:
        """The `PolicyDecider` (assignable; membership checks follow the new one)."""
        return self._policy

    @policy.setter
    def policy(self, policy: PolicyDecider | None) -> None:
        self._policy = policy
        self._is_member: Callable[[Actor, str], bool | Awaitable[bool]] | None = (
            policy.is_member if isinstance(policy, MembershipChecker) else None
        )

    @property
    def traffic(self) -> TrafficSink | None:
        """The `TrafficSink` (assignable, e.g. by golden replays that capture emitted events)."""
        return self._traffic

    @traffic.setter
    def traffic(self, traffic: TrafficSink | None) -> None:
        self._traffic = traffic
        wants = getattr(traffic, "wants", None)
        self._traffic_wants: Callable[[OperationSpec, str | None], bool] | None = (
            wants if callable(wants) else None
        )
        self._reporting = self.telemetry is not None or traffic is not None

    def _plan(self, name: str, version: int | None) -> Plan:
        return self._plans.get(name, version)

    # -- public API ----------------------------------------------------------------------------

    async def execute(
        self,
        name: str,
        raw_input: Any,
        ctx: CallContext | None = None,
        *,
        version: int | None = None,
        connection: AsyncConnection | AsyncSession | None = None,
    ) -> BaseModel:
        """Run one operation and return its validated output model.

        Args:
            name: Operation name (`crm.deal.create`).
            raw_input: A mapping, the input model, or JSON text/bytes.
            ctx: The caller's context; anonymous when omitted.
            version: Run this version; by default the `VariantResolver` decides, else the latest.
            connection: Join the caller's transaction: a SQLAlchemy `AsyncConnection` or
                `AsyncSession` on the `SqlBackend`'s database. The call runs in a SAVEPOINT of
                it (a failed call leaves nothing and the caller's transaction usable) and becomes
                durable when the caller commits; denials are recorded on their own once the
                caller's transaction ends. See "Joining your transaction" in the SQL docs.

        Returns:
            An instance of the operation's output model.

        Raises:
            UnknownOperationError: No such operation or version.
            SpecValidationError: The input is invalid (the handler never runs), or a value the
                call would store cannot be stored (NUL characters, lone surrogates, ...).
            PolicyDeniedError: The caller may not run the operation (or is not a member of the
                tenant it names).
            IdempotencyConflictError: The idempotency key was used with another input.
            IdempotencyInProgressError: The key's first call did not finish in time.
            ConcurrentUpdateError: A record changed since the handler read it (no lost update).
            ConflictError: A unique key is taken.
            HandlerContractError: The handler broke the contract (wrong output, undeclared event).
            ContractSpecError: Any other error a handler or adapter raised on purpose.
            InternalError: The handler failed unexpectedly (the cause is chained).
            ConfigurationError: `connection` was given with a backend that cannot join it (the
                memory backend), inside `executor.batch()`, or reaches another database.
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
        emitted: list[EventEnvelope] | None = [] if self.traffic is not None else None
        tracing = self._tracing  # set by contractspec.core.otel.instrument
        span = tracing.start(name, call) if tracing is not None else None
        try:
            if connection is not None:
                check_joinable(self, connection)
            plan = self._plans.get(name, version)
            spec = plan.spec
            value = plan.validate_input(raw_input)
            if plan.auth_kind != "public":
                await authorize(self, plan, call)
            output = await run(self, plan, value, call, emitted, connection)
            return output
        except ContractSpecError as exc:
            error = exc
            if isinstance(exc, PolicyDeniedError):
                record = pending_denial(exc)
                if record is not None:
                    if connection is not None:
                        await defer_denials(self, connection, [record])
                    else:
                        await self._record_denials([record])
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
            if span is not None:
                span.end(spec, variant, error, output is not None)
            if spec is not None and self._reporting:
                wants = self._traffic_wants
                if (
                    started_at is not None
                    or error is not None
                    or wants is None
                    or wants(spec, call.trace_id)
                ):
                    report(
                        self,
                        spec,
                        call,
                        variant,
                        started,
                        started_at,
                        value,
                        output,
                        error,
                        tuple(emitted) if emitted else (),
                    )

    async def _record_denials(self, denials: list[AuditRecord]) -> None:
        """Denials of the authorize stage: into the current batch, else each on its own."""
        batch = BATCH.get()
        if batch is not None and batch._executor is self:
            batch._enter("a denied call")
            try:
                await record_denials(self, denials, await batch._transaction())
            finally:
                batch._busy = False
        else:
            await record_denials(self, denials, None)

    def execute_sync(
        self,
        name: str,
        raw_input: Any,
        ctx: CallContext | None = None,
        *,
        version: int | None = None,
    ) -> BaseModel:
        """`execute` for scripts, REPLs and notebooks (also inside a running event loop, as in
        Jupyter).

        All sync calls of one executor run on one event loop in a background thread
        (`contractspec.core.sync.SyncRunner`), so pooled SQL connections stay valid; `close()`
        ends it.

        Raises:
            ConfigurationError: Called from a coroutine on the executor's own sync loop;
                otherwise the same errors as `execute`.
        """
        if self._runner is None:
            self._runner = SyncRunner()
            # Stop the loop when the executor is garbage-collected, if close() was not called.
            weakref.finalize(self, self._runner.close)
        return self._runner.run(
            self.execute(name, raw_input, ctx, version=version), what="execute_sync()"
        )

    def close(self) -> None:
        """Stop the event loop used by `execute_sync` (if one was started)."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    @asynccontextmanager
    async def batch(self, *, commit_every: int = 500) -> AsyncIterator[Batch]:
        """Group commit for bulk work: calls inside share transactions of `commit_every` calls.

        Each call runs in its own savepoint and its writes reach the database before it returns,
        so a call that fails (a taken unique key, a stale version, a denial, a handler error)
        raises at that call and leaves nothing behind, while the calls around it go on. Calls that
        returned commit every `commit_every` calls and when the block ends. If the block raises,
        the calls since the last commit are rolled back. Calls must be awaited one after the
        other.

        Raises:
            ConfigurationError: `commit_every` is not a positive integer, or batches are nested.
            BatchCommitError: A group commit failed (on leaving the block or every
                `commit_every` calls); it says how many calls that returned were not stored.
        """
        if isinstance(commit_every, bool) or not isinstance(commit_every, int) or commit_every < 1:
            raise ConfigurationError(
                f"commit_every must be a positive integer, got {commit_every!r}"
            )
        if BATCH.get() is not None:
            raise ConfigurationError("batches cannot be nested; use one executor.batch() at a time")
        batch = Batch(self, commit_every)
        token = BATCH.set(batch)
        try:
            yield batch
        except BaseException:
            await batch.rollback()
            raise
        else:
            await batch.commit()
        finally:
            BATCH.reset(token)
