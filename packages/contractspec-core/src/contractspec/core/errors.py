"""The one error hierarchy of ContractSpec.

Every error raised on purpose by a ContractSpec package derives from
[`ContractSpecError`][contractspec.core.errors.ContractSpecError] and carries a stable, machine-readable
`code` that adapters map to transport status codes (see `HTTP_STATUS`). Errors are split by
blame, like pydantic-ai's `UserError` / `AgentRunError`:

* the *caller* sent something wrong (`SpecValidationError`, `NotFoundError`, `ConflictError`, ...);
* the *developer* declared or wired something wrong (`SpecDefinitionError`, `HandlerContractError`);
* the *policy* said no (`PolicyDeniedError`, `ApprovalRequiredError`).

Each error also inherits from the builtin exception it means (`LookupError`, `ValueError`,
`PermissionError`, ...), so `except LookupError` keeps working for people who do not know us.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

__all__ = [
    "HTTP_STATUS",
    "ApprovalRequiredError",
    "ConcurrentUpdateError",
    "ConfigurationError",
    "ConflictError",
    "ContractSpecError",
    "HandlerContractError",
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "InternalError",
    "NotFoundError",
    "OperationTimeoutError",
    "PolicyDeniedError",
    "RateLimitedError",
    "SpecDefinitionError",
    "SpecValidationError",
    "TenantScopeError",
    "UnknownOperationError",
]


class ContractSpecError(Exception):
    """Base class of every error ContractSpec raises on purpose.

    Attributes:
        code: Stable snake_case identifier (`validation_error`, `policy_denied`, ...). Adapters map
            it to a status code with `HTTP_STATUS`; clients may switch on it.
        message: One sentence saying what was wrong, where, and what to do.
        details: JSON-serialisable extra data (field errors, the operation name, ...).
    """

    code: ClassVar[str] = "contractspec_error"
    #: Every subclass by its `code` (the first class to declare a code keeps it), so a status
    #: table can fall back to the nearest base class's status for a code it does not list.
    _by_code: ClassVar[dict[str, type[ContractSpecError]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ContractSpecError._by_code.setdefault(cls.code, cls)

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-serialisable problem document `{"code", "message", "details"}`."""
        return {"code": self.code, "message": self.message, "details": self.details}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class SpecDefinitionError(ContractSpecError, TypeError):
    """A spec, registry or handler was declared wrongly (the developer's mistake).

    Raised at definition time: duplicate `name@version`, unknown event in `emits`, a handler
    whose signature does not match its operation, a reserved or malformed name.
    """

    code = "spec_definition_error"


class ConfigurationError(ContractSpecError, RuntimeError):
    """The runtime was wired inconsistently (e.g. a SQL store without a SQL unit of work)."""

    code = "configuration_error"


