"""Spec suggestions: concrete, reviewable changes to the spec, each run through the breaking diff.

A `SpecSuggestion` is an RFC 6902 JSON Patch against the spec IR (`registry.to_ir()`), with the
digest of the IR it applies to, the classified diff that patch produces (`contractspec.core.diff`)
and whether any change in it is breaking. `SpecGenerator` writes them from intents:

| intent | suggestion |
|---|---|
| `workflow_sequence` A -> B (-> C) | a new command running the steps as one operation |
| `latency_regression` | a timeout policy (`operation_policy` spec) from the healthy p95 |
| `throughput_spike` | a per-tenant rate-limit policy from the healthy throughput |
| recurring field-level validation errors (`ValidationErrorSampler`) | the constraint added to the input schema, as a new operation version (the old one deprecated) |
| an operation without calls (`SpecAnalyzer`) | deprecation of the operation |

Policies are specs of kind `operation_policy` (`define_operation_policy`), registered in the same
`SpecRegistry` so the IR, the lock and the diff see them.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import jsonpatch
from attrs import define, evolve, field

from contractspec.core import (
    CallRecord,
    Clock,
    ConfigurationError,
    IdGenerator,
    SpecDefinitionError,
    SpecRegistry,
    SystemClock,
    UuidGenerator,
    canonical_json,
)
from contractspec.core.diff import diff_ir
from contractspec.core.ir import ir_digest, load_ir, to_ir
from contractspec.evolution.aggregator import ALL_TENANTS
from contractspec.evolution.detector import Intent, IntentKind

if TYPE_CHECKING:
    from contractspec.evolution.analyzer import OperationUsage

__all__ = [
    "POLICY_KIND",
    "OperationPolicy",
    "SpecGenerator",
    "SpecSuggestion",
    "SuggestionKind",
    "SuggestionPriority",
    "SuggestionStatus",
    "ValidationErrorSampler",
    "apply_patch",
    "define_operation_policy",
]

#: Spec kind of operation policies in the registry and the IR.
POLICY_KIND: Final = "operation_policy"


class SuggestionKind(enum.StrEnum):
    """What a suggestion changes."""

    NEW_OPERATION = "new_operation"
    TIGHTEN_VALIDATION = "tighten_validation"
    TIMEOUT_POLICY = "timeout_policy"
    RATE_LIMIT_POLICY = "rate_limit_policy"
    DEPRECATE_OPERATION = "deprecate_operation"


class SuggestionStatus(enum.StrEnum):
    """`pending` until decided through the approval workflow."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        """True once decided."""
        return self is not SuggestionStatus.PENDING


class SuggestionPriority(enum.IntEnum):
    """Review order: `P1` first."""

    P1 = 1
    P2 = 2
    P3 = 3
    P4 = 4


@define(frozen=True)
class OperationPolicy:
    """Run-time limits of one operation, kept in the registry as a spec of kind `operation_policy`.

    Attributes:
        name: The operation name it applies to.
        version: Policy version.
        timeout_ms: Calls slower than this should be cut (milliseconds), or `None`.
        rate_limit_per_minute: Calls allowed per minute and scope, or `None`.
        rate_limit_scope: `org` (per tenant) or `global`.
        description: Why the limits are what they are.
    """

    kind: str = field(init=False, default=POLICY_KIND)
    name: str = ""
    version: int = 1
    timeout_ms: int | None = None
    rate_limit_per_minute: int | None = None
    rate_limit_scope: Literal["org", "global"] = "org"
    description: str = ""

    def to_ir(self) -> dict[str, Any]:
        """The IR entry (core adds `kind`, `name`, `version` and `schemas`)."""
        return {
            "timeout_ms": self.timeout_ms,
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "rate_limit_scope": self.rate_limit_scope,
            "description": self.description,
        }


def define_operation_policy(
    operation: str,
    *,
    timeout_ms: int | None = None,
    rate_limit_per_minute: int | None = None,
    rate_limit_scope: Literal["org", "global"] = "org",
    version: int = 1,
    description: str = "",
) -> OperationPolicy:
    """Declare run-time limits for `operation` (register the result in your `SpecRegistry`).

    Raises:
        SpecDefinitionError: No limit given, a limit that is not a positive integer, or an
            unknown scope.
    """
    if timeout_ms is None and rate_limit_per_minute is None:
        raise SpecDefinitionError(
            f"operation policy {operation!r}: give timeout_ms and/or rate_limit_per_minute",
            details={"field": "timeout_ms"},
        )
    for name, value in (
        ("timeout_ms", timeout_ms),
        ("rate_limit_per_minute", rate_limit_per_minute),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise SpecDefinitionError(
                f"operation policy {operation!r}: {name} must be a positive integer, got {value!r}",
                details={"field": name},
            )
    if rate_limit_scope not in ("org", "global"):
        raise SpecDefinitionError(
            f"operation policy {operation!r}: rate_limit_scope must be 'org' or 'global'",
            details={"field": "rate_limit_scope"},
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecDefinitionError(f"operation policy {operation!r}: version must be >= 1")
    return OperationPolicy(
        name=operation,
        version=version,
        timeout_ms=timeout_ms,
        rate_limit_per_minute=rate_limit_per_minute,
        rate_limit_scope=rate_limit_scope,
        description=description,
    )


@define(frozen=True)
class SpecSuggestion:
    """A proposed spec change with its rationale, evidence, diff and review state.

    Attributes:
        id: Suggestion id.
        kind: What it changes.
        operation: The operation concerned (the first step for a new workflow operation).
        title: One line.
        rationale: Why, in a paragraph.
        evidence: The statistics behind it (JSON).
        confidence: Confidence of the evidence in [0, 1].
        priority: Review order (`P1` first).
        patch: RFC 6902 operations against the IR whose digest is `base_ir_digest`.
        base_ir_digest: `ir_digest()` of the IR the patch applies to.
        diff: The classified changes the patch makes (`Change.to_dict()` forms).
        breaking: Whether any change is breaking.
        intent_ids: Intents that led to it.
        fingerprint: SHA-256 of kind, operation and canonical patch (deduplication).
        status: Review state; the approval request is the source of truth.
        approval_id: The `ApprovalWorkflow` request deciding it.
        created_at: UTC creation time.
        decided_at, decided_by: When and by whom it was decided.
        envelope_path: Where the approved envelope was written.
        version: Compare-and-set counter of the stored record.
    """

    id: str
    kind: SuggestionKind
    operation: str
    title: str
    rationale: str
    evidence: Mapping[str, Any]
    confidence: float
    priority: SuggestionPriority
    patch: tuple[Mapping[str, Any], ...]
    base_ir_digest: str
    diff: tuple[Mapping[str, str], ...]
    breaking: bool
    intent_ids: tuple[str, ...]
    fingerprint: str
    created_at: datetime
    status: SuggestionStatus = SuggestionStatus.PENDING
    approval_id: str | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None
    envelope_path: str | None = None
    version: int = 1

    def evolve(self, **changes: Any) -> SpecSuggestion:
        """A copy with `changes` applied."""
        return evolve(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored records, events and the review envelope)."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "operation": self.operation,
            "title": self.title,
            "rationale": self.rationale,
            "evidence": dict(self.evidence),
            "confidence": self.confidence,
            "priority": int(self.priority),
            "patch": [dict(p) for p in self.patch],
            "base_ir_digest": self.base_ir_digest,
            "diff": [dict(c) for c in self.diff],
            "breaking": self.breaking,
            "intent_ids": list(self.intent_ids),
            "fingerprint": self.fingerprint,
            "created_at": self.created_at.isoformat(),
            "status": self.status.value,
            "approval_id": self.approval_id,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decided_by": self.decided_by,
            "envelope_path": self.envelope_path,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpecSuggestion:
        """Rebuild from `to_dict()` output."""
        decided = data.get("decided_at")
        return cls(
            id=data["id"],
            kind=SuggestionKind(data["kind"]),
            operation=data["operation"],
            title=data["title"],
            rationale=data["rationale"],
            evidence=dict(data.get("evidence") or {}),
            confidence=float(data["confidence"]),
            priority=SuggestionPriority(int(data["priority"])),
            patch=tuple(dict(p) for p in data.get("patch") or ()),
            base_ir_digest=data["base_ir_digest"],
            diff=tuple(dict(c) for c in data.get("diff") or ()),
            breaking=bool(data["breaking"]),
            intent_ids=tuple(data.get("intent_ids") or ()),
            fingerprint=data["fingerprint"],
            created_at=datetime.fromisoformat(data["created_at"]),
            status=SuggestionStatus(data.get("status", "pending")),
            approval_id=data.get("approval_id"),
            decided_at=datetime.fromisoformat(decided) if decided else None,
            decided_by=data.get("decided_by"),
            envelope_path=data.get("envelope_path"),
            version=int(data.get("version", 1)),
        )


def apply_patch(ir: Mapping[str, Any], patch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Apply an RFC 6902 patch to an IR (with `jsonpatch`) and validate the result.

    Raises:
        ConfigurationError: The patch does not apply (a path that does not exist, a failed
            `test`) or the result is not valid IR.
    """
    try:
        patched = jsonpatch.apply_patch(copy.deepcopy(dict(ir)), [dict(p) for p in patch])
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise ConfigurationError(
            f"the suggestion's patch does not apply to this IR ({exc}); regenerate it against "
            "the current spec"
        ) from None
    return load_ir(patched)


