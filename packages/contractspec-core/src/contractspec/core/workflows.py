"""Workflows: named, versioned state machines whose transitions run as operations.

A workflow is sugar over what the runtime already guarantees. Registering a `WorkflowSpec` in a
`SpecRegistry` derives ordinary operations with built-in handlers, so every transition goes
through the executor (validation, policy, tenant, idempotency, transaction, outbox, audit):

| operation | kind | what it does |
|---|---|---|
| `<wf>.start` | command | create an instance in the initial state |
| `<wf>.<transition>` | command | fire a transition (input: `instance_id`, optional `expected_seq`, `comment`, `input`) |
| `<wf>.<transition>.approve` / `.reject` | command | approval steps of a transition declared with `approvals=` |
| `<wf>.get` | query | one instance |
| `<wf>.history` | query | its history, paginated by sequence number |
| `<wf>.available` | query | the transitions the calling actor may fire now |
| `<wf>.comment` | command | add a comment to the history (no state change) |
| `<wf>.timer` | command | fire a due timer (system actors only; run by the jobs package's worker) |
| `<wf>.migrate` | command | move instances of an older version to this one (declared state mapping) |

Instances, history steps and approvals are tenant-scoped entities (`cs.workflow.instance`,
`cs.workflow.step`, `cs.workflow.approval`), so the memory, SQLite and PostgreSQL stores hold
them, and the record version makes concurrent transitions of one instance have exactly one winner
(the others get a `ConflictError`).
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias

import pydantic
from attrs import define, field
from pydantic import BaseModel, Field

from contractspec.core.approvals import (
    ApprovalCase,
    ApprovalDecider,
    ApprovalOutcome,
    ApprovalRequirement,
    ApprovalRules,
    ApprovalVote,
    RefusalCode,
)
from contractspec.core.context import Actor, ActorKind, CallContext, Resource
from contractspec.core.errors import (
    ConfigurationError,
    ConflictError,
    HandlerContractError,
    NotFoundError,
    SpecDefinitionError,
    SpecValidationError,
)
from contractspec.core.pipeline.authorize import denied
from contractspec.core.records import Decision, canonical_json
from contractspec.core.specs import (
    _DOTTED_NAME,
    AuthRequirement,
    EmitsItem,
    EntitySpec,
    EventRef,
    EventSpec,
    Index,
    OperationSpec,
    _check_name,
    _check_reserved,
    _check_version,
    _event_refs,
    _tuple_of_str,
    authenticated,
    define_command,
    define_entity,
    define_event,
    define_query,
    requires,
)

if TYPE_CHECKING:
    from contractspec.core.executor import Executor
    from contractspec.core.handler import HandlerCtx
    from contractspec.core.registry import SpecRegistry

__all__ = [
    "APPROVAL_ENTITY",
    "INSTANCE_ENTITY",
    "STEP_ENTITY",
    "Approvals",
    "Timer",
    "Transition",
    "TransitionHook",
    "WorkflowApproval",
    "WorkflowApprovalExpiredError",
    "WorkflowChange",
    "WorkflowGuardError",
    "WorkflowInstance",
    "WorkflowSpec",
    "WorkflowStateError",
    "WorkflowStep",
    "WorkflowTimerFire",
    "define_workflow",
    "fire_transition",
    "may_call",
    "move_record",
    "start_instance",
    "system_call",
    "timer",
    "timer_job_type",
    "transition",
    "workflow_ir",
]

_STATE: Final = re.compile(r"^[a-z][a-z0-9_]*\Z")
#: Transition names taken by the derived operations and events of every workflow.
RESERVED_TRANSITIONS: Final = frozenset(
    {
        "start",
        "get",
        "history",
        "available",
        "comment",
        "migrate",
        "timer",
        "transitioned",
        "escalated",
    }
)

_DEFAULT_RULES: Final = ApprovalRules()

Guard: TypeAlias = Callable[[Any, Any], Any]
"""`guard(instance, input) -> bool | str | None` (or awaitable): `True`/`None` allow, `False` or a
reason string refuse."""


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class WorkflowStateError(ConflictError):
    """The instance is not in a state the transition leaves from (or not at `expected_seq`).

    A concurrent transition that won the race is the usual cause; read the instance again.
    """


class WorkflowGuardError(ConflictError):
    """The transition's guard refused the instance and input; the message carries its reason."""


class WorkflowApprovalExpiredError(WorkflowStateError):
    """The approval step's `expires_after` has passed for this state entry: decisions are refused.

    The step's `on_expiry` timer (if declared) moves the instance on; otherwise fire another
    transition out of the state.
    """

    code = "approval_expired"


# --------------------------------------------------------------------------------------------
# Stored models (internal entities) and public outputs
# --------------------------------------------------------------------------------------------


class WorkflowInstance(BaseModel):
    """One workflow instance (tenant data).

    Attributes:
        id: Instance id.
        workflow: Workflow name.
        version: Workflow version the instance follows.
        state: Current state.
        data: The subject data given at start (validated by the workflow's `subject` model).
        seq: Number of history steps so far (1 after start); pass it as `expected_seq`.
        entry_seq: The `seq` at which the current state was entered (timers key on it).
        created_by: Id of the actor who started the instance.
        entered_by: Id of the actor whose step entered the current state (the requester of an
            approval step that leaves it).
        created_at, updated_at: UTC timestamps.
    """

    id: str
    workflow: str
    version: int
    state: str
    data: dict[str, Any] = Field(default_factory=dict)
    seq: int = 1
    entry_seq: int = 1
    created_by: str | None = None
    entered_by: str | None = None
    created_at: datetime
    updated_at: datetime


class WorkflowStep(BaseModel):
    """One history step of an instance: who moved it from where to where, when, with what.

    Attributes:
        kind: `start`, `transition`, `timer`, `approval` (quorum reached), `comment` (no state
            change) or `migrate`.
        transition: The transition's name (`None` for start and migrate).
        from_state: State before the step (`None` for start).
        to_state: State after the step.
        input: The transition's input (approvers for approval steps; mapping for migrations).
    """

    id: str
    instance_id: str
    seq: int
    workflow: str
    version: int
    kind: str
    transition: str | None = None
    from_state: str | None = None
    to_state: str
    actor_id: str | None = None
    actor_kind: str
    at: datetime
    input: dict[str, Any] = Field(default_factory=dict)
    comment: str | None = None


class WorkflowApproval(BaseModel):
    """One approver's decision (`approve` or `reject`) on a transition, for one state entry.

    `input_hash` (SHA-256 of the canonical JSON input) binds approvals to one exact input.
    """

    id: str
    instance_id: str
    transition: str
    entry_seq: int
    approver_id: str
    decision: str
    at: datetime
    input_hash: str = ""
    comment: str | None = None


INSTANCE_ENTITY: Final = define_entity(
    "cs.workflow.instance",
    WorkflowInstance,
    indexes=[("workflow", "version", "state")],
    description="Workflow instances (contractspec.core.workflows).",
    _internal=True,
)
STEP_ENTITY: Final = define_entity(
    "cs.workflow.step",
    WorkflowStep,
    indexes=[Index(("instance_id", "seq"), unique=True)],
    description="Workflow history steps (contractspec.core.workflows).",
    _internal=True,
)
APPROVAL_ENTITY: Final = define_entity(
    "cs.workflow.approval",
    WorkflowApproval,
    indexes=[Index(("instance_id", "transition", "entry_seq", "approver_id"), unique=True)],
    description="Workflow approval decisions (contractspec.core.workflows).",
    _internal=True,
)


class Transitioned(BaseModel):
    """Payload of `<wf>.transitioned`, emitted by every start, transition, timer and migration."""

    instance_id: str
    workflow: str
    version: int
    transition: str | None
    from_state: str | None
    to_state: str
    actor_id: str | None
    comment: str | None = None


class Escalated(BaseModel):
    """Payload of `<wf>.escalated`, emitted when an escalation timer falls due."""

    instance_id: str
    workflow: str
    state: str
    timer: str


class InstanceRef(BaseModel):
    """Input of `<wf>.get` and `<wf>.available`."""

    instance_id: str


class CommentInput(BaseModel):
    """Input of `<wf>.comment`."""

    instance_id: str
    comment: str = Field(min_length=1, max_length=10_000)
    expected_seq: int | None = None


class HistoryQuery(BaseModel):
    """Input of `<wf>.history`: steps after the `after` sequence number (the cursor)."""

    instance_id: str
    limit: int = Field(50, ge=1, le=500)
    after: int | None = Field(None, ge=0)


class HistoryPage(BaseModel):
    """One page of history, oldest first; `next_cursor` feeds `after` (`None`: last page)."""

    items: list[WorkflowStep]
    next_cursor: int | None = None


class AvailableTransition(BaseModel):
    """A transition the actor may fire now (approval steps: may approve or reject now).

    Attributes:
        needs_input: `True` when the transition's guard could not be judged yet: its input has
            required fields the caller has not given, so the guard will decide when the
            transition is fired (or approved) with that input. `False`: every check, the
            guard included, passed.
        approvals_expire_at: When the approval step stops accepting decisions (UTC), or `None`.
    """

    name: str
    target: str
    operation: str
    input_schema: dict[str, Any] | None = None
    approvals_required: int = 0
    approvals_given: int = 0
    needs_input: bool = False
    approvals_expire_at: datetime | None = None


class Available(BaseModel):
    """Output of `<wf>.available`."""

    instance_id: str
    state: str
    seq: int
    transitions: list[AvailableTransition]


class ApprovalResult(BaseModel):
    """Output of `.approve` / `.reject`: the instance, approvals so far, whether it fired."""

    instance: WorkflowInstance
    approvals: int
    required: int
    fired: bool
    rejected: bool


class WorkflowTimerFire(BaseModel):
    """Input of `<wf>.timer` and payload of the timer job: which timer of which state entry."""

    workflow: str
    instance_id: str
    entry_seq: int
    timer: str
    org_id: str | None = None


class TimerResult(BaseModel):
    """Output of `<wf>.timer`: whether the timer fired, and why not when it did not."""

    fired: bool
    reason: str = ""
    instance: WorkflowInstance | None = None


class MigrateInput(BaseModel):
    """Input of `<wf>.migrate`: move up to `limit` instances of `from_version`."""

    from_version: int = Field(ge=1)
    limit: int = Field(500, ge=1, le=10_000)
    comment: str | None = None


class MigrateResult(BaseModel):
    """Output of `<wf>.migrate`: instances moved, and how many of `from_version` remain."""

    migrated: int
    remaining: int


# --------------------------------------------------------------------------------------------
# Spec objects
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class Approvals:
    """An approval step: the transition fires once `count` distinct approvers approved.

    The rules (no self-approval, roles, one decision per approver, final rejection, expiry,
    approvals bound to one input) are `contractspec.core.approvals.ApprovalRules`, the same rules
    `contractspec-agent`'s `ApprovalWorkflow` applies; pass `decider=` to plug your own
    `ApprovalDecider`.

    Attributes:
        count: Distinct approvals needed (>= 1).
        roles: The approver must hold one of these roles (`Actor.roles`); empty: any role.
        allow_requester: Let the instance's creator (and whoever moved it into the state) approve
            too (default: no self-approval).
        expires_after: Decisions are refused (`WorkflowApprovalExpiredError`) from this long
            after the instance entered the state; `None`: no expiry.
        on_expiry: A transition leaving the same state(s), without input or approvals, that a
            timer fires when the step expires (`define_workflow` adds the timer, named
            `<state>_<transition>_expiry`; it needs the jobs port like any timer). Needs
            `expires_after`.
        decider: The `ApprovalDecider` asked about each decision (default `ApprovalRules()`).
    """

    count: int = 1
    roles: tuple[str, ...] = field(default=(), converter=_tuple_of_str)
    allow_requester: bool = False
    expires_after: timedelta | None = None
    on_expiry: str | None = None
    decider: ApprovalDecider | None = field(default=None, eq=False)

    @property
    def requirement(self) -> ApprovalRequirement:
        """The step as the approval rules see it."""
        return ApprovalRequirement(
            count=self.count,
            roles=self.roles,
            allow_requester=self.allow_requester,
            expires_after=self.expires_after,
        )

    @property
    def rules(self) -> ApprovalDecider:
        """`decider`, or the default `ApprovalRules()`."""
        return self.decider if self.decider is not None else _DEFAULT_RULES


