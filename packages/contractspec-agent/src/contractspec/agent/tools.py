"""Tools: spec operations or plain functions with a pydantic signature.

```python
from contractspec.agent import RiskLevel, operation_tool, tool

@tool(risk=RiskLevel.L0)
async def search_kb(query: str, limit: int = 3) -> list[dict]:
    '''Search the knowledge base.'''
    ...

refund = operation_tool(refund_command, risk=RiskLevel.L2, invariants=[refund_limit(500)])
```

An operation tool's argument schema is the operation's input JSON Schema and its calls run
through core's `Executor` (validation, policy, events, audit, idempotency). A function tool's
schema comes from its signature (pydantic `create_model`), or from its single `BaseModel` parameter.

Which tools a timeout (or a cancelled run) can stop:

* async functions and operation tools: cancelled (`asyncio` cancellation; an operation's
  transaction rolls back unless it was already committing);
* sync functions with `isolation="process"`: run in a child process that is killed;
* other sync functions: run in a worker thread, which cannot be stopped; the gateway stops
  waiting, reports the call `in_doubt`, and records its late outcome when the thread ends.

A side-effecting call that did not finish in time is `in_doubt` in every case (it may have taken
effect before it was stopped); see `contractspec.agent.gateway`.
"""

from __future__ import annotations

import enum
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Literal, TypeVar, overload

import pydantic
from attrs import define, field
from pydantic import BaseModel

from contractspec.agent.budgets import Budget, budgets_of
from contractspec.agent.invariants import Invariant, RiskRule
from contractspec.agent.messages import ToolDefinition
from contractspec.core import CallContext, OperationSpec, SpecDefinitionError

__all__ = ["Reconciled", "RiskLevel", "Tool", "ToolContext", "operation_tool", "tool"]

_TOOL_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
F = TypeVar("F", bound=Callable[..., Any])


class RiskLevel(enum.IntEnum):
    """How much harm a call can do, from the policy-safe agent brief.

    * `L0` safe: drafts, reports, reads. Runs autonomously.
    * `L1` operational with guardrails: runs autonomously when every invariant passes.
    * `L2` money movement: needs a human approval.
    * `L3` irreversible: needs an approval from named approvers only.
    """

    L0 = 0
    L1 = 1
    L2 = 2
    L3 = 3


@define(frozen=True)
class ToolContext:
    """What a function tool may receive (declare a parameter annotated `ToolContext`).

    Attributes:
        run_id: The agent run.
        agent: `name@version` of the agent.
        step: 1-based model step whose tool calls are being executed.
        action_id: The gateway's idempotency id of this call (stable across retries).
        call: The `CallContext` the call acts under (actor, org, correlation).
        deps: The dependencies object passed to `AgentRunner.run(..., deps=...)`.
    """

    run_id: str
    agent: str
    step: int
    action_id: str
    call: CallContext
    deps: Any = None


Evidence = Callable[[BaseModel, ToolContext], Awaitable[Mapping[str, Any]] | Mapping[str, Any]]


@define(frozen=True)
class Reconciled:
    """What a tool's `reconcile` function found out about a call whose outcome was unknown.

    Attributes:
        done: `True` if the effect happened (the call is recorded as succeeded with `result`),
            `False` if it did not (the gateway runs the call again, once).
        result: The call's result (JSON-serialisable) when `done`.
    """

    done: bool
    result: Any = None


#: `(args, ctx) -> Reconciled | None` (may be async): look the call up where its effect lands
#: (by `ctx.action_id`, which the tool should pass on as the provider's idempotency key). `None`
#: or an exception means "still unknown".
Reconcile = Callable[[BaseModel, ToolContext], Awaitable[Reconciled | None] | Reconciled | None]


