"""Feature flags: on/off, gradual rollouts, targeting and experiments, GrowthBook-style rules.

```python
from contractspec.growth import FlagEvaluator, define_flag, force, rollout, target

new_checkout = define_flag(
    "checkout.new-flow",
    default=False,
    rules=[
        force(True, when=target(org=["acme"])),                 # on for one org
        rollout(True, coverage=0.25, when=target(plan="pro")),  # 25% of pro users
    ],
)
flags = FlagEvaluator([new_checkout], segments={"beta": ["u-1", "u-2"]})
flags.is_on("checkout.new-flow", {"id": "u-9", "org_id": "acme"})  # True
```

Rules are tried in order; the first that applies decides, otherwise the flag's default is served
(GrowthBook's feature evaluation): a `force` rule applies when its condition matches; a `rollout`
rule when, in addition, the subject's bucket falls inside its coverage; an `experiment` rule when
the subject is in the experiment (its variation's value is served).

Flags declared `critical=True` guard flows that may not be experimented on: they accept force
and rollout rules but no experiment rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

from attrs import define

from contractspec.core.context import CallContext
from contractspec.core.errors import NotFoundError, SpecDefinitionError
from contractspec.core.numbers import as_finite_float
from contractspec.core.ports import Clock
from contractspec.growth.conditions import check_condition, eval_condition
from contractspec.growth.experiments import (
    Assignment,
    ExperimentRegistry,
    ExperimentRunner,
    ExperimentSpec,
    subject_attributes,
)
from contractspec.growth.hashing import _check_version, bucket_hash, hash_key

__all__ = [
    "FlagEvaluator",
    "FlagResult",
    "FlagRule",
    "FlagSpec",
    "define_flag",
    "experiment_rule",
    "force",
    "rollout",
    "target",
]

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}")
RuleKind = Literal["force", "rollout", "experiment"]


@define(frozen=True)
class FlagRule:
    """One rule of a flag (make it with `force`, `rollout` or `experiment_rule`).

    Attributes:
        kind: `force`, `rollout` or `experiment`.
        value: The value served by force and rollout rules.
        condition: Targeting condition (GrowthBook condition language), or `None` for everyone.
        coverage: Share of matching subjects a rollout includes, `0..1`.
        hash_attribute: Attribute bucketing a rollout (`id`, `org_id`, ...).
        hash_version: Hash version of a rollout.
        seed: Rollout seed (default: the flag key).
        experiment: The experiment of an experiment rule.
        id: Identifier reported in results (for audits and debugging).
    """

    kind: RuleKind
    value: Any = None
    condition: Mapping[str, Any] | None = None
    coverage: float | None = None
    hash_attribute: str = "id"
    hash_version: int = 2
    seed: str | None = None
    experiment: ExperimentSpec | None = None
    id: str = ""


def target(
    *,
    org: str | Iterable[str] | None = None,
    user: str | Iterable[str] | None = None,
    plan: str | Iterable[str] | None = None,
    segment: str | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    """A targeting condition by org, user, plan and segment (all given parts must match).

    Args:
        org: Org id(s), matched against the `org_id` attribute.
        user: User id(s), matched against `id`.
        plan: Plan name(s), matched against `plan`.
        segment: A segment name: the subject's `id` must be in it (`FlagEvaluator(segments=...)`).
        **attributes: Other attributes to equal the given values.

    Returns:
        A condition such as `{"org_id": {"$in": ["acme"]}, "id": {"$inGroup": "beta"}}`.
    """
    condition: dict[str, Any] = {}
    for name, value in (("org_id", org), ("id", user), ("plan", plan)):
        if value is not None:
            values = [value] if isinstance(value, str) else list(value)
            condition[name] = {"$in": values}
    if segment is not None:
        condition.setdefault("$and", []).append({"id": {"$inGroup": segment}})
    condition.update(attributes)
    return check_condition(condition, field="target")


def force(value: Any, *, when: Mapping[str, Any] | None = None, id: str = "") -> FlagRule:
    """Serve `value` to every subject matching `when` (everyone when `None`)."""
    return FlagRule(
        "force", value, None if when is None else check_condition(when, field="when"), id=id
    )


def rollout(
    value: Any,
    coverage: float,
    *,
    when: Mapping[str, Any] | None = None,
    hash_attribute: str = "id",
    hash_version: int = 2,
    seed: str | None = None,
    id: str = "",
) -> FlagRule:
    """Serve `value` to a `coverage` share of the subjects matching `when` (a gradual rollout).

    Raising `coverage` later only adds subjects (`bucket < coverage`, a fixed bucket per subject).

    Raises:
        SpecDefinitionError: `coverage` outside `[0, 1]` or an unknown hash version.
    """
    if as_finite_float(coverage) is None or not 0.0 <= coverage <= 1.0:
        raise SpecDefinitionError(
            f"rollout coverage must be a fraction between 0 and 1, got {coverage!r}",
            details={"field": "coverage"},
        )
    try:
        version = _check_version(hash_version)
    except Exception as exc:
        raise SpecDefinitionError(str(exc), details={"field": "hash_version"}) from None
    return FlagRule(
        "rollout",
        value,
        None if when is None else check_condition(when, field="when"),
        float(coverage),
        hash_attribute,
        version,
        seed,
        id=id,
    )


def experiment_rule(
    experiment: ExperimentSpec, *, when: Mapping[str, Any] | None = None, id: str = ""
) -> FlagRule:
    """Serve the value of the subject's variation of `experiment` (if it is in the experiment)."""
    if not isinstance(experiment, ExperimentSpec):
        raise SpecDefinitionError(
            "experiment_rule() needs an ExperimentSpec made by define_experiment()",
            details={"field": "experiment"},
        )
    return FlagRule(
        "experiment",
        None,
        None if when is None else check_condition(when, field="when"),
        experiment=experiment,
        id=id,
    )


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "object"