@define(frozen=True)
class Transition:
    """A named move from one of `sources` to `target` (made by `transition()`).

    Attributes:
        name: Lowercase identifier; the derived command is `<workflow>.<name>`.
        sources: States it leaves from.
        target: State it enters.
        input: pydantic model of its input, or `None`.
        auth: What the caller needs, as for operations.
        guard: `guard(instance, input) -> bool | str | None`, or `None`.
        emits: Events emitted besides `<workflow>.transitioned`.
        approvals: Set for approval steps.
        description: Reference-doc paragraph.
    """

    name: str
    sources: tuple[str, ...]
    target: str
    input: type[BaseModel] | None = None
    auth: AuthRequirement = field(factory=authenticated)
    guard: Guard | None = field(default=None, eq=False)
    emits: tuple[EventSpec | EventRef, ...] = ()
    approvals: Approvals | None = None
    description: str = ""

    @property
    def guard_name(self) -> str | None:
        """The guard's qualified name (for the IR and docs), or `None`."""
        if self.guard is None:
            return None
        return str(getattr(self.guard, "__qualname__", type(self.guard).__name__))


@define(frozen=True, slots=True)
class WorkflowChange:
    """What an `on_transition` hook hears: one state change of one instance, as just written.

    Attributes:
        workflow: The workflow.
        kind: `start`, `transition`, `timer`, `approval` (quorum reached) or `migrate`.
        instance: The instance after the change (already staged in the call's transaction).
        from_state: The state before (`None` for `start`).
        to_state: The state entered.
        transition: The transition fired (`None` for `start` and `migrate`).
        input: The transition's validated input model, or `None`.
        comment: The caller's comment, or `None`.
        record: For workflows on an entity (`define_workflow(entity=...)`): the app's record —
            as read (before the move) when `set_fields` sees it, as written (after the move)
            when `on_transition` sees it; `None` for instance workflows.

    For workflows on an entity, `instance` (the record seen as a `WorkflowInstance`) is built on
    first read: a hook that does not read it costs no view per move.
    """

    workflow: WorkflowSpec
    kind: str
    _instance: WorkflowInstance | None
    from_state: str | None
    to_state: str
    transition: Transition | None = None
    input: BaseModel | None = None
    comment: str | None = None
    record: Any = None
    _make_instance: Callable[[], WorkflowInstance] | None = field(
        default=None, kw_only=True, repr=False, eq=False
    )

    @property
    def instance(self) -> WorkflowInstance:
        """The instance after the change."""
        inst = self._instance
        if inst is None:
            assert self._make_instance is not None
            inst = self._make_instance()
            object.__setattr__(self, "_instance", inst)
        return inst


TransitionHook: TypeAlias = Callable[["HandlerCtx", WorkflowChange], Any]
"""`on_transition(ctx, change) -> None` (or awaitable): runs inside the call's transaction after
the instance and its history step are staged, before the events are emitted. Its writes through
`ctx.repo(...)` commit or roll back with the transition; raising refuses the whole call."""


@define(frozen=True)
class Timer:
    """A per-state SLA timer (made by `timer()`): due `after` entering `state`, or `at(instance)`.

    Attributes:
        name: Identifier, unique in the workflow (part of the timer job's idempotency key).
        state: The state it watches.
        fire: The transition it fires, or `None` for an escalation.
        escalate: Emit `<workflow>.escalated` instead of firing a transition.
        after: Delay after entering the state, or `None`.
        at: `at(instance) -> datetime` (aware, UTC), or `None`.
    """

    name: str
    state: str
    fire: str | None = None
    escalate: bool = False
    after: timedelta | None = None
    at: Callable[[WorkflowInstance], datetime] | None = field(default=None, eq=False)


@define(frozen=True)
class WorkflowSpec:
    """A versioned workflow (state machine) made by `define_workflow`.

    Attributes:
        name: Dotted name (`hr.leave`); derived operations are `<name>.<transition>` etc.
        version: Positive integer version.
        states: State names in declaration order.
        initial: The state `start` creates instances in.
        final: States no transition leaves.
        transitions: The transitions, by declaration order.
        timers: Per-state SLA timers.
        subject: pydantic model of the instance data given at start, or `None` (free mapping).
        migrations: `{old_version: {old_state: new_state}}` used by `<name>.migrate`.
        start_auth, read_auth, comment_auth, admin_auth: Auth of `start`, of the queries, of
            `comment`, and of `migrate`.
        on_transition: Hook run in the call's transaction on every state change (start,
            transition, timer, approval, migration), or `None`.
        on_transition_emits: Events the hook may emit (declared on every operation that
            changes state).
        transitioned_event: Whether state changes emit `<name>.transitioned` (`False` when the
            app emits its own domain event from the hook; the event is then not registered).
        entity: The app's entity whose records carry the state (`None`: the workflow keeps its
            own instance rows in `cs.workflow.instance`).
        state_field: The field of `entity` holding the state (its value, or an enum member
            whose `.value` is the state).
        history: `"steps"` (a `cs.workflow.step` row per change) or `"audit"` (no step row:
            `<name>.history` answers from the audit trail).
        set_fields: Entity workflows: `set_fields(ctx, change) -> mapping | None`, extra fields
            written with the new state in the same update (a closing date), or `None`.
    """

    kind: ClassVar[str] = "workflow"

    name: str
    version: int
    states: tuple[str, ...]
    initial: str
    final: frozenset[str]
    transitions: tuple[Transition, ...]
    timers: tuple[Timer, ...] = ()
    subject: type[BaseModel] | None = None
    migrations: Mapping[int, Mapping[str, str]] = field(factory=dict, eq=False)
    start_auth: AuthRequirement = field(factory=authenticated)
    read_auth: AuthRequirement = field(factory=authenticated)
    admin_auth: AuthRequirement | None = None
    comment_auth: AuthRequirement = field(factory=authenticated)
    description: str = ""
    owners: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    on_transition: TransitionHook | None = field(default=None, eq=False)
    on_transition_emits: tuple[EventSpec | EventRef, ...] = ()
    transitioned_event: bool = True
    entity: EntitySpec[Any] | None = None
    state_field: str | None = None
    history: str = "steps"
    set_fields: Callable[[HandlerCtx, WorkflowChange], Any] | None = field(default=None, eq=False)

    @property
    def ref(self) -> str:
        """`name@version`."""
        return f"{self.name}@{self.version}"

    def get_transition(self, name: str) -> Transition:
        """The transition called `name`.

        Raises:
            NotFoundError: No such transition.
        """
        for t in self.transitions:
            if t.name == name:
                return t
        raise NotFoundError(
            f"workflow {self.ref} has no transition {name!r}; transitions: "
            f"{', '.join(t.name for t in self.transitions)}",
            details={"workflow": self.ref, "transition": name},
        )

    def operation_name(self, item: str) -> str:
        """Name of a derived operation (`operation_name("approve")` -> `hr.leave.approve`)."""
        return f"{self.name}.{item}"

    def to_ir(self) -> dict[str, Any]:
        """This workflow's IR entry (see `workflow_ir` for the shape)."""
        return workflow_ir(self)

    def install(self, registry: SpecRegistry) -> None:
        """Register the derived entities, events and operations with their handlers.

        Called by `SpecRegistry.register`; users register the workflow itself.
        """
        _install(self, registry)


def transition(
    name: str,
    *,
    source: str | Iterable[str],
    target: str,
    input: type[BaseModel] | None = None,
    auth: AuthRequirement | None = None,
    guard: Guard | None = None,
    emits: Iterable[EmitsItem] | None = None,
    approvals: Approvals | None = None,
    description: str = "",
) -> Transition:
    """Declare a transition of a workflow.

    Args:
        name: Lowercase identifier (`approve`); the derived command is `<workflow>.<name>`.
        source: The state (or states) it leaves from.
        target: The state it enters.
        input: pydantic model of the transition's input, or `None`.
        auth: `public()`, `authenticated()` (default) or `requires(...)`, as for operations.
        guard: `guard(instance, input) -> bool | str | None` (sync or async); `False` or a
            string refuses the transition with `WorkflowGuardError` (the string is the reason).
        emits: Events emitted when it fires; their payload is validated from the instance data,
            the input's fields and `instance_id`, `from_state`, `to_state`, `transition`.
        approvals: Makes it an approval step (`Approvals(count=2, roles=["manager"])`).
        description: Reference-doc paragraph.

    Returns:
        A frozen `Transition`.

    Raises:
        SpecDefinitionError: Invalid name, states, input model, auth, guard or approvals.
    """
    if not isinstance(name, str) or not _STATE.match(name) or name in RESERVED_TRANSITIONS:
        raise SpecDefinitionError(
            f"transition name {name!r} is not valid: use a lowercase identifier such as 'approve' "
            f"(reserved: {', '.join(sorted(RESERVED_TRANSITIONS))})",
            details={"field": "name"},
        )
    sources = _tuple_of_str(source)
    if not sources:
        raise SpecDefinitionError(
            f"transition {name!r}: source= needs at least one state", details={"field": "source"}
        )
    if input is not None and not (isinstance(input, type) and issubclass(input, BaseModel)):
        raise SpecDefinitionError(
            f"transition {name!r}: input must be a pydantic model class or None, got {input!r}",
            details={"field": "input"},
        )
    if auth is None:
        auth = authenticated()
    elif not isinstance(auth, AuthRequirement):
        raise SpecDefinitionError(
            f"transition {name!r}: auth must be public(), authenticated() or requires(...)",
            details={"field": "auth"},
        )
    if guard is not None and not callable(guard):
        raise SpecDefinitionError(
            f"transition {name!r}: guard must be callable(instance, input)",
            details={"field": "guard"},
        )
    if approvals is not None:
        if not isinstance(approvals, Approvals):
            raise SpecDefinitionError(
                f"transition {name!r}: approvals must be Approvals(count=..., roles=[...])",
                details={"field": "approvals"},
            )
        if (
            isinstance(approvals.count, bool)
            or not isinstance(approvals.count, int)
            or (approvals.count < 1)
        ):
            raise SpecDefinitionError(
                f"transition {name!r}: approvals count must be an integer >= 1, got "
                f"{approvals.count!r}",
                details={"field": "approvals"},
            )
        expiry = approvals.expires_after
        if expiry is not None and (not isinstance(expiry, timedelta) or expiry <= timedelta(0)):
            raise SpecDefinitionError(
                f"transition {name!r}: approvals expires_after must be a positive timedelta, got "
                f"{expiry!r}",
                details={"field": "approvals.expires_after"},
            )
        if approvals.on_expiry is not None and (
            expiry is None or not isinstance(approvals.on_expiry, str)
        ):
            raise SpecDefinitionError(
                f"transition {name!r}: approvals on_expiry names the transition a timer fires "
                "when the step expires; it needs expires_after=timedelta(...) too",
                details={"field": "approvals.on_expiry"},
            )
        if approvals.decider is not None and not isinstance(approvals.decider, ApprovalDecider):
            raise SpecDefinitionError(
                f"transition {name!r}: approvals decider must be an ApprovalDecider (evaluate() "
                f"and decide()), got {approvals.decider!r}",
                details={"field": "approvals.decider"},
            )
    return Transition(
        name=name,
        sources=sources,
        target=target,
        input=input,
        auth=auth,
        guard=guard,
        emits=_event_refs(emits, key=f"transition {name!r}"),
        approvals=approvals,
        description=description,
    )


def timer(
    state: str,
    *,
    after: timedelta | None = None,
    at: Callable[[WorkflowInstance], datetime] | None = None,
    fire: str | None = None,
    escalate: bool = False,
    name: str | None = None,
) -> Timer:
    """Declare an SLA timer on a state: when due, fire a transition or emit `<wf>.escalated`.

    The timer starts each time the instance enters `state` and fires at most once per entry, only
    if the instance is still in that entry (a later transition cancels it).

    Args:
        state: The state it watches.
        after: Due this long after entering the state (positive).
        at: Or due at `at(instance)` (an aware UTC datetime computed from the instance).
        fire: The transition to fire (it must leave `state`, need no input and no approvals).
        escalate: Or emit `<wf>.escalated` without changing state.
        name: Timer name (default `<state>_<fire or "escalate">`).

    Returns:
        A frozen `Timer`.

    Raises:
        SpecDefinitionError: Not exactly one of `after`/`at`, or of `fire`/`escalate`, or a
            non-positive `after`.
    """
    if (after is None) == (at is None):
        raise SpecDefinitionError(
            f"timer on {state!r}: give exactly one of after= (timedelta) or at= (callable)",
            details={"field": "after"},
        )
    if after is not None and (not isinstance(after, timedelta) or after <= timedelta(0)):
        raise SpecDefinitionError(
            f"timer on {state!r}: after must be a positive timedelta, got {after!r}",
            details={"field": "after"},
        )
    if at is not None and not callable(at):
        raise SpecDefinitionError(
            f"timer on {state!r}: at must be callable(instance) -> datetime",
            details={"field": "at"},
        )
    if (fire is None) == (not escalate):
        raise SpecDefinitionError(
            f"timer on {state!r}: give exactly one of fire='<transition>' or escalate=True",
            details={"field": "fire"},
        )
    timer_name = name or f"{state}_{fire or 'escalate'}"
    if not isinstance(timer_name, str) or not _STATE.match(timer_name):
        raise SpecDefinitionError(
            f"timer name {timer_name!r} is not a lowercase identifier", details={"field": "name"}
        )
    return Timer(
        name=timer_name, state=state, fire=fire, escalate=bool(escalate), after=after, at=at
    )


