"""Approval rules, stated once: who may decide a request, and what each decision does to it.

Two parts of ContractSpec ask people to approve things: workflow approval steps
(`contractspec.core.workflows.Approvals`) and `contractspec.agent.ApprovalWorkflow` (tool calls,
spec suggestions). Both store requests and decisions their own way, and both ask an
`ApprovalDecider` — this module's port — what a decision means. `ApprovalRules` is the default
decider; an app may plug another (`Executor`-level for workflows through
`workflows.use_approval_decider`, `ApprovalWorkflow(decider=...)` for the agent).

The rules of `ApprovalRules`, checked in this order (the first that applies wins):

1. an anonymous actor never decides (`anonymous`, a denial);
2. at or after `expires_at` (or once recorded as expired) nobody may decide (`expired`);
3. a decision is final: once approved or rejected, a request never changes (`final`);
4. no self-approval: an actor listed in `requesters` may not decide unless the requirement says
   `allow_requester` (`self_approval`, a denial);
5. named `approvers`, when given, exclude everyone else (`not_named_approver`, a denial);
6. `roles`, when given, need the actor to hold one of them (`missing_role`, a denial);
7. each approver decides once (`already_decided`);
8. approvals bind to one exact input: an approval whose `input_hash` differs from an earlier
   approval's is refused (`input_mismatch`);
9. otherwise the decision is accepted: one rejection rejects; `count` distinct approvals approve.

Refusals whose `RefusalCode.is_denial` is true are about *who* decides; callers report them as
policy denials (`PolicyDeniedError`, audited as `denied`). The others are conflicts with the
request's state.

Example:
    ```python
    rules = ApprovalRules()
    case = ApprovalCase(
        requirement=ApprovalRequirement(count=2, roles=("manager",)),
        subject="purchase 'p1'",
        requesters={"emp-1": "requested purchase 'p1'"},
    )
    verdict = rules.decide(case, ApprovalVote("mgr-1", "approve"), Actor.user("mgr-1", roles="manager"), now)
    assert verdict.outcome is ApprovalOutcome.PENDING and verdict.approvals == 1
    ```
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from attrs import define, field, validators

if TYPE_CHECKING:
    from contractspec.core.context import Actor

__all__ = [
    "ApprovalCase",
    "ApprovalDecider",
    "ApprovalOutcome",
    "ApprovalRefusal",
    "ApprovalRequirement",
    "ApprovalRules",
    "ApprovalVerdict",
    "ApprovalVote",
    "RefusalCode",
]


class ApprovalOutcome(enum.StrEnum):
    """Where a request stands: `pending` until final; `approved`, `rejected`, `expired` are final."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        """Whether the request can no longer change."""
        return self is not ApprovalOutcome.PENDING


class RefusalCode(enum.StrEnum):
    """Why a decision was refused (stable strings, safe to show and to match on)."""

    ANONYMOUS = "anonymous"
    FINAL = "final"
    EXPIRED = "expired"
    SELF_APPROVAL = "self_approval"
    NOT_NAMED_APPROVER = "not_named_approver"
    MISSING_ROLE = "missing_role"
    ALREADY_DECIDED = "already_decided"
    INPUT_MISMATCH = "input_mismatch"

    @property
    def is_denial(self) -> bool:
        """`True` for refusals about who decides (report as `PolicyDeniedError`, audit as denied);
        `False` for conflicts with the request's state."""
        return self in _DENIALS


_DENIALS = frozenset(
    {
        RefusalCode.ANONYMOUS,
        RefusalCode.SELF_APPROVAL,
        RefusalCode.NOT_NAMED_APPROVER,
        RefusalCode.MISSING_ROLE,
    }
)


def _str_tuple(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)  # type: ignore[attr-defined]  # any iterable of names


