"""GrowthBook compatibility at the edges, checked against GrowthBook's own Python SDK: weight sums
near the 0.99/1.01 bounds, an empty seed, and ids ending in NUL characters."""

from __future__ import annotations

import numpy as np
import pytest
from growth_a_support import growthbook_run
from growthbook.core import getBucketRanges

from contractspec.core import SpecDefinitionError
from contractspec.growth.bucketing import get_bucket_ranges
from contractspec.growth.experiments import ExperimentRegistry, ExperimentRunner, define_experiment
from contractspec.growth.gbcompat import run_experiment

# Left to right these sum to 0.9899999999999999 / 1.0100000000000002 (outside 0.99..1.01),
# exactly (math.fsum) to 0.99 / 1.01 (inside): GrowthBook replaces them with equal weights.
BOUNDARY_WEIGHTS = [[0.82, 0.09, 0.08], [0.59, 0.29, 0.11], [0.15, 0.66, 0.06, 0.14]]
USERS = [f"user-{i}" for i in range(2000)]


@pytest.mark.parametrize("weights", BOUNDARY_WEIGHTS)
def test_weight_sums_near_the_bounds_are_judged_like_growthbook(weights: list[float]) -> None:
    """Bucket ranges and every one of 2,000 users' variations equal the GrowthBook SDK's."""
    n = len(weights)
    ours = get_bucket_ranges(n, 1.0, weights)
    assert ours == [tuple(r) for r in getBucketRanges(n, 1.0, weights)]
    assert ours == get_bucket_ranges(n, 1.0, None)  # the equal-weight fallback
    doc = {"key": "edge-weights", "variations": list(range(n)), "weights": weights,
           "hashVersion": 2}  # fmt: skip
    for user in USERS:
        expected = growthbook_run({"id": user}, doc)[0]
        assert run_experiment({"attributes": {"id": user}}, doc).variation_id == expected


@pytest.mark.parametrize("weights", BOUNDARY_WEIGHTS)
def test_define_experiment_refuses_weights_growthbook_would_not_use(weights: list[float]) -> None:
    """Weights GrowthBook would replace are refused up front, naming the field."""
    with pytest.raises(SpecDefinitionError, match="must sum to 1") as info:
        define_experiment("edge-weights", [f"v{i}" for i in range(len(weights))], weights=weights)
    assert info.value.details["field"] == "weights"


def test_an_empty_seed_hashes_with_the_key_like_growthbook() -> None:
    """`seed=""` falls back to the experiment key (GrowthBook: `seed or key`)."""
    spec = define_experiment("checkout-button", ["control", "a", "b"], seed="")
    assert spec.seed == "checkout-button"
    runner = ExperimentRunner(ExperimentRegistry(spec))
    doc = {"key": "checkout-button", "variations": [0, 1, 2], "seed": "", "hashVersion": 2}
    for user in USERS[:500]:
        assert (
            runner.assign(spec, {"id": user}).variation_index
            == growthbook_run({"id": user}, doc)[0]
        )


@pytest.mark.parametrize("kind", ["StringDType", "object", "list"])
def test_assign_many_keeps_trailing_nuls(kind: str) -> None:
    """Ids ending in NULs get the variation `assign` and the GrowthBook SDK give them."""
    spec = define_experiment("nul-ids", ["a", "b", "c", "d"])
    runner = ExperimentRunner(ExperimentRegistry(spec))
    ids = [f"user-{i}" + "\x00" * (i % 3) for i in range(600)]
    values: object = {
        "StringDType": np.array(ids, dtype=np.dtypes.StringDType()),
        "object": np.array(ids, dtype=object),
        "list": ids,
    }[kind]
    batch = runner.assign_many(spec, values)  # type: ignore[arg-type]
    doc = {"key": "nul-ids", "variations": [0, 1, 2, 3], "hashVersion": 2}
    expected = [growthbook_run({"id": i}, doc)[0] for i in ids]
    assert batch.variation_index.tolist() == expected
    assert expected == [runner.assign(spec, {"id": i}).variation_index for i in ids]