def define_workflow(
    name: str,
    *,
    states: Iterable[str],
    initial: str,
    final: Iterable[str] | str = (),
    transitions: Iterable[Transition],
    timers: Iterable[Timer] = (),
    version: int = 1,
    subject: type[BaseModel] | None = None,
    migrations: Mapping[int, Mapping[str, str]] | None = None,
    start_auth: AuthRequirement | None = None,
    read_auth: AuthRequirement | None = None,
    admin_auth: AuthRequirement | None = None,
    comment_auth: AuthRequirement | None = None,
    description: str = "",
    owners: Iterable[str] | str | None = None,
    tags: Iterable[str] | str | None = None,
    on_transition: TransitionHook | None = None,
    on_transition_emits: Iterable[EmitsItem] | None = None,
    transitioned_event: bool = True,
    entity: EntitySpec[Any] | None = None,
    state_field: str | None = None,
    history: str | None = None,
    set_fields: Callable[[HandlerCtx, WorkflowChange], Any] | None = None,
) -> WorkflowSpec:
    """Declare a workflow: states, transitions, timers; checked when declared.

    Args:
        name: Dotted lowercase name (`hr.leave`).
        states: State names (lowercase identifiers).
        initial: The state new instances start in.
        final: States no transition may leave.
        transitions: Made by `transition()`.
        timers: Made by `timer()`.
        version: Positive integer version.
        subject: pydantic model of the data given at start (`None`: any JSON object).
        migrations: `{old_version: {old_state: new_state}}` for `<name>.migrate`; states not
            listed keep their name (which must exist in this version).
        start_auth: Auth of `<name>.start` (default `authenticated()`).
        read_auth: Auth of `get`, `history` and `available` (default `authenticated()`).
        admin_auth: Auth of `migrate` (default `requires("<name>.migrate")`).
        comment_auth: Auth of `<name>.comment` (default `authenticated()`).
        description: Reference-doc paragraph.
        owners: Owning teams or people.
        tags: Free-form tags.
        on_transition: `hook(ctx, change: WorkflowChange) -> None` (sync or async), run on
            every state change (start, transition, timer, approval quorum, migration) inside the
            call's transaction, after the instance and its history step are staged and before
            the events are emitted. Use it to keep the app's own record (a deal's stage) in step
            with the instance: its writes commit or roll back with the transition, and an
            exception refuses the call (nothing of it is stored).
        on_transition_emits: Events the hook may emit with `ctx.emit` (they are declared on
            every operation that changes state).
        transitioned_event: `False` skips the generic `<name>.transitioned` event (it is then
            not registered at all), for apps whose hook emits their own domain event.
        entity: Keep the state on the app's own records instead of workflow instances: each
            record of this entity *is* an instance (same id), in the state its `state_field`
            holds. A transition reads the record, checks the source state, writes the new
            state (plus `set_fields`) as one update with the entity's optimistic concurrency
            (of N concurrent transitions on one record exactly one wins, the others get
            `ConflictError`), runs the hook, emits and audits: no instance row, no step row, no
            extra read. There is no `<name>.start` (the app creates records in `initial`),
            `<name>.get` shows the record as an instance (`seq` 0: the entity's version guards
            concurrency, so transitions take no `expected_seq`), `history` comes from the audit
            trail, and timers, approval steps, migrations and `subject` are refused (they need
            instance rows).
        state_field: The entity's field holding the state (required with `entity`): a `str`,
            `Literal` or enum field whose values are the states.
        history: `"steps"` (default for instance workflows): a history row per change;
            `"audit"` (the only choice with `entity`): no history rows, `<name>.history` reads the
            audit records of each change (who, when, operation, from → to, input, comment, in
            the records' `details["workflow"]`). Needs an audit sink that can list a target's
            records (`MemoryAuditLog`, `SqlAuditLog`).
        set_fields: Entity workflows only: `set_fields(ctx, change) -> mapping | None` (sync),
            extra fields written in the same update as the state (`change.record` is the
            record before the move).

    Returns:
        A frozen `WorkflowSpec`; register it with `SpecRegistry(...)` / `registry.register(...)`.

    Raises:
        SpecDefinitionError: Invalid or reserved name, unknown or duplicate state, unknown
            initial/final state, duplicate transition, a transition from a final state or to an
            unknown state, an unreachable state, a non-final state with no way out, a timer on an
            unknown or final state or firing a transition that does not leave it, a migration
            to an unknown state, a non-callable `on_transition`, or `on_transition_emits`
            without `on_transition`; with `entity`: no or an unknown `state_field`, a state
            field whose type cannot hold the states, `history="steps"`, timers, approval steps,
            migrations or `subject`.
    """
    _check_name(name, what="workflow", pattern=_DOTTED_NAME, example="hr.leave")
    _check_reserved(name, False)
    ref = f"{name}@{version}"
    _check_version(version, key=ref)

    def fail(message: str, field_name: str) -> SpecDefinitionError:
        return SpecDefinitionError(f"workflow {ref}: {message}", details={"field": field_name})

    state_list = _tuple_of_str(states)
    if not state_list:
        raise fail("states= needs at least one state", "states")
    for s in state_list:
        if not isinstance(s, str) or not _STATE.match(s):
            raise fail(f"state {s!r} is not a lowercase identifier (e.g. 'draft')", "states")
    dupes = sorted({s for s in state_list if state_list.count(s) > 1})
    if dupes:
        raise fail(f"states {', '.join(dupes)} are listed more than once", "states")
    known = set(state_list)
    if initial not in known:
        raise fail(
            f"initial state {initial!r} is not one of the states {list(state_list)}", "initial"
        )
    finals = frozenset(_tuple_of_str(final))
    for s in sorted(finals - known):
        raise fail(f"final state {s!r} is not one of the states {list(state_list)}", "final")
    trans = tuple(transitions)
    names: set[str] = set()
    for t in trans:
        if not isinstance(t, Transition):
            raise fail(f"transitions must be made by transition(), got {t!r}", "transitions")
        if t.name in names:
            raise fail(
                f"transition {t.name!r} is declared twice; give each a unique name", "transitions"
            )
        names.add(t.name)
        for s in (*t.sources, t.target):
            if s not in known:
                raise fail(
                    f"transition {t.name!r} names unknown state {s!r}; states: {list(state_list)}",
                    "transitions",
                )
        for s in t.sources:
            if s in finals:
                raise fail(
                    f"transition {t.name!r} leaves final state {s!r}; final states have no way "
                    "out (remove it from final= or change source=)",
                    "transitions",
                )
    reachable = {initial}
    frontier = [initial]
    while frontier:
        current = frontier.pop()
        for t in trans:
            if current in t.sources and t.target not in reachable:
                reachable.add(t.target)
                frontier.append(t.target)
    unreachable = [s for s in state_list if s not in reachable]
    if unreachable:
        raise fail(
            f"states {unreachable} cannot be reached from {initial!r}; add a transition into "
            "them or remove them",
            "states",
        )
    for s in state_list:
        if s not in finals and not any(s in t.sources for t in trans):
            raise fail(
                f"state {s!r} has no transition out and is not final; add one or list it in final=",
                "final",
            )
    timer_list = (*tuple(timers), *_expiry_timers(trans))
    timer_names: set[str] = set()
    by_name = {t.name: t for t in trans}
    for tm in timer_list:
        if not isinstance(tm, Timer):
            raise fail(f"timers must be made by timer(), got {tm!r}", "timers")
        if tm.name in timer_names:
            raise fail(
                f"timer {tm.name!r} is declared twice; pass name= to tell them apart", "timers"
            )
        timer_names.add(tm.name)
        if tm.state not in known or tm.state in finals:
            raise fail(
                f"timer {tm.name!r} watches {tm.state!r}, which is not a non-final state", "timers"
            )
        if tm.fire is not None:
            fired = by_name.get(tm.fire)
            if fired is None or tm.state not in fired.sources:
                raise fail(
                    f"timer {tm.name!r} fires {tm.fire!r}, which is not a transition leaving "
                    f"{tm.state!r}; name one of "
                    f"{[t.name for t in trans if tm.state in t.sources]}",
                    "timers",
                )
            if fired.approvals is not None:
                raise fail(
                    f"timer {tm.name!r} fires {tm.fire!r}, an approval step; timers may only "
                    "fire transitions without approvals",
                    "timers",
                )
            if fired.input is not None and _has_required_fields(fired.input):
                raise fail(
                    f"timer {tm.name!r} fires {tm.fire!r}, whose input has required fields; a "
                    "timer fires without input (give them defaults)",
                    "timers",
                )
    if subject is not None and not (isinstance(subject, type) and issubclass(subject, BaseModel)):
        raise fail(f"subject must be a pydantic model class or None, got {subject!r}", "subject")
    if on_transition is not None and not callable(on_transition):
        raise fail(
            f"on_transition must be callable(ctx, change), got {on_transition!r}", "on_transition"
        )
    hook_emits = _event_refs(on_transition_emits, key=f"workflow {ref} on_transition_emits")
    if hook_emits and on_transition is None:
        raise fail(
            "on_transition_emits declares events for the on_transition hook; pass on_transition= "
            "too (or declare the events on the transitions with emits=)",
            "on_transition_emits",
        )
    migs: dict[int, dict[str, str]] = {}
    for old, mapping in (migrations or {}).items():
        if isinstance(old, bool) or not isinstance(old, int) or not 1 <= old < version:
            raise fail(
                f"migrations key {old!r} must be an older version (1..{version - 1})", "migrations"
            )
        for src, dst in mapping.items():
            if dst not in known:
                raise fail(
                    f"migration from version {old} maps {src!r} to unknown state {dst!r}",
                    "migrations",
                )
        migs[old] = dict(mapping)
    history_kind = _check_storage(
        fail, entity, state_field, history, set_fields, state_list, trans, timer_list, subject,
        migs,
    )  # fmt: skip
    return WorkflowSpec(
        name=name,
        version=version,
        states=state_list,
        initial=initial,
        final=finals,
        transitions=trans,
        timers=timer_list,
        subject=subject,
        on_transition=on_transition,
        on_transition_emits=hook_emits,
        transitioned_event=bool(transitioned_event),
        entity=entity,
        state_field=state_field,
        history=history_kind,
        set_fields=set_fields,
        migrations=migs,
        start_auth=start_auth or authenticated(),
        read_auth=read_auth or authenticated(),
        admin_auth=admin_auth,
        comment_auth=comment_auth or authenticated(),
        description=description,
        owners=_tuple_of_str(owners),
        tags=_tuple_of_str(tags),
    )


def _check_storage(
    fail: Callable[[str, str], SpecDefinitionError],
    entity: Any,
    state_field: Any,
    history: Any,
    set_fields: Any,
    states: tuple[str, ...],
    transitions: tuple[Transition, ...],
    timers: tuple[Timer, ...],
    subject: Any,
    migrations: Mapping[int, Any],
) -> str:
    """Check where a workflow keeps its state and history; the history kind to use."""
    if history is not None and history not in ("steps", "audit"):
        raise fail(
            f"history must be 'steps' (a history row per change) or 'audit' (history from the "
            f"audit trail), got {history!r}",
            "history",
        )
    if entity is None:
        if state_field is not None:
            raise fail(
                "state_field names the field of entity= that holds the state; pass entity= too",
                "state_field",
            )
        if set_fields is not None:
            raise fail(
                "set_fields writes extra fields of entity= records; pass entity= too",
                "set_fields",
            )
        return history or "steps"
    if not isinstance(entity, EntitySpec):
        raise fail(f"entity must be an EntitySpec made by define_entity, got {entity!r}", "entity")
    fields = entity.model.model_fields
    if not isinstance(state_field, str) or state_field not in fields:
        raise fail(
            f"entity {entity.name!r} needs state_field=, the name of its field holding the "
            f"state (one of {sorted(fields)}), got {state_field!r}",
            "state_field",
        )
    allowed = _state_values(fields[state_field].annotation)
    if allowed is not None:
        missing = [s for s in states if s not in allowed]
        if missing:
            raise fail(
                f"{entity.name}.{state_field} cannot hold the states {missing}; its values are "
                f"{sorted(allowed)}",
                "state_field",
            )
    if history == "steps":
        raise fail(
            "history='steps' writes a history row keyed by a workflow instance; a workflow on "
            "entity= has none: use history='audit' (the default with entity=)",
            "history",
        )
    refused = [
        ("timers", bool(timers), "timers key on instance rows; fire the move from a job instead"),
        (
            "transitions",
            any(t.approvals is not None for t in transitions),
            "approval steps key on instance rows; drop approvals= or the entity=",
        ),
        ("migrations", bool(migrations), "migrate the entity's records with your own migration"),
        ("subject", subject is not None, "the entity's record is the subject"),
    ]
    for field_name, present, why in refused:
        if present:
            raise fail(f"a workflow on entity= cannot have {field_name}: {why}", field_name)
    if set_fields is not None and not callable(set_fields):
        raise fail(f"set_fields must be callable(ctx, change), got {set_fields!r}", "set_fields")
    return "audit"


