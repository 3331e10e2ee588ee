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

__all__ = [
    "FeatureResult",
    "RunResult",
    "StickyBuckets",
    "eval_feature",
    "js_truthy",
    "query_string_override",
    "run_experiment",
]

_DIGITS = re.compile(r"[0-9]+")


def js_truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON value (`[]` and `{}` are true, `0`, `""`, `null` false)."""
    if value is None or value is False:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == value and value != 0  # NaN is falsy
    if isinstance(value, str):
        return value != ""
    return True


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
        key: The variation's key (`meta[i].key`, else the index as a string).
        name: The variation's name from `meta`, if any.
        passthrough: The variation is a passthrough (a holdout): feature rules go on.
        feature_id: The feature whose rule ran the experiment, if any.
        sticky_bucket_used: The variation came from a sticky-bucket document.
        leaf_id: Contextual bandit leaf that set the weights (-1: the rule's own weights).
        variation_weights: Contextual bandit weights used.
        bandit_version: Contextual bandit model version.
    """

    value: Any
    variation_id: int
    in_experiment: bool
    hash_used: bool
    hash_attribute: str
    hash_value: Any
    bucket: float | None = None
    key: str = "0"
    name: str | None = None
    passthrough: bool = False
    feature_id: str | None = None
    sticky_bucket_used: bool = False
    leaf_id: int | None = None
    variation_weights: list[float] | None = None
    bandit_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """GrowthBook's JSON form of the result (optional keys only when set)."""
        out: dict[str, Any] = {
            "featureId": self.feature_id,
            "value": self.value,
            "variationId": self.variation_id,
            "inExperiment": self.in_experiment,
            "hashUsed": self.hash_used,
            "hashAttribute": self.hash_attribute,
            "hashValue": self.hash_value,
            "key": self.key,
            "stickyBucketUsed": self.sticky_bucket_used,
        }
        if self.bucket is not None:
            out["bucket"] = self.bucket
        if self.name:
            out["name"] = self.name
        if self.passthrough:
            out["passthrough"] = True
        if self.leaf_id is not None:
            out["leafId"] = self.leaf_id
        if self.variation_weights is not None:
            out["variationWeights"] = self.variation_weights
        if self.bandit_version is not None:
            out["banditVersion"] = self.bandit_version
        return out


@define(frozen=True)
class FeatureResult:
    """GrowthBook's feature result.

    Attributes:
        value: The feature's value (`None` when unknown or blocked).
        source: `unknownFeature`, `defaultValue`, `force`, `experiment`, `prerequisite` or
            `cyclicPrerequisite`.
        rule_id: Id of the rule that decided (`""` when none).
        experiment: The experiment document an experiment rule ran.
        experiment_result: Its result.
    """

    value: Any
    source: str
    rule_id: str = ""
    experiment: dict[str, Any] | None = None
    experiment_result: RunResult | None = None

    @property
    def on(self) -> bool:
        """JavaScript truthiness of the value."""
        return js_truthy(self.value)

    @property
    def off(self) -> bool:
        """The opposite of `on`."""
        return not self.on

    def to_dict(self) -> dict[str, Any]:
        """GrowthBook's JSON form of the result."""
        out: dict[str, Any] = {
            "value": self.value,
            "on": self.on,
            "off": self.off,
            "source": self.source,
            "ruleId": self.rule_id,
        }
        if self.experiment is not None:
            out["experiment"] = self.experiment
        if self.experiment_result is not None:
            out["experimentResult"] = self.experiment_result.to_dict()
        return out


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


def _hash_value(
    context: Mapping[str, Any], attribute: str | None, fallback: str | None = None
) -> tuple[str, Any]:
    name = attribute or "id"
    attributes = context.get("attributes") or {}
    raw = attributes.get(name)
    if hash_key(raw) is not None:
        return name, raw
    if fallback and hash_key(attributes.get(fallback)) is not None:
        return fallback, attributes[fallback]
    return name, ""