@define(frozen=True)
class Tool:
    """A tool an agent may call. Build it with `tool(...)` or `operation_tool(...)`.

    Attributes:
        name: Name the model calls (letters, digits, `_`, `-`; at most 64 characters).
        description: What it does, for the model.
        input: pydantic model validating the arguments.
        parameters: JSON Schema of the arguments (the tool schema the model sees).
        kind: `function` or `operation`.
        risk: Declared `RiskLevel`.
        side_effects: Whether calls change the world (commands, most functions); side-effecting
            calls are recorded in the idempotency ledger before they execute.
        timeout: Seconds a call may take before it is cancelled (`None`: the runner's default).
        invariants: Conditions every call must satisfy (a FAIL blocks it).
        risk_rules: Data-dependent rules that raise `risk`.
        evidence: Callable computing facts for invariants (`projected_margin`, `budget_spent`...).
        approvers: Actor ids allowed to approve (required for `L3`, declared or reached through a
            `RiskRule`).
        quorum: Distinct approvals needed (default 1).
        shadow: Never execute: log the decision and what would have happened (read-only tools
            always run).
        reconcile: Finds out whether an in-doubt call took effect (see `Reconciled`).
        isolation: `"thread"` (sync functions; the default) or `"process"` (the call runs in a
            child process that a timeout kills). Async functions and operations are cancelled.
        operation: Operation name for operation tools.
        version: Operation version (`None`: latest).
        function: The callable for function tools.
        context_param: Name of the `ToolContext` parameter of a function tool, if any.
        budgets: `Budget`s each call reserves against before it takes effect (see
            `contractspec.agent.budgets`).
    """

    name: str
    description: str
    input: type[BaseModel]
    parameters: Mapping[str, Any]
    kind: Literal["function", "operation"]
    risk: RiskLevel = RiskLevel.L0
    side_effects: bool = True
    timeout: float | None = None
    invariants: tuple[Invariant, ...] = ()
    risk_rules: tuple[RiskRule, ...] = ()
    evidence: Evidence | None = field(default=None, eq=False)
    approvers: tuple[str, ...] = ()
    quorum: int = 1
    shadow: bool = False
    reconcile: Reconcile | None = field(default=None, eq=False)
    isolation: Literal["thread", "process"] | None = None
    operation: str | None = None
    version: int | None = None
    function: Callable[..., Any] | None = field(default=None, eq=False)
    context_param: str | None = None
    positional: bool = field(default=False, repr=False)
    budgets: tuple[Budget, ...] = ()

    def definition(self) -> ToolDefinition:
        """The definition sent to the model."""
        return ToolDefinition(self.name, self.description, self.parameters)

    @property
    def max_risk(self) -> RiskLevel:
        """The highest risk a call can reach: the declared risk or a `RiskRule`'s level."""
        return RiskLevel(max((int(self.risk), *(int(rule.level) for rule in self.risk_rules))))

    @property
    def cancellable(self) -> bool:
        """Whether a timeout stops the call: async functions, operations and process-isolated
        functions are; sync functions in a worker thread are not."""
        if self.kind == "operation" or self.isolation == "process":
            return True
        return self.function is not None and inspect.iscoroutinefunction(self.function)