def _state_values(annotation: Any) -> frozenset[str] | None:
    """The state values a field's type can hold: an enum's values, a `Literal`'s strings,
    `None` for a plain `str` (anything); refuses other types."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return frozenset(str(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return frozenset(str(m.value) for m in annotation)
    if annotation is str:
        return None
    return frozenset()


def _expiry_timers(transitions: Iterable[Transition]) -> list[Timer]:
    """The timers of approval steps declared with `on_expiry`: one per source state, due
    `expires_after` after entering it (checked by `define_workflow` like declared timers)."""
    out: list[Timer] = []
    for t in transitions:
        if not isinstance(t, Transition) or t.approvals is None:
            continue
        approvals = t.approvals
        if approvals.on_expiry is None or approvals.expires_after is None:
            continue
        out.extend(
            timer(
                state,
                after=approvals.expires_after,
                fire=approvals.on_expiry,
                name=f"{state}_{t.name}_expiry",
            )
            for state in t.sources
        )
    return out


def _has_required_fields(model: type[BaseModel]) -> bool:
    return any(f.is_required() for f in model.model_fields.values())


def timer_job_type(workflow: WorkflowSpec | str) -> str:
    """The job type a workflow's timers are enqueued under (`<workflow>.timers`)."""
    name = workflow.name if isinstance(workflow, WorkflowSpec) else workflow
    return f"{name}.timers"


# --------------------------------------------------------------------------------------------
# Derived operations and their handlers
# --------------------------------------------------------------------------------------------


def _class_name(*parts: str) -> str:
    return "".join(p.title() for part in parts for p in re.split(r"[._]", part))


def _event_names(wf: WorkflowSpec) -> tuple[str, str]:
    return f"{wf.name}.transitioned", f"{wf.name}.escalated"


class _Derived:
    """What `_derive` registers and binds for one workflow object, recorded once."""

    __slots__ = ("handlers", "specs")

    def __init__(self) -> None:
        self.specs: list[Any] = []
        self.handlers: list[tuple[OperationSpec, Any]] = []

    def register(self, *specs: Any) -> None:
        self.specs.extend(specs)

    def bind(self, op: OperationSpec, handler: Any) -> None:
        self.handlers.append((op, handler))


#: Derived specs and handlers per workflow object (by id; the object is kept alive with them).
_DERIVED: dict[int, tuple[WorkflowSpec, _Derived]] = {}


def _install(wf: WorkflowSpec, registry: SpecRegistry) -> None:
    """Register `wf`'s derived entities, events and operations and bind their handlers.

    A workflow object derives them once: registering it in a second registry (or in a copy
    that already holds its derived operations, e.g. `for s in old: new.register(s)`) reuses the
    very same spec and handler objects instead of clashing with look-alike ones.
    """
    known = _DERIVED.get(id(wf))
    if known is None or known[0] is not wf:
        derived = _Derived()
        _derive(wf, derived)
        known = _DERIVED[id(wf)] = (wf, derived)
    derived = known[1]
    registry.register(*derived.specs)
    for op, handler in derived.handlers:
        registry.bind(op, handler)


def _derive(wf: WorkflowSpec, registry: _Derived) -> None:
    transitioned_name, escalated_name = _event_names(wf)
    transitioned = define_event(
        transitioned_name,
        payload=Transitioned,
        key="instance_id",
        description=f"An instance of workflow {wf.name} changed state.",
    )
    escalated = define_event(
        escalated_name,
        payload=Escalated,
        key="instance_id",
        description=f"An escalation timer of workflow {wf.name} fell due.",
    )
    if wf.entity is not None:
        _derive_on_entity(wf, registry, transitioned)
        return
    registry.register(INSTANCE_ENTITY, STEP_ENTITY, APPROVAL_ENTITY, escalated)
    # Events of every state change: the generic one (unless turned off) and the hook's.
    base: list[EventSpec | EventRef] = []
    if wf.transitioned_event:
        registry.register(transitioned)
        base.append(transitioned)
    base.extend(e for e in wf.on_transition_emits if e not in base)
    v = wf.version
    tag = (f"workflow:{wf.name}",)

    def add(op: OperationSpec, handler: Any) -> None:
        registry.register(op)
        registry.bind(op, handler)

    data_type: Any = wf.subject if wf.subject is not None else dict[str, Any]
    data_default: Any = (
        ...
        if wf.subject is not None and _has_required_fields(wf.subject)
        else (
            pydantic.Field(default_factory=dict)
            if wf.subject is None
            else pydantic.Field(default_factory=wf.subject)
        )
    )
    start_input = pydantic.create_model(
        _class_name(wf.name, "start_input"),
        id=(str | None, None),
        data=(data_type, data_default),
        comment=(str | None, None),
    )
    add(
        define_command(
            wf.operation_name("start"), input=start_input, output=WorkflowInstance, version=v,
            auth=wf.start_auth, emits=base, idempotent=True, tags=tag,
            description=f"Start an instance of workflow {wf.name} in state {wf.initial!r}.",
        ),
        _start_handler(wf),
    )  # fmt: skip
    all_emits: list[EventSpec | EventRef] = list(base)
    for t in wf.transitions:
        fields: dict[str, Any] = {
            "instance_id": (str, ...),
            "expected_seq": (int | None, None),
            "comment": (str | None, None),
        }
        if t.input is not None:
            fields["input"] = (t.input, ... if _has_required_fields(t.input) else
                               pydantic.Field(default_factory=t.input))  # fmt: skip
        model = pydantic.create_model(_class_name(wf.name, t.name, "input"), **fields)
        emits = [*base, *(e for e in t.emits if e not in base)]
        all_emits.extend(e for e in t.emits if e not in all_emits)
        desc = t.description or f"Move {wf.name} from {'/'.join(t.sources)} to {t.target}."
        if t.approvals is None:
            add(
                define_command(
                    wf.operation_name(t.name), input=model, output=WorkflowInstance, version=v,
                    auth=t.auth, emits=emits, idempotent=True, tags=tag, description=desc,
                ),
                _transition_handler(wf, t),
            )  # fmt: skip
        else:
            for decision in ("approve", "reject"):
                add(
                    define_command(
                        wf.operation_name(f"{t.name}.{decision}"), input=model,
                        output=ApprovalResult, version=v, auth=t.auth, emits=emits,
                        idempotent=True, tags=tag,
                        description=f"{decision.title()} the approval step {t.name!r}: {desc}",
                    ),
                    _approval_handler(wf, t, decision),
                )  # fmt: skip
    read = wf.read_auth
    add(
        define_query(wf.operation_name("get"), input=InstanceRef, output=WorkflowInstance,
                     version=v, auth=read, tags=tag, description=f"One {wf.name} instance."),
        _get_handler(wf),
    )  # fmt: skip
    add(
        define_query(wf.operation_name("history"), input=HistoryQuery, output=HistoryPage,
                     version=v, auth=read, tags=tag,
                     description=f"History of one {wf.name} instance, oldest first."),
        _history_handler(wf),
    )  # fmt: skip
    add(
        define_query(wf.operation_name("available"), input=InstanceRef, output=Available,
                     version=v, auth=read, tags=tag,
                     description="Transitions the calling actor may fire now."),
        _available_handler(wf),
    )  # fmt: skip
    add(
        define_command(wf.operation_name("comment"), input=CommentInput, output=WorkflowInstance,
                       version=v, auth=wf.comment_auth, idempotent=True, tags=tag,
                       description="Add a comment to an instance's history (no state change)."),
        _comment_handler(wf),
    )  # fmt: skip
    add(
        define_command(wf.operation_name("timer"), input=WorkflowTimerFire, output=TimerResult,
                       version=v, auth=authenticated(), emits=[*all_emits, escalated],
                       idempotent=True, tags=tag,
                       description="Fire a due timer (system actors only; run by a jobs worker)."),
        _timer_handler(wf),
    )  # fmt: skip
    add(
        define_command(wf.operation_name("migrate"), input=MigrateInput, output=MigrateResult,
                       version=v, auth=wf.admin_auth or requires(f"{wf.name}.migrate"),
                       emits=base, tags=tag,
                       description=f"Move instances of older {wf.name} versions to version {v}."),
        _migrate_handler(wf),
    )  # fmt: skip


async def _load(wf: WorkflowSpec, ctx: HandlerCtx, instance_id: str) -> WorkflowInstance:
    inst = await ctx.repo(INSTANCE_ENTITY).get(instance_id)
    if inst is None or inst.workflow != wf.name:
        raise NotFoundError(
            f"no {wf.name} instance {instance_id!r} in this tenant",
            details={"workflow": wf.name, "instance_id": instance_id},
        )
    return inst


def _check_version_of(wf: WorkflowSpec, inst: WorkflowInstance) -> None:
    if inst.version != wf.version:
        raise WorkflowStateError(
            f"{wf.name} instance {inst.id!r} follows version {inst.version}, this operation is "
            f"version {wf.version}; call {wf.name}.migrate or the @{inst.version} operation",
            details={"instance_id": inst.id, "version": inst.version},
        )


def _check_source(
    wf: WorkflowSpec, t: Transition, inst: WorkflowInstance, expected_seq: int | None
) -> None:
    if expected_seq is not None and inst.seq != expected_seq:
        raise WorkflowStateError(
            f"{wf.name} instance {inst.id!r} is at seq {inst.seq}, not the expected "
            f"{expected_seq}; it changed since you read it: read it again",
            details={"instance_id": inst.id, "seq": inst.seq, "expected_seq": expected_seq},
        )
    if inst.state not in t.sources:
        raise WorkflowStateError(
            f"{wf.name} instance {inst.id!r} is in state {inst.state!r}; transition {t.name!r} "
            f"leaves only from {', '.join(t.sources)}",
            details={"instance_id": inst.id, "state": inst.state, "transition": t.name},
        )


async def _check_guard(
    wf: WorkflowSpec, t: Transition, inst: WorkflowInstance, value: BaseModel | None
) -> str | None:
    """`None` when the guard allows, else the refusal reason."""
    if t.guard is None:
        return None
    result = t.guard(inst, value)
    if inspect.isawaitable(result):
        result = await result
    if result is None or result is True:
        return None
    if isinstance(result, str):
        return result
    return f"the guard {t.guard_name} of {wf.name}.{t.name} refused"


async def _enter(
    wf: WorkflowSpec,
    ctx: HandlerCtx,
    inst: WorkflowInstance,
    *,
    kind: str,
    transition: Transition | None,
    target: str,
    input_data: dict[str, Any],
    comment: str | None,
    value: BaseModel | None = None,
    audit_target: bool = True,
) -> WorkflowInstance:
    """Move (or create) `inst` to `target`: write the instance and a history step, run the
    workflow's `on_transition` hook, emit the events, and enqueue the target state's timers — all
    inside the call's transaction (one buffered update or insert of the instance, one insert of
    the step; nothing is read)."""
    now = ctx.now()
    repo = ctx.repo(INSTANCE_ENTITY)
    from_state = None if kind == "start" else inst.state
    if kind == "start":
        inst = await repo.add(inst)
    else:
        inst = inst.model_copy(
            update={
                "state": target,
                "seq": inst.seq + 1,
                "entry_seq": inst.seq + 1,
                "entered_by": ctx.actor.id,
                "updated_at": now,
            }
        )
        inst = await repo.update(inst)
    name = transition.name if transition is not None else None
    if wf.history == "audit":
        _audit_step(wf, ctx, inst.id, kind, name, from_state, target, input_data, comment)
    else:
        await ctx.repo(STEP_ENTITY).add(
            # Every field is built here from checked values: no validation needed (the store still
            # checks the row is storable).
            WorkflowStep.model_construct(
                id=ctx.new_id(),
                instance_id=inst.id,
                seq=inst.seq,
                workflow=wf.name,
                version=inst.version,
                kind=kind,
                transition=name,
                from_state=from_state,
                to_state=target,
                actor_id=ctx.actor.id,
                actor_kind=ctx.actor.kind.value,
                at=now,
                input=input_data,
                comment=comment,
            )
        )
    if audit_target or (wf.history == "audit" and ctx._audit_target is None):
        ctx.set_audit_target(wf.name, inst.id)
    hook = wf.on_transition
    if hook is not None:
        change = WorkflowChange(wf, kind, inst, from_state, target, transition, value, comment)
        result = hook(ctx, change)
        if inspect.isawaitable(result):
            await result
    if wf.transitioned_event:
        ctx.emit(
            _event_names(wf)[0],
            Transitioned(
                instance_id=inst.id,
                workflow=wf.name,
                version=inst.version,
                transition=name,
                from_state=from_state,
                to_state=target,
                actor_id=ctx.actor.id,
                comment=comment,
            ),
        )
    if transition is not None:
        for ref in transition.emits:
            payload = {
                **inst.data,
                **(value.model_dump() if value is not None else {}),
                "instance_id": inst.id,
                "from_state": from_state,
                "to_state": target,
                "transition": transition.name,
            }
            ctx.emit(ref.name, payload)
    if wf.timers:
        await _enqueue_timers(wf, ctx, inst, now)
    return inst