def _fingerprint(kind: SuggestionKind, operation: str, patch: Sequence[Mapping[str, Any]]) -> str:
    body = canonical_json({"kind": kind.value, "operation": operation, "patch": list(patch)})
    return hashlib.sha256(body.encode()).hexdigest()


def _nice_ceiling(value: float) -> int:
    """Round up to 2 significant digits (`1234 -> 1300`), at least 1."""
    if value <= 1:
        return 1
    magnitude = 10 ** max(math.floor(math.log10(value)) - 1, 0)
    return int(math.ceil(value / magnitude) * magnitude)


#: pydantic error type -> (JSON Schema keyword, ctx key) for field-level validation errors.
_CONSTRAINTS: Final[dict[str, tuple[str, str]]] = {
    "greater_than": ("exclusiveMinimum", "gt"),
    "greater_than_equal": ("minimum", "ge"),
    "less_than": ("exclusiveMaximum", "lt"),
    "less_than_equal": ("maximum", "le"),
    "string_too_short": ("minLength", "min_length"),
    "string_too_long": ("maxLength", "max_length"),
    "too_short": ("minItems", "min_length"),
    "too_long": ("maxItems", "max_length"),
    "string_pattern_mismatch": ("pattern", "pattern"),
}


class ValidationErrorSampler:
    """A core `TrafficSink` counting field-level validation errors per operation (no values kept).

    Handlers that reject input with `SpecValidationError(errors=[{"field": ..., "type": ...,
    "ctx": {...}}])` (pydantic's error shape) feed `SpecGenerator`'s tightened-validation
    suggestions. Only the field, the error type and its constraint context are counted, never the
    rejected value; at most `max_keys` distinct errors are tracked.

    Args:
        max_keys: Bound on distinct (operation, version, field, type, ctx) keys.
    """

    def __init__(self, *, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self.counts: Counter[tuple[str, int, str, str, str]] = Counter()
        self.calls: Counter[tuple[str, int]] = Counter()

    def record(self, call: CallRecord) -> None:
        """Count the call and its field-level validation errors (never raises)."""
        try:
            key = (call.spec.name, call.spec.version)
            self.calls[key] += 1
            error = call.error
            if error is None or error.code != "validation_error":
                return
            for item in getattr(error, "errors", ()) or ():
                field_name = str(item.get("field") or "")
                err_type = str(item.get("type") or "")
                if not field_name or err_type not in _CONSTRAINTS:
                    continue
                ctx = canonical_json(item.get("ctx") or {})
                entry = (*key, field_name, err_type, ctx)
                if entry in self.counts or len(self.counts) < self.max_keys:
                    self.counts[entry] += 1
        except Exception:  # a sink must never fail a call
            return

    def recurring(self, min_count: int) -> list[tuple[str, int, str, str, dict[str, Any], int]]:
        """`(operation, version, field, type, ctx, count)` seen at least `min_count` times."""
        import json

        return [
            (op, ver, fname, etype, json.loads(ctx), n)
            for (op, ver, fname, etype, ctx), n in self.counts.most_common()
            if n >= min_count
        ]


class SpecGenerator:
    """Writes `SpecSuggestion`s from intents, usage and validation errors, against one registry.

    Args:
        registry: The app's registry (its IR is the base of every patch).
        clock: Time source.
        ids: Id source.
        min_validation_errors: Occurrences of one field-level validation error before suggesting
            the constraint.
        timeout_factor: Timeout suggested as this multiple of the healthy p95 (default 4).
        min_timeout_ms: Lowest timeout ever suggested (default 100 ms: network jitter alone can
            exceed a few milliseconds).
        rate_limit_factor: Rate limit suggested as this multiple of the healthy calls per minute
            (default 3).
        versioning: `new_version` (default) proposes tightened inputs as the next operation version
            with the old one deprecated; `in_place` changes the current version (breaking).
    """

    def __init__(
        self,
        registry: SpecRegistry,
        *,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
        min_validation_errors: int = 20,
        timeout_factor: float = 4.0,
        min_timeout_ms: int = 100,
        rate_limit_factor: float = 3.0,
        versioning: Literal["new_version", "in_place"] = "new_version",
    ) -> None:
        if versioning not in ("new_version", "in_place"):
            raise ConfigurationError(
                f"versioning must be 'new_version' or 'in_place', got {versioning!r}"
            )
        if timeout_factor <= 1 or rate_limit_factor <= 1:
            raise ConfigurationError("timeout_factor and rate_limit_factor must be greater than 1")
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.ids: IdGenerator = ids or UuidGenerator()
        self.min_validation_errors = min_validation_errors
        self.timeout_factor = timeout_factor
        self.min_timeout_ms = min_timeout_ms
        self.rate_limit_factor = rate_limit_factor
        self.versioning = versioning

    # -- public -----------------------------------------------------------------------------------

    def suggest(
        self,
        intents: Iterable[Intent] = (),
        *,
        usage: Iterable[OperationUsage] = (),
        validation: ValidationErrorSampler | None = None,
    ) -> list[SpecSuggestion]:
        """Suggestions for the intents (and unused operations, recurring validation errors).

        Intents that do not call for a spec change (throughput drops, error spikes, burn rates)
        give none. Suggestions whose patch changes nothing are dropped.

        Returns:
            Suggestions ordered by priority, then confidence (highest first).
        """
        ir = to_ir(self.registry)
        out: list[SpecSuggestion] = []
        for intent in intents:
            made = self._from_intent(ir, intent)
            if made is not None:
                out.append(made)
        for u in usage:
            if u.unused:
                made = self._deprecate(ir, u)
                if made is not None:
                    out.append(made)
        if validation is not None:
            for op, ver, fname, etype, ctx, count in validation.recurring(
                self.min_validation_errors
            ):
                made = self._tighten(ir, op, ver, fname, etype, ctx, count)
                if made is not None:
                    out.append(made)
        # one suggestion per kind and operation (the most confident), one per fingerprint
        out.sort(key=lambda s: (-s.confidence, s.id))
        unique: dict[tuple[str, str, str], SpecSuggestion] = {}
        fingerprints: set[str] = set()
        for s in out:
            per_title = s.kind in (SuggestionKind.NEW_OPERATION, SuggestionKind.TIGHTEN_VALIDATION)
            key = (s.kind.value, s.operation, s.title if per_title else "")
            if key not in unique and s.fingerprint not in fingerprints:
                unique[key] = s
                fingerprints.add(s.fingerprint)
        return sorted(unique.values(), key=lambda s: (s.priority, -s.confidence, s.operation))

    def build(
        self,
        ir: Mapping[str, Any],
        *,
        kind: SuggestionKind,
        operation: str,
        title: str,
        rationale: str,
        patch: Sequence[Mapping[str, Any]],
        evidence: Mapping[str, Any],
        confidence: float,
        priority: SuggestionPriority,
        intent_ids: Sequence[str] = (),
    ) -> SpecSuggestion | None:
        """Apply `patch` to `ir`, diff it and wrap it as a suggestion (`None` if it changes nothing).

        Raises:
            ConfigurationError: The patch does not apply or yields invalid IR.
        """
        new_ir = apply_patch(ir, patch)
        diff = diff_ir(ir, new_ir)
        if not diff:
            return None
        return SpecSuggestion(
            id=self.ids.new_id(),
            kind=kind,
            operation=operation,
            title=title,
            rationale=rationale,
            evidence=dict(evidence),
            confidence=round(float(confidence), 4),
            priority=priority,
            patch=tuple(dict(p) for p in patch),
            base_ir_digest=ir_digest(ir),
            diff=tuple(c.to_dict() for c in diff.changes),
            breaking=diff.has_breaking,
            intent_ids=tuple(intent_ids),
            fingerprint=_fingerprint(kind, operation, patch),
            created_at=self.clock.now(),
        )

    # -- per kind ---------------------------------------------------------------------------------

    def _from_intent(self, ir: Mapping[str, Any], intent: Intent) -> SpecSuggestion | None:
        if intent.org_id != ALL_TENANTS and intent.kind is not IntentKind.WORKFLOW_SEQUENCE:
            return None  # policies are per operation: judged on the all-tenant series
        if intent.kind is IntentKind.WORKFLOW_SEQUENCE:
            return self._workflow(ir, intent)
        if intent.kind is IntentKind.LATENCY_REGRESSION:
            return self._timeout(ir, intent)
        if intent.kind is IntentKind.THROUGHPUT_SPIKE:
            return self._rate_limit(ir, intent)
        return None

    @staticmethod
    def _find(ir: Mapping[str, Any], kind: str, name: str) -> tuple[int, dict[str, Any]] | None:
        """Index and entry of the latest version of `name` among `kind` specs."""
        found: tuple[int, dict[str, Any]] | None = None
        for i, spec in enumerate(ir["specs"].get(kind, [])):
            if spec["name"] == name and (found is None or spec["version"] > found[1]["version"]):
                found = (i, spec)
        return found

    def _policy_patch(
        self, ir: Mapping[str, Any], operation: str, values: dict[str, Any], description: str
    ) -> list[dict[str, Any]]:
        current = self._find(ir, POLICY_KIND, operation)
        if current is None:
            entry = {
                "kind": POLICY_KIND,
                "name": operation,
                "version": 1,
                "timeout_ms": None,
                "rate_limit_per_minute": None,
                "rate_limit_scope": "org",
                "description": description,
                "schemas": {},
                **values,
            }
            ops: list[dict[str, Any]] = []
            if POLICY_KIND not in ir["specs"]:
                ops.append({"op": "add", "path": f"/specs/{POLICY_KIND}", "value": []})
            ops.append({"op": "add", "path": f"/specs/{POLICY_KIND}/-", "value": entry})
            return ops
        index, _entry = current
        return [
            {"op": "replace", "path": f"/specs/{POLICY_KIND}/{index}/{key}", "value": value}
            for key, value in {**values, "description": description}.items()
        ]

    def _timeout(self, ir: Mapping[str, Any], intent: Intent) -> SpecSuggestion | None:
        if self._find(ir, "operation", intent.operation) is None:
            return None
        ev = intent.evidence
        healthy = float(ev.get("baseline_p95_ms") or 0.0)
        if not healthy > 0:
            return None
        timeout = max(_nice_ceiling(healthy * self.timeout_factor), self.min_timeout_ms)
        observed = float(ev.get("p95_ms") or math.nan)
        description = (
            f"Fail fast: {self.timeout_factor:g}x the healthy p95 ({healthy:.1f} ms, at least "
            f"{self.min_timeout_ms} ms), suggested after p95 rose to {observed:.1f} ms"
        )
        patch = self._policy_patch(ir, intent.operation, {"timeout_ms": timeout}, description)
        return self.build(
            ir, kind=SuggestionKind.TIMEOUT_POLICY, operation=intent.operation,
            title=f"Add a {timeout} ms timeout to {intent.operation}",
            rationale=(
                f"{intent.summary}. A timeout of {timeout} ms ({self.timeout_factor:g}x the healthy "
                f"p95, at least {self.min_timeout_ms} ms) bounds how long callers wait during the "
                "regression while normal calls keep "
                "finishing; investigate the regression itself separately."
            ),
            patch=patch,
            evidence={"intent": intent.to_dict(), "timeout_ms": timeout, "healthy_p95_ms": healthy},
            confidence=intent.confidence,
            priority=SuggestionPriority.P1 if intent.severity == "critical" else SuggestionPriority.P2,
            intent_ids=[intent.id],
        )  # fmt: skip

    def _rate_limit(self, ir: Mapping[str, Any], intent: Intent) -> SpecSuggestion | None:
        if self._find(ir, "operation", intent.operation) is None:
            return None
        ev = intent.evidence
        minutes = (intent.window_end - intent.window_start).total_seconds() / 60.0
        baseline = float(ev.get("baseline_calls") or 0.0) / max(minutes, 1.0)
        if not baseline > 0:
            return None
        limit = _nice_ceiling(baseline * self.rate_limit_factor)
        description = (
            f"{self.rate_limit_factor:g}x the healthy {baseline:.1f} calls/min, suggested after a "
            f"spike to {float(ev.get('calls', 0)) / max(minutes, 1.0):.1f} calls/min"
        )
        patch = self._policy_patch(
            ir, intent.operation, {"rate_limit_per_minute": limit, "rate_limit_scope": "org"},
            description,
        )  # fmt: skip
        return self.build(
            ir, kind=SuggestionKind.RATE_LIMIT_POLICY, operation=intent.operation,
            title=f"Rate-limit {intent.operation} to {limit} calls/min per tenant",
            rationale=(
                f"{intent.summary}. A per-tenant limit of {limit} calls per minute "
                f"({self.rate_limit_factor:g}x the healthy rate) protects other tenants from bursts."
            ),
            patch=patch,
            evidence={"intent": intent.to_dict(), "rate_limit_per_minute": limit,
                      "healthy_calls_per_min": baseline},
            confidence=intent.confidence,
            priority=SuggestionPriority.P2,
            intent_ids=[intent.id],
        )  # fmt: skip

    def _deprecate(self, ir: Mapping[str, Any], usage: OperationUsage) -> SpecSuggestion | None:
        found = self._find(ir, "operation", usage.operation)
        if found is None or found[1].get("stability") == "deprecated":
            return None
        index, _entry = found
        patch = [
            {"op": "replace", "path": f"/specs/operation/{index}/stability", "value": "deprecated"}
        ]
        return self.build(
            ir, kind=SuggestionKind.DEPRECATE_OPERATION, operation=usage.operation,
            title=f"Deprecate {usage.operation} (no calls observed)",
            rationale=(
                f"{usage.operation} had no calls over the observed {usage.observed_minutes:.0f} "
                "minutes. Deprecating it starts the deprecation period; removing it later is then "
                "a warning, not a breaking change."
            ),
            patch=patch,
            evidence={"calls": usage.calls, "observed_minutes": usage.observed_minutes},
            confidence=min(1.0, usage.observed_minutes / (7 * 24 * 60)),
            priority=SuggestionPriority.P4,
        )  # fmt: skip

    def _tighten(
        self,
        ir: Mapping[str, Any],
        operation: str,
        version: int,
        field_name: str,
        error_type: str,
        ctx: Mapping[str, Any],
        count: int,
    ) -> SpecSuggestion | None:
        keyword, ctx_key = _CONSTRAINTS[error_type]
        if ctx_key not in ctx or "." in field_name:
            return None
        entries = ir["specs"].get("operation", [])
        found = next(
            (
                (i, s)
                for i, s in enumerate(entries)
                if s["name"] == operation and s["version"] == version
            ),
            None,
        )
        if found is None:
            return None
        index, entry = found
        props = entry["schemas"]["input"].get("properties", {})
        if field_name not in props or props[field_name].get(keyword) == ctx[ctx_key]:
            return None
        value = ctx[ctx_key]
        if self.versioning == "in_place":
            patch: list[dict[str, Any]] = [
                {"op": "add", "path": f"/specs/operation/{index}/schemas/input/properties/"
                 f"{field_name}/{keyword}", "value": value}
            ]  # fmt: skip
        else:
            newer = copy.deepcopy(entry)
            newer["version"] = max(s["version"] for s in entries if s["name"] == operation) + 1
            newer["schemas"]["input"]["properties"][field_name][keyword] = value
            patch = [
                {
                    "op": "replace",
                    "path": f"/specs/operation/{index}/stability",
                    "value": "deprecated",
                },
                {"op": "add", "path": "/specs/operation/-", "value": newer},
            ]
        return self.build(
            ir, kind=SuggestionKind.TIGHTEN_VALIDATION, operation=operation,
            title=f"Validate {field_name} ({keyword} {value!r}) in the input of {operation}",
            rationale=(
                f"{count} calls of {operation}@{version} were rejected by the handler for "
                f"{field_name} ({error_type}, {ctx_key}={value!r}). Declaring the constraint in the "
                "input schema rejects them before the handler runs, documents it in the contract "
                "and lets clients validate first."
            ),
            patch=patch,
            evidence={"field": field_name, "error_type": error_type, "ctx": dict(ctx),
                      "occurrences": count},
            confidence=count / (count + self.min_validation_errors),
            priority=SuggestionPriority.P2,
        )  # fmt: skip

    def _workflow(self, ir: Mapping[str, Any], intent: Intent) -> SpecSuggestion | None:
        steps = []
        for name in intent.sequence:
            found = self._find(ir, "operation", name)
            if found is None:
                return None
            steps.append(found[1])
        domain = intent.sequence[0].split(".", 1)[0]
        tail = "_then_".join(
            "_".join(n.split(".")[1:]) if n.startswith(domain + ".") else n.replace(".", "_")
            for n in intent.sequence
        )
        name = f"{domain}.flow.{tail}"
        if self._find(ir, "operation", name) is not None:
            return None
        entry = _workflow_entry(name, steps)
        patch = [{"op": "add", "path": "/specs/operation/-", "value": entry}]
        ev = intent.evidence
        return self.build(
            ir, kind=SuggestionKind.NEW_OPERATION, operation=intent.sequence[0],
            title=f"Add {name}: {' -> '.join(intent.sequence)} as one command",
            rationale=(
                f"{intent.summary}. Clients run these steps together; one command does it in one "
                "round trip and one transaction, so a failed step leaves nothing half done."
            ),
            patch=patch,
            evidence={"intent": intent.to_dict(), "support": ev.get("support"),
                      "rule_confidence": ev.get("rule_confidence")},
            confidence=intent.confidence,
            priority=SuggestionPriority.P3,
            intent_ids=[intent.id],
        )  # fmt: skip


def _rebase_refs(schema: Any, prefix: str) -> Any:
    """Copy of `schema` with `#/$defs/X` references renamed to `#/$defs/<prefix>X`."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                out[key] = "#/$defs/" + prefix + value[len("#/$defs/") :]
            elif key == "$defs":
                continue
            else:
                out[key] = _rebase_refs(value, prefix)
        return out
    if isinstance(schema, list):
        return [_rebase_refs(v, prefix) for v in schema]
    return schema


def _combine(steps: Sequence[Mapping[str, Any]], role: str, title: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    defs: dict[str, Any] = {}
    for k, step in enumerate(steps, start=1):
        schema = step["schemas"][role]
        prefix = f"Step{k}"
        for def_name, def_schema in (schema.get("$defs") or {}).items():
            defs[prefix + def_name] = _rebase_refs(def_schema, prefix)
        body = _rebase_refs(schema, prefix)
        body.pop("title", None)
        props[f"step{k}"] = {
            **body,
            "description": f"{role.title()} of {step['name']}@{step['version']}",
        }
    combined: dict[str, Any] = {
        "type": "object",
        "title": title,
        "properties": props,
        "required": sorted(props),
        "additionalProperties": False,
    }
    if defs:
        combined["$defs"] = dict(sorted(defs.items()))
    return combined


def _combined_auth(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The workflow needs every permission of every step (public only if every step is)."""
    auths = [s.get("auth") or {"kind": "authenticated"} for s in steps]
    permissions = list(dict.fromkeys(p for a in auths for p in a.get("permissions") or ()))
    if permissions:
        return {"kind": "permissions", "permissions": permissions, "resource": None}
    kind = "public" if all(a.get("kind") == "public" for a in auths) else "authenticated"
    return {"kind": kind, "permissions": [], "resource": None}


def _workflow_entry(name: str, steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    base = "".join(part.title() for part in name.replace(".", "_").split("_"))
    first = steps[0]
    emits = sorted({e for s in steps for e in s.get("emits", [])})
    return {
        "kind": "operation",
        "name": name,
        "version": 1,
        "operation_kind": "command",
        "description": "Runs " + ", then ".join(f"{s['name']}@{s['version']}" for s in steps)
        + " in one transaction.",
        "owners": list(first.get("owners", [])),
        "tags": sorted({t for s in steps for t in s.get("tags", [])} | {"workflow"}),
        "stability": "experimental",
        "auth": _combined_auth(steps),
        "emits": emits,
        "idempotent": False,
        "audit": True,
        "errors": sorted({e for s in steps for e in s.get("errors", [])}),
        "pii": sorted(
            {f"{p.split('.', 1)[0]}.step{k}.{p.split('.', 1)[1]}"
             for k, s in enumerate(steps, start=1) for p in s.get("pii", []) if "." in p}
        ),
        "schemas": {
            "input": _combine(steps, "input", base + "Input"),
            "output": _combine(steps, "output", base + "Output"),
        },
    }  # fmt: skip
