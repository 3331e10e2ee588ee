"""ContractSpec core: specs, registry, the policy-safe executor, ports, errors and stores.

```python
from contractspec.core import (
    CallContext, Executor, SpecRegistry, define_command, define_event, requires,
)
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contractspec.core.audit import (
        PURGE_ACTION,
        AnchorSink,
        AuditEntry,
        AuditTamperedError,
        ChainAnchor,
        ChainVerifier,
        Checkpoint,
        JsonlAnchorSink,
        MemoryAuditLog,
        VerifiableAuditLog,
        VerifyResult,
        verify_chain,
    )
    from contractspec.core.batch import Batch, BatchCommitError
    from contractspec.core.context import (
        ANONYMOUS,
        Actor,
        ActorKind,
        CallContext,
        Principal,
        Resource,
    )
    from contractspec.core.errors import (
        HTTP_STATUS,
        ApprovalRequiredError,
        ConcurrentUpdateError,
        ConfigurationError,
        ConflictError,
        ContractSpecError,
        HandlerContractError,
        IdempotencyConflictError,
        IdempotencyInProgressError,
        InternalError,
        NotFoundError,
        OperationTimeoutError,
        PolicyDeniedError,
        RateLimitedError,
        SpecDefinitionError,
        SpecValidationError,
        TenantScopeError,
        UnknownOperationError,
    )
    from contractspec.core.executor import Backend, Executor
    from contractspec.core.handler import HandlerCtx, Invocation, Middleware
    from contractspec.core.memory import (
        MemoryBackend,
        MemoryEntityStore,
        MemoryIdempotencyStore,
        MemoryOutbox,
        MemoryTelemetrySink,
        MemoryTrafficSink,
    )
    from contractspec.core.pipeline.report import FanOutTelemetrySink, FanOutTrafficSink
    from contractspec.core.policy import AllowAll, DenyAll, RolePermissions
    from contractspec.core.ports import (
        AuditSink,
        Clock,
        EntityStore,
        EventPublisher,
        IdempotencyRecord,
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
    from contractspec.core.records import (
        REDACTED,
        AuditRecord,
        CallRecord,
        Decision,
        EntityChange,
        EventEnvelope,
        TelemetrySample,
        audit_hash,
        canonical_json,
        redact,
    )
    from contractspec.core.registry import Handler, SpecLike, SpecRegistry
    from contractspec.core.repository import Repository
    from contractspec.core.specs import (
        PII,
        AuthRequirement,
        EntitySpec,
        EventRef,
        EventSeverity,
        EventSpec,
        Index,
        OperationKind,
        OperationSpec,
        Stability,
        authenticated,
        define_command,
        define_entity,
        define_event,
        define_query,
        public,
        requires,
    )
    from contractspec.core.transactions import MemoryUnitOfWork, Savepoint, Transaction

# Public names -> the module defining them, imported on first use (PEP 562): `import
# contractspec.core` stays cheap, and a module that needs only `contractspec.core.context` or
# `.errors` (flags, clients, CLIs) does not pay for pydantic, the executor or the audit log.
# `from contractspec.core import Executor` imports exactly what `Executor` needs.
_LAZY: dict[str, str] = {
    "ANONYMOUS": "contractspec.core.context",
    "Actor": "contractspec.core.context",
    "ActorKind": "contractspec.core.context",
    "AllowAll": "contractspec.core.policy",
    "AnchorSink": "contractspec.core.audit",
    "ApprovalRequiredError": "contractspec.core.errors",
    "AuditEntry": "contractspec.core.audit",
    "AuditRecord": "contractspec.core.records",
    "AuditSink": "contractspec.core.ports",
    "AuditTamperedError": "contractspec.core.audit",
    "AuthRequirement": "contractspec.core.specs",
    "Backend": "contractspec.core.executor",
    "Batch": "contractspec.core.batch",
    "BatchCommitError": "contractspec.core.batch",
    "CallContext": "contractspec.core.context",
    "CallRecord": "contractspec.core.records",
    "ChainAnchor": "contractspec.core.audit",
    "ChainVerifier": "contractspec.core.audit",
    "Checkpoint": "contractspec.core.audit",
    "Clock": "contractspec.core.ports",
    "ConcurrentUpdateError": "contractspec.core.errors",
    "ConfigurationError": "contractspec.core.errors",
    "ConflictError": "contractspec.core.errors",
    "ContractSpecError": "contractspec.core.errors",
    "Decision": "contractspec.core.records",
    "DenyAll": "contractspec.core.policy",
    "EntityChange": "contractspec.core.records",
    "EntitySpec": "contractspec.core.specs",
    "EntityStore": "contractspec.core.ports",
    "EventEnvelope": "contractspec.core.records",
    "EventPublisher": "contractspec.core.ports",
    "EventRef": "contractspec.core.specs",
    "EventSeverity": "contractspec.core.specs",
    "EventSpec": "contractspec.core.specs",
    "Executor": "contractspec.core.executor",
    "FanOutTelemetrySink": "contractspec.core.pipeline.report",
    "FanOutTrafficSink": "contractspec.core.pipeline.report",
    "HTTP_STATUS": "contractspec.core.errors",
    "Handler": "contractspec.core.registry",
    "HandlerContractError": "contractspec.core.errors",
    "HandlerCtx": "contractspec.core.handler",
    "IdGenerator": "contractspec.core.ports",
    "IdempotencyConflictError": "contractspec.core.errors",
    "IdempotencyInProgressError": "contractspec.core.errors",
    "IdempotencyRecord": "contractspec.core.ports",
    "IdempotencyStore": "contractspec.core.ports",
    "Index": "contractspec.core.specs",
    "InternalError": "contractspec.core.errors",
    "Invocation": "contractspec.core.handler",
    "JobEnqueuer": "contractspec.core.ports",
    "JsonlAnchorSink": "contractspec.core.audit",
    "MembershipChecker": "contractspec.core.ports",
    "MemoryAuditLog": "contractspec.core.audit",
    "MemoryBackend": "contractspec.core.memory",
    "MemoryEntityStore": "contractspec.core.memory",
    "MemoryIdempotencyStore": "contractspec.core.memory",
    "MemoryOutbox": "contractspec.core.memory",
    "MemoryTelemetrySink": "contractspec.core.memory",
    "MemoryTrafficSink": "contractspec.core.memory",
    "MemoryUnitOfWork": "contractspec.core.transactions",
    "Middleware": "contractspec.core.handler",
    "NotFoundError": "contractspec.core.errors",
    "OperationKind": "contractspec.core.specs",
    "OperationSpec": "contractspec.core.specs",
    "OperationTimeoutError": "contractspec.core.errors",
    "PII": "contractspec.core.specs",
    "PURGE_ACTION": "contractspec.core.audit",
    "PolicyDecider": "contractspec.core.ports",
    "PolicyDeniedError": "contractspec.core.errors",
    "Principal": "contractspec.core.context",
    "REDACTED": "contractspec.core.records",
    "RateLimitedError": "contractspec.core.errors",
    "Repository": "contractspec.core.repository",
    "Resource": "contractspec.core.context",
    "RolePermissions": "contractspec.core.policy",
    "Savepoint": "contractspec.core.transactions",
    "SpecDefinitionError": "contractspec.core.errors",
    "SpecLike": "contractspec.core.registry",
    "SpecRegistry": "contractspec.core.registry",
    "SpecValidationError": "contractspec.core.errors",
    "Stability": "contractspec.core.specs",
    "SystemClock": "contractspec.core.ports",
    "TelemetrySample": "contractspec.core.records",
    "TelemetrySink": "contractspec.core.ports",
    "TenantScopeError": "contractspec.core.errors",
    "TrafficSink": "contractspec.core.ports",
    "Transaction": "contractspec.core.transactions",
    "UnitOfWork": "contractspec.core.ports",
    "UnknownOperationError": "contractspec.core.errors",
    "UuidGenerator": "contractspec.core.ports",
    "VariantResolver": "contractspec.core.ports",
    "VerifiableAuditLog": "contractspec.core.audit",
    "VerifyResult": "contractspec.core.audit",
    "audit_hash": "contractspec.core.records",
    "authenticated": "contractspec.core.specs",
    "canonical_json": "contractspec.core.records",
    "define_command": "contractspec.core.specs",
    "define_entity": "contractspec.core.specs",
    "define_event": "contractspec.core.specs",
    "define_query": "contractspec.core.specs",
    "public": "contractspec.core.specs",
    "redact": "contractspec.core.records",
    "requires": "contractspec.core.specs",
    "verify_chain": "contractspec.core.audit",
}

# Submodules `import contractspec.core` used to load eagerly: still reachable as attributes
# (`contractspec.core.executor` after a bare `import contractspec.core`).
_SUBMODULES = frozenset(
    {
        "_fields",
        "_log",
        "audit",
        "batch",
        "context",
        "errors",
        "executor",
        "handler",
        "memory",
        "pipeline",
        "policy",
        "ports",
        "records",
        "registry",
        "repository",
        "specs",
        "sync",
        "transactions",
    }
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "__version__":
        # importlib.metadata costs ~30 ms at import; read the version only when asked.
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("contractspec-core")
        except PackageNotFoundError:  # pragma: no cover - source tree without metadata
            value = "0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})


__all__ = [
    "ANONYMOUS",
    "HTTP_STATUS",
    "PII",
    "PURGE_ACTION",
    "REDACTED",
    "Actor",
    "ActorKind",
    "AllowAll",
    "AnchorSink",
    "ApprovalRequiredError",
    "AuditEntry",
    "AuditRecord",
    "AuditSink",
    "AuditTamperedError",
    "AuthRequirement",
    "Backend",
    "Batch",
    "BatchCommitError",
    "CallContext",
    "CallRecord",
    "ChainAnchor",
    "ChainVerifier",
    "Checkpoint",
    "Clock",
    "ConcurrentUpdateError",
    "ConfigurationError",
    "ConflictError",
    "ContractSpecError",
    "Decision",
    "DenyAll",
    "EntityChange",
    "EntitySpec",
    "EntityStore",
    "EventEnvelope",
    "EventPublisher",
    "EventRef",
    "EventSeverity",
    "EventSpec",
    "Executor",
    "FanOutTelemetrySink",
    "FanOutTrafficSink",
    "Handler",
    "HandlerContractError",
    "HandlerCtx",
    "IdGenerator",
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "IdempotencyRecord",
    "IdempotencyStore",
    "Index",
    "InternalError",
    "Invocation",
    "JobEnqueuer",
    "JsonlAnchorSink",
    "MembershipChecker",
    "MemoryAuditLog",
    "MemoryBackend",
    "MemoryEntityStore",
    "MemoryIdempotencyStore",
    "MemoryOutbox",
    "MemoryTelemetrySink",
    "MemoryTrafficSink",
    "MemoryUnitOfWork",
    "Middleware",
    "NotFoundError",
    "OperationKind",
    "OperationSpec",
    "OperationTimeoutError",
    "PolicyDecider",
    "PolicyDeniedError",
    "Principal",
    "RateLimitedError",
    "Repository",
    "Resource",
    "RolePermissions",
    "Savepoint",
    "SpecDefinitionError",
    "SpecLike",
    "SpecRegistry",
    "SpecValidationError",
    "Stability",
    "SystemClock",
    "TelemetrySample",
    "TelemetrySink",
    "TenantScopeError",
    "TrafficSink",
    "Transaction",
    "UnitOfWork",
    "UnknownOperationError",
    "UuidGenerator",
    "VariantResolver",
    "VerifiableAuditLog",
    "VerifyResult",
    "__version__",
    "audit_hash",
    "authenticated",
    "canonical_json",
    "define_command",
    "define_entity",
    "define_event",
    "define_query",
    "public",
    "redact",
    "requires",
    "verify_chain",
]