def _check_common(
    name: str,
    risk: RiskLevel | int,
    timeout: float | None,
    approvers: Iterable[str],
    quorum: int,
    invariants: Iterable[Invariant],
    risk_rules: Iterable[RiskRule],
) -> tuple[RiskLevel, tuple[str, ...], tuple[Invariant, ...], tuple[RiskRule, ...]]:
    if not isinstance(name, str) or not _TOOL_NAME.match(name):
        raise SpecDefinitionError(
            f"tool name {name!r} is not valid: use 1-64 letters, digits, '_' or '-' "
            "(model providers reject other names), e.g. 'search_kb'",
            details={"field": "name"},
        )
    try:
        level = RiskLevel(risk)
    except ValueError:
        raise SpecDefinitionError(
            f"tool {name!r}: risk {risk!r} is not a RiskLevel; use RiskLevel.L0 to RiskLevel.L3",
            details={"field": "risk"},
        ) from None
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise SpecDefinitionError(
            f"tool {name!r}: timeout must be a positive number of seconds or None, got {timeout!r}",
            details={"field": "timeout"},
        )
    names = tuple(approvers)
    if level is RiskLevel.L3 and not names:
        raise SpecDefinitionError(
            f"tool {name!r} is L3 (irreversible): name its approvers, e.g. approvers=['u-cfo']",
            details={"field": "approvers"},
        )
    if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
        raise SpecDefinitionError(
            f"tool {name!r}: quorum must be a positive integer, got {quorum!r}",
            details={"field": "quorum"},
        )
    if names and quorum > len(set(names)):
        raise SpecDefinitionError(
            f"tool {name!r}: quorum {quorum} needs at least {quorum} named approvers, got "
            f"{len(set(names))}",
            details={"field": "quorum"},
        )
    invs = tuple(invariants)
    for inv in invs:
        if not isinstance(inv, Invariant):
            raise SpecDefinitionError(
                f"tool {name!r}: invariants must be Invariant objects, got {inv!r}; write "
                "Invariant('name', 'amount <= 500')",
                details={"field": "invariants"},
            )
    rules = tuple(risk_rules)
    for rule in rules:
        if not isinstance(rule, RiskRule):
            raise SpecDefinitionError(
                f"tool {name!r}: risk_rules must be RiskRule objects, got {rule!r}",
                details={"field": "risk_rules"},
            )
        if int(rule.level) >= RiskLevel.L3 and not names:
            # escalated risk carries the requirements of declared risk: an irreversible call
            # is decided by named approvers whichever way it became irreversible
            raise SpecDefinitionError(
                f"tool {name!r}: risk rule {rule.name or rule.when.text!r} raises calls to L3 "
                "(irreversible): name the tool's approvers, e.g. approvers=['u-cfo']",
                details={"field": "approvers"},
            )
    return level, names, invs, rules


def _check_budgets(
    name: str, budget: Budget | Iterable[Budget] | None, model: type[BaseModel], effects: bool
) -> tuple[Budget, ...]:
    budgets = budgets_of(budget, name)
    if budgets and not effects:
        raise SpecDefinitionError(
            f"tool {name!r} has a budget but no side effects: budgets are reserved with the "
            "ledger entry of a side-effecting call; declare side_effects=True (or risk L1+)",
            details={"field": "budget"},
        )
    for b in budgets:
        b.check(name, model)
    return budgets


def _check_isolation(name: str, fn: Callable[..., Any], isolation: str) -> None:
    if isolation not in ("thread", "process"):
        raise SpecDefinitionError(
            f"tool {name!r}: isolation must be 'thread' or 'process', got {isolation!r}",
            details={"field": "isolation"},
        )
    if isolation != "process":
        return
    qualname = getattr(fn, "__qualname__", "")
    module = getattr(fn, "__module__", None)
    if inspect.iscoroutinefunction(fn):
        problem = "async functions are cancelled in-process; isolate sync functions only"
    elif "<locals>" in qualname or not module or module == "__main__":
        problem = (
            "a process-isolated function must be defined at module level of an importable "
            "module (the child process imports it by name)"
        )
    else:
        return
    raise SpecDefinitionError(f"tool {name!r}: {problem}", details={"field": "isolation"})


def _description(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].strip()