@define(frozen=True)
class ApprovalRequirement:
    """What a request needs: how many distinct approvals, from whom.

    Attributes:
        count: Distinct approvals that approve the request (>= 1).
        roles: The approver must hold one of these roles (`Actor.roles`); empty: any role.
        approvers: Named approver ids; empty: anyone (who passes the other rules).
        allow_requester: Let the requesters decide too (default: no self-approval).
        expires_after: How long after the request opens decisions are accepted (`None`: no
            expiry). Callers turn it into `ApprovalCase.expires_at`.
    """

    count: int = 1
    roles: tuple[str, ...] = field(default=(), converter=_str_tuple)
    approvers: tuple[str, ...] = field(default=(), converter=_str_tuple)
    allow_requester: bool = False
    expires_after: timedelta | None = None


@define(frozen=True)
class ApprovalVote:
    """One approver's decision.

    Attributes:
        approver_id: Who decided.
        verdict: `approve` or `reject`.
        input_hash: SHA-256 of the exact input approved, when approvals bind to an input
            (`None`: not bound).
    """

    approver_id: str
    verdict: str = field(validator=validators.in_(("approve", "reject")))
    input_hash: str | None = None


def _votes(value: Iterable[ApprovalVote]) -> tuple[ApprovalVote, ...]:
    return tuple(value)


@define(frozen=True)
class ApprovalCase:
    """A request as the rules see it: its requirement, who asked, the votes so far.

    Attributes:
        requirement: What the request needs.
        subject: How messages name it (`"approval request 'r1'"`, `"hr.leave.approve of
            instance 'i1'"`).
        requesters: Actor id -> what they did (`"requested approval 'r1'"`); they may not
            decide unless `allow_requester`.
        votes: Decisions so far, oldest first.
        expires_at: When decisions stop being accepted (aware UTC), or `None`.
        status: A final outcome the caller has already recorded (it wins over the votes), or
            `None` to derive the outcome from the votes.
    """

    requirement: ApprovalRequirement
    subject: str
    requesters: Mapping[str, str] = field(factory=dict)
    votes: tuple[ApprovalVote, ...] = field(default=(), converter=_votes)
    expires_at: datetime | None = None
    status: ApprovalOutcome | None = None


@define(frozen=True)
class ApprovalRefusal:
    """A decision the rules refused: a stable `code` and a message naming the actor and the fix."""

    code: RefusalCode
    message: str

    @property
    def is_denial(self) -> bool:
        """See `RefusalCode.is_denial`."""
        return self.code.is_denial


@define(frozen=True)
class ApprovalVerdict:
    """What a decision did (or where a request stands, for `ApprovalDecider.evaluate`).

    Attributes:
        outcome: The request's outcome after the decision (unchanged when refused).
        approvals: Distinct approvals counted (including the new one when accepted).
        required: Approvals needed.
        approvers: Ids of the distinct approvers, in voting order.
        refusal: Why the decision was refused, or `None` when accepted.
    """

    outcome: ApprovalOutcome
    approvals: int
    required: int
    approvers: tuple[str, ...] = ()
    refusal: ApprovalRefusal | None = None

    @property
    def accepted(self) -> bool:
        """Whether the decision counts (store it)."""
        return self.refusal is None


@runtime_checkable
class ApprovalDecider(Protocol):
    """Port: the approval rules. `ApprovalRules` is the default; both methods are pure (no I/O)."""

    def evaluate(self, case: ApprovalCase, now: datetime) -> ApprovalVerdict:
        """Where `case` stands at `now` (no decision)."""
        ...

    def decide(
        self, case: ApprovalCase, vote: ApprovalVote, actor: Actor, now: datetime
    ) -> ApprovalVerdict:
        """The effect of `actor` casting `vote` on `case` at `now`, or the refusal."""
        ...


