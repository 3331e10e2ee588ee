"""What a handler sees: `HandlerCtx`, and the middleware protocol that wraps handlers.

Handlers are `async def handler(input: In, ctx: HandlerCtx) -> Out`. The context carries the
caller (actor, tenant, request and trace ids), the call's transaction and the executor's ports:
repositories (`ctx.repo(entity)`), events (`ctx.emit`), permissions (`ctx.authorize`), jobs
(`ctx.enqueue`), the clock and the id generator.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, runtime_checkable

from attrs import define
from pydantic import BaseModel, ValidationError

from contractspec.core._log import get_logger
from contractspec.core.context import Actor, CallContext, Resource
from contractspec.core.errors import ConfigurationError, HandlerContractError, PolicyDeniedError
from contractspec.core.pipeline.authorize import decide, denied
from contractspec.core.pipeline.plan import Plan, validation_errors
from contractspec.core.records import AuditRecord, Decision, EventEnvelope
from contractspec.core.repository import Repository, check_storable
from contractspec.core.specs import EntitySpec, EventSpec, OperationSpec

if TYPE_CHECKING:
    from contractspec.core.executor import Executor
    from contractspec.core.ports import Clock
    from contractspec.core.transactions import Transaction

__all__ = ["HandlerCtx", "Invocation", "Middleware", "NextFn"]

_log = get_logger("contractspec.core.executor")

M = TypeVar("M", bound=BaseModel)


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
        "_audit_details",
        "_audit_target",
        "_denials",
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

    def __init__(self, executor: Executor, plan: Plan, call: CallContext, tx: Transaction) -> None:
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
        self._audit_details: dict[str, Any] | None = None
        self._stamp: datetime | None = None
        #: Audit records of permissions denied inside the handler; written whatever the outcome.
        self._denials: list[AuditRecord] = []

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
            event: The event spec, its name, or `"name@version"` (required to pick one of two
                declared versions of an event).
            payload: A payload model instance or a mapping validated into one.

        Returns:
            The `EventEnvelope` that will be published.

        Raises:
            HandlerContractError: The event is not in the operation's `emits`, or the payload is
                invalid.
            SpecValidationError: A payload string holds a character no database can store (NUL, a
                lone surrogate).
        """
        plan = self._plan
        name = event.ref if isinstance(event, EventSpec) else event
        spec = plan.events.get(name)
        if spec is None:
            refs = sorted({e.ref for e in plan.events.values()})
            versions = [r for r in refs if r.partition("@")[0] == name]
            if len(versions) > 1:
                raise HandlerContractError(
                    f"{plan.spec.ref} emitted {name!r}, which it declares at several versions "
                    f"({', '.join(versions)}); pass the EventSpec or one of these refs",
                    details={"operation": plan.spec.ref, "event": name},
                )
            raise HandlerContractError(
                f"{plan.spec.ref} emitted {name!r}, which it does not declare; add it to "
                f"emits= (declared: {', '.join(refs) or 'none'})",
                details={"operation": plan.spec.ref, "event": name},
            )
        model = spec.payload
        if type(payload) is not model:
            try:
                payload = model.model_validate(
                    payload.model_dump() if isinstance(payload, BaseModel) else payload
                )
            except ValidationError as exc:
                shown, errors = validation_errors("payload", exc, spec.pii)
                raise HandlerContractError(
                    f"{plan.spec.ref} emitted {spec.ref} with an invalid payload: {shown}",
                    details={"operation": plan.spec.ref, "event": spec.ref, "errors": errors},
                ) from None
        check_storable(payload, lambda: f"event {spec.ref}")
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
            operation=plan.spec.ref,
        )
        self._events.append(envelope)
        return envelope

    async def authorize(self, action: str, resource: Resource | None = None) -> Decision:
        """Check a resource-level permission inside a handler.

        A denial is decided without touching the database and raised at once; its audit record
        is written exactly once when the call ends (with the call's writes if the handler catches
        the error and succeeds, on its own otherwise), so a denial never waits for a lock.

        Args:
            action: Permission to check, e.g. `"deal.write"`.
            resource: The resource; defaults to the operation's resource type in this org.

        Returns:
            The allowing `Decision`.

        Raises:
            PolicyDeniedError: Denied, or no `PolicyDecider` is configured.
        """
        res = resource or self._plan.resource(self.org_id)
        return await decide(self._executor, self._plan.spec, self.call, action, res, self._denials)

    def deny(self, action: str, reason: str, *, rule: str | None = None) -> PolicyDeniedError:
        """Record a refusal decided inside the handler by rules of its own (not the policy).

        Use it when the handler (or a library it calls) refuses *who* may act — self-approval,
        a missing role, someone not named — so the refusal is audited like a policy denial:
        its `denied` audit record is written exactly once when the call ends, whatever the
        outcome, never waiting on the call's own locks (as `authorize` does). Raise the
        returned error, or keep raising your own error for the caller: the record is kept
        either way. Calls by an unauthenticated actor are counted instead of audited.

        Args:
            action: What was refused, e.g. `"approval.approve"` (the record's `permission`).
            reason: Why, naming the actor and the fix (the record's and the error's reason).
            rule: A stable code for the refusing rule (`"self_approval"`), stored as the
                record's `matched_rule`.

        Returns:
            The `PolicyDeniedError` describing the refusal (not raised).
        """
        return denied(
            self._executor,
            self._plan.spec,
            self.call,
            action,
            reason,
            Decision.deny(reason, rule),
            self._denials,
        )

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

    def add_audit_details(self, key: str, value: Any) -> None:
        """Add `key: value` (JSON-able) to the `details` of this call's success audit record.

        Workflows record each state change here (`details["workflow"]`), which is what
        `history="audit"` reads back.
        """
        if self._audit_details is None:
            self._audit_details = {}
        self._audit_details[key] = value

    @property
    def events(self) -> list[EventEnvelope]:
        """Events emitted so far by this call."""
        return list(self._events)


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
