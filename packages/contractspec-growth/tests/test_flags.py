"""Feature flags: rules in order, targeting by org/user/plan/segment, rollouts, critical flows."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contractspec.core import Actor, CallContext, NotFoundError, SpecDefinitionError, SpecRegistry
from contractspec.growth.experiments import Variation, define_experiment
from contractspec.growth.flags import (
    FlagEvaluator,
    define_flag,
    experiment_rule,
    force,
    rollout,
    target,
)
from contractspec.growth.hashing import bucket_hash

PRICING = define_experiment(
    "pricing.page", [Variation("old", "classic"), Variation("new", "cards")]
)


def _evaluator(**kwargs: Any) -> FlagEvaluator:
    flags = [
        define_flag(
            "checkout.new-flow",
            default=False,
            rules=[
                force(False, when=target(org="blocked-org"), id="kill"),
                force(True, when=target(org=["acme", "globex"]), id="design-partners"),
                force(True, when=target(segment="beta"), id="beta"),
                rollout(True, coverage=0.3, when=target(plan="pro"), id="pro-ramp"),
            ],
        ),
        define_flag("pricing.layout", "classic", ["classic", "cards"], [experiment_rule(PRICING)]),
        define_flag("search.limit", 10, rules=[force(50, when=target(plan="enterprise"))]),
    ]
    return FlagEvaluator(flags, segments={"beta": ["u-beta-1", "u-beta-2"]}, **kwargs)


def test_first_matching_rule_decides() -> None:
    """Rules run in order: a kill rule before the org rule wins; no match serves the default."""
    flags = _evaluator()
    blocked = flags.evaluate("checkout.new-flow", {"id": "u1", "org_id": "blocked-org"})
    assert (blocked.value, blocked.source, blocked.rule_id, blocked.rule_index) == (
        False,
        "force",
        "kill",
        0,
    )
    partner = flags.evaluate("checkout.new-flow", {"id": "u1", "org_id": "globex"})
    assert (partner.value, partner.rule_id) == (True, "design-partners")
    nobody = flags.evaluate("checkout.new-flow", {"id": "u1", "org_id": "other", "plan": "free"})
    assert (nobody.value, nobody.source, nobody.rule_index) == (False, "default", None)


def test_segments_and_plans_target_subjects() -> None:
    """Segment members match `$inGroup`; a numeric flag serves its enterprise value by plan."""
    flags = _evaluator()
    assert flags.evaluate("checkout.new-flow", "u-beta-2").rule_id == "beta"
    assert flags.value("search.limit", {"id": "x", "plan": "enterprise"}) == 50
    assert flags.value("search.limit", {"id": "x", "plan": "pro"}) == 10


def test_rollout_serves_exactly_the_subjects_inside_the_coverage() -> None:
    """A 30% rollout serves its value to subjects whose bucket (seed = flag key) is below 0.3."""
    flags = _evaluator()
    on = 0
    for i in range(2000):
        subject = {"id": f"user-{i}", "plan": "pro", "org_id": "other"}
        expected = bucket_hash("checkout.new-flow", f"user-{i}", 2) < 0.3
        assert flags.is_on("checkout.new-flow", subject) is expected
        on += expected
    assert 540 <= on <= 660  # the share is 30% give or take 3 points (binomial, 2,000 ids)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=12), st.floats(0, 1), st.floats(0, 1))
def test_widening_a_rollout_never_turns_anyone_off(subject: str, a: float, b: float) -> None:
    """A subject served at coverage a is still served at any coverage b >= a."""
    low, high = min(a, b), max(a, b)
    before = FlagEvaluator([define_flag("f", False, rules=[rollout(True, low)])])
    after = FlagEvaluator([define_flag("f", False, rules=[rollout(True, high)])])
    if before.is_on("f", subject):
        assert after.is_on("f", subject)


def test_experiment_rules_serve_the_variation_value() -> None:
    """An experiment rule serves the value of the subject's variation and reports the assignment."""
    flags = _evaluator()
    for i in range(20):
        result = flags.evaluate("pricing.layout", f"user-{i}")
        assert result.source == "experiment"
        assert result.assignment is not None
        assert result.value == {"old": "classic", "new": "cards"}[result.assignment.variation]


def test_call_contexts_and_overrides() -> None:
    """A CallContext targets by org and actor attributes; an override wins everywhere."""
    flags = _evaluator(overrides={"search.limit": 3})
    ctx = CallContext(actor=Actor.user("u1", plan="enterprise"), org_id="acme")
    assert flags.evaluate("checkout.new-flow", ctx).rule_id == "design-partners"
    assert (
        flags.evaluate("search.limit", ctx).value,
        flags.evaluate("search.limit", ctx).source,
    ) == (3, "override")
    with pytest.raises(
        NotFoundError,
        match=r"unknown flag 'nope'; known flags: checkout\.new-flow, pricing\.layout, search\.limit",
    ):
        flags.evaluate("nope", ctx)


def test_flags_register_in_a_core_spec_registry() -> None:
    """Flag specs live in core's SpecRegistry; the evaluator reads the latest version of each."""
    v1 = define_flag("dark-mode", False)
    v2 = define_flag("dark-mode", False, rules=[force(True)], version=2)
    flags = FlagEvaluator(SpecRegistry(v1, v2))
    assert flags.is_on("dark-mode", "anyone") is True


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: define_flag("f", False, rules=[force("yes")]),
            "rules\\[0\\].value is string 'yes' but the default is boolean",
        ),
        (lambda: define_flag("f", "a", ["a", "b"], [force("c")]), "not one of its variations"),
        (
            lambda: define_flag(
                "pay",
                "a",
                ["a", "b"],
                [experiment_rule(define_experiment("e", ["a", "b"]))],
                critical=True,
            ),
            "guards a critical flow and may not be experimented on",
        ),
        (lambda: rollout(True, coverage=30), "coverage must be a fraction between 0 and 1"),
        (lambda: force(True, when={"plan": {"$inn": ["pro"]}}), "unknown operator"),
        (lambda: define_flag("bad key!", False), "flag key must be"),
    ],
)
def test_bad_flags_are_rejected(build: Any, message: str) -> None:
    """Type mismatches, unknown values, experiments on critical flags and bad rules are refused."""
    with pytest.raises(SpecDefinitionError, match=message):
        build()


def test_critical_flags_accept_kill_switches_and_rollouts() -> None:
    """A critical flag may still be forced or rolled out gradually."""
    flag = define_flag(
        "billing.v2",
        False,
        rules=[force(False, when=target(org="x")), rollout(True, 0.1)],
        critical=True,
    )
    assert flag.critical is True
    assert FlagEvaluator([flag]).evaluate("billing.v2", {"id": "u", "org_id": "x"}).value is False