async def _enqueue_timers(
    wf: WorkflowSpec, ctx: HandlerCtx, inst: WorkflowInstance, now: datetime
) -> None:
    """Enqueue the timers of the state `inst` just entered (inside the call's transaction)."""
    target = inst.state
    for tm in wf.timers:
        if tm.state != target:
            continue
        due = now + tm.after if tm.after is not None else tm.at(inst)  # type: ignore[misc]  # one is set
        await ctx.enqueue(
            timer_job_type(wf),
            WorkflowTimerFire(
                workflow=wf.name,
                instance_id=inst.id,
                entry_seq=inst.entry_seq,
                timer=tm.name,
                org_id=ctx.org_id,
            ),
            scheduled_at=due,
            org_id=ctx.org_id,
            unique_key=f"{wf.name}:{inst.id}:{inst.entry_seq}:{tm.name}",
        )


def _new_instance(
    wf: WorkflowSpec, ctx: HandlerCtx, instance_id: str | None, data: Any
) -> WorkflowInstance:
    now = ctx.now()
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return WorkflowInstance(
        id=instance_id or ctx.new_id(),
        workflow=wf.name,
        version=wf.version,
        state=wf.initial,
        data=data,
        seq=1,
        entry_seq=1,
        created_by=ctx.actor.id,
        entered_by=ctx.actor.id,
        created_at=now,
        updated_at=now,
    )


def _start_handler(wf: WorkflowSpec) -> Any:
    async def start(inp: Any, ctx: HandlerCtx) -> WorkflowInstance:
        inst = _new_instance(wf, ctx, inp.id, inp.data)
        return await _enter(
            wf, ctx, inst, kind="start", transition=None, target=wf.initial,
            input_data={}, comment=inp.comment,
        )  # fmt: skip

    start.__qualname__ = f"{wf.name}.start"
    return start


def _dump(value: BaseModel | None) -> dict[str, Any]:
    return value.model_dump(mode="json") if value is not None else {}


async def _fire(
    wf: WorkflowSpec,
    t: Transition,
    ctx: HandlerCtx,
    instance_id: str,
    expected_seq: int | None,
    value: BaseModel | None,
    comment: str | None,
    audit_target: bool,
) -> WorkflowInstance:
    inst = await _load(wf, ctx, instance_id)
    _check_version_of(wf, inst)
    _check_source(wf, t, inst, expected_seq)
    reason = await _check_guard(wf, t, inst, value)
    if reason is not None:
        raise WorkflowGuardError(
            f"{wf.name}.{t.name} refused for instance {inst.id!r}: {reason}",
            details={"instance_id": inst.id, "transition": t.name, "reason": reason},
        )
    return await _enter(
        wf, ctx, inst, kind="transition", transition=t, target=t.target,
        input_data=_dump(value), comment=comment, value=value, audit_target=audit_target,
    )  # fmt: skip


def _transition_handler(wf: WorkflowSpec, t: Transition) -> Any:
    async def fire(inp: Any, ctx: HandlerCtx) -> WorkflowInstance:
        value = getattr(inp, "input", None)
        return await _fire(wf, t, ctx, inp.instance_id, inp.expected_seq, value, inp.comment, True)

    fire.__qualname__ = f"{wf.name}.{t.name}"
    return fire


def _check_embedded(wf: WorkflowSpec, ctx: HandlerCtx, what: str) -> None:
    """`start_instance` / `fire_transition` need `wf` in the executor's registry (its entities
    and events are registered by it)."""
    registry = ctx._executor.registry
    known = _EMBEDDED.get(id(wf))
    if known is not None and known[0] is wf and known[1] is registry:
        return  # checked before (a registry never drops a spec)
    if not isinstance(wf, WorkflowSpec):
        raise HandlerContractError(
            f"{what}: expected a WorkflowSpec made by define_workflow, got {wf!r}",
            details={"operation": ctx.operation.ref},
        )
    registered = registry._specs.get("workflow", {}).get(wf.name, {})
    if registered.get(wf.version) is not wf:
        raise HandlerContractError(
            f"{what}: workflow {wf.ref} is not registered in the executor's registry; "
            f"register it (registry.register({wf.name.replace('.', '_')}_workflow)) next to "
            f"{ctx.operation.name}",
            details={"operation": ctx.operation.ref, "workflow": wf.ref},
        )
    _EMBEDDED[id(wf)] = (wf, registry)


#: Per workflow (by id; the object is kept alive with it): the last registry `_check_embedded`
#: found it in.
_EMBEDDED: dict[int, tuple[WorkflowSpec, SpecRegistry]] = {}


async def start_instance(
    ctx: HandlerCtx,
    workflow: WorkflowSpec,
    *,
    id: str | None = None,
    data: BaseModel | Mapping[str, Any] | None = None,
    comment: str | None = None,
) -> WorkflowInstance:
    """Start an instance of `workflow` inside the running operation (create-and-start in one call).

    The app's handler creates its own record (a deal) and starts the record's workflow instance
    in the same call and transaction: one executor call, one audit record (the calling
    operation's), and either both are stored or neither. It does what `<workflow>.start` does —
    writes the instance in the initial state and its first history step, runs `on_transition`
    (kind `start`), emits the start events and enqueues the initial state's timers — but under
    the calling operation's auth and audit target.

    Args:
        ctx: The calling handler's context.
        workflow: A workflow registered in the executor's registry.
        id: The instance id (use the app record's id to find one from the other); default a
            new id.
        data: The subject data, validated by the workflow's `subject` model (a mapping or
            model instance; default: empty).
        comment: Comment of the start step.

    Returns:
        The new `WorkflowInstance`.

    Raises:
        HandlerContractError: The workflow is not registered, or the calling operation does not
            declare the events a start emits (`<workflow>.transitioned` unless turned off, and
            `on_transition_emits`).
        SpecValidationError: `data` does not fit the subject model.
        ConflictError: An instance with this id exists (when the call's writes reach the
            database at the latest).
    """
    _check_embedded(workflow, ctx, "start_instance")
    if workflow.entity is not None:
        raise HandlerContractError(
            f"start_instance: workflow {workflow.ref} keeps its state on {workflow.entity.name} "
            f"records; a new record is in the state its {workflow.state_field} field holds "
            "(create it in the initial state), there is nothing to start",
            details={"operation": ctx.operation.ref, "workflow": workflow.ref},
        )
    subject = workflow.subject
    if subject is not None and not isinstance(data, subject):
        data = _validate_model(subject, data or {}, f"{workflow.name} subject data")
    elif data is None:
        data = {}
    elif not isinstance(data, BaseModel):
        data = dict(data)
    inst = _new_instance(workflow, ctx, id, data)
    return await _enter(
        workflow, ctx, inst, kind="start", transition=None, target=workflow.initial,
        input_data={}, comment=comment, audit_target=False,
    )  # fmt: skip


async def fire_transition(
    ctx: HandlerCtx,
    workflow: WorkflowSpec,
    instance_id: str,
    transition: str | Transition,
    *,
    input: BaseModel | Mapping[str, Any] | None = None,
    comment: str | None = None,
    expected_seq: int | None = None,
) -> WorkflowInstance:
    """Fire a transition inside the running operation, in its transaction.

    For apps that keep their own command (`crm.deal.move`, with its public input and output)
    and let a workflow decide and record the move: the same checks as `<workflow>.<transition>`
    (version, source state, `expected_seq`, guard), the same writes (one instance update, one
    history step), the `on_transition` hook and the events, but under the calling operation's
    auth, idempotency and audit record (the transition's own `auth=` is not asked again: the
    calling operation's `auth=` is what gates it).

    Args:
        ctx: The calling handler's context.
        workflow: A workflow registered in the executor's registry.
        instance_id: The instance to move.
        transition: The transition (its name or the `Transition`); approval steps are fired by
            their `.approve` operations, not here.
        input: The transition's input (a model instance or a mapping validated by its model).
        comment: Comment of the history step.
        expected_seq: Refuse unless the instance is at this sequence number.

    Returns:
        The moved `WorkflowInstance`.

    Raises:
        HandlerContractError: The workflow is not registered, the transition is an approval
            step, or the calling operation does not declare the events the transition emits.
        NotFoundError: No such transition, or no such instance in this tenant.
        SpecValidationError: `input` does not fit the transition's input model.
        WorkflowStateError: The instance is in another state, at another `seq`, or follows
            another workflow version.
        WorkflowGuardError: The guard refused.
    """
    _check_embedded(workflow, ctx, "fire_transition")
    t, value = _transition_and_input(workflow, ctx, transition, input)
    if workflow.entity is not None:
        if expected_seq is not None:
            raise SpecValidationError(
                f"{workflow.name}: records of {workflow.entity.name} keep no seq (the entity's "
                "version guards concurrent moves); leave expected_seq out",
                errors=[{"loc": ["expected_seq"], "msg": "not used by workflows on an entity"}],
            )
        _, read = await _fire_entity(workflow, t, ctx, instance_id, value, comment)
        return _view(workflow, read, t.target, data=False, now=ctx.now())
    return await _fire(workflow, t, ctx, instance_id, expected_seq, value, comment, False)


def _transition_and_input(
    workflow: WorkflowSpec,
    ctx: HandlerCtx,
    transition: str | Transition,
    input: BaseModel | Mapping[str, Any] | None,
) -> tuple[Transition, BaseModel | None]:
    """The transition to fire from inside an operation and its validated input."""
    t = workflow.get_transition(transition if isinstance(transition, str) else transition.name)
    if t.approvals is not None:
        raise HandlerContractError(
            f"fire_transition: {workflow.name}.{t.name} is an approval step; it fires through "
            f"{workflow.name}.{t.name}.approve once enough approvers approved",
            details={"operation": ctx.operation.ref, "transition": t.name},
        )
    value: BaseModel | None = None
    if t.input is None:
        if input is not None:
            raise SpecValidationError(
                f"{workflow.name}.{t.name} takes no input; got {type(input).__name__}",
                errors=[{"loc": ["input"], "msg": "this transition takes no input"}],
            )
    elif isinstance(input, t.input):
        value = input
    else:
        value = _validate_model(t.input, input or {}, f"{workflow.name}.{t.name} input")
    return t, value


def _validate_model(model: type[BaseModel], data: Any, what: str) -> BaseModel:
    if isinstance(data, BaseModel):
        data = data.model_dump()
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise SpecValidationError(
            f"{what} is invalid: {exc.error_count()} error(s); expected {model.__name__}",
            errors=exc.errors(include_url=False, include_input=False),
        ) from None


async def _approval_case(
    wf: WorkflowSpec, t: Transition, ctx: HandlerCtx, inst: WorkflowInstance
) -> ApprovalCase:
    """The approval step of `t` for the instance's current state entry, as the rules see it:
    its decisions so far, its requesters (creator and whoever entered the state) and expiry."""
    approvals = t.approvals
    assert approvals is not None
    found = await ctx.repo(APPROVAL_ENTITY).find(
        {"instance_id": inst.id, "transition": t.name, "entry_seq": inst.entry_seq}
    )
    rows = sorted(found, key=lambda r: r.at)  # voting order (stable for equal times)
    requesters: dict[str, str] = {}
    if inst.entered_by is not None:
        requesters[inst.entered_by] = f"moved instance {inst.id!r} into its current state"
    if inst.created_by is not None:
        requesters[inst.created_by] = f"started instance {inst.id!r}"
    expires_at = None
    if approvals.expires_after is not None:
        entered = await ctx.repo(STEP_ENTITY).find(
            {"instance_id": inst.id, "seq": inst.entry_seq}, limit=1
        )
        entered_at = entered[0].at if entered else inst.updated_at
        expires_at = entered_at + approvals.expires_after
    return ApprovalCase(
        requirement=approvals.requirement,
        subject=f"{wf.name}.{t.name} of instance {inst.id!r}",
        requesters=requesters,
        votes=tuple(ApprovalVote(r.approver_id, r.decision, r.input_hash or None) for r in rows),
        expires_at=expires_at,
    )