@define(frozen=True, eq=False)
class FlagSpec:
    """A declared feature flag (made by `define_flag`; registrable in a `SpecRegistry`).

    Attributes:
        key: Flag key.
        default: Value served when no rule applies.
        variations: Allowed values (every rule value is checked against them), or empty.
        rules: Rules, tried in order.
        critical: Guards a critical flow: no experiment rules allowed.
        description: What the flag controls.
        version: Spec version.
    """

    kind: ClassVar[str] = "flag"

    key: str
    default: Any
    variations: tuple[Any, ...]
    rules: tuple[FlagRule, ...]
    critical: bool
    description: str
    version: int

    @property
    def name(self) -> str:
        """The flag key (what `SpecRegistry` indexes by)."""
        return self.key

    @property
    def value_type(self) -> str:
        """JSON kind of the values: `boolean`, `number`, `string` or `object`."""
        return _json_kind(self.default)

    def __repr__(self) -> str:
        return f"FlagSpec({self.key!r}, default={self.default!r}, rules={len(self.rules)})"


def define_flag(
    key: str,
    default: Any,
    variations: Sequence[Any] | None = None,
    rules: Sequence[FlagRule] = (),
    *,
    critical: bool = False,
    description: str = "",
    version: int = 1,
) -> FlagSpec:
    """Declare a feature flag.

    Args:
        key: Unique key (letters, digits, `_ . : / -`).
        default: Served when no rule applies (`False` for an off-by-default boolean flag).
        variations: Allowed values; `[False, True]` for a boolean flag when omitted.
        rules: `force(...)`, `rollout(...)`, `experiment_rule(...)`, tried in order.
        critical: The flag guards a critical flow: experiment rules are refused.
        description: What the flag controls.
        version: Spec version.

    Returns:
        A frozen `FlagSpec`.

    Raises:
        SpecDefinitionError: A malformed key, a value of another type than the default, a value
            outside `variations`, or an experiment rule on a critical flag.
    """
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise SpecDefinitionError(
            f"flag key must be 1-200 characters of letters, digits and _ . : / -, got {key!r}",
            details={"field": "key"},
        )
    kind = _json_kind(default)
    if variations is None:
        allowed: tuple[Any, ...] = (False, True) if kind == "boolean" else ()
    else:
        allowed = tuple(variations)
    values: list[tuple[str, Any]] = [("default", default)]
    values += [(f"variations[{i}]", v) for i, v in enumerate(allowed)]
    for i, rule in enumerate(rules):
        if not isinstance(rule, FlagRule):
            raise SpecDefinitionError(
                f"rules[{i}] must be made by force(), rollout() or experiment_rule(), got "
                f"{type(rule).__name__}",
                details={"field": f"rules[{i}]"},
            )
        if rule.kind == "experiment":
            if critical:
                raise SpecDefinitionError(
                    f"flag {key!r} guards a critical flow and may not be experimented on; "
                    f"rules[{i}] is an experiment rule (use force() or rollout())",
                    details={"field": f"rules[{i}]"},
                )
            assert rule.experiment is not None
            values += [
                (f"rules[{i}].experiment.{v.key}", v.value) for v in rule.experiment.variations
            ]
        else:
            values.append((f"rules[{i}].value", rule.value))
    for where, value in values:
        if _json_kind(value) != kind:
            raise SpecDefinitionError(
                f"flag {key!r}: {where} is {_json_kind(value)} {value!r} but the default is "
                f"{kind}; every value of a flag has the default's type",
                details={"field": where},
            )
        if allowed and not any(value == a and type(value) is type(a) for a in allowed):
            raise SpecDefinitionError(
                f"flag {key!r}: {where} is {value!r}, which is not one of its variations "
                f"{list(allowed)}",
                details={"field": where},
            )
    return FlagSpec(
        key=key,
        default=default,
        variations=allowed,
        rules=tuple(rules),
        critical=bool(critical),
        description=description,
        version=version,
    )


