"""Experiment definitions, the registry, and deterministic GrowthBook-compatible assignment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from growth_a_cases import params
from growth_a_support import growthbook_run, reference_fnv1a32, utf16_units
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contractspec.core import (
    Actor,
    CallContext,
    NotFoundError,
    SpecDefinitionError,
    SpecRegistry,
    SpecValidationError,
)
from contractspec.core.testing import FakeClock
from contractspec.growth.experiments import (
    AssignmentReason,
    ExperimentRegistry,
    ExperimentRunner,
    Namespace,
    Variation,
    define_experiment,
    subject_attributes,
)
from contractspec.growth.hashing import (
    bucket_hash,
    bucket_hash_many,
    fnv1a32,
    fnv1a32_many,
    hash_key,
)

# GrowthBook `run` cases whose experiment define_experiment can express (no URL overrides,
# QA mode, filters, explicit ranges or prerequisites, which belong to GrowthBook's client SDK).
_RUN_KEYS = {"key", "variations", "weights", "coverage", "namespace", "hashAttribute",
             "hashVersion", "seed", "condition", "active", "force"}  # fmt: skip


def _expressible(case: list[Any]) -> bool:
    context, experiment = case[1], case[2]
    return (
        set(context) <= {"attributes", "savedGroups", "forcedVariations"}
        and set(experiment) <= _RUN_KEYS
        and "force" not in experiment
        and len(experiment["variations"]) >= 2
    )


RUN_CASES = [p for p in params("run") if p.values[0] is None or _expressible(p.values[0])]


def _spec_from_case(experiment: dict[str, Any]) -> Any:
    values = experiment["variations"]
    return define_experiment(
        experiment["key"],
        [Variation(f"v{i}", value) for i, value in enumerate(values)],
        weights=experiment.get("weights"),
        coverage=experiment.get("coverage", 1.0),
        namespace=tuple(experiment["namespace"]) if "namespace" in experiment else None,
        targeting=experiment.get("condition"),
        hash_attribute=experiment.get("hashAttribute", "id"),
        hash_version=experiment.get("hashVersion", 1),
        seed=experiment.get("seed"),
        active=experiment.get("active", True),
    )


def _runner_for(spec: Any, context: dict[str, Any]) -> ExperimentRunner:
    forced = context.get("forcedVariations", {})
    return ExperimentRunner(
        ExperimentRegistry(spec),
        forced={k: f"v{i}" for k, i in forced.items() if k == spec.key},
        saved_groups=context.get("savedGroups"),
    )


@pytest.mark.parametrize("case", RUN_CASES)
def test_assign_matches_growthbook_run_cases(case: list[Any]) -> None:
    """`assign` gives GrowthBook's value and inExperiment for every expressible `run` case."""
    _, context, experiment, value, in_experiment, hash_used = case
    spec = _spec_from_case(experiment)
    runner = _runner_for(spec, context)
    assignment = runner.assign(spec.key, context.get("attributes", {}))
    assert assignment.value == value
    assert assignment.in_experiment is in_experiment
    assert assignment.hash_used is hash_used


@pytest.mark.parametrize("case", RUN_CASES)
def test_assign_many_matches_growthbook_run_cases(case: list[Any]) -> None:
    """`assign_many` gives the same variation as the `run` case (targeting via `eligible`)."""
    _, context, experiment, value, in_experiment, _ = case
    spec = _spec_from_case(experiment)
    runner = _runner_for(spec, context)
    raw = context.get("attributes", {}).get(spec.hash_attribute)
    ids = ["" if raw is None else str(raw)]
    eligible = [runner.assign(spec, {**context.get("attributes", {})}).reason
                is not AssignmentReason.NOT_TARGETED]  # fmt: skip
    result = runner.assign_many(spec, ids, eligible=eligible)
    assert bool(result.in_experiment[0]) is in_experiment
    expected_index = spec.variations.index(next(v for v in spec.variations if v.value == value))
    assert int(result.variation_index[0]) == (expected_index if in_experiment else -1)