class StickyBuckets:
    """GrowthBook sticky-bucket assignment documents, kept in memory.

    A document per identifying attribute value (`"id||u-1"`) maps `"<experiment>__<bucketVersion>"`
    to the variation key a subject once got, so it keeps that variation when weights or coverage
    change later. Persist `docs` wherever you like between requests.

    Attributes:
        docs: `{"<attribute>||<value>": {"attributeName", "attributeValue", "assignments"}}`.
    """

    def __init__(self, docs: Sequence[Mapping[str, Any]] = ()) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        for doc in docs:
            self.save(doc)

    @staticmethod
    def doc_key(attribute: str, value: str) -> str:
        """GrowthBook's document key: `"<attribute>||<value>"`."""
        return f"{attribute}||{value}"

    def load(self, attribute: str, value: str) -> dict[str, Any] | None:
        """The document of one attribute value, or `None`."""
        return self.docs.get(self.doc_key(attribute, value))

    def docs_for(self, attributes: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The documents of one subject: those whose attribute has that value in `attributes`."""
        return {
            key: doc
            for key, doc in self.docs.items()
            if hash_key(attributes.get(doc["attributeName"])) == doc["attributeValue"]
        }

    def save(self, doc: Mapping[str, Any]) -> None:
        """Store (replace) a document."""
        key = self.doc_key(doc["attributeName"], doc["attributeValue"])
        self.docs[key] = {
            "attributeName": doc["attributeName"],
            "attributeValue": doc["attributeValue"],
            "assignments": dict(doc.get("assignments") or {}),
        }


def _sticky_variation(
    sticky: StickyBuckets, context: Mapping[str, Any], experiment: Mapping[str, Any]
) -> tuple[int, bool]:
    """`(variation, blocked)` from stored assignments (GrowthBook `_getStickyBucketVariation`)."""
    attributes = context.get("attributes") or {}
    assignments: dict[str, Any] = {}
    for name in (experiment.get("fallbackAttribute"), experiment.get("hashAttribute") or "id"):
        value = hash_key(attributes.get(name)) if name else None
        doc = sticky.load(name, value) if name and value is not None else None
        if doc is not None:
            assignments.update(doc["assignments"])  # the hash attribute's document wins
    key = experiment["key"]
    for version in range(experiment.get("minBucketVersion") or 0):
        if f"{key}__{version}" in assignments:
            return -1, True
    stored = assignments.get(f"{key}__{experiment.get('bucketVersion') or 0}")
    if stored is None:
        return -1, False
    for i, meta in enumerate(experiment.get("meta") or ()):
        if meta.get("key") == stored:
            return i, False
    return -1, False


def _result(
    experiment: Mapping[str, Any],
    index: int,
    in_experiment: bool,
    hash_used: bool,
    attribute: str,
    hash_value: Any,
    bucket: float | None = None,
    feature_id: str | None = None,
    sticky_used: bool = False,
) -> RunResult:
    variations = experiment["variations"]
    if not 0 <= index < len(variations):
        index, in_experiment = 0, False
    metas = experiment.get("meta") or ()
    meta: Mapping[str, Any] = metas[index] if index < len(metas) else {}
    bandit = experiment.get("contextualBandit") if hash_used and in_experiment else None
    return RunResult(
        variations[index],
        index,
        in_experiment,
        hash_used,
        attribute,
        hash_value,
        bucket,
        key=meta.get("key") or str(index),
        name=meta.get("name"),
        passthrough=bool(meta.get("passthrough")),
        feature_id=feature_id,
        sticky_bucket_used=sticky_used,
        leaf_id=None if bandit is None else bandit["leafId"],
        variation_weights=None if bandit is None else bandit["variationWeights"],
        bandit_version=None if bandit is None else bandit.get("banditVersion"),
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


def _prerequisites(
    context: Mapping[str, Any], parents: Sequence[Mapping[str, Any]], stack: frozenset[str]
) -> str:
    """`pass`, `fail` (skip the rule), `gate` (block the feature) or `cyclic`."""
    for parent in parents:
        parent_id = parent.get("id")
        if parent_id is None:
            continue
        result = _eval_feature(context, parent_id, stack)
        if result.source == "cyclicPrerequisite":
            return "cyclic"
        condition = parent.get("condition")
        if condition is None:
            continue
        if not eval_condition({"value": result.value}, condition, context.get("savedGroups")):
            return "gate" if parent.get("gate") else "fail"
    return "pass"


def _included_in_rollout(context: Mapping[str, Any], key: str, rule: Mapping[str, Any]) -> bool:
    coverage, bucket_range = rule.get("coverage"), rule.get("range")
    if coverage is None and bucket_range is None:
        return True
    if coverage == 0 and bucket_range is None:
        return False
    _, value = _hash_value(context, rule.get("hashAttribute"))
    hashed = hash_key(value)
    version = rule.get("hashVersion") or 1
    if hashed is None or version not in HASH_VERSIONS:
        return False
    n = bucket_hash(rule.get("seed") or key, hashed, version)
    if bucket_range is not None:
        return bool(bucket_range[0] <= n < bucket_range[1])
    return bool(coverage is not None and n < coverage)


#: Rule fields copied into the experiment an experiment rule runs (GrowthBook `evalFeature`).
_EXPERIMENT_FIELDS = ("coverage", "weights", "hashAttribute", "fallbackAttribute",
                      "disableStickyBucketing", "bucketVersion", "minBucketVersion", "namespace",
                      "meta", "ranges", "name", "phase", "seed", "hashVersion", "filters",
                      "condition")  # fmt: skip


def _rule_experiment(key: str, rule: Mapping[str, Any], variations: list[Any]) -> dict[str, Any]:
    experiment: dict[str, Any] = {"key": rule.get("key") or key, "variations": variations}
    for name in _EXPERIMENT_FIELDS:
        value = rule.get(name)
        if name in ("coverage", "bucketVersion", "minBucketVersion"):
            if value is not None:
                experiment[name] = value
        elif js_truthy(value):
            experiment[name] = value
    return experiment


def _apply_contextual_bandit(
    context: Mapping[str, Any], experiment: dict[str, Any], reference: str
) -> None:
    """Put the matching leaf's weights on the experiment (or report the fallback leaf -1)."""
    definition = (context.get("contextualBandits") or {}).get(reference)
    if definition is None:
        return  # a dangling reference runs as a plain experiment
    if not isinstance(definition, Mapping):
        definition = {}
    n = len(experiment["variations"])
    leaf = None
    for candidate in definition.get("contexts") or ():
        if eval_condition(
            context.get("attributes") or {},
            candidate.get("condition") or {},
            context.get("savedGroups"),
        ):
            leaf = candidate
            break
    weights = None if leaf is None else leaf.get("weights")
    leaf_id = None if leaf is None else leaf.get("leafId")
    valid_weights = get_bucket_ranges(n, 1.0, weights) if weights is not None else None
    if (
        weights is not None
        and valid_weights is not None
        and [b - a for a, b in valid_weights] == list(weights)
        and isinstance(leaf_id, int)
        and not isinstance(leaf_id, bool)
    ):
        experiment["weights"] = list(weights)
        bandit: dict[str, Any] = {"leafId": leaf_id, "variationWeights": list(weights)}
    else:
        ranges = get_bucket_ranges(n, 1.0, experiment.get("weights"))
        bandit = {"leafId": -1, "variationWeights": [b - a for a, b in ranges]}
    version = definition.get("banditVersion")
    if isinstance(version, int) and not isinstance(version, bool):
        bandit["banditVersion"] = version
    experiment["contextualBandit"] = bandit


def eval_feature(
    context: Mapping[str, Any], key: str, *, sticky: StickyBuckets | None = None
) -> FeatureResult:
    """Evaluate one feature of `context["features"]` like GrowthBook's `evalFeature`.

    Rules run in order: parent conditions (prerequisites), condition, filters, then a force rule
    (with its coverage or range) or an experiment rule (including contextual-bandit rules, whose
    matching leaf sets the weights); the first that applies decides, else the default value.

    Args:
        context: GrowthBook's context: `attributes`, `features`, and optionally `savedGroups`,
            `forcedVariations`, `qaMode`, `enabled`, `url`, `contextualBandits`.
        key: The feature key.
        sticky: Sticky-bucket documents for experiment rules (see `run_experiment`).

    Returns:
        The `FeatureResult` (`to_dict()` gives GrowthBook's JSON form).
    """
    return _eval_feature(context, key, frozenset(), sticky)


def _eval_feature(
    context: Mapping[str, Any],
    key: str,
    stack: frozenset[str],
    sticky: StickyBuckets | None = None,
) -> FeatureResult:
    features = context.get("features") or {}
    if key not in features:
        return FeatureResult(None, "unknownFeature")
    if key in stack:
        return FeatureResult(None, "cyclicPrerequisite")
    stack = stack | {key}
    feature = features[key] or {}
    attributes = context.get("attributes") or {}
    for rule in feature.get("rules") or ():
        parents = rule.get("parentConditions")
        if parents:
            verdict = _prerequisites(context, parents, stack)
            if verdict == "gate":
                return FeatureResult(None, "prerequisite")
            if verdict == "cyclic":
                return FeatureResult(None, "cyclicPrerequisite")
            if verdict == "fail":
                continue
        if rule.get("condition") and not eval_condition(
            attributes, rule["condition"], context.get("savedGroups")
        ):
            continue
        if rule.get("filters") and _filtered_out(context, rule["filters"]):
            continue
        if "force" in rule:
            if not _included_in_rollout(context, key, rule):
                continue
            return FeatureResult(rule["force"], "force", rule.get("id") or "")
        variations = rule.get("contextualVariations", rule.get("variations"))
        if variations is None:
            continue
        experiment = _rule_experiment(key, rule, list(variations))
        if rule.get("contextualBanditRef"):
            _apply_contextual_bandit(context, experiment, rule["contextualBanditRef"])
        result = run_experiment(context, experiment, feature_id=key, sticky=sticky, _stack=stack)
        if "contextualBandit" in experiment and not (result.hash_used and result.in_experiment):
            del experiment["contextualBandit"]
        if not result.in_experiment or result.passthrough:
            continue
        return FeatureResult(result.value, "experiment", rule.get("id") or "", experiment, result)
    return FeatureResult(feature.get("defaultValue"), "defaultValue")


def run_experiment(
    context: Mapping[str, Any],
    experiment: Mapping[str, Any],
    *,
    feature_id: str | None = None,
    sticky: StickyBuckets | None = None,
    _stack: frozenset[str] = frozenset(),
) -> RunResult:
    """Run one GrowthBook experiment document for one context, like `growthbook.run(experiment)`.

    Args:
        context: GrowthBook's context: `attributes`, and optionally `enabled`, `url`,
            `forcedVariations`, `qaMode`, `savedGroups`, `features`.
        experiment: The experiment document (GrowthBook's JSON field names).
        feature_id: The feature running it (reported in the result).
        sticky: Sticky-bucket documents; with them a subject keeps its first variation, the
            experiment's `fallbackAttribute` identifies subjects without the hash attribute, and
            the documents are updated.

    Returns:
        The `RunResult`.
    """
    key: str = experiment["key"]
    variations = experiment["variations"]
    sticky_on = sticky is not None and not experiment.get("disableStickyBucketing")
    attribute, hash_value = _hash_value(
        context,
        experiment.get("hashAttribute"),
        experiment.get("fallbackAttribute") if sticky_on else None,
    )

    def out(index: int, in_experiment: bool, hash_used: bool, bucket: float | None = None,
            sticky_used: bool = False) -> RunResult:  # fmt: skip
        return _result(experiment, index, in_experiment, hash_used, attribute, hash_value,
                       bucket, feature_id, sticky_used)  # fmt: skip

    if len(variations) < 2 or context.get("enabled") is False:
        return out(0, False, False)
    forced_by_url = query_string_override(key, context.get("url") or "", len(variations))
    if forced_by_url is not None:
        return out(forced_by_url, True, False)
    forced = (context.get("forcedVariations") or {}).get(key)
    if forced is not None:
        return out(forced, True, False)
    if experiment.get("active") is False or experiment.get("status") == "draft":
        return out(0, False, False)
    hashed = hash_key(hash_value)
    if hashed is None:
        return out(0, False, False)
    index, blocked = -1, False
    if sticky_on:
        assert sticky is not None
        index, blocked = _sticky_variation(sticky, context, experiment)
    found = index >= 0
    if not found:
        filters = experiment.get("filters")
        if filters:
            if _filtered_out(context, filters):
                return out(0, False, False)
        elif experiment.get("namespace") is not None and not in_namespace(
            hashed, tuple(experiment["namespace"])
        ):
            return out(0, False, False)
        condition = experiment.get("condition")
        if condition is not None and not eval_condition(
            context.get("attributes") or {}, condition, context.get("savedGroups")
        ):
            return out(0, False, False)
        parents = experiment.get("parentConditions")
        if parents and _prerequisites(context, parents, _stack) != "pass":
            return out(0, False, False)
    version = experiment.get("hashVersion") or 1
    if version not in HASH_VERSIONS:
        return out(0, False, False)
    n = bucket_hash(experiment.get("seed") or key, hashed, version)
    if not found:
        ranges = experiment.get("ranges") or get_bucket_ranges(
            len(variations), experiment.get("coverage", 1.0), experiment.get("weights")
        )
        index = choose_variation(n, [tuple(r) for r in ranges])
    if blocked:
        return out(-1, False, False, sticky_used=True)
    if index < 0:
        return out(0, False, False)
    if experiment.get("force") is not None:
        return out(experiment["force"], True, False)
    if context.get("qaMode"):
        return out(0, False, False)
    result = out(index, True, True, n, found)
    if sticky_on:
        assert sticky is not None
        value = hashed
        doc = sticky.load(attribute, value) or {"assignments": {}}
        assignments = {**doc["assignments"],
                       f"{key}__{experiment.get('bucketVersion') or 0}": result.key}  # fmt: skip
        if assignments != doc["assignments"]:
            sticky.save({"attributeName": attribute, "attributeValue": value,
                         "assignments": assignments})  # fmt: skip
    return result