def _approval_handler(wf: WorkflowSpec, t: Transition, decision: str) -> Any:
    approvals = t.approvals
    assert approvals is not None
    rules = approvals.rules

    async def decide(inp: Any, ctx: HandlerCtx) -> ApprovalResult:
        inst = await _load(wf, ctx, inp.instance_id)
        _check_version_of(wf, inst)
        _check_source(wf, t, inst, inp.expected_seq)
        case = await _approval_case(wf, t, ctx, inst)
        value = getattr(inp, "input", None)
        input_hash = hashlib.sha256(canonical_json(_dump(value)).encode()).hexdigest()
        verdict = rules.decide(
            case, ApprovalVote(ctx.actor.id or "", decision, input_hash), ctx.actor, ctx.now()
        )
        refusal = verdict.refusal
        if refusal is not None:
            details = {"instance_id": inst.id, "transition": t.name, "refusal": refusal.code.value}
            if refusal.is_denial:
                # Audited like the authorize stage's denials, exactly once when the call ends.
                raise ctx.deny(f"{wf.name}.{t.name}.{decision}", refusal.message, rule=refusal.code)
            if refusal.code is RefusalCode.EXPIRED:
                raise WorkflowApprovalExpiredError(refusal.message, details=details)
            if refusal.code is RefusalCode.FINAL:
                raise WorkflowStateError(refusal.message, details=details)
            raise ConflictError(refusal.message, details=details)
        if decision == "approve":
            reason = await _check_guard(wf, t, inst, value)
            if reason is not None:
                raise WorkflowGuardError(
                    f"{wf.name}.{t.name} refused for instance {inst.id!r}: {reason}",
                    details={"instance_id": inst.id, "transition": t.name, "reason": reason},
                )
        await ctx.repo(APPROVAL_ENTITY).add(
            WorkflowApproval(
                id=ctx.new_id(),
                instance_id=inst.id,
                transition=t.name,
                entry_seq=inst.entry_seq,
                approver_id=ctx.actor.id or "",
                decision=decision,
                at=ctx.now(),
                input_hash=input_hash,
                comment=inp.comment,
            )
        )
        fired = False
        if verdict.outcome is ApprovalOutcome.APPROVED:
            inst = await _enter(
                wf, ctx, inst, kind="approval", transition=t, target=t.target,
                input_data={"approvers": list(verdict.approvers), **_dump(value)},
                comment=inp.comment, value=value,
            )  # fmt: skip
            fired = True
        else:
            # Bump the instance so concurrent decisions on one entry conflict (exactly one wins).
            inst = await ctx.repo(INSTANCE_ENTITY).update(
                inst.model_copy(update={"updated_at": ctx.now()})
            )
            ctx.set_audit_target(wf.name, inst.id)
        return ApprovalResult(
            instance=inst,
            approvals=verdict.approvals,
            required=verdict.required,
            fired=fired,
            rejected=verdict.outcome is ApprovalOutcome.REJECTED,
        )

    decide.__qualname__ = f"{wf.name}.{t.name}.{decision}"
    return decide


def _comment_handler(wf: WorkflowSpec) -> Any:
    async def comment(inp: CommentInput, ctx: HandlerCtx) -> WorkflowInstance:
        inst = await _load(wf, ctx, inp.instance_id)
        if inp.expected_seq is not None and inst.seq != inp.expected_seq:
            raise WorkflowStateError(
                f"{wf.name} instance {inst.id!r} is at seq {inst.seq}, not the expected "
                f"{inp.expected_seq}; it changed since you read it: read it again",
                details={"instance_id": inst.id, "seq": inst.seq},
            )
        now = ctx.now()
        inst = await ctx.repo(INSTANCE_ENTITY).update(
            inst.model_copy(update={"seq": inst.seq + 1, "updated_at": now})
        )
        ctx.set_audit_target(wf.name, inst.id)
        if wf.history == "audit":
            _audit_step(wf, ctx, inst.id, "comment", None, inst.state, inst.state, {},
                        inp.comment)  # fmt: skip
            return inst
        await ctx.repo(STEP_ENTITY).add(
            WorkflowStep(
                id=ctx.new_id(), instance_id=inst.id, seq=inst.seq, workflow=wf.name,
                version=inst.version, kind="comment", transition=None, from_state=inst.state,
                to_state=inst.state, actor_id=ctx.actor.id, actor_kind=ctx.actor.kind.value,
                at=now, input={}, comment=inp.comment,
            )
        )  # fmt: skip
        ctx.set_audit_target(wf.name, inst.id)
        return inst

    return comment


def _get_handler(wf: WorkflowSpec) -> Any:
    async def get(inp: InstanceRef, ctx: HandlerCtx) -> WorkflowInstance:
        return await _load(wf, ctx, inp.instance_id)

    return get


def _history_handler(wf: WorkflowSpec) -> Any:
    async def history(inp: HistoryQuery, ctx: HandlerCtx) -> HistoryPage:
        await _load(wf, ctx, inp.instance_id)
        if wf.history == "audit":
            return await _audit_history(wf, ctx, inp, wf.name)
        where: dict[str, Any] = {"instance_id": inp.instance_id}
        if inp.after is not None:
            where["seq__gt"] = inp.after
        rows = await ctx.repo(STEP_ENTITY).find(where, order_by="seq", limit=inp.limit + 1)
        more = len(rows) > inp.limit
        items = rows[: inp.limit]
        return HistoryPage(items=items, next_cursor=items[-1].seq if more else None)

    return history


# --------------------------------------------------------------------------------------------
# History from the audit trail, and workflows whose state lives on the app's own entity
# --------------------------------------------------------------------------------------------


def _audit_step(
    wf: WorkflowSpec,
    ctx: HandlerCtx,
    instance_id: str,
    kind: str,
    transition: str | None,
    from_state: str | None,
    to_state: str,
    input_data: dict[str, Any],
    comment: str | None,
) -> None:
    """Record a history step in the call's audit record (`details["workflow"]`) instead of a
    step row (`history="audit"`); who and when are the record's own fields, the instance is its
    target. Compact (it is hashed and stored with every move): `{"name", "version", "from",
    "to"}` plus `"transition"`, `"kind"` (when not `transition`), `"input"` (when not empty) and
    `"comment"` (when given)."""
    step: dict[str, Any] = {"name": wf.name, "version": wf.version, "from": from_state,
                            "to": to_state}  # fmt: skip
    if transition is not None:
        step["transition"] = transition
    if kind != "transition":
        step["kind"] = kind
    if input_data:
        step["input"] = input_data
    if comment is not None:
        step["comment"] = comment
    ctx.add_audit_details("workflow", step)


def _compact_step(
    wf: WorkflowSpec, t: Transition, value: BaseModel | None, comment: str | None
) -> list[Any]:
    """The audit step of a move on an entity, compact (it is hashed, stored and verified with
    every move): `[workflow, version, transition]`, then the input (`{}` when there is none but
    a comment) and the comment when given. From → to is the record's own audit change."""
    step: list[Any] = [wf.name, wf.version, t.name]
    if value is not None or comment is not None:
        step.append(value.model_dump(mode="json") if value is not None else {})
        if comment is not None:
            step.append(comment)
    return step


def _expand_step(step: list[Any]) -> dict[str, Any]:
    """A compact step (`_compact_step`) as the mapping form other steps are recorded in."""
    expanded: dict[str, Any] = dict(zip(("name", "version", "transition", "input", "comment"),
                                        step, strict=False))  # fmt: skip
    return expanded


def _step_of(wf: WorkflowSpec, instance_id: str, entry: Any) -> WorkflowStep | None:
    """The history step an audit entry records for `instance_id`, or `None` (not a step)."""
    record = entry.record
    if record.outcome != "success":
        return None
    step = record.details.get("workflow")
    if isinstance(step, list):  # a move on an entity, compact (`_fire_entity`)
        step = _expand_step(step)
    if isinstance(step, Mapping) and step.get("name") == wf.name:
        if record.target_id != instance_id:
            return None
        kind = str(step.get("kind", "transition"))
        transition = step.get("transition")
        from_state = step.get("from")
        to_state = step.get("to")
        if "to" not in step and wf.entity is not None and wf.state_field is not None:
            moves = [c for c in record.changes if c.entity == wf.entity.name
                     and c.entity_id == instance_id and c.before and c.after]  # fmt: skip
            if moves:
                from_state = moves[0].before.get(wf.state_field)
                to_state = moves[-1].after.get(wf.state_field)
        to_state = str(to_state)
        version = int(step.get("version") or wf.version)
        data = step.get("input") or {}
        comment = step.get("comment")
    elif wf.entity is not None and wf.state_field is not None:
        # The record's creation enters its initial state (`start`).
        created = next(
            (
                c
                for c in record.changes
                if c.op == "create" and c.entity == wf.entity.name and c.entity_id == instance_id
            ),
            None,
        )
        if created is None or created.after is None:
            return None
        kind, transition, from_state, version, data, comment = (
            "start",
            None,
            None,
            wf.version,
            {},
            None,
        )
        to_state = str(created.after.get(wf.state_field))
    else:
        return None
    return WorkflowStep.model_construct(
        id=record.id, instance_id=instance_id, seq=entry.seq, workflow=wf.name, version=version,
        kind=kind, transition=transition, from_state=from_state, to_state=to_state,
        actor_id=record.actor_id, actor_kind=record.actor_kind or "", at=record.occurred_at,
        input=dict(data), comment=comment,
    )  # fmt: skip


async def _audit_history(
    wf: WorkflowSpec, ctx: HandlerCtx, inp: HistoryQuery, target_type: str
) -> HistoryPage:
    """A page of history read from the audit trail (`history="audit"`): the records about the
    instance (target `target_type`/`instance_id`) that carry a step; `seq` is the record's
    position in the org's audit chain (the cursor for `after`)."""
    audit = ctx._executor.audit
    reader = getattr(audit, "target_entries", None)
    if reader is None:
        raise ConfigurationError(
            f"{wf.name}.history reads the audit trail (history='audit'), but the executor's "
            f"audit sink {type(audit).__name__} cannot list a target's records; use "
            "MemoryAuditLog or SqlAuditLog (or history='steps')",
            details={"workflow": wf.ref},
        )
    items: list[WorkflowStep] = []
    after = inp.after or 0
    chunk = inp.limit + 1
    while len(items) <= inp.limit:
        entries = await reader(ctx.org_id, target_type, inp.instance_id, after_seq=after,
                               limit=chunk)  # fmt: skip
        for entry in entries:
            step = _step_of(wf, inp.instance_id, entry)
            if step is not None:
                items.append(step)
        if len(entries) < chunk:
            break
        after = entries[-1].seq
    more = len(items) > inp.limit
    page = items[: inp.limit]
    return HistoryPage(items=page, next_cursor=page[-1].seq if more else None)


def _state_of(wf: WorkflowSpec, record: Any) -> str:
    value = getattr(record, wf.state_field or "")
    return str(value._value_) if isinstance(value, enum.Enum) else str(value)


#: Per entity workflow (by id; the object is kept alive with it): each state as the entity's
#: state field holds it (the enum member for enum fields, else the state string itself).
_STATE_VALUES: dict[int, tuple[WorkflowSpec, dict[str, Any]]] = {}


def _state_value(wf: WorkflowSpec, state: str) -> Any:
    """`state` as the entity's state field holds it (an enum member for enum fields)."""
    known = _STATE_VALUES.get(id(wf))
    if known is None or known[0] is not wf:
        assert wf.entity is not None
        assert wf.state_field is not None
        annotation = wf.entity.model.model_fields[wf.state_field].annotation
        is_enum = isinstance(annotation, type) and issubclass(annotation, enum.Enum)
        values = {s: annotation(s) if is_enum else s for s in wf.states}
        known = _STATE_VALUES[id(wf)] = (wf, values)
    return known[1][state]  # a declared state (define_workflow checks every target)


def _view(
    wf: WorkflowSpec, record: Any, state: str, *, data: bool, now: datetime
) -> WorkflowInstance:
    """An entity record seen as a `WorkflowInstance` (same id; `seq` 0: the entity's version
    guards concurrency; `data` is the record's JSON form when asked, else empty)."""
    assert wf.entity is not None
    created = _attr(record, "created_at")
    updated = _attr(record, "updated_at")
    if not isinstance(created, datetime):
        created = now
    # What `model_construct` does for a model whose every field is given, without its per-field
    # loop (this runs on every move).
    view = WorkflowInstance.__new__(WorkflowInstance)
    object.__setattr__(view, "__dict__", {
        "id": str(getattr(record, wf.entity.primary_key)), "workflow": wf.name,
        "version": wf.version, "state": state,
        "data": record.model_dump(mode="json") if data else {}, "seq": 0, "entry_seq": 0,
        "created_by": None, "entered_by": None, "created_at": created,
        "updated_at": updated if isinstance(updated, datetime) else created,
    })  # fmt: skip
    object.__setattr__(view, "__pydantic_fields_set__", set(_VIEW_FIELDS))
    object.__setattr__(view, "__pydantic_extra__", None)
    object.__setattr__(view, "__pydantic_private__", None)
    return view


_VIEW_FIELDS: Final = frozenset(WorkflowInstance.model_fields)


