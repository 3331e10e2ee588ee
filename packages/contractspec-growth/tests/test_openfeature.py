"""The OpenFeature provider, used through the standard OpenFeature client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

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
from contractspec.growth.openfeature import ContractSpecProvider

LAYOUT = define_experiment(
    "layout", [Variation("list", {"cols": 1}), Variation("grid", {"cols": 3})]
)
FLAGS = FlagEvaluator(
    [
        define_flag(
            "new-flow",
            False,
            rules=[force(True, when=target(org="acme"), id="acme"), rollout(True, 0.5)],
        ),
        define_flag("theme", "light", ["light", "dark"], [force("dark", when=target(plan="pro"))]),
        define_flag("page-size", 20, rules=[force(50, when=target(plan="pro"))]),
        define_flag("ratio", 0.5),
        define_flag("layout", {"cols": 1}, rules=[experiment_rule(LAYOUT)]),
    ]
)


@pytest.fixture
def client() -> Iterator[object]:
    """The standard OpenFeature client bound to our provider (providers cleared afterwards)."""
    api.set_provider_and_wait(ContractSpecProvider(FLAGS), domain="growth-tests")
    yield api.get_client(domain="growth-tests")
    api.clear_providers()


def test_provider_is_ready_and_named(client: object) -> None:
    """The client sees a ready provider named contractspec-growth."""
    assert api.get_provider_metadata("growth-tests").name == "contractspec-growth"
    assert client.get_provider_status() is ProviderStatus.READY  # type: ignore[attr-defined]


def test_boolean_flags_with_targeting_key_and_attributes(client: object) -> None:
    """The targeting key is the subject id; attributes drive targeting; reasons follow OpenFeature."""
    c = client
    details = c.get_boolean_details("new-flow", False, EvaluationContext("u1", {"org_id": "acme"}))  # type: ignore[attr-defined]
    assert (details.value, details.reason, details.variant) == (
        True,
        Reason.TARGETING_MATCH,
        "acme",
    )
    for i in range(50):
        split = c.get_boolean_details("new-flow", False, EvaluationContext(f"user-{i}", {}))  # type: ignore[attr-defined]
        in_rollout = bucket_hash("new-flow", f"user-{i}", 2) < 0.5
        assert (split.value, split.reason) == (
            (True, Reason.SPLIT) if in_rollout else (False, Reason.DEFAULT)
        )


def test_string_integer_float_and_object_flags(client: object) -> None:
    """Every OpenFeature value type resolves, ints widen to floats, objects come back as dicts."""
    c = client
    pro = EvaluationContext("u1", {"plan": "pro"})
    assert c.get_string_value("theme", "light", pro) == "dark"  # type: ignore[attr-defined]
    assert c.get_integer_value("page-size", 10, pro) == 50  # type: ignore[attr-defined]
    assert c.get_float_value("ratio", 0.0) == 0.5  # type: ignore[attr-defined]
    assert c.get_float_value("page-size", 0.0, pro) == 50.0  # type: ignore[attr-defined]
    layout = c.get_object_details("layout", {}, EvaluationContext("user-7"))  # type: ignore[attr-defined]
    assignment = FLAGS.runner.assign(LAYOUT, "user-7")
    assert (layout.value, layout.variant, layout.reason) == (
        assignment.value,
        assignment.variation,
        Reason.SPLIT,
    )


def test_unknown_flags_and_type_mismatches_fall_back_to_the_default(client: object) -> None:
    """Errors never raise through the client: the caller's default comes back with the error code."""
    c = client
    missing = c.get_boolean_details("nope", True)  # type: ignore[attr-defined]
    assert (missing.value, missing.error_code, missing.reason) == (
        True,
        ErrorCode.FLAG_NOT_FOUND,
        Reason.ERROR,
    )
    wrong = c.get_integer_details("new-flow", 7)  # type: ignore[attr-defined]
    assert (wrong.value, wrong.error_code) == (7, ErrorCode.TYPE_MISMATCH)
    assert wrong.error_message == "flag 'new-flow' is boolean, not integer"
