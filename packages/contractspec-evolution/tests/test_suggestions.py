"""SpecGenerator: concrete patches against the IR, each with its breaking-change diff."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from evolution_app import POLICY, build_registry
from evolution_support import T0

from contractspec.core import (
    Actor,
    CallContext,
    ConfigurationError,
    Executor,
    MemoryBackend,
    SpecDefinitionError,
    SpecValidationError,
)
from contractspec.core.diff import diff_ir
from contractspec.core.ir import ir_digest
from contractspec.core.testing import FakeClock, SequentialIds
from contractspec.evolution import (
    ALL_TENANTS,
    POLICY_KIND,
    IntentAggregator,
    OperationPolicy,
    SpecAnalyzer,
    SpecGenerator,
    SuggestionKind,
    SuggestionPriority,
    ValidationErrorSampler,
    apply_patch,
    define_operation_policy,
)
from contractspec.evolution.detector import Intent, IntentKind, IntentSeverity


def generator(registry=None, **kwargs: object) -> SpecGenerator:  # type: ignore[no-untyped-def]
    return SpecGenerator(
        registry or build_registry(), clock=FakeClock(T0), ids=SequentialIds("s"), **kwargs
    )  # type: ignore[arg-type]


def intent(kind: IntentKind, op: str = "shop.deal.move", *, sequence: tuple[str, ...] = (),
           severity: IntentSeverity = IntentSeverity.CRITICAL, **evidence: object) -> Intent:  # fmt: skip
    return Intent(
        id="i-1", kind=kind, operation=op, org_id=ALL_TENANTS, window_start=T0,
        window_end=T0 + timedelta(minutes=15), detected_at=T0, confidence=0.8, severity=severity,
        summary=f"{op} changed", evidence=dict(evidence), sequence=sequence,
    )  # fmt: skip


def test_latency_regression_suggests_a_timeout_policy_with_its_diff() -> None:
    """A latency intent adds an operation_policy spec (4x the healthy p95), non-breaking."""
    gen = generator()
    (s,) = gen.suggest([intent(IntentKind.LATENCY_REGRESSION, baseline_p95_ms=12.3, p95_ms=80.0)])
    assert s.kind is SuggestionKind.TIMEOUT_POLICY
    assert s.title == "Add a 100 ms timeout to shop.deal.move"  # 4 x 12.3 ms, floored at 100 ms
    assert s.priority is SuggestionPriority.P1
    assert s.patch[0] == {"op": "add", "path": f"/specs/{POLICY_KIND}", "value": []}
    assert s.patch[1]["value"]["timeout_ms"] == 100
    (fast,) = generator(min_timeout_ms=10).suggest(
        [intent(IntentKind.LATENCY_REGRESSION, baseline_p95_ms=12.3, p95_ms=80.0)]
    )
    assert fast.patch[1]["value"]["timeout_ms"] == 50
    assert s.diff == (
        {"rule": "spec-added", "severity": "info", "kind": POLICY_KIND, "spec": "shop.deal.move@1",
         "path": "", "message": f"{POLICY_KIND} added"},
    )  # fmt: skip
    assert s.breaking is False
    base = gen.registry.to_ir()
    assert s.base_ir_digest == ir_digest(base)
    assert s.intent_ids == ("i-1",)
    assert (s.id, s.created_at) == ("s-000001", T0)
    again = generator().suggest(
        [intent(IntentKind.LATENCY_REGRESSION, baseline_p95_ms=12.3, p95_ms=80.0)]
    )
    assert again[0].fingerprint == s.fingerprint


def test_existing_policy_is_changed_in_place() -> None:
    """With a registered policy, the suggestion replaces its fields (a spec-changed warning)."""
    registry = build_registry()
    registry.register(define_operation_policy("shop.deal.move", timeout_ms=1000))
    (s,) = generator(registry).suggest(
        [intent(IntentKind.LATENCY_REGRESSION, baseline_p95_ms=20.0, p95_ms=90.0)]
    )
    assert [p["op"] for p in s.patch] == ["replace", "replace"]
    rules = [(c["rule"], c["path"]) for c in s.diff]
    assert ("spec-changed", "timeout_ms") in rules
    assert s.breaking is False
    new_ir = apply_patch(registry.to_ir(), s.patch)
    (policy,) = new_ir["specs"][POLICY_KIND]
    assert policy["timeout_ms"] == 100


def test_throughput_spike_suggests_a_rate_limit() -> None:
    """A spike gives a per-tenant limit of 3x the healthy calls per minute."""
    (s,) = generator().suggest(
        [intent(IntentKind.THROUGHPUT_SPIKE, baseline_calls=300.0, calls=2000)]
    )
    assert s.kind is SuggestionKind.RATE_LIMIT_POLICY
    assert s.evidence["rate_limit_per_minute"] == 60
    assert s.patch[-1]["value"]["rate_limit_scope"] == "org"


def test_frequent_sequence_suggests_a_workflow_command() -> None:
    """A frequent create -> move pair becomes one new command whose input nests both inputs."""
    (s,) = generator().suggest(
        [intent(IntentKind.WORKFLOW_SEQUENCE, "shop.deal.create",
                sequence=("shop.deal.create", "shop.deal.move"), severity=IntentSeverity.INFO,
                support=40, rule_confidence=0.9)]
    )  # fmt: skip
    assert s.kind is SuggestionKind.NEW_OPERATION
    entry = s.patch[0]["value"]
    assert entry["name"] == "shop.flow.deal_create_then_deal_move"
    assert entry["auth"] == {"kind": "permissions", "permissions": ["deal.write"], "resource": None}
    props = entry["schemas"]["input"]["properties"]
    assert sorted(props) == ["step1", "step2"]
    assert props["step1"]["properties"]["amount"] == {"title": "Amount", "type": "integer"}
    assert [c["rule"] for c in s.diff] == ["operation-added"]
    assert s.breaking is False
    assert s.priority is SuggestionPriority.P3


async def test_recurring_field_errors_suggest_tightened_input_as_a_new_version() -> None:
    """Handler-rejected amounts become exclusiveMinimum 0 in shop.deal.create@2 (old deprecated)."""
    registry = build_registry()
    sampler = ValidationErrorSampler()
    executor = Executor(registry, backend=MemoryBackend(), policy=POLICY, traffic=sampler)
    ctx = CallContext(actor=Actor.user("u1", roles="sales"), org_id="o1")
    for amount in [0, -5] * 12 + [10]:
        with contextlib.suppress(SpecValidationError):
            await executor.execute("shop.deal.create", {"title": "x", "amount": amount}, ctx)
    assert sampler.calls[("shop.deal.create", 1)] == 25
    assert sampler.recurring(20) == [
        ("shop.deal.create", 1, "amount", "greater_than", {"gt": 0}, 24)
    ]
    (s,) = generator(registry).suggest(validation=sampler)
    assert s.kind is SuggestionKind.TIGHTEN_VALIDATION
    new_ir = apply_patch(registry.to_ir(), s.patch)
    v2 = [
        o
        for o in new_ir["specs"]["operation"]
        if o["name"] == "shop.deal.create" and o["version"] == 2
    ]
    assert v2[0]["schemas"]["input"]["properties"]["amount"]["exclusiveMinimum"] == 0
    assert sorted(c["rule"] for c in s.diff) == ["operation-added", "operation-deprecated"]
    assert s.breaking is False
    (in_place,) = generator(registry, versioning="in_place").suggest(validation=sampler)
    assert in_place.breaking is True
    assert sorted(c["rule"] for c in in_place.diff) == [
        "breaking-change-without-version-bump", "input-constraint-tightened",
    ]  # fmt: skip
    assert generator(registry).suggest(validation=ValidationErrorSampler()) == []


def test_unused_operations_are_suggested_for_deprecation() -> None:
    """After a day of traffic without calls, an operation gets a deprecation suggestion."""
    registry = build_registry()
    agg = IntentAggregator(window_minutes=60, lateness_minutes=0)
    from evolution_support import minute_samples

    for hour in range(25):
        for s in minute_samples("shop.deal.create", hour * 60, [5.0]):
            agg.record(s)
        for s in minute_samples("shop.deal.move", hour * 60, [5.0]):
            agg.record(s)
        for s in minute_samples("shop.deal.count", hour * 60, [5.0]):
            agg.record(s)
    agg.advance(T0 + timedelta(hours=25))
    report = SpecAnalyzer(registry).analyze(agg)
    assert report.unused == ("shop.deal.archive",)
    create = report.get("shop.deal.create")
    assert (create.calls, create.errors, create.registered, create.success_rate) == (
        25,
        0,
        True,
        1.0,
    )
    assert create.last_seen == T0 + timedelta(hours=24)
    (s,) = generator(registry).suggest(usage=report.operations)
    assert s.kind is SuggestionKind.DEPRECATE_OPERATION
    assert s.operation == "shop.deal.archive"
    assert [c["rule"] for c in s.diff] == ["operation-deprecated"]
    assert s.priority is SuggestionPriority.P4


def test_intents_without_a_spec_change_give_nothing() -> None:
    """Error spikes, drops and burn rates are operational: no suggestion."""
    gen = generator()
    assert gen.suggest([intent(IntentKind.ERROR_SPIKE), intent(IntentKind.THROUGHPUT_DROP),
                        intent(IntentKind.SLO_BURN)]) == []  # fmt: skip
    assert (
        gen.suggest([intent(IntentKind.LATENCY_REGRESSION, "shop.unknown.op", baseline_p95_ms=5.0)])
        == []
    )


def test_patch_errors_and_bad_definitions() -> None:
    """A patch that does not apply, a bad policy or a bad generator option raise with the fix."""
    ir = build_registry().to_ir()
    with pytest.raises(ConfigurationError, match="does not apply"):
        apply_patch(ir, [{"op": "replace", "path": "/specs/operation/99/stability", "value": "x"}])
    with pytest.raises(SpecDefinitionError, match="timeout_ms"):
        define_operation_policy("shop.deal.move")
    with pytest.raises(SpecDefinitionError, match="rate_limit_per_minute"):
        define_operation_policy("shop.deal.move", rate_limit_per_minute=0)
    with pytest.raises(ConfigurationError, match="versioning"):
        generator(versioning="sideways")
    assert diff_ir(ir, apply_patch(ir, [])).changes == ()
    policy = define_operation_policy("shop.deal.move", timeout_ms=10, description="d")
    assert isinstance(policy, OperationPolicy)
    assert (policy.kind, policy.to_ir()["timeout_ms"]) == (POLICY_KIND, 10)