def test_non_bmp_characters_hash_as_utf16_surrogate_pairs() -> None:
    """An emoji hashes as its two UTF-16 code units, like the JavaScript reference."""
    assert utf16_units("😀") == [0xD83D, 0xDE00]
    for text in ["😀", "user-😀-\U0001d54f", "𠜎𠜱", "a😀b", "é😀"]:
        units = utf16_units(text)
        assert fnv1a32(text) == reference_fnv1a32(units)
        assert fnv1a32(text) != reference_fnv1a32([ord(c) for c in text])
        expected_v1 = reference_fnv1a32(units + utf16_units("seed")) % 1000 / 1000
        assert bucket_hash("seed", text, 1) == expected_v1
        inner = reference_fnv1a32(utf16_units("seed") + units)
        assert (
            bucket_hash("seed", text, 2)
            == reference_fnv1a32(utf16_units(str(inner))) % 10000 / 10000
        )
    assert fnv1a32_many(["😀", "plain", "a\x00"]).tolist() == [
        reference_fnv1a32([0xD83D, 0xDE00]),
        reference_fnv1a32(utf16_units("plain")),
        reference_fnv1a32([0x61, 0]),
    ]


_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_text, min_size=1, max_size=30), st.text(max_size=12), st.sampled_from([1, 2]))
def test_vectorised_hash_equals_scalar_hash(values: list[str], seed: str, version: int) -> None:
    """`bucket_hash_many` equals `bucket_hash` for any strings (non-BMP, NULs, lone surrogates)."""
    assert bucket_hash_many(seed, values, version).tolist() == [
        bucket_hash(seed, v, version) for v in values
    ]
    assert fnv1a32_many(np.asarray(values)).tolist() == [
        fnv1a32(str(v)) for v in np.asarray(values)
    ]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(max_size=16), min_size=1, max_size=40),
    st.integers(2, 4),
    st.floats(0.0, 1.0),
    st.sampled_from([1, 2]),
    st.booleans(),
)
def test_assign_many_equals_assign(
    ids: list[str], arms: int, coverage: float, version: int, namespaced: bool
) -> None:
    """The vectorised path assigns every subject exactly like `assign`."""
    spec = define_experiment(
        "exp-many",
        [f"v{i}" for i in range(arms)],
        coverage=coverage,
        hash_version=version,
        namespace=("ns", 0.25, 0.8) if namespaced else None,
    )
    runner = ExperimentRunner(ExperimentRegistry(spec))
    batch = runner.assign_many(spec, ids)
    for i, subject in enumerate(ids):
        one = runner.assign(spec, {"id": subject})
        assert int(batch.variation_index[i]) == (one.variation_index if one.in_experiment else -1)
        assert (np.isnan(batch.bucket[i]) and one.bucket is None) or batch.bucket[i] == one.bucket
    assert batch.variations().tolist() == [
        (a.variation if a.in_experiment else None)
        for a in (runner.assign(spec, {"id": s}) for s in ids)
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=20),
    st.lists(st.floats(0.05, 1.0), min_size=2, max_size=5),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
    st.sampled_from([1, 2]),
)
def test_raising_coverage_only_adds_subjects(
    subject: str, raw_weights: list[float], low: float, high: float, version: int
) -> None:
    """A subject in the experiment at coverage a keeps its variation at any coverage b >= a."""
    low, high = min(low, high), max(low, high)
    weights = [w / sum(raw_weights) for w in raw_weights]
    arms = [f"v{i}" for i in range(len(weights))]
    before = define_experiment("stage", arms, weights, coverage=low, hash_version=version)
    after = before.with_coverage(high)
    runner = ExperimentRunner(ExperimentRegistry())
    a, b = runner.assign(before, subject), runner.assign(after, subject)
    if a.in_experiment:
        assert b.in_experiment
        assert b.variation == a.variation
    assert a.bucket == b.bucket or a.bucket is None


