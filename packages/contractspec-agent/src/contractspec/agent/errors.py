"""Errors of contractspec-agent, all rooted at `contractspec.core.ContractSpecError`.

Split by blame, like the rest of ContractSpec (and pydantic-ai's `UserError` / `AgentRunError`):

* the developer declared something wrong: `SpecDefinitionError` (from core) for agents and tools;
* a run failed at run time: `AgentRunError` and its subclasses (`UsageLimitExceeded`,
  `UnexpectedModelBehavior`, `ModelRequestsForbiddenError`, `LeaseLostError`);
* an approval rule said no: `ApprovalDecisionError`, `ApprovalExpiredError`,
  `ApprovalMismatchError`, `ApprovalUnavailableError`;
* a proof-carrying action failed an invariant: `InvariantFailedError`;
* a tool cannot tell whether its effect happened (a connection dropped after the request went
  out): `ToolOutcomeUnknownError`, which the gateway records as `in_doubt`.
"""

from __future__ import annotations

from contractspec.core import (
    ApprovalRequiredError,
    ConflictError,
    ContractSpecError,
    PolicyDeniedError,
)

__all__ = [
    "AgentRunError",
    "ApprovalDecisionError",
    "ApprovalExpiredError",
    "ApprovalMismatchError",
    "ApprovalRequiredError",
    "ApprovalUnavailableError",
    "InvariantFailedError",
    "LeaseLostError",
    "ModelRequestsForbiddenError",
    "ToolOutcomeUnknownError",
    "UnexpectedModelBehavior",
    "UsageLimitExceeded",
]


class AgentRunError(ContractSpecError, RuntimeError):
    """An agent run failed at run time (the model, a limit, or the loop itself)."""

    code = "agent_run_error"


class UsageLimitExceeded(AgentRunError):
    """A run hit one of its usage limits (steps, requests, tokens, tool calls or cost).

    `details["limit"]` names the limit and `details["value"]` the value that crossed it.
    """

    code = "usage_limit_exceeded"


class UnexpectedModelBehavior(AgentRunError):
    """The model answered something the runner cannot use (unknown tool, invalid final output
    after every retry, an empty reply)."""

    code = "unexpected_model_behavior"


class ModelRequestsForbiddenError(AgentRunError):
    """A real model was called while real model requests are switched off (tests).

    Switch them off with `contractspec.agent.testing.block_model_requests()`; use
    `ScriptedModel` or `FunctionModel` instead.
    """

    code = "model_requests_forbidden"


class LeaseLostError(AgentRunError):
    """This worker lost the run's lease (it stalled past the lease and another worker recovered
    the run); it stopped driving the run, which goes on in the other worker."""

    code = "run_lease_lost"


class ApprovalDecisionError(ConflictError):
    """A decision broke an approval rule: the request is already final, the approver is the
    requester, or the approver already decided."""

    code = "approval_decision_invalid"


class ApprovalExpiredError(ApprovalDecisionError):
    """The approval request expired before it was decided; request a new approval."""

    code = "approval_expired"


class ApprovalMismatchError(PolicyDeniedError):
    """The approval was granted for other arguments: a changed action needs a new approval."""

    code = "approval_mismatch"


class ApprovalUnavailableError(ContractSpecError, RuntimeError):
    """The approval store could not be reached; nothing that needs approval may run (fail closed)."""

    code = "approval_unavailable"


class InvariantFailedError(PolicyDeniedError):
    """An action's invariants did not all pass; `details["packet"]` holds the action packet."""

    code = "invariant_failed"


class ToolOutcomeUnknownError(ContractSpecError, RuntimeError):
    """Raised by a tool whose effect may or may not have happened: the request went out and the
    connection dropped (or the answer timed out) before the result came back.

    The gateway records a side-effecting call that raises it as `in_doubt`, exactly like a call
    that timed out: the model is told the outcome is unknown and a repeated call is reconciled or
    sent to a person, never re-run silently. A read-only call is a plain failure.
    """

    code = "tool_outcome_unknown"