def _attr(record: Any, name: str) -> Any:
    """`getattr(record, name, None)` without pydantic's slow `__getattr__` miss (a model without
    the field raises and catches an `AttributeError` on every move)."""
    values = getattr(record, "__dict__", None)
    if values is not None and name in values:
        return values[name]
    if (
        _plain_miss(type(record), name)
        and not record.__pydantic_extra__
        and not record.__pydantic_private__
    ):
        return None
    return getattr(record, name, None)


#: `(class, name)` → whether a `getattr` of `name` on an instance of the class can only find it
#: in the instance's `__dict__` or pydantic's extra/private values (a pydantic model without a
#: `__getattr__` of its own and no class attribute `name`).
_PLAIN_MISS: dict[tuple[type, str], bool] = {}


def _plain_miss(cls: type, name: str) -> bool:
    known = _PLAIN_MISS.get((cls, name))
    if known is None:
        known = _PLAIN_MISS[(cls, name)] = (
            issubclass(cls, BaseModel)
            and getattr(cls, "__getattr__", None) is getattr(BaseModel, "__getattr__", None)
            and not hasattr(cls, name)
        )
    return known


def _copy_with(record: Any, updates: dict[str, Any]) -> Any:
    """`record.model_copy(update=updates)`, with the work pydantic's generic copy does for
    extra and private values skipped when the record has none (this runs on every move)."""
    cls: Any = type(record)
    if (
        record.__pydantic_private__ is not None
        or cls.model_config.get("extra") == "allow"
        or not _plain_copy(cls)
    ):
        return record.model_copy(update=updates)
    copied = cls.__new__(cls)
    values = record.__dict__.copy()
    values.update(updates)
    fields_set = set(record.__pydantic_fields_set__)
    fields_set.update(updates)
    object.__setattr__(copied, "__dict__", values)
    extra = record.__pydantic_extra__
    object.__setattr__(copied, "__pydantic_extra__", None if extra is None else dict(extra))
    object.__setattr__(copied, "__pydantic_fields_set__", fields_set)
    object.__setattr__(copied, "__pydantic_private__", None)
    return copied


#: Per model class: whether it copies as `BaseModel` does (no `model_copy`/`__copy__` of its own).
_PLAIN_COPY: dict[type, bool] = {}


def _plain_copy(cls: type) -> bool:
    known = _PLAIN_COPY.get(cls)
    if known is None:
        known = _PLAIN_COPY[cls] = getattr(cls, "model_copy", None) is getattr(
            BaseModel, "model_copy", None
        ) and getattr(cls, "__copy__", None) is getattr(BaseModel, "__copy__", None)
    return known


async def _load_record(wf: WorkflowSpec, ctx: HandlerCtx, record_id: str) -> Any:
    assert wf.entity is not None
    record = await ctx.repo(wf.entity).get(record_id)
    if record is None:
        raise NotFoundError(
            f"no {wf.entity.name} record {record_id!r} in this tenant (workflow {wf.name})",
            details={"workflow": wf.name, "instance_id": record_id, "entity": wf.entity.name},
        )
    return record


async def _fire_entity(
    wf: WorkflowSpec,
    t: Transition,
    ctx: HandlerCtx,
    record_id: str,
    value: BaseModel | None,
    comment: str | None,
) -> tuple[Any, Any]:
    """Fire `t` on an entity record: one read (or the transaction's cached row), the checks,
    one version-checked update of the record, the audit step, the hook, the events. Returns the
    record as written and as read (the `WorkflowInstance` view is built from the latter only
    when asked: `_view(wf, read, t.target, ...)`)."""
    entity = wf.entity
    state_field = wf.state_field
    assert entity is not None
    assert state_field is not None
    repo = ctx.repo(entity)
    record: Any = await repo.get(record_id)
    if record is None:
        await _load_record(wf, ctx, record_id)  # raises NotFoundError
    from_state = _state_of(wf, record)
    if from_state not in t.sources:
        raise WorkflowStateError(
            f"{wf.name} record {record_id!r} is in state {from_state!r}; transition {t.name!r} "
            f"leaves only from {', '.join(t.sources)}",
            details={"instance_id": record_id, "state": from_state, "transition": t.name},
        )
    if t.guard is not None:
        reason = await _check_guard(wf, t, record, value)
        if reason is not None:
            raise WorkflowGuardError(
                f"{wf.name}.{t.name} refused for record {record_id!r}: {reason}",
                details={"instance_id": record_id, "transition": t.name, "reason": reason},
            )
    target = t.target
    state_value = _state_value(wf, target)
    updates: dict[str, Any] = {state_field: state_value}
    set_fields = wf.set_fields
    hook = wf.on_transition

    built: list[WorkflowInstance] = []

    def view() -> WorkflowInstance:  # the instance after the change, built if a hook reads it
        if not built:
            built.append(_view(wf, record, target, data=False, now=ctx.now()))
        return built[0]

    if set_fields is not None:
        extra = set_fields(ctx, WorkflowChange(wf, "transition", None, from_state, target, t,
                                               value, comment, record, make_instance=view))  # fmt: skip
        if extra:
            updates = dict(extra)
            updates[state_field] = state_value  # the state wins over set_fields
    moved = await repo.update(_copy_with(record, updates))
    if ctx._audit_target is None:
        ctx.set_audit_target(entity.name, record_id)
    # The record's own audit change holds from → to (its state field's before and after).
    ctx.add_audit_details("workflow", _compact_step(wf, t, value, comment))
    if hook is not None:
        result = hook(ctx, WorkflowChange(wf, "transition", None, from_state, target, t, value,
                                          comment, moved, make_instance=view))  # fmt: skip
        if result is not None and inspect.isawaitable(result):
            await result
    if wf.transitioned_event:
        ctx.emit(
            _event_names(wf)[0],
            Transitioned(
                instance_id=record_id, workflow=wf.name, version=wf.version, transition=t.name,
                from_state=from_state, to_state=target, actor_id=ctx.actor.id, comment=comment,
            ),
        )  # fmt: skip
    if t.emits:
        payload = {
            **moved.model_dump(),
            **(value.model_dump() if value is not None else {}),
            "instance_id": record_id,
            "from_state": from_state,
            "to_state": target,
            "transition": t.name,
        }
        for ref in t.emits:
            ctx.emit(ref.name, payload)
    return moved, record


def _derive_on_entity(wf: WorkflowSpec, registry: _Derived, transitioned: EventSpec) -> None:
    """The operations of a workflow on an entity: transitions, `get`, `history`, `available`
    and `comment` (no `start`, `timer` or `migrate`; see `define_workflow(entity=...)`)."""
    assert wf.entity is not None
    registry.register(wf.entity)
    base: list[EventSpec | EventRef] = []
    if wf.transitioned_event:
        registry.register(transitioned)
        base.append(transitioned)
    base.extend(e for e in wf.on_transition_emits if e not in base)
    v = wf.version
    tag = (f"workflow:{wf.name}",)

    def add(op: OperationSpec, handler: Any) -> None:
        registry.register(op)
        registry.bind(op, handler)

    for t in wf.transitions:
        fields: dict[str, Any] = {"instance_id": (str, ...), "comment": (str | None, None)}
        if t.input is not None:
            fields["input"] = (t.input, ... if _has_required_fields(t.input) else
                               pydantic.Field(default_factory=t.input))  # fmt: skip
        model = pydantic.create_model(_class_name(wf.name, t.name, "input"), **fields)
        emits = [*base, *(e for e in t.emits if e not in base)]
        desc = t.description or f"Move {wf.name} from {'/'.join(t.sources)} to {t.target}."
        add(
            define_command(
                wf.operation_name(t.name), input=model, output=WorkflowInstance, version=v,
                auth=t.auth, emits=emits, idempotent=True, tags=tag, description=desc,
            ),
            _entity_transition_handler(wf, t),
        )  # fmt: skip
    read = wf.read_auth
    add(
        define_query(wf.operation_name("get"), input=InstanceRef, output=WorkflowInstance,
                     version=v, auth=read, tags=tag,
                     description=f"One {wf.entity.name} record as a {wf.name} instance."),
        _entity_get_handler(wf),
    )  # fmt: skip
    add(
        define_query(wf.operation_name("history"), input=HistoryQuery, output=HistoryPage,
                     version=v, auth=read, tags=tag,
                     description=f"History of one {wf.entity.name} record in {wf.name}, oldest "
                                 "first (from the audit trail)."),
        _entity_history_handler(wf),
    )  # fmt: skip
    add(
        define_query(wf.operation_name("available"), input=InstanceRef, output=Available,
                     version=v, auth=read, tags=tag,
                     description="Transitions the calling actor may fire now."),
        _available_handler(wf),
    )  # fmt: skip
    add(
        define_command(wf.operation_name("comment"), input=CommentInput, output=WorkflowInstance,
                       version=v, auth=wf.comment_auth, idempotent=True, tags=tag,
                       description="Add a comment to a record's history (no state change)."),
        _entity_comment_handler(wf),
    )  # fmt: skip


def _entity_transition_handler(wf: WorkflowSpec, t: Transition) -> Any:
    async def fire(inp: Any, ctx: HandlerCtx) -> WorkflowInstance:
        value = getattr(inp, "input", None)
        moved, _ = await _fire_entity(wf, t, ctx, inp.instance_id, value, inp.comment)
        return _view(wf, moved, t.target, data=True, now=ctx.now())

    fire.__qualname__ = f"{wf.name}.{t.name}"
    return fire


def _entity_get_handler(wf: WorkflowSpec) -> Any:
    async def get(inp: InstanceRef, ctx: HandlerCtx) -> WorkflowInstance:
        record = await _load_record(wf, ctx, inp.instance_id)
        return _view(wf, record, _state_of(wf, record), data=True, now=ctx.now())

    return get


def _entity_history_handler(wf: WorkflowSpec) -> Any:
    assert wf.entity is not None
    entity_name = wf.entity.name

    async def history(inp: HistoryQuery, ctx: HandlerCtx) -> HistoryPage:
        await _load_record(wf, ctx, inp.instance_id)
        return await _audit_history(wf, ctx, inp, entity_name)

    return history


def _entity_comment_handler(wf: WorkflowSpec) -> Any:
    assert wf.entity is not None
    entity_name = wf.entity.name

    async def comment(inp: CommentInput, ctx: HandlerCtx) -> WorkflowInstance:
        if inp.expected_seq is not None:
            raise SpecValidationError(
                f"{wf.name}.comment: records of {entity_name} keep no seq; leave expected_seq out",
                errors=[{"loc": ["expected_seq"], "msg": "not used by workflows on an entity"}],
            )
        record = await _load_record(wf, ctx, inp.instance_id)
        state = _state_of(wf, record)
        ctx.set_audit_target(entity_name, inp.instance_id)
        _audit_step(wf, ctx, inp.instance_id, "comment", None, state, state, {}, inp.comment)
        return _view(wf, record, state, data=True, now=ctx.now())

    return comment


async def move_record(
    ctx: HandlerCtx,
    workflow: WorkflowSpec,
    record_id: str,
    transition: str | Transition,
    *,
    input: BaseModel | Mapping[str, Any] | None = None,
    comment: str | None = None,
) -> Any:
    """Fire a transition of a workflow on an entity (`define_workflow(entity=...)`) inside the
    running operation; return the record as written.

    Like `fire_transition` (same checks, hook, events; the calling operation's auth and audit
    record), but returns the app's record instead of its `WorkflowInstance` view. The move is
    one version-checked update of the record: of concurrent moves of one record exactly one
    wins, the others fail with `ConflictError` when their writes reach the database.

    Raises:
        HandlerContractError: The workflow is not registered, has no `entity`, or the
            transition is an approval step.
        NotFoundError: No such transition, or no such record in this tenant.
        SpecValidationError: `input` does not fit the transition's input model.
        WorkflowStateError: The record is in a state the transition does not leave from.
        WorkflowGuardError: The guard refused.
    """
    _check_embedded(workflow, ctx, "move_record")
    if workflow.entity is None:
        raise HandlerContractError(
            f"move_record: workflow {workflow.ref} keeps its own instances (no entity=); use "
            "fire_transition",
            details={"operation": ctx.operation.ref, "workflow": workflow.ref},
        )
    t, value = _transition_and_input(workflow, ctx, transition, input)
    moved, _ = await _fire_entity(workflow, t, ctx, record_id, value, comment)
    return moved


async def may_call(executor: Executor, op: OperationSpec, call: CallContext) -> bool:
    """Whether `call`'s actor passes `op`'s auth requirement, asked without running anything.

    Args:
        executor: The executor whose policy (and membership check) decides.
        op: The operation.
        call: The caller.

    Returns:
        `True` when the executor's authorize stage would let the call through.
    """
    auth = op.auth
    if auth.kind == "public":
        return True
    actor = call.actor
    if actor.is_anonymous:
        return False
    is_member = executor._is_member
    if call.org_id is not None and is_member is not None:
        member: Any = is_member(actor, call.org_id)
        if inspect.isawaitable(member):
            member = await member
        if not member:
            return False
    if auth.kind == "authenticated":
        return True
    policy = executor.policy
    if policy is None:
        return False
    resource = Resource(auth.resource or op.name, None, call.org_id)
    for permission in auth.permissions:
        decision: Any = policy.decide(actor, permission, resource, call)
        if inspect.isawaitable(decision):
            decision = await decision
        if not decision.allowed:
            return False
    return True


