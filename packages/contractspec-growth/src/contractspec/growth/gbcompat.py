"""Run GrowthBook experiment definitions (their JSON) as GrowthBook's SDKs do.

For teams migrating from GrowthBook: `run_experiment(context, experiment)` takes the SDK's
context (`attributes`, `forcedVariations`, `qaMode`, `enabled`, `url`, `savedGroups`,
`features`) and an experiment document (`key`, `variations`, `weights`, `coverage`, `namespace`,
`condition`, `filters`, `ranges`, `seed`, `hashVersion`, `hashAttribute`, `force`, `active`,
`parentConditions`), and returns the same variation, `inExperiment` and `hashUsed` as the
JavaScript reference. It passes GrowthBook's `run` and `getQueryStringOverride` conformance
sections. New code should use `define_experiment` and `ExperimentRunner`, which give the same
buckets for everything they express.

Parent conditions (prerequisite flags) are evaluated with a minimal feature evaluator: default
values, force rules (condition, coverage, range, filters) and experiment rules. Sticky bucketing,
URL targeting, tracking callbacks and contextual bandits are GrowthBook client features and are
not implemented here.

Source: GrowthBook `packages/sdk-js/src/core.ts` (`runExperiment`, `evalFeature`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import define

from contractspec.growth.bucketing import choose_variation, get_bucket_ranges, in_namespace
from contractspec.growth.conditions import eval_condition
from contractspec.growth.hashing import HASH_VERSIONS, bucket_hash, hash_key

__all__ = ["RunResult", "query_string_override", "run_experiment"]

_DIGITS = re.compile(r"[0-9]+")


@define(frozen=True)
class RunResult:
    """GrowthBook's experiment result.

    Attributes:
        value: The variation's value (the first variation's when not in the experiment).
        variation_id: Index of that variation.
        in_experiment: Whether the subject is in the experiment.
        hash_used: Whether hashing chose the variation (false when forced or excluded).
        hash_attribute: Attribute used.
        hash_value: Its value (`""` when missing).
        bucket: The subject's bucket, when computed.
    """

    value: Any
    variation_id: int
    in_experiment: bool
    hash_used: bool
    hash_attribute: str
    hash_value: Any
    bucket: float | None = None


def query_string_override(key: str, url: str, num_variations: int) -> int | None:
    """The variation forced by `?<key>=<n>` in `url`, or `None` (GrowthBook `getQueryStringOverride`).

    Only plain decimal indexes in `[0, num_variations)` count.
    """
    if not url:
        return None
    parts = re.split(r"[?#]", url, maxsplit=2)
    if len(parts) < 2 or not parts[1]:
        return None
    for pair in parts[1].split("&"):
        name, _, value = pair.partition("=")
        if name == key:
            if not _DIGITS.fullmatch(value):
                return None
            index = int(value)
            return index if 0 <= index < num_variations else None
    return None


def _hash_value(context: Mapping[str, Any], attribute: str | None) -> tuple[str, Any]:
    name = attribute or "id"
    attributes = context.get("attributes") or {}
    raw = attributes.get(name)
    return name, (raw if hash_key(raw) is not None else "")


def _result(
    experiment: Mapping[str, Any],
    index: int,
    in_experiment: bool,
    hash_used: bool,
    attribute: str,
    hash_value: Any,
    bucket: float | None = None,
) -> RunResult:
    variations = experiment["variations"]
    if not 0 <= index < len(variations):
        index, in_experiment = 0, False
    return RunResult(
        variations[index], index, in_experiment, hash_used, attribute, hash_value, bucket
    )


def _filtered_out(context: Mapping[str, Any], filters: Sequence[Mapping[str, Any]]) -> bool:
    for item in filters:
        _, value = _hash_value(context, item.get("attribute"))
        key = hash_key(value)
        version = item.get("hashVersion", 2)
        if key is None or version not in HASH_VERSIONS:
            return True
        n = bucket_hash(item.get("seed", ""), key, version)
        if not any(lo <= n < hi for lo, hi in item.get("ranges", ())):
            return True
    return False


def _prerequisites_pass(
    context: Mapping[str, Any], parents: Sequence[Mapping[str, Any]], stack: frozenset[str]
) -> bool:
    for parent in parents:
        value, cyclic = _feature_value(context, parent["id"], stack)
        if cyclic:
            return False
        if not eval_condition(
            {"value": value}, parent.get("condition") or {}, context.get("savedGroups")
        ):
            return False
    return True


def _feature_value(
    context: Mapping[str, Any], key: str, stack: frozenset[str] = frozenset()
) -> tuple[Any, bool]:
    """`(value, cyclic)` of a feature of `context["features"]` (prerequisite evaluation)."""
    if key in stack:
        return None, True
    stack = stack | {key}
    feature = (context.get("features") or {}).get(key)
    if feature is None:
        return None, False
    groups = context.get("savedGroups")
    attributes = context.get("attributes") or {}
    for rule in feature.get("rules") or ():
        parents = rule.get("parentConditions")
        if parents:
            gates_ok = _prerequisites_pass(context, parents, stack)
            if not gates_ok:
                if any(p.get("gate") for p in parents):
                    return None, False
                continue
        if rule.get("condition") is not None and not eval_condition(
            attributes, rule["condition"], groups
        ):
            continue
        if rule.get("filters") and _filtered_out(context, rule["filters"]):
            continue
        if "force" in rule:
            coverage, bucket_range = rule.get("coverage"), rule.get("range")
            if coverage is not None or bucket_range is not None:
                _, value = _hash_value(context, rule.get("hashAttribute"))
                hashed = hash_key(value)
                version = rule.get("hashVersion", 1)
                if hashed is None or version not in HASH_VERSIONS:
                    continue
                n = bucket_hash(rule.get("seed", key), hashed, version)
                if bucket_range is not None:
                    if not bucket_range[0] <= n < bucket_range[1]:
                        continue
                elif not n < coverage:
                    continue
            return rule["force"], False
        if "variations" in rule:
            experiment = {"key": rule.get("key", key), **rule}
            result = run_experiment(context, experiment, _stack=stack)
            if result.in_experiment:
                return result.value, False
    return feature.get("defaultValue"), False


def run_experiment(
    context: Mapping[str, Any],
    experiment: Mapping[str, Any],
    *,
    _stack: frozenset[str] = frozenset(),
) -> RunResult:
    """Run one GrowthBook experiment document for one context, like `growthbook.run(experiment)`.

    Args:
        context: GrowthBook's context: `attributes`, and optionally `enabled`, `url`,
            `forcedVariations`, `qaMode`, `savedGroups`, `features`.
        experiment: The experiment document (GrowthBook's JSON field names).

    Returns:
        The `RunResult`.
    """
    key: str = experiment["key"]
    variations = experiment["variations"]
    attribute, hash_value = _hash_value(context, experiment.get("hashAttribute"))
    if len(variations) < 2 or context.get("enabled") is False:
        return _result(experiment, 0, False, False, attribute, hash_value)
    forced_by_url = query_string_override(key, context.get("url") or "", len(variations))
    if forced_by_url is not None:
        return _result(experiment, forced_by_url, True, False, attribute, hash_value)
    forced = (context.get("forcedVariations") or {}).get(key)
    if forced is not None:
        return _result(experiment, forced, True, False, attribute, hash_value)
    if experiment.get("active") is False or experiment.get("status") == "draft":
        return _result(experiment, 0, False, False, attribute, hash_value)
    hashed = hash_key(hash_value)
    if hashed is None:
        return _result(experiment, 0, False, False, attribute, hash_value)
    filters = experiment.get("filters")
    if filters:
        if _filtered_out(context, filters):
            return _result(experiment, 0, False, False, attribute, hash_value)
    elif experiment.get("namespace") is not None and not in_namespace(
        hashed,
        tuple(experiment["namespace"]),
    ):
        return _result(experiment, 0, False, False, attribute, hash_value)
    condition = experiment.get("condition")
    if condition is not None and not eval_condition(
        context.get("attributes") or {}, condition, context.get("savedGroups")
    ):
        return _result(experiment, 0, False, False, attribute, hash_value)
    parents = experiment.get("parentConditions")
    if parents and not _prerequisites_pass(context, parents, _stack):
        return _result(experiment, 0, False, False, attribute, hash_value)
    version = experiment.get("hashVersion", 1)
    if version not in HASH_VERSIONS:
        return _result(experiment, 0, False, False, attribute, hash_value)
    n = bucket_hash(experiment.get("seed", key), hashed, version)
    ranges = experiment.get("ranges") or get_bucket_ranges(
        len(variations), experiment.get("coverage", 1.0), experiment.get("weights")
    )
    index = choose_variation(n, [tuple(r) for r in ranges])
    if index < 0:
        return _result(experiment, 0, False, False, attribute, hash_value)
    if experiment.get("force") is not None:
        return _result(experiment, experiment["force"], True, False, attribute, hash_value)
    if context.get("qaMode"):
        return _result(experiment, 0, False, False, attribute, hash_value)
    return _result(experiment, index, True, True, attribute, hash_value, n)