@define(frozen=True)
class ApprovalRules:
    """The default `ApprovalDecider`: the rules listed in this module's docstring."""

    def evaluate(self, case: ApprovalCase, now: datetime) -> ApprovalVerdict:
        """Where `case` stands at `now`.

        Args:
            case: The request.
            now: Aware UTC time (the expiry is `now >= case.expires_at`).

        Returns:
            The outcome (`status` when recorded; else rejected on any rejection, approved at
            `count` distinct approvals, expired past `expires_at`, pending otherwise) and the
            approvals counted.
        """
        approvers = _approvers(case.votes)
        required = case.requirement.count
        if case.status is not None and case.status.final:
            outcome = case.status
        elif any(v.verdict == "reject" for v in case.votes):
            outcome = ApprovalOutcome.REJECTED
        elif len(approvers) >= required:
            outcome = ApprovalOutcome.APPROVED
        elif case.expires_at is not None and now >= case.expires_at:
            outcome = ApprovalOutcome.EXPIRED
        else:
            outcome = ApprovalOutcome.PENDING
        return ApprovalVerdict(outcome, len(approvers), required, approvers)

    def decide(
        self, case: ApprovalCase, vote: ApprovalVote, actor: Actor, now: datetime
    ) -> ApprovalVerdict:
        """The effect of `actor` casting `vote` on `case` at `now`.

        Args:
            case: The request and its votes so far.
            vote: The new decision (`vote.approver_id` should be `actor.id`).
            actor: Who decides (their id and roles are checked).
            now: Aware UTC time.

        Returns:
            An accepted verdict (the outcome after the vote) or one whose `refusal` says why
            the vote does not count (see the module docstring for the order of the rules).
        """
        current = self.evaluate(case, now)
        req = case.requirement

        def refuse(code: RefusalCode, message: str) -> ApprovalVerdict:
            return ApprovalVerdict(
                current.outcome,
                current.approvals,
                current.required,
                current.approvers,
                ApprovalRefusal(code, message),
            )

        who = actor.id
        if actor.is_anonymous or not who:
            return refuse(
                RefusalCode.ANONYMOUS,
                f"deciding {case.subject} needs an identified actor; pass Actor.user(...)",
            )
        if current.outcome is ApprovalOutcome.EXPIRED:
            when = f" at {case.expires_at.isoformat()}" if case.expires_at is not None else ""
            return refuse(
                RefusalCode.EXPIRED,
                f"{case.subject} expired{when}; decisions after the expiry are refused "
                "(request a new approval)",
            )
        if current.outcome is ApprovalOutcome.REJECTED:
            return refuse(
                RefusalCode.FINAL,
                f"{case.subject} was rejected; a rejection is final (request a new approval for "
                "a new decision)",
            )
        if current.outcome.final:
            return refuse(
                RefusalCode.FINAL,
                f"{case.subject} is already {current.outcome.value}; decisions are final "
                "(request a new approval for a new decision)",
            )
        if not req.allow_requester and who in case.requesters:
            return refuse(
                RefusalCode.SELF_APPROVAL,
                f"{who!r} {case.requesters[who]} and may not approve its own request: the "
                f"requester cannot decide it; ask another approver",
            )
        if req.approvers and who not in req.approvers:
            return refuse(
                RefusalCode.NOT_NAMED_APPROVER,
                f"{who!r} is not a named approver of {case.subject}; allowed: "
                f"{', '.join(req.approvers)}",
            )
        if req.roles and not (actor.roles & set(req.roles)):
            return refuse(
                RefusalCode.MISSING_ROLE,
                f"{case.subject} needs an approver with one of the roles "
                f"{', '.join(req.roles)}; {who!r} has {', '.join(sorted(actor.roles)) or 'none'}",
            )
        if any(v.approver_id == who for v in case.votes):
            return refuse(
                RefusalCode.ALREADY_DECIDED,
                f"{who!r} already decided on {case.subject}; each approver decides once",
            )
        if vote.verdict == "approve" and vote.input_hash is not None:
            bound = {
                v.input_hash
                for v in case.votes
                if v.verdict == "approve" and v.input_hash is not None
            }
            if bound and vote.input_hash not in bound:
                return refuse(
                    RefusalCode.INPUT_MISMATCH,
                    f"approvals of {case.subject} are bound to the input of the first approval; "
                    "approve that exact input, or reject",
                )
        after = ApprovalCase(
            requirement=req,
            subject=case.subject,
            requesters=case.requesters,
            votes=(*case.votes, vote),
            expires_at=None,
            status=None,
        )
        return self.evaluate(after, now)


def _approvers(votes: tuple[ApprovalVote, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.approver_id for v in votes if v.verdict == "approve"))