def _signature_model(fn: Callable[..., Any], name: str) -> tuple[type[BaseModel], str | None, bool]:
    """The argument model of `fn`, the name of its `ToolContext` parameter, and whether the model
    is passed whole (a single `BaseModel` parameter)."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise SpecDefinitionError(
            f"tool {name!r}: the annotations of {getattr(fn, '__qualname__', fn)!r} cannot be "
            f"resolved ({exc}); import the types they name at module level",
            details={"field": "function"},
        ) from None
    context_param: str | None = None
    fields: dict[str, Any] = {}
    params = list(inspect.signature(fn).parameters.values())
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise SpecDefinitionError(
                f"tool {name!r}: *args and **kwargs cannot become a tool schema; name each "
                "argument with a type",
                details={"field": "function"},
            )
        annotation = hints.get(param.name, param.annotation)
        if annotation is ToolContext or ToolContext in typing.get_args(annotation):
            context_param = param.name
            continue
        if annotation is inspect.Parameter.empty:
            raise SpecDefinitionError(
                f"tool {name!r}: parameter {param.name!r} has no type annotation; annotate it "
                "so the model gets a JSON Schema",
                details={"field": param.name},
            )
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    if len(fields) == 1:
        ((only_type, _),) = fields.values()
        if isinstance(only_type, type) and issubclass(only_type, BaseModel):
            return only_type, context_param, True
    class_name = "".join(part.title() for part in re.split(r"[_-]", name)) + "Args"
    try:
        model = pydantic.create_model(class_name, **fields)
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise SpecDefinitionError(
            f"tool {name!r}: its signature cannot become a pydantic model ({exc})",
            details={"field": "function"},
        ) from None
    return model, context_param, False


@overload
def tool(fn: F, /) -> Tool: ...
@overload
def tool(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    risk: RiskLevel | int = RiskLevel.L0,
    side_effects: bool | None = None,
    timeout: float | None = None,
    invariants: Iterable[Invariant] = (),
    risk_rules: Iterable[RiskRule] = (),
    evidence: Evidence | None = None,
    approvers: Iterable[str] = (),
    quorum: int = 1,
    shadow: bool = False,
    reconcile: Reconcile | None = None,
    isolation: Literal["thread", "process"] = "thread",
    budget: Budget | Iterable[Budget] | None = None,
) -> Callable[[F], Tool]: ...
def tool(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    risk: RiskLevel | int = RiskLevel.L0,
    side_effects: bool | None = None,
    timeout: float | None = None,
    invariants: Iterable[Invariant] = (),
    risk_rules: Iterable[RiskRule] = (),
    evidence: Evidence | None = None,
    approvers: Iterable[str] = (),
    quorum: int = 1,
    shadow: bool = False,
    reconcile: Reconcile | None = None,
    isolation: Literal["thread", "process"] = "thread",
    budget: Budget | Iterable[Budget] | None = None,
) -> Tool | Callable[[F], Tool]:
    """Make a tool from a plain (async or sync) function with a typed signature.

    Used bare (`@tool`) or with options (`@tool(risk=RiskLevel.L1, timeout=5)`). The description
    is the first paragraph of the docstring unless given. A parameter annotated `ToolContext`
    receives the call's context and is not part of the schema. Async functions are cancelled by
    a timeout. Sync functions run in a worker thread, which a timeout cannot stop (the call is
    reported `in_doubt` and its late outcome recorded when the thread ends), unless
    `isolation="process"` runs them in a child process that a timeout kills.

    Args:
        fn: The function.
        name: Tool name (default: the function's name).
        description: For the model (default: the docstring's first paragraph).
        risk: Declared `RiskLevel` (default `L0`).
        side_effects: Whether calls change the world (default: `True` from L1 up, else `False`).
        timeout: Seconds before the call is cancelled.
        invariants: `Invariant`s every call must pass.
        risk_rules: `RiskRule`s that raise the risk.
        evidence: Facts for invariants: `(args, ctx) -> {"projected_margin": ...}` (may be async).
        approvers: Named approvers (required for L3, declared or reachable by a `RiskRule`).
        quorum: Distinct approvals needed.
        shadow: Log decisions instead of executing (read-only tools always run).
        reconcile: `(args, ctx) -> Reconciled | None` (may be async): after a timeout, a
            cancellation or a crash left a call in doubt, finds out whether its effect happened
            (look it up by `ctx.action_id`). Without one, an in-doubt call of an L1+ tool is
            re-run only after a person approves.
        isolation: `"thread"` (default) or `"process"` for a sync function: each call runs in a
            child process (started with `forkserver` where available, else `spawn`) that a
            timeout or a cancelled run kills. The function must be defined at module level of
            an importable module, take picklable arguments and return JSON-serialisable data;
            its `ToolContext` carries the actor and org but no `deps`.
        budget: A `Budget` (or several) every call reserves against, atomically, when the
            gateway records it (before it takes effect): the total holds under parallel calls
            and concurrent runs. Needs a side-effecting tool.

    Returns:
        A `Tool`.

    Raises:
        SpecDefinitionError: A bad name, risk, timeout, quorum, untyped parameter, `*args`, an
            L3 tool (declared, or reachable by a risk rule) without approvers, process
            isolation of an async, nested or `__main__` function, or a budget on a tool without
            side effects or naming an argument the tool does not have.
    """

    def build(func: F) -> Tool:
        tool_name = str(name or getattr(func, "__name__", ""))
        level, names, invs, rules = _check_common(
            tool_name, risk, timeout, approvers, quorum, invariants, risk_rules
        )
        _check_isolation(tool_name, func, isolation)
        model, context_param, positional = _signature_model(func, tool_name)
        effects = level >= RiskLevel.L1 if side_effects is None else bool(side_effects)
        return Tool(
            name=tool_name,
            description=description if description is not None else _description(func),
            input=model,
            parameters=model.model_json_schema(),
            kind="function",
            risk=level,
            side_effects=effects,
            timeout=timeout,
            invariants=invs,
            risk_rules=rules,
            evidence=evidence,
            approvers=names,
            quorum=quorum,
            shadow=shadow,
            reconcile=reconcile,
            isolation=None if inspect.iscoroutinefunction(func) else isolation,
            function=func,
            context_param=context_param,
            positional=positional,
            budgets=_check_budgets(tool_name, budget, model, effects),
        )

    if fn is not None:
        return build(fn)
    return build


def operation_tool(
    spec: OperationSpec,
    *,
    name: str | None = None,
    description: str | None = None,
    risk: RiskLevel | int | None = None,
    timeout: float | None = None,
    invariants: Iterable[Invariant] = (),
    risk_rules: Iterable[RiskRule] = (),
    evidence: Evidence | None = None,
    approvers: Iterable[str] = (),
    quorum: int = 1,
    shadow: bool = False,
    reconcile: Reconcile | None = None,
    pin_version: bool = False,
    budget: Budget | Iterable[Budget] | None = None,
) -> Tool:
    """Expose a core operation (command or query) as a tool.

    The tool schema is the operation's input JSON Schema; calls run through the runner's
    `Executor`, so validation, policy, events, audit and idempotency apply. Commands called with
    the gateway's action id as idempotency key (when declared `idempotent=True`) are exactly-once
    even if the process dies between the commit and the ledger update.

    Args:
        spec: The operation.
        name: Tool name (default: the operation name with dots as underscores).
        description: Default: the operation's description.
        risk: Default `L0` for queries, `L1` for commands.
        pin_version: Call exactly `spec.version` (default: the latest registered version).
        timeout: As for `tool`.
        invariants: As for `tool`.
        risk_rules: As for `tool`.
        evidence: As for `tool`.
        approvers: As for `tool`.
        quorum: As for `tool`.
        shadow: As for `tool`.
        reconcile: As for `tool`. Commands declared `idempotent=True` need none: an in-doubt
            call re-runs with the same idempotency key, so the executor replays it if it took
            effect and runs it once if it did not.
        budget: As for `tool` (commands only).

    Raises:
        SpecDefinitionError: `spec` is not an operation, or an option is invalid.
    """
    if not isinstance(spec, OperationSpec):
        raise SpecDefinitionError(
            f"operation_tool() needs an OperationSpec (define_command/define_query), got {spec!r}",
            details={"field": "spec"},
        )
    tool_name = name or spec.name.replace(".", "_")
    default_risk = RiskLevel.L1 if spec.is_command else RiskLevel.L0
    level, names, invs, rules = _check_common(
        tool_name,
        default_risk if risk is None else risk,
        timeout,
        approvers,
        quorum,
        invariants,
        risk_rules,
    )
    return Tool(
        name=tool_name,
        description=description
        if description is not None
        else (spec.description or f"Run the {spec.name} {spec.kind.value}."),
        input=spec.input,
        parameters=spec.input.model_json_schema(),
        kind="operation",
        risk=level,
        side_effects=spec.is_command,
        timeout=timeout,
        invariants=invs,
        risk_rules=rules,
        evidence=evidence,
        approvers=names,
        quorum=quorum,
        shadow=shadow,
        reconcile=reconcile,
        operation=spec.name,
        version=spec.version if pin_version else None,
        budgets=_check_budgets(tool_name, budget, spec.input, spec.is_command),
    )