def _available_handler(wf: WorkflowSpec) -> Any:
    async def available(inp: InstanceRef, ctx: HandlerCtx) -> Available:
        subject: Any  # what guards see: the instance, or the entity's record
        if wf.entity is not None:
            subject = await _load_record(wf, ctx, inp.instance_id)
            inst = _view(wf, subject, _state_of(wf, subject), data=False, now=ctx.now())
        else:
            inst = subject = await _load(wf, ctx, inp.instance_id)
        registry = ctx._executor.registry
        out: list[AvailableTransition] = []
        if inst.version == wf.version:
            for t in wf.transitions:
                if inst.state not in t.sources:
                    continue
                op_name = wf.operation_name(t.name if t.approvals is None else f"{t.name}.approve")
                op = registry.get(op_name, wf.version)
                if not await may_call(ctx._executor, op, ctx.call):
                    continue
                given = 0
                expire_at = None
                if t.approvals is not None:
                    # Would an approval by this actor count now? (The same rules as the
                    # `.approve` command; the input binding is judged when they approve.)
                    case = await _approval_case(wf, t, ctx, inst)
                    verdict = t.approvals.rules.decide(
                        case, ApprovalVote(ctx.actor.id or "", "approve"), ctx.actor, ctx.now()
                    )
                    if verdict.refusal is not None:
                        continue
                    given = len(case.votes)
                    expire_at = case.expires_at
                needs_input = t.input is not None and _has_required_fields(t.input)
                if needs_input:
                    # The guard judges input the caller has not given yet: list the transition
                    # as possible and say so, rather than guess the guard's answer.
                    needs_input = t.guard is not None
                else:
                    default = t.input() if t.input is not None else None
                    if await _check_guard(wf, t, subject, default) is not None:
                        continue
                out.append(
                    AvailableTransition(
                        name=t.name,
                        target=t.target,
                        operation=op_name,
                        input_schema=t.input.model_json_schema() if t.input is not None else None,
                        approvals_required=t.approvals.count if t.approvals is not None else 0,
                        approvals_given=given,
                        needs_input=needs_input,
                        approvals_expire_at=expire_at,
                    )
                )
        return Available(instance_id=inst.id, state=inst.state, seq=inst.seq, transitions=out)

    return available


def _timer_handler(wf: WorkflowSpec) -> Any:
    timers = {tm.name: tm for tm in wf.timers}

    async def fire_timer(inp: WorkflowTimerFire, ctx: HandlerCtx) -> TimerResult:
        if ctx.actor.kind is not ActorKind.SYSTEM:
            why = f"{wf.name}.timer runs only as a system actor (the jobs worker)"
            raise denied(
                ctx._executor,
                ctx.operation,
                ctx.call,
                f"{wf.name}.timer",
                why,
                Decision.deny(why, "workflow_timer"),
                ctx._denials,
            )
        tm = timers.get(inp.timer)
        if tm is None or inp.workflow != wf.name:
            raise NotFoundError(
                f"workflow {wf.ref} has no timer {inp.timer!r}",
                details={"workflow": wf.ref, "timer": inp.timer},
            )
        inst = await ctx.repo(INSTANCE_ENTITY).get(inp.instance_id)
        if inst is None or inst.workflow != wf.name:
            return TimerResult(fired=False, reason="instance not found")
        if inst.version != wf.version:
            return TimerResult(fired=False, reason="instance migrated", instance=inst)
        if inst.state != tm.state or inst.entry_seq != inp.entry_seq:
            return TimerResult(fired=False, reason="instance left the state", instance=inst)
        if tm.escalate:
            # No write to the instance: an escalation never conflicts with a user's transition;
            # the job's idempotency key keeps a redelivered escalation from emitting twice.
            ctx.emit(
                _event_names(wf)[1],
                Escalated(instance_id=inst.id, workflow=wf.name, state=inst.state, timer=tm.name),
            )
            ctx.set_audit_target(wf.name, inst.id)
            return TimerResult(fired=True, reason="escalated", instance=inst)
        t = wf.get_transition(tm.fire or "")
        value = t.input() if t.input is not None else None
        reason = await _check_guard(wf, t, inst, value)
        if reason is not None:
            return TimerResult(fired=False, reason=f"guard refused: {reason}", instance=inst)
        inst = await _enter(
            wf, ctx, inst, kind="timer", transition=t, target=t.target,
            input_data={"timer": tm.name}, comment=None, value=value,
        )  # fmt: skip
        return TimerResult(fired=True, reason=f"fired {t.name}", instance=inst)

    return fire_timer


def _migrate_handler(wf: WorkflowSpec) -> Any:
    async def migrate(inp: MigrateInput, ctx: HandlerCtx) -> MigrateResult:
        if inp.from_version >= wf.version:
            raise WorkflowStateError(
                f"{wf.name}.migrate@{wf.version} moves instances of older versions; "
                f"from_version must be below {wf.version}",
                details={"from_version": inp.from_version},
            )
        mapping = wf.migrations.get(inp.from_version, {})
        repo = ctx.repo(INSTANCE_ENTITY)
        where = {"workflow": wf.name, "version": inp.from_version}
        rows = await repo.find(where, order_by="id", limit=inp.limit)
        now = ctx.now()
        steps = ctx.repo(STEP_ENTITY)
        migrated: list[dict[str, Any]] = []
        for inst in rows:
            target = mapping.get(inst.state, inst.state)
            if target not in wf.states:
                raise WorkflowStateError(
                    f"{wf.name} instance {inst.id!r} is in state {inst.state!r}, which version "
                    f"{wf.version} lacks; declare migrations={{{inp.from_version}: "
                    f"{{{inst.state!r}: '<new state>'}}}}",
                    details={"instance_id": inst.id, "state": inst.state},
                )
            moved = await repo.update(
                inst.model_copy(
                    update={
                        "version": wf.version,
                        "state": target,
                        "seq": inst.seq + 1,
                        "entry_seq": inst.entry_seq if target == inst.state else inst.seq + 1,
                        "updated_at": now,
                    }
                )
            )
            if moved.entry_seq != inst.entry_seq:
                await _enqueue_timers(wf, ctx, moved, now)
            if wf.history == "audit":
                migrated.append({"instance_id": inst.id, "from": inst.state, "to": target})
            else:
                await steps.add(
                    WorkflowStep(
                        id=ctx.new_id(), instance_id=inst.id, seq=moved.seq, workflow=wf.name,
                        version=wf.version, kind="migrate", transition=None,
                        from_state=inst.state, to_state=target, actor_id=ctx.actor.id,
                        actor_kind=ctx.actor.kind.value, at=now,
                        input={"from_version": inp.from_version, "to_version": wf.version},
                        comment=inp.comment,
                    )
                )  # fmt: skip
            if wf.on_transition is not None:
                change = WorkflowChange(wf, "migrate", moved, inst.state, target, None, None,
                                        inp.comment)  # fmt: skip
                result = wf.on_transition(ctx, change)
                if inspect.isawaitable(result):
                    await result
            if not wf.transitioned_event:
                continue
            ctx.emit(
                _event_names(wf)[0],
                Transitioned(
                    instance_id=inst.id, workflow=wf.name, version=wf.version, transition=None,
                    from_state=inst.state, to_state=target, actor_id=ctx.actor.id,
                    comment=inp.comment,
                ),
            )  # fmt: skip
        ctx.set_audit_target(wf.name, f"migrate@{inp.from_version}")
        if migrated:
            # history="audit": the migration is this one audit record (not in each instance's
            # history page).
            ctx.add_audit_details("workflow_migrated", migrated)
        remaining = await repo.count(where)
        return MigrateResult(migrated=len(rows), remaining=remaining)

    return migrate


def workflow_ir(wf: WorkflowSpec) -> dict[str, Any]:
    """The IR entry of a workflow (`WorkflowSpec.to_ir`, used by `contractspec.core.ir.to_ir`).

    Shape (besides `kind`, `name`, `version` that the IR adds):
    `{"description", "states": [...], "initial", "final": [sorted], "start_auth", "read_auth",
    "comment_auth", "admin_auth": {"kind", "permissions", "resource"}, "transitions": [{"name",
    "sources", "target", "auth", "guard": qualname | None, "has_input": bool, "emits": ["name[@v]"],
    "approvals": {"count", "roles", "allow_requester"[, "expires_after_s", "on_expiry",
    "decider"]} | None,
    "description"}],
    "timers": [{"name", "state", "fire", "escalate", "after_s", "at": qualname | None}],
    "migrations": {"<old version>": {old_state: new_state}}, "owners", "tags",
    "schemas": {"subject": <model>, "input.<transition>": <model>}}`; the IR turns the models in
    `schemas` into JSON Schema.
    """

    def auth_ir(auth: AuthRequirement) -> dict[str, Any]:
        return {"kind": auth.kind, "permissions": list(auth.permissions), "resource": auth.resource}

    schemas: dict[str, type[BaseModel]] = {}
    if wf.subject is not None:
        schemas["subject"] = wf.subject
    for t in wf.transitions:
        if t.input is not None:
            schemas[f"input.{t.name}"] = t.input
    return {
        "description": wf.description,
        **_hook_ir(wf),
        "states": list(wf.states),
        "initial": wf.initial,
        "final": sorted(wf.final),
        "start_auth": auth_ir(wf.start_auth),
        "read_auth": auth_ir(wf.read_auth),
        "admin_auth": auth_ir(wf.admin_auth or requires(f"{wf.name}.migrate")),
        "comment_auth": auth_ir(wf.comment_auth),
        "transitions": [
            {
                "name": t.name,
                "sources": list(t.sources),
                "target": t.target,
                "auth": auth_ir(t.auth),
                "guard": t.guard_name,
                "has_input": t.input is not None,
                "emits": [e.ref for e in t.emits],
                "approvals": _approvals_ir(t.approvals),
                "description": t.description,
            }
            for t in wf.transitions
        ],
        "timers": [
            {
                "name": tm.name,
                "state": tm.state,
                "fire": tm.fire,
                "escalate": tm.escalate,
                "after_s": tm.after.total_seconds() if tm.after is not None else None,
                "at": getattr(tm.at, "__qualname__", None) if tm.at is not None else None,
            }
            for tm in wf.timers
        ],
        "migrations": {
            str(old): dict(sorted(m.items())) for old, m in sorted(wf.migrations.items())
        },
        "owners": list(wf.owners),
        "tags": list(wf.tags),
        "schemas": schemas,
    }


def _approvals_ir(approvals: Approvals | None) -> dict[str, Any] | None:
    """`{"count", "roles", "allow_requester"}`, plus `"expires_after_s"` and `"on_expiry"` when
    the step expires and `"decider"` (its class's qualified name) when one is plugged — absent
    otherwise, so older IR files stay byte-identical."""
    if approvals is None:
        return None
    out: dict[str, Any] = {
        "count": approvals.count,
        "roles": list(approvals.roles),
        "allow_requester": approvals.allow_requester,
    }
    if approvals.expires_after is not None:
        out["expires_after_s"] = approvals.expires_after.total_seconds()
        out["on_expiry"] = approvals.on_expiry
    if approvals.decider is not None:
        out["decider"] = type(approvals.decider).__qualname__
    return out


def _hook_ir(wf: WorkflowSpec) -> dict[str, Any]:
    """`"entity"` and `"state_field"` (workflows on an entity), `"history": "audit"`,
    `"set_fields"` and `"on_transition"` (qualnames), `"on_transition_emits"` and
    `"transitioned_event": false`, each only when set (so older IR files stay byte-identical)."""
    out: dict[str, Any] = {}
    if wf.entity is not None:
        out["entity"] = wf.entity.name
        out["state_field"] = wf.state_field
    if wf.history != "steps":
        out["history"] = wf.history
    if wf.set_fields is not None:
        sf = wf.set_fields
        out["set_fields"] = str(getattr(sf, "__qualname__", type(sf).__name__))
    if wf.on_transition is not None:
        hook = wf.on_transition
        out["on_transition"] = str(getattr(hook, "__qualname__", type(hook).__name__))
    if wf.on_transition_emits:
        out["on_transition_emits"] = [e.ref for e in wf.on_transition_emits]
    if not wf.transitioned_event:
        out["transitioned_event"] = False
    return out


def system_call(org_id: str | None, key: str, *, actor_id: str = "workflow-timer") -> CallContext:
    """The `CallContext` a timer job runs `<wf>.timer` with: a system actor and an idempotency key."""
    return CallContext(
        actor=Actor.system(actor_id), org_id=org_id, idempotency_key=key, channel="job"
    )