class SpecValidationError(ContractSpecError, ValueError):
    """Input, output or an event payload failed validation against its spec.

    Attributes:
        errors: pydantic's error list (`loc`, `msg`, `type`, ...) with `loc` as a dotted path string
            in `field` for convenience. Never contains the rejected values of fields marked `pii`.
    """

    code = "validation_error"

    def __init__(
        self,
        message: str,
        *,
        errors: Sequence[Mapping[str, Any]] = (),
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.errors: list[dict[str, Any]] = [dict(e) for e in errors]
        merged = {"errors": self.errors, **(details or {})}
        super().__init__(message, details=merged)


class HandlerContractError(ContractSpecError, RuntimeError):
    """A handler broke its operation's contract at run time (the developer's mistake).

    Raised when a handler returns a value that does not match the declared output model, or
    emits an event its operation does not declare in `emits`. Nothing the call wrote survives.
    """

    code = "handler_contract_violation"


class PolicyDeniedError(ContractSpecError, PermissionError):
    """The policy decider did not allow the call. The default is deny.

    Attributes:
        reason: Why the call was denied, as explained by the decider.
        action: The permission or action that was checked.
    """

    code = "policy_denied"

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        action: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.reason = reason
        self.action = action
        super().__init__(message, details={"reason": reason, "action": action, **(details or {})})


class TenantScopeError(PolicyDeniedError):
    """Tenant data was accessed without an `org_id` in the execution context."""

    code = "tenant_scope_required"


class ApprovalRequiredError(ContractSpecError):
    """The action needs a human approval before it can run; retry once it is approved."""

    code = "approval_required"


class NotFoundError(ContractSpecError, LookupError):
    """The requested operation, version, entity or record does not exist (or is not visible)."""

    code = "not_found"


class UnknownOperationError(NotFoundError):
    """No operation (or no such version of it) is registered under the requested name."""

    code = "unknown_operation"


class OperationTimeoutError(ContractSpecError, TimeoutError):
    """The operation ran longer than its time limit; nothing it wrote was kept.

    Raised by timeout policies (e.g. contractspec-evolution's `OperationPolicyMiddleware`);
    adapters answer 504.
    """

    code = "operation_timeout"


class RateLimitedError(ContractSpecError):
    """Too many calls for this caller, tenant or operation; retry later.

    `details["retry_after_s"]` (seconds), when set, says when a retry may succeed; the HTTP
    adapter answers 429.
    """

    code = "rate_limited"


class ConflictError(ContractSpecError):
    """The call conflicts with the current state (duplicate key, concurrent change, ...)."""

    code = "conflict"


class IdempotencyConflictError(ConflictError):
    """An idempotency key was reused with a different input; use a new key for a new request."""

    code = "idempotency_conflict"


class IdempotencyInProgressError(ConflictError):
    """The first call with this idempotency key is still running; retry later for its outcome."""

    code = "idempotency_in_progress"


class ConcurrentUpdateError(ConflictError):
    """The record changed (or was deleted) since this call read it: a lost update was prevented.

    Raised when a write carries a stale version. Read the record again and retry the call, or
    read it with `Repository.get_for_update()` so concurrent writers wait for each other.
    """

    code = "concurrent_update"


class InternalError(ContractSpecError, RuntimeError):
    """A handler or adapter failed unexpectedly (a bug, not the caller's fault).

    The executor wraps any non-ContractSpec exception from a handler in this error so callers only
    ever see one hierarchy; the original exception is kept as `__cause__` for logs and debuggers,
    and the message never repeats its text (it may hold internals or personal data).
    """

    code = "internal_error"


class _StatusTable(Mapping[str, int]):
    """Status per error code; a code not listed takes the status of the nearest base class
    whose code is listed (an `ApprovalDecisionError`, a `ConflictError`, answers 409), so a
    package's new error subclass never turns into a 500 by omission."""

    def __init__(self, listed: Mapping[str, int]) -> None:
        self._listed = dict(listed)

    def __getitem__(self, code: str) -> int:
        if code in self._listed:
            return self._listed[code]
        cls = ContractSpecError._by_code.get(code)
        if cls is not None:
            for base in cls.__mro__[1:]:
                base_code = getattr(base, "code", None)
                if isinstance(base_code, str) and base_code in self._listed:
                    return self._listed[base_code]
        raise KeyError(code)

    def __contains__(self, code: object) -> bool:
        if not isinstance(code, str):
            return False
        try:
            self[code]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._listed)

    def __len__(self) -> int:
        return len(self._listed)


#: Status code per error `code`, used by the HTTP adapter. A code not listed takes its nearest
#: listed base class's status; unknown codes map to 500.
HTTP_STATUS: Mapping[str, int] = _StatusTable(
    {
        SpecValidationError.code: 422,
        PolicyDeniedError.code: 403,
        TenantScopeError.code: 403,
        ApprovalRequiredError.code: 202,
        NotFoundError.code: 404,
        UnknownOperationError.code: 404,
        ConflictError.code: 409,
        IdempotencyConflictError.code: 409,
        IdempotencyInProgressError.code: 409,
        ConcurrentUpdateError.code: 409,
        HandlerContractError.code: 500,
        SpecDefinitionError.code: 500,
        ConfigurationError.code: 500,
        InternalError.code: 500,
        "audit_tampered": 500,
        "batch_commit_failed": 503,
        OperationTimeoutError.code: 504,
        RateLimitedError.code: 429,
        # contractspec-metering: a plan allowance used up (402), a rate-style limit (429 +
        # Retry-After), a feature the org's plan lacks (403)
        "quota_exceeded": 402,
        "quota_rate_limited": 429,
        "feature_not_entitled": 403,
    }
)