@define(frozen=True)
class FlagResult:
    """The value of a flag for one subject, and why.

    Attributes:
        key: Flag key.
        value: The value to use.
        source: `default` (no rule applied), `force`, `rollout`, `experiment`, or `override`.
        rule_id: `id` of the rule that applied (empty when none or unnamed).
        rule_index: Position of that rule, or `None`.
        assignment: The experiment assignment, for experiment rules.
    """

    key: str
    value: Any
    source: Literal["default", "force", "rollout", "experiment", "override"]
    rule_id: str = ""
    rule_index: int | None = None
    assignment: Assignment | None = None

    @property
    def on(self) -> bool:
        """Whether the value is truthy (GrowthBook's `on`: not false, 0, "" or null)."""
        return bool(self.value)


class FlagEvaluator:
    """Evaluates flags for subjects (attributes, a `CallContext`, or an id).

    Args:
        flags: Flag specs (or a core `SpecRegistry`, whose `flag` specs are used, latest version).
        segments: Named id lists for `target(segment=...)` / `$inGroup` conditions.
        runner: Runs the experiments of experiment rules (one is made from them by default).
        clock: Clock of that default runner.
        overrides: `{flag_key: value}` forced everywhere (tests, kill switches).
    """

    def __init__(
        self,
        flags: Iterable[FlagSpec] | Any,
        *,
        segments: Mapping[str, Sequence[Any]] | None = None,
        runner: ExperimentRunner | None = None,
        clock: Clock | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        if hasattr(flags, "specs") and callable(flags.specs):
            flags = flags.specs("flag")
        self._flags: dict[str, FlagSpec] = {}
        for spec in flags:
            if not isinstance(spec, FlagSpec):
                raise SpecDefinitionError(f"{spec!r} is not a flag; make one with define_flag()")
            current = self._flags.get(spec.key)
            if current is None or current.version <= spec.version:
                self._flags[spec.key] = spec
        self.segments: dict[str, Sequence[Any]] = dict(segments or {})
        if runner is None:
            experiments = {
                r.experiment.key: r.experiment
                for f in self._flags.values()
                for r in f.rules
                if r.experiment is not None
            }
            runner = ExperimentRunner(
                ExperimentRegistry(*experiments.values()), clock=clock, saved_groups=self.segments
            )
        self.runner = runner
        self.overrides: dict[str, Any] = dict(overrides or {})

    def flags(self) -> list[FlagSpec]:
        """Every flag, by key."""
        return [self._flags[k] for k in sorted(self._flags)]

    def __contains__(self, key: object) -> bool:
        return key in self._flags

    def get(self, key: str) -> FlagSpec:
        """The flag registered under `key`.

        Raises:
            NotFoundError: No such flag.
        """
        spec = self._flags.get(key)
        if spec is None:
            raise NotFoundError(
                f"unknown flag {key!r}; known flags: {', '.join(sorted(self._flags)) or 'none'}",
                details={"flag": key},
            )
        return spec

    def evaluate(self, key: str, subject: Mapping[str, Any] | CallContext | str) -> FlagResult:
        """The flag's value for `subject`, with the rule that decided.

        Raises:
            NotFoundError: Unknown flag.
        """
        spec = self.get(key)
        if key in self.overrides:
            return FlagResult(key, self.overrides[key], "override")
        if isinstance(subject, str):
            attributes: Mapping[str, Any] = {"id": subject}
        elif isinstance(subject, CallContext):
            attributes = subject_attributes(subject)
        else:
            attributes = subject
        for i, rule in enumerate(spec.rules):
            if rule.condition is not None and not eval_condition(
                attributes, rule.condition, self.segments
            ):
                continue
            if rule.kind == "force":
                return FlagResult(key, rule.value, "force", rule.id, i)
            if rule.kind == "rollout":
                hash_value = hash_key(attributes.get(rule.hash_attribute))
                if hash_value is None:
                    continue
                n = bucket_hash(rule.seed or key, hash_value, rule.hash_version)
                if rule.coverage is not None and n < rule.coverage:
                    return FlagResult(key, rule.value, "rollout", rule.id, i)
                continue
            assert rule.experiment is not None
            assignment = self.runner.assign(rule.experiment, attributes)
            if assignment.in_experiment:
                return FlagResult(key, assignment.value, "experiment", rule.id, i, assignment)
        return FlagResult(key, spec.default, "default")

    def value(self, key: str, subject: Mapping[str, Any] | CallContext | str) -> Any:
        """Just the value."""
        return self.evaluate(key, subject).value

    def is_on(self, key: str, subject: Mapping[str, Any] | CallContext | str) -> bool:
        """Whether the flag's value is truthy for `subject`."""
        return self.evaluate(key, subject).on