@settings(max_examples=100, deadline=None)
@given(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=16),
    st.integers(2, 3),
    st.floats(0.0, 1.0),
    st.sampled_from([1, 2]),
)
def test_assignment_equals_growthbook_python_sdk(
    subject: str, arms: int, coverage: float, version: int
) -> None:
    """Our runner and GrowthBook's Python SDK put every subject in the same variation."""
    spec = define_experiment("gb-diff", [f"v{i}" for i in range(arms)], coverage=coverage,
                             hash_version=version, namespace=("pricing", 0.1, 0.9))  # fmt: skip
    ours = ExperimentRunner(ExperimentRegistry(spec)).assign(spec, {"id": subject})
    variation, in_experiment, _ = growthbook_run(
        {"id": subject},
        {"key": "gb-diff", "variations": list(range(arms)), "coverage": coverage,
         "hashVersion": version, "namespace": ("pricing", 0.1, 0.9)},
    )  # fmt: skip
    assert (ours.variation_index, ours.in_experiment) == (variation, in_experiment)


def test_time_window_and_pause_exclude_subjects() -> None:
    """Before start, after end and while paused, subjects get the control and are not tracked."""
    start = datetime(2024, 3, 1, tzinfo=UTC)
    clock = FakeClock(start - timedelta(seconds=1))
    spec = define_experiment("windowed", ["a", "b"], start=start, end=start + timedelta(days=7))
    runner = ExperimentRunner(ExperimentRegistry(spec), clock=clock)
    assert runner.assign("windowed", "u1").reason is AssignmentReason.NOT_STARTED
    clock.advance(1)
    live = runner.assign("windowed", "u1")
    assert live.reason is AssignmentReason.ASSIGNED
    assert live.tracked is True
    clock.advance(timedelta(days=7))
    ended = runner.assign("windowed", "u1")
    assert (ended.reason, ended.variation, ended.in_experiment, ended.tracked) == (
        AssignmentReason.ENDED, "a", False, False
    )  # fmt: skip
    assert runner.assign_many("windowed", ["u1", "u2"]).variation_index.tolist() == [-1, -1]
    paused = define_experiment("paused", ["a", "b"], active=False)
    assert ExperimentRunner(ExperimentRegistry(paused)).assign(paused, "u1").reason is (
        AssignmentReason.INACTIVE
    )


def test_forced_variation_is_in_experiment_but_not_tracked() -> None:
    """A QA override serves the forced arm without hashing (so it is never counted)."""
    spec = define_experiment("qa", ["a", "b", "c"])
    runner = ExperimentRunner(ExperimentRegistry(spec), forced={"qa": "c"})
    result = runner.assign("qa", "anyone")
    assert (result.variation, result.variation_index, result.in_experiment, result.tracked) == (
        "c",
        2,
        True,
        False,
    )
    assert runner.assign_many("qa", ["x", "y"]).variation_index.tolist() == [2, 2]


def test_call_context_subjects_use_actor_and_org_attributes() -> None:
    """A CallContext is targeted by actor id, org, roles and actor attributes; anonymous is excluded."""
    spec = define_experiment("pro-only", ["a", "b"], targeting={"plan": "pro", "org_id": "o1"})
    runner = ExperimentRunner(ExperimentRegistry(spec))
    pro = CallContext(actor=Actor.user("u-7", roles="sales", plan="pro"), org_id="o1")
    assert subject_attributes(pro) == {
        "id": "u-7", "user_id": "u-7", "org_id": "o1", "roles": ["sales"], "actor_kind": "user",
        "plan": "pro",
    }  # fmt: skip
    assert runner.assign(spec, pro).in_experiment is True
    assert runner.assign(spec, pro.replace(org_id="o2")).reason is AssignmentReason.NOT_TARGETED
    assert runner.assign(spec, CallContext()).reason is AssignmentReason.NO_HASH_ATTRIBUTE


def test_assign_many_counts_follow_weights_on_a_million_ids() -> None:
    """A 10/90 split over 1M ids lands within 0.3 points of its weights, and integer ids work."""
    spec = define_experiment("split", ["a", "b"], weights=[0.1, 0.9])
    runner = ExperimentRunner(ExperimentRegistry(spec))
    ids = np.arange(1, 1_000_001)
    batch = runner.assign_many(spec, ids)
    counts = batch.counts()
    assert abs(counts["a"] / 1_000_000 - 0.1) < 0.003
    assert counts["a"] + counts["b"] == 1_000_000
    sample = [1, 17, 999_999]
    assert [int(batch.variation_index[i - 1]) for i in sample] == [
        runner.assign(spec, {"id": i}).variation_index for i in sample
    ]


