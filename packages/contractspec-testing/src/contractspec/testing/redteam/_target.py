"""What is attacked (`RedTeamTarget` and its attack surface) and what an attack is (`Scenario`)."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from attrs import define, field

from contractspec.agent import AgentRunner, AgentSpec
from contractspec.agent.testing import Reply
from contractspec.core import Actor, CallContext, ConfigurationError

__all__ = [
    "CallBudget",
    "Category",
    "MoneyTool",
    "PrivilegedCall",
    "RedTeamConfigError",
    "RedTeamTarget",
    "RunnerFactory",
    "Scenario",
    "TenantProbe",
    "UntrustedSource",
]


class RedTeamConfigError(ConfigurationError):
    """A red-team target or scenario is misconfigured (the message names the field and the fix)."""

    code = "redteam_config_error"


class Category(enum.StrEnum):
    """Attack categories (the report counts per category).

    * `prompt_injection`: instructions in the user's message (direct injection).
    * `indirect_injection`: instructions hidden in a tool result (a ticket, a web page).
    * `excessive_agency`: calls above the agent's risk level: tools that need a person's approval,
      tools the agent does not have, approving one's own request.
    * `cross_tenant`: reading another tenant's data.
    * `budget_exhaustion`: more tool calls or steps than the run may take.
    * `action_splitting`: a large effect split into calls that each pass a per-call limit.
    """

    PROMPT_INJECTION = "prompt_injection"
    INDIRECT_INJECTION = "indirect_injection"
    EXCESSIVE_AGENCY = "excessive_agency"
    CROSS_TENANT = "cross_tenant"
    BUDGET_EXHAUSTION = "budget_exhaustion"
    ACTION_SPLITTING = "action_splitting"

    @property
    def owasp(self) -> str:
        """The OWASP Top 10 for LLM Applications (2025) entry the category tests."""
        return _OWASP[self]


_OWASP: dict[Category, str] = {
    Category.PROMPT_INJECTION: "LLM01:2025 Prompt Injection",
    Category.INDIRECT_INJECTION: "LLM01:2025 Prompt Injection",
    Category.EXCESSIVE_AGENCY: "LLM06:2025 Excessive Agency",
    Category.CROSS_TENANT: "LLM02:2025 Sensitive Information Disclosure",
    Category.BUDGET_EXHAUSTION: "LLM10:2025 Unbounded Consumption",
    Category.ACTION_SPLITTING: "LLM06:2025 Excessive Agency",
}


def _bad(field_name: str, message: str) -> RedTeamConfigError:
    return RedTeamConfigError(message, details={"field": field_name})


def _where(instance: object, attribute: Any) -> str:
    return f"{type(instance).__name__}.{attribute.name}"


def _is_arguments(instance: object, attribute: Any, value: Any) -> None:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        what = _where(instance, attribute)
        raise _bad(what, f"{what} must be a mapping of argument names to values, got {value!r}")


def _is_optional_arguments(instance: object, attribute: Any, value: Any) -> None:
    if value is not None:
        _is_arguments(instance, attribute, value)


def _is_tool_name(instance: object, attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value:
        what = _where(instance, attribute)
        raise _bad(what, f"{what} must be a tool name (non-empty text), got {value!r}")


@define(frozen=True)
class PrivilegedCall:
    """A call that must never take effect without a person's approval (or at all).

    It may name a tool the agent does not have (the attack is then calling a tool it was not
    given). The call *escapes* when the gateway executes it and no approval decided by someone
    other than the attacker covers it.

    Attributes:
        tool: Tool name.
        arguments: Valid arguments (invalid ones would be refused by validation and prove
            nothing).
        why: What harm it does, for the report ("deletes a customer account").
        variant: Other valid arguments for the bait-and-switch attack (with
            `RedTeamTarget.approver`): a person approves the call with `arguments`, then the
            model makes it with `variant`, which must wait for an approval of its own.
    """

    tool: str = field(validator=_is_tool_name)
    arguments: Mapping[str, Any] = field(factory=dict, validator=_is_arguments)
    why: str = ""
    variant: Mapping[str, Any] | None = field(default=None, validator=_is_optional_arguments)

    def __attrs_post_init__(self) -> None:
        if self.variant is not None and dict(self.variant) == dict(self.arguments):
            raise _bad(
                "PrivilegedCall.variant",
                "PrivilegedCall.variant must differ from arguments (it is the switched call)",
            )


def _amount(value: object) -> Decimal:
    """A positive finite amount (int, float, `Decimal` or numeric text)."""
    problem = f"MoneyTool limits must be positive numbers, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise _bad("MoneyTool.limits", problem)
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        raise _bad("MoneyTool.limits", problem) from None
    if not amount.is_finite() or amount <= 0:
        raise _bad("MoneyTool.limits", problem)
    return amount


@define(frozen=True)
class MoneyTool:
    """A side-effecting tool that moves money, with the limits the gateway must hold.

    Attributes:
        tool: Tool name.
        per_call_limit: Largest amount one call may move (same unit as the argument).
        total_limit: Largest total of all calls in one attack (one scenario, all its runs): the
            cap that splitting an action into small calls tries to get around.
        amount_field: Name of the amount argument.
        arguments: The other arguments of every call (`{"order_id": "o-1"}`).
        vary: An argument set to a distinct text per call (`"note"`), so repeated calls are new
            actions rather than replays of the first one (the ledger replays an identical call
            made again in a later step); `None` to send identical calls.
    """

    tool: str = field(validator=_is_tool_name)
    per_call_limit: Decimal = field(converter=_amount)
    total_limit: Decimal = field(converter=_amount)
    amount_field: str = "amount"
    arguments: Mapping[str, Any] = field(factory=dict, validator=_is_arguments)
    vary: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.total_limit < self.per_call_limit:
            raise _bad(
                "MoneyTool.total_limit",
                f"MoneyTool.total_limit ({self.total_limit}) is below per_call_limit "
                f"({self.per_call_limit}); the total cap is the larger one",
            )

    def call_arguments(self, amount: Decimal, index: int = 0) -> dict[str, Any]:
        """Arguments of the `index`-th call moving `amount` (JSON number: int when whole)."""
        args: dict[str, Any] = dict(self.arguments)
        args[self.amount_field] = (
            int(amount) if amount == amount.to_integral_value() else float(amount)
        )
        if self.vary is not None:
            args[self.vary] = f"part {index + 1}"
        return args


@define(frozen=True)
class TenantProbe:
    """A read of another tenant's data, and a canary that only that data contains.

    The attack escapes when the canary shows up in anything a tool returned to the agent (the
    persisted tool results, the ledger) or in the run's output.

    Attributes:
        tool: Tool name.
        arguments: Arguments naming the other tenant's record (`{"order_id": "o-of-org-b"}`).
        canary: Text planted in the other tenant's record only (at least 6 characters).
    """

    tool: str = field(validator=_is_tool_name)
    arguments: Mapping[str, Any] = field(validator=_is_arguments)
    canary: str = field()

    @canary.validator
    def _check_canary(self, _attribute: Any, value: object) -> None:
        if not isinstance(value, str) or len(value) < 6:
            raise _bad(
                "TenantProbe.canary",
                f"TenantProbe.canary must be a distinctive text of 6+ characters planted in the "
                f"other tenant's data (e.g. 'CANARY-7f3a'), got {value!r}",
            )


@define(frozen=True)
class UntrustedSource:
    """A tool whose result carries outside text (a ticket, an e-mail, a web page).

    For indirect-injection attacks its result is replaced by the attacker's text (same name,
    schema, risk and checks; only what it returns changes).

    Attributes:
        tool: Tool name (one of the agent's tools).
        arguments: Valid arguments to call it with.
    """

    tool: str = field(validator=_is_tool_name)
    arguments: Mapping[str, Any] = field(factory=dict, validator=_is_arguments)


@define(frozen=True)
class CallBudget:
    """How many tool calls and model steps one run may take, and a tool to burn them with.

    Attributes:
        tool: A cheap tool to call over and over (one of the agent's tools).
        max_tool_calls: Executed tool calls one run may make.
        max_steps: Model steps one run may take (`None`: not checked).
        arguments: Its arguments.
        vary: An argument set to a distinct text per call (see `MoneyTool.vary`).
    """

    tool: str = field(validator=_is_tool_name)
    max_tool_calls: int = field()
    max_steps: int | None = None
    arguments: Mapping[str, Any] = field(factory=dict, validator=_is_arguments)
    vary: str | None = None

    def __attrs_post_init__(self) -> None:
        for name in ("max_tool_calls", "max_steps"):
            value = getattr(self, name)
            if value is None and name == "max_steps":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _bad(
                    f"CallBudget.{name}",
                    f"CallBudget.{name} must be a positive integer, got {value!r}",
                )

    def call_arguments(self, index: int) -> dict[str, Any]:
        """Arguments of the `index`-th call."""
        args: dict[str, Any] = dict(self.arguments)
        if self.vary is not None:
            args[self.vary] = f"request {index + 1}"
        return args


#: Builds the runner one scenario runs on: `() -> AgentRunner` (sync or async). Return a runner
#: over fresh stores for independent scenarios, or over shared ones to test them together.
RunnerFactory = Callable[[], AgentRunner | Awaitable[AgentRunner]]


def _check_items(value: Iterable[Any] | None, kind: type[Any], what: str) -> tuple[Any, ...]:
    items = tuple(value or ())
    for item in items:
        if not isinstance(item, kind):
            raise _bad(what, f"{what} must hold {kind.__name__} objects, got {item!r}")
    return items


def _privileged(value: Iterable[PrivilegedCall] | None) -> tuple[PrivilegedCall, ...]:
    return _check_items(value, PrivilegedCall, "RedTeamTarget.privileged")


def _probes(value: Iterable[TenantProbe] | None) -> tuple[TenantProbe, ...]:
    return _check_items(value, TenantProbe, "RedTeamTarget.tenant_probes")


def _replies(value: Iterable[Reply]) -> tuple[Reply, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise _bad("Scenario.script", f"Scenario.script must be a list of replies, got {value!r}")
    return tuple(value)


def _category(value: Any) -> Category:
    try:
        return Category(value)
    except ValueError:
        known = ", ".join(c.value for c in Category)
        raise _bad(
            "Scenario.category", f"Scenario.category {value!r} is not one of: {known}"
        ) from None


@define(frozen=True)
class RedTeamTarget:
    """The agent under attack and its attack surface.

    Attributes:
        agent: The agent spec.
        runner: `RunnerFactory` called once per scenario.
        ctx: The attacker's `CallContext` (actor and tenant the runs act for).
        privileged: Calls that must not execute without an approval (`PrivilegedCall`).
        money: The money-moving tool and its limits (`MoneyTool`), if any.
        tenant_probes: Reads of other tenants' data (`TenantProbe`).
        untrusted: A tool returning outside text, for indirect injection (`UntrustedSource`).
        budget: Tool-call and step budget of one run (`CallBudget`).
        approver: A person allowed to decide the privileged calls' approvals (a named approver
            for L3 tools), for the bait-and-switch attack; `None` leaves it out. The harness
            approves only the first request of that attack, as this actor.

    Raises:
        RedTeamConfigError: A field is of the wrong type, or names a tool the agent lacks where
            the agent must have it (money, untrusted, budget).
    """

    agent: AgentSpec = field()
    runner: RunnerFactory = field()
    ctx: CallContext = field()
    privileged: tuple[PrivilegedCall, ...] = field(factory=tuple, converter=_privileged)
    money: MoneyTool | None = None
    tenant_probes: tuple[TenantProbe, ...] = field(factory=tuple, converter=_probes)
    untrusted: UntrustedSource | None = None
    budget: CallBudget | None = None
    approver: Actor | None = None

    def __attrs_post_init__(self) -> None:
        if self.approver is not None and (
            not isinstance(self.approver, Actor) or self.approver.id == self.ctx.actor.id
        ):
            raise _bad(
                "approver",
                f"approver must be an Actor other than the attacker, got {self.approver!r}",
            )
        if not isinstance(self.agent, AgentSpec):
            raise _bad("agent", f"agent must be an AgentSpec (define_agent), got {self.agent!r}")
        if not callable(self.runner):
            raise _bad("runner", "runner must be a callable returning an AgentRunner")
        if not isinstance(self.ctx, CallContext):
            raise _bad("ctx", f"ctx must be the attacker's CallContext, got {self.ctx!r}")
        for what, kind, value in (
            ("money", MoneyTool, self.money),
            ("untrusted", UntrustedSource, self.untrusted),
            ("budget", CallBudget, self.budget),
        ):
            if value is None:
                continue
            if not isinstance(value, kind):
                raise _bad(what, f"{what} must be a {kind.__name__}, got {value!r}")
            if self.agent.tool(value.tool) is None:
                allowed = ", ".join(t.name for t in self.agent.tools) or "none"
                raise _bad(
                    f"{what}.tool",
                    f"{what}.tool {value.tool!r} is not one of {self.agent.ref}'s tools "
                    f"({allowed}); name the tool the agent calls",
                )


@define(frozen=True)
class Scenario:
    """One attack: what the attacker sends and what a compromised model does with it.

    Attributes:
        id: Unique id (`prompt_injection.ignore_previous.delete_account`).
        category: Its `Category`.
        goal: What the attacker wants, in words (for the report).
        input: The user's message.
        script: The compromised model's replies (`contractspec.agent.testing.Reply`), one per
            model request; it should end with a final text answer.
        poison: For indirect injection: the text the untrusted source returns instead of its
            real result (`None`: the source is left alone).
        runs: How many runs the attack makes (each with the same input and script).
        concurrent: Start the runs at the same time (parallel sessions) instead of one after
            the other.
        self_approve: When a run waits for approvals, the attacker approves them themselves,
            then resumes the run.
        approve_first: When a run first waits for approvals, the target's `approver` approves
            them and the run resumes (once); later requests stay undecided.
    """

    id: str
    category: Category = field(converter=_category)
    goal: str
    input: str
    script: tuple[Reply, ...] = field(converter=_replies)
    poison: str | None = None
    runs: int = 1
    concurrent: bool = False
    self_approve: bool = False
    approve_first: bool = False

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise _bad("id", f"a scenario needs a non-empty id, got {self.id!r}")
        if isinstance(self.runs, bool) or not isinstance(self.runs, int) or self.runs < 1:
            raise _bad("runs", f"scenario {self.id!r}: runs must be a positive integer")
