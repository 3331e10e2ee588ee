"""GrowthBook's cross-SDK conformance suite: the sections our bucketing and targeting implement."""

from __future__ import annotations

from typing import Any

import pytest
from growth_a_cases import params

from contractspec.core import SpecValidationError
from contractspec.growth.bucketing import (
    choose_variation,
    equal_weights,
    get_bucket_ranges,
    in_namespace,
)
from contractspec.growth.conditions import eval_condition
from contractspec.growth.gbcompat import (
    StickyBuckets,
    eval_feature,
    query_string_override,
    run_experiment,
)
from contractspec.growth.hashing import bucket_hash, bucket_hash_many


@pytest.mark.parametrize("case", params("hash", name_index=None))
def test_hash(case: list[Any]) -> None:
    """`bucket_hash(seed, value, version)` gives GrowthBook's value; unknown versions are refused."""
    seed, value, version, expected = case
    if expected is None:
        with pytest.raises(SpecValidationError, match="hash_version must be 1 or 2"):
            bucket_hash(seed, value, version)
    else:
        assert bucket_hash(seed, value, version) == expected


@pytest.mark.parametrize("case", params("hash", name_index=None))
def test_hash_vectorised(case: list[Any]) -> None:
    """The NumPy path gives the same value as the conformance case."""
    seed, value, version, expected = case
    if expected is None:
        with pytest.raises(SpecValidationError, match="hash_version"):
            bucket_hash_many(seed, [value], version)
    else:
        assert bucket_hash_many(seed, [value, value], version).tolist() == [expected, expected]


@pytest.mark.parametrize("case", params("getBucketRange"))
def test_get_bucket_range(case: list[Any]) -> None:
    """Bucket ranges match GrowthBook's, with clamped coverage and the equal-weight fallback."""
    _, (num_variations, coverage, weights), expected = case
    ranges = get_bucket_ranges(num_variations, coverage, weights)
    assert [[round(a, 6), round(b, 6)] for a, b in ranges] == expected


@pytest.mark.parametrize("case", params("chooseVariation"))
def test_choose_variation(case: list[Any]) -> None:
    """The first range holding the bucket wins; outside every range gives -1."""
    _, n, ranges, expected = case
    assert choose_variation(n, [tuple(r) for r in ranges]) == expected


@pytest.mark.parametrize("case", params("getEqualWeights", name_index=None))
def test_get_equal_weights(case: list[Any]) -> None:
    """Equal weights are 1/n each, and empty for n < 1."""
    n, expected = case
    assert [round(w, 8) for w in equal_weights(n)] == expected


@pytest.mark.parametrize("case", params("inNamespace"))
def test_in_namespace(case: list[Any]) -> None:
    """Namespace membership matches GrowthBook's (hash v1 of the id under `__<name>`)."""
    _, hash_value, (name, start, end), expected = case
    assert in_namespace(hash_value, (name, start, end)) is expected


@pytest.mark.parametrize("case", params("evalCondition"))
def test_eval_condition(case: list[Any]) -> None:
    """Targeting conditions evaluate like GrowthBook's reference SDK (saved groups included)."""
    _, condition, attributes, expected = case[:4]
    saved_groups = case[4] if len(case) > 4 else None
    assert eval_condition(attributes, condition, saved_groups) is expected


@pytest.mark.parametrize("case", params("run"))
def test_run(case: list[Any]) -> None:
    """GrowthBook experiment documents run like the reference SDK (value, inExperiment, hashUsed)."""
    _, context, experiment, value, in_experiment, hash_used = case
    result = run_experiment(context, experiment)
    assert (result.value, result.in_experiment, result.hash_used) == (
        value,
        in_experiment,
        hash_used,
    )


@pytest.mark.parametrize("case", params("getQueryStringOverride"))
def test_get_query_string_override(case: list[Any]) -> None:
    """`?<key>=<n>` forces variation n only for plain in-range indexes."""
    _, key, url, num_variations, expected = case
    assert query_string_override(key, url, num_variations) == expected


@pytest.mark.parametrize("case", params("feature"))
def test_feature(case: list[Any]) -> None:
    """GrowthBook feature payloads evaluate to GrowthBook's exact result documents."""
    _, context, key, expected = case
    assert eval_feature(context, key).to_dict() == expected


@pytest.mark.parametrize("case", params("contextualBandit"))
def test_contextual_bandit(case: list[Any]) -> None:
    """Contextual-bandit rules route by the first matching leaf and report its weights."""
    _, context, key, expected = case
    assert eval_feature(context, key).to_dict() == expected


@pytest.mark.parametrize("case", params("stickyBucket"))
def test_sticky_bucket(case: list[Any]) -> None:
    """Sticky buckets keep variations across bucket versions and attributes, like GrowthBook."""
    _, context, docs, key, expected_result, expected_docs = case
    sticky = StickyBuckets(docs)
    result = eval_feature(context, key, sticky=sticky)
    got = None if result.experiment_result is None else result.experiment_result.to_dict()
    assert got == expected_result
    assert sticky.docs_for(context["attributes"]) == expected_docs