def test_assign_many_requires_eligibility_for_targeted_experiments() -> None:
    """Targeting cannot be vectorised, so a mask is required and its length is checked."""
    spec = define_experiment("targeted", ["a", "b"], targeting={"plan": "pro"})
    runner = ExperimentRunner(ExperimentRegistry(spec))
    with pytest.raises(SpecValidationError, match="pass eligible="):
        runner.assign_many(spec, ["u1"])
    with pytest.raises(SpecValidationError, match="eligible has 1 entries for 2 ids"):
        runner.assign_many(spec, ["u1", "u2"], eligible=[True])
    assert runner.assign_many(
        spec, ["u1", "u2"], eligible=[False, False]
    ).variation_index.tolist() == [
        -1,
        -1,
    ]
    with pytest.raises(SpecValidationError, match=r"values\[1\] is int"):
        runner.assign_many(define_experiment("plain", ["a", "b"]), ["u1", 5])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variations": ["only"]}, "at least two variations"),
        ({"variations": ["a", "a"]}, "duplicate variation keys"),
        ({"weights": [0.5]}, "2 variations but 1 weights"),
        ({"weights": [0.7, 0.7]}, "sum to 1.4; they must sum to 1"),
        ({"coverage": 20}, "coverage must be between 0 and 1"),
        ({"weights": [-0.5, 1.5]}, r"weights\[0\] must be between 0 and 1"),
        ({"namespace": ("ns", 0.5, 0.2)}, "0 <= start < end <= 1"),
        ({"hash_version": 3}, "hash_version must be 1 or 2"),
        ({"targeting": {"age": {"$gtt": 5}}}, r"targeting.age.\$gtt: unknown operator"),
        ({"targeting": {"plan": {"$in": "pro"}}}, r"needs a list of values"),
        ({"start": datetime(2024, 1, 1)}, "timezone-aware"),
        ({"minimum_sample": -1}, "minimum_sample must be a non-negative int"),
    ],
)
def test_define_experiment_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    """Bad arguments raise SpecDefinitionError naming the field and the fix."""
    arguments: dict[str, Any] = {"variations": ["a", "b"], **kwargs}
    with pytest.raises(SpecDefinitionError, match=message):
        define_experiment("bad", **arguments)


@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda c: not 0 <= c <= 1))
def test_any_coverage_outside_unit_interval_is_rejected(coverage: float) -> None:
    """Coverage is a fraction: every value outside [0, 1] (and NaN) is refused."""
    with pytest.raises(SpecDefinitionError) as info:
        define_experiment("cov", ["a", "b"], coverage=coverage)
    assert info.value.details == {"field": "coverage"}


def test_registry_keeps_namespaces_exclusive_and_critical_flows_untouched() -> None:
    """Overlapping namespace ranges and experiments on critical flows are refused."""
    left = define_experiment("left", ["a", "b"], namespace=Namespace("pricing", 0.0, 0.5))
    right = define_experiment("right", ["a", "b"], namespace=("pricing", 0.5, 1.0))
    registry = ExperimentRegistry(left, right, critical_flows=["billing.*"])
    clash = define_experiment("clash", ["a", "b"], namespace=("pricing", 0.4, 0.6))
    with pytest.raises(SpecDefinitionError, match="both claim part of namespace 'pricing'"):
        registry.register(clash)
    risky = define_experiment("risky", ["a", "b"], flows=["billing.charge"])
    with pytest.raises(SpecDefinitionError, match=r"'billing\.charge', a critical flow"):
        registry.register(risky)
    assert registry.is_critical("billing.refund") is True
    assert [s.key for s in registry] == ["left", "right"]
    with pytest.raises(
        NotFoundError, match="unknown experiment 'nope'; registered experiments: left, right"
    ):
        registry.get("nope")
    ids = [f"user-{i}" for i in range(2000)]
    runner = ExperimentRunner(registry)
    both = (
        runner.assign_many(left, ids).in_experiment & runner.assign_many(right, ids).in_experiment
    )
    assert int(both.sum()) == 0
    assert (
        int(runner.assign_many(left, ids).in_experiment.sum())
        + int(runner.assign_many(right, ids).in_experiment.sum())
        == 2000
    )


def test_experiments_live_in_a_core_spec_registry() -> None:
    """Experiment specs register in core's SpecRegistry and come back as the latest version."""
    v1 = define_experiment("homepage", ["a", "b"])
    v2 = define_experiment("homepage", ["a", "b", "c"], version=2)
    registry = SpecRegistry(v1, v2)
    experiments = ExperimentRegistry.from_spec_registry(registry)
    assert experiments.get("homepage") is v2
    assert registry.versions("homepage", kind="experiment") == [1, 2]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=40),
    st.sampled_from([1, 2]),
)
def test_integer_ids_assign_like_their_javascript_strings(ids: list[int], version: int) -> None:
    """Integer id arrays hash like GrowthBook prints numbers (0 excluded, > 2**53 as doubles)."""
    spec = define_experiment("int-ids", ["a", "b", "c"], coverage=0.7, hash_version=version)
    runner = ExperimentRunner(ExperimentRegistry(spec))
    batch = runner.assign_many(spec, np.array(ids, dtype=np.int64))
    expected = []
    for subject in ids:
        one = runner.assign(spec, {"id": subject})
        expected.append(one.variation_index if one.in_experiment else -1)
    assert batch.variation_index.tolist() == expected
    assert bucket_hash_many("s", np.array(ids, dtype=np.int64), version).tolist() == [
        bucket_hash("s", hash_key(i) or str(i), version) for i in ids
    ]  # the raw hash covers 0 too ("0"); only assignment excludes it


def test_registry_replaces_a_phase_and_keeps_its_checks() -> None:
    """A new phase (higher coverage) replaces the definition; a clashing one is refused and undone."""
    first = define_experiment("ramp", ["a", "b"], coverage=0.1, namespace=("ns", 0.0, 0.5))
    other = define_experiment("other", ["a", "b"], namespace=("ns", 0.5, 1.0))
    registry = ExperimentRegistry(first, other)
    wider = first.with_coverage(0.5)
    assert registry.replace(wider) is first
    assert registry.get("ramp") is wider
    clash = define_experiment("ramp", ["a", "b"], namespace=("ns", 0.0, 0.6))
    with pytest.raises(SpecDefinitionError, match="both claim part of namespace 'ns'"):
        registry.replace(clash)
    assert registry.get("ramp") is wider
    with pytest.raises(NotFoundError, match="unknown experiment 'missing'"):
        registry.replace(define_experiment("missing", ["a", "b"]))


def test_small_and_32_bit_integer_ids_hash_like_their_strings() -> None:
    """Every integer near 0, near 2**32 and in between hashes like its decimal string."""
    ids = np.array(
        [*range(-300, 300), 2**32 - 2, 2**32 - 1, 2**32, 2**32 + 1, 10**9, 4_000_000_000],
        dtype=np.int64,
    )
    for version in (1, 2):
        assert bucket_hash_many("seed", ids, version).tolist() == [
            bucket_hash("seed", str(int(i)), version) for i in ids
        ]


def test_decimal_second_stage_is_exact_at_table_boundaries() -> None:
    """Hash v2's `fnv1a32(str(n))` stage is exact below, at and above the 100,000-entry table."""
    from contractspec.growth.hashing import _fnv_of_decimal

    numbers = [0, 1, 9, 10, 99_999, 100_000, 100_001, 999_999, 10**9, 2**31, 2**32 - 1]
    got = _fnv_of_decimal(np.array(numbers, dtype=np.uint32)).tolist()
    assert got == [fnv1a32(str(n)) for n in numbers]
