"""Experiments: definitions, a registry, and deterministic GrowthBook-compatible assignment.

```python
from contractspec.growth import ExperimentRegistry, ExperimentRunner, define_experiment

checkout = define_experiment(
    "checkout.one-page",
    variations=["control", "one-page"],
    weights=[0.5, 0.5],
    coverage=0.2,
    targeting={"plan": {"$in": ["pro", "team"]}},
    primary_metric="purchase",
)
runner = ExperimentRunner(ExperimentRegistry(checkout))
runner.assign("checkout.one-page", {"id": "u-42", "plan": "pro"}).variation
```

A subject's variation depends only on the experiment's seed, hash version, weights, coverage,
namespace and the subject's hash attribute, exactly as in GrowthBook's SDKs, so subjects keep
their buckets when an app moves from GrowthBook (same key, weights and coverage) to ContractSpec.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from attrs import define, field

from contractspec.core.context import CallContext
from contractspec.core.errors import NotFoundError, SpecDefinitionError, SpecValidationError
from contractspec.core.numbers import as_finite_float
from contractspec.core.ports import Clock, SystemClock
from contractspec.growth._lazy import lazy_module
from contractspec.growth.bucketing import (
    WEIGHT_SUM_TOLERANCE,
    BucketRange,
    bucket_table,
    equal_weights,
    get_bucket_ranges,
)
from contractspec.growth.conditions import check_condition, eval_condition
from contractspec.growth.hashing import (
    _buckets,
    _check_version,
    bucket_hash,
    fnv1a32,
    fnv1a32_decimal,
    hash_key,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
else:
    np = lazy_module("numpy", __name__, "np")

__all__ = [
    "Assignment",
    "AssignmentReason",
    "Assignments",
    "ExperimentRegistry",
    "ExperimentRunner",
    "ExperimentSpec",
    "Namespace",
    "Variation",
    "define_experiment",
    "subject_attributes",
]

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}")


@define(frozen=True)
class Variation:
    """One arm of an experiment.

    Attributes:
        key: Stable identifier (`"control"`, `"one-page"`); tracker summaries are keyed by it.
        value: What the app uses for this arm (a flag value, a config dict, a version number).
        name: Human-readable label for reports.
    """

    key: str
    value: Any = None
    name: str | None = None


@define(frozen=True)
class Namespace:
    """A slice `[start, end)` of a named population, for mutually exclusive experiments.

    Experiments in the same namespace with disjoint ranges never share a subject. Membership is
    GrowthBook's: `bucket_hash("__" + name, hash_value, 1)` falls in `[start, end)`.
    """

    name: str
    start: float
    end: float

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecDefinitionError(
                "namespace name must be a non-empty string", details={"field": "namespace"}
            )
        if not (0.0 <= self.start < self.end <= 1.0):
            raise SpecDefinitionError(
                f"namespace {self.name!r} range must satisfy 0 <= start < end <= 1, got "
                f"[{self.start}, {self.end})",
                details={"field": "namespace"},
            )

    def as_tuple(self) -> tuple[str, float, float]:
        """GrowthBook's form `(name, start, end)`."""
        return (self.name, self.start, self.end)

    def overlaps(self, other: Namespace) -> bool:
        """Whether both claim part of the same namespace."""
        return self.name == other.name and self.start < other.end and other.start < self.end


@define(frozen=True, eq=False)
class ExperimentSpec:
    """A declared experiment (made by `define_experiment`; registrable in a `SpecRegistry`).

    Attributes:
        key: Unique experiment key; also the default hashing seed.
        variations: The arms; the first is the control.
        weights: Share of each arm (sums to 1).
        coverage: Fraction of eligible subjects included, in `[0, 1]`.
        namespace: Mutual-exclusion slice, or `None`.
        targeting: GrowthBook condition the subject's attributes must satisfy, or `None`.
        primary_metric: The metric the decision is made on.
        guardrail_metrics: Metrics that must not degrade.
        minimum_sample: Subjects needed per variation before results are read.
        start: Start of the assignment window (`None`: unbounded).
        end: End of the assignment window, excluded (`None`: unbounded).
        hash_attribute: Attribute identifying the subject (`"id"`).
        hash_version: GrowthBook hash version (2, or 1 for legacy experiments).
        seed: Hashing seed (defaults to `key`).
        active: `False` excludes everyone (a paused experiment).
        flows: Operation names (or glob patterns) the experiment changes; checked against the
            registry's critical flows.
        version: Spec version, for `SpecRegistry`.
        description: What is being tested and why.
    """

    kind: ClassVar[str] = "experiment"

    key: str
    variations: tuple[Variation, ...]
    weights: tuple[float, ...]
    coverage: float
    namespace: Namespace | None
    targeting: Mapping[str, Any] | None
    primary_metric: str | None
    guardrail_metrics: tuple[str, ...]
    minimum_sample: int
    start: datetime | None
    end: datetime | None
    hash_attribute: str
    hash_version: int
    seed: str
    active: bool
    flows: tuple[str, ...]
    version: int
    description: str
    _ranges: tuple[BucketRange, ...] = field(init=False)
    _seed_state: int = field(init=False)
    _table: list[npt.NDArray[np.int16]] = field(init=False, factory=list)
    _lookup: list[list[int]] = field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        ranges = get_bucket_ranges(len(self.variations), self.coverage, list(self.weights))
        object.__setattr__(self, "_ranges", tuple(ranges))
        object.__setattr__(self, "_seed_state", fnv1a32(self.seed))

    @property
    def name(self) -> str:
        """The experiment key (what `SpecRegistry` indexes by)."""
        return self.key

    @property
    def control(self) -> Variation:
        """The control arm (the first variation)."""
        return self.variations[0]

    @property
    def variation_keys(self) -> tuple[str, ...]:
        """Keys of the arms, control first."""
        return tuple(v.key for v in self.variations)

    @property
    def ranges(self) -> tuple[BucketRange, ...]:
        """Bucket range of each arm (GrowthBook `getBucketRanges`)."""
        return self._ranges

    def table(self) -> npt.NDArray[np.int16]:
        """Variation index for every bucket of the hash version (see `bucket_table`); cached."""
        if not self._table:
            self._table.append(bucket_table(self._ranges, self.hash_version))
        return self._table[0]

    def _variation_of(self, bucket: int) -> int:
        lookup = self._lookup
        if not lookup:
            lookup.append(self.table().tolist())
        return lookup[0][bucket]

    def index_of(self, variation: str) -> int:
        """Position of a variation key.

        Raises:
            NotFoundError: No arm has that key.
        """
        for i, v in enumerate(self.variations):
            if v.key == variation:
                return i
        raise NotFoundError(
            f"experiment {self.key!r} has no variation {variation!r}; its variations are "
            f"{', '.join(self.variation_keys)}",
            details={"experiment": self.key, "variation": variation},
        )

    def with_coverage(self, coverage: float) -> ExperimentSpec:
        """A copy with another coverage (staged rollouts raise it; nobody changes arm)."""
        return _build(self, coverage=coverage)

    def __repr__(self) -> str:
        return f"ExperimentSpec({self.key!r}, variations={list(self.variation_keys)!r})"


def _as_variation(item: Any, i: int) -> Variation:
    if isinstance(item, Variation):
        variation = item
    elif isinstance(item, str):
        variation = Variation(item, item)
    else:
        raise SpecDefinitionError(
            f"variations[{i}] must be a key string or a Variation(key, value), got "
            f"{type(item).__name__}",
            details={"field": f"variations[{i}]"},
        )
    if not isinstance(variation.key, str) or not variation.key:
        raise SpecDefinitionError(
            f"variations[{i}] needs a non-empty string key", details={"field": f"variations[{i}]"}
        )
    return variation


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise SpecDefinitionError(
            f"{name} must be a timezone-aware datetime (datetime(..., tzinfo=UTC)), got {value!r}",
            details={"field": name},
        )
    return value


def _fraction(value: Any, name: str) -> float:
    if as_finite_float(value) is None:
        raise SpecDefinitionError(
            f"{name} must be a number between 0 and 1, got {value!r}", details={"field": name}
        )
    if not 0.0 <= value <= 1.0:
        raise SpecDefinitionError(
            f"{name} must be between 0 and 1 (a fraction, not a percentage), got {value!r}",
            details={"field": name},
        )
    return float(value)


def define_experiment(
    key: str,
    variations: Sequence[str | Variation],
    weights: Sequence[float] | None = None,
    coverage: float = 1.0,
    namespace: Namespace | tuple[str, float, float] | None = None,
    targeting: Mapping[str, Any] | None = None,
    primary_metric: str | None = None,
    guardrail_metrics: Sequence[str] = (),
    minimum_sample: int = 100,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    hash_attribute: str = "id",
    hash_version: int = 2,
    seed: str | None = None,
    active: bool = True,
    flows: Sequence[str] = (),
    version: int = 1,
    description: str = "",
) -> ExperimentSpec:
    """Declare an experiment.

    Args:
        key: Unique key (letters, digits, `_ . : / -`); the hashing seed unless `seed` is given.
        variations: At least two arms, control first: key strings or `Variation(key, value)`.
        weights: Share of each arm, summing to 1 (GrowthBook accepts 0.99..1.01); equal by default.
        coverage: Fraction of eligible subjects that enter, `0..1` (not a percentage).
        namespace: `Namespace(name, start, end)` or GrowthBook's `(name, start, end)`.
        targeting: Condition on subject attributes (see `contractspec.growth.conditions`).
        primary_metric: Metric name the decision rests on.
        guardrail_metrics: Metric names that must not degrade.
        minimum_sample: Subjects per variation before reading results (default 100).
        start: Aware datetime from which subjects are assigned.
        end: Aware datetime from which they no longer are (excluded).
        hash_attribute: Attribute that identifies a subject (default `"id"`).
        hash_version: 2 (default) or 1.
        seed: Hashing seed; keep the GrowthBook seed when migrating an experiment. `None` or
            `""` hash with the key, as GrowthBook does (`seed or key`).
        active: `False` pauses the experiment (nobody is assigned).
        flows: Operations the experiment affects (checked against critical flows).
        version: Spec version.
        description: Free text.

    Returns:
        A frozen `ExperimentSpec`.

    Raises:
        SpecDefinitionError: Any argument is malformed; the message names it and the fix.
    """
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise SpecDefinitionError(
            f"experiment key must be 1-200 characters of letters, digits and _ . : / -, "
            f"starting with a letter or digit; got {key!r}",
            details={"field": "key"},
        )
    if isinstance(variations, str) or not isinstance(variations, Sequence):
        raise SpecDefinitionError(
            "variations must be a list such as ['control', 'treatment']",
            details={"field": "variations"},
        )
    arms = tuple(_as_variation(v, i) for i, v in enumerate(variations))
    if len(arms) < 2:
        raise SpecDefinitionError(
            f"experiment {key!r} needs at least two variations (a control and a treatment), got "
            f"{len(arms)}",
            details={"field": "variations"},
        )
    keys = [v.key for v in arms]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise SpecDefinitionError(
            f"experiment {key!r} has duplicate variation keys {duplicates}; keys must be unique",
            details={"field": "variations"},
        )
    if weights is None:
        used = tuple(equal_weights(len(arms)))
    else:
        used = tuple(_fraction(w, f"weights[{i}]") for i, w in enumerate(weights))
        if len(used) != len(arms):
            raise SpecDefinitionError(
                f"experiment {key!r} has {len(arms)} variations but {len(used)} weights; give one "
                "weight per variation",
                details={"field": "weights"},
            )
        low, high = WEIGHT_SUM_TOLERANCE
        total = sum(used)  # left to right, as GrowthBook sums (not math.fsum)
        if not low <= total <= high:
            raise SpecDefinitionError(
                f"weights of experiment {key!r} sum to {total:g}; they must sum to 1",
                details={"field": "weights"},
            )
    ns: Namespace | None
    if namespace is None or isinstance(namespace, Namespace):
        ns = namespace
    elif isinstance(namespace, tuple | list) and len(namespace) == 3:
        ns = Namespace(str(namespace[0]), float(namespace[1]), float(namespace[2]))
    else:
        raise SpecDefinitionError(
            "namespace must be Namespace(name, start, end) or a (name, start, end) tuple",
            details={"field": "namespace"},
        )
    if (
        isinstance(minimum_sample, bool)
        or not isinstance(minimum_sample, int)
        or minimum_sample < 0
    ):
        raise SpecDefinitionError(
            f"minimum_sample must be a non-negative int (subjects per variation), got "
            f"{minimum_sample!r}",
            details={"field": "minimum_sample"},
        )
    start = _aware(start, "start")
    end = _aware(end, "end")
    if start is not None and end is not None and end <= start:
        raise SpecDefinitionError(
            f"experiment {key!r} ends ({end.isoformat()}) before it starts ({start.isoformat()})",
            details={"field": "end"},
        )
    try:
        hv = _check_version(hash_version)
    except SpecValidationError as exc:
        raise SpecDefinitionError(exc.message, details={"field": "hash_version"}) from None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecDefinitionError(
            f"version must be a positive int, got {version!r}", details={"field": "version"}
        )
    if not isinstance(hash_attribute, str) or not hash_attribute:
        raise SpecDefinitionError(
            "hash_attribute must name an attribute such as 'id'",
            details={"field": "hash_attribute"},
        )
    return ExperimentSpec(
        key=key,
        variations=arms,
        weights=used,
        coverage=_fraction(coverage, "coverage"),
        namespace=ns,
        targeting=None if targeting is None else check_condition(targeting, field="targeting"),
        primary_metric=primary_metric,
        guardrail_metrics=tuple(guardrail_metrics),
        minimum_sample=minimum_sample,
        start=start,
        end=end,
        hash_attribute=hash_attribute,
        hash_version=hv,
        seed=key if seed is None or seed == "" else str(seed),  # GrowthBook: `seed or key`
        active=bool(active),
        flows=tuple(flows),
        version=version,
        description=description,
    )


def _build(spec: ExperimentSpec, **changes: Any) -> ExperimentSpec:
    values = {
        name: getattr(spec, name)
        for name in (
            "key",
            "variations",
            "weights",
            "coverage",
            "namespace",
            "targeting",
            "primary_metric",
            "guardrail_metrics",
            "minimum_sample",
            "start",
            "end",
            "hash_attribute",
            "hash_version",
            "seed",
            "active",
            "flows",
            "version",
            "description",
        )
    }
    values.update(changes)
    values["coverage"] = _fraction(values["coverage"], "coverage")
    return ExperimentSpec(**values)


# -- registry -------------------------------------------------------------------------------------


class ExperimentRegistry:
    """The experiments of an app, with mutual-exclusion and critical-flow checks.

    Args:
        *experiments: Specs to register.
        critical_flows: Operation names or glob patterns (`"billing.*"`) that may never be
            experimented on.

    Raises:
        SpecDefinitionError: See `register`.
    """

    def __init__(self, *experiments: ExperimentSpec, critical_flows: Sequence[str] = ()) -> None:
        self._experiments: dict[str, ExperimentSpec] = {}
        self._critical: tuple[str, ...] = ()
        self.declare_critical(*critical_flows)
        self.register(*experiments)

    @classmethod
    def from_spec_registry(
        cls, registry: Any, *, critical_flows: Sequence[str] = ()
    ) -> ExperimentRegistry:
        """The latest version of every experiment registered in a core `SpecRegistry`."""
        latest: dict[str, ExperimentSpec] = {}
        for spec in registry.specs("experiment"):
            latest[spec.key] = spec
        return cls(*latest.values(), critical_flows=critical_flows)

    @property
    def critical_flows(self) -> tuple[str, ...]:
        """Declared critical flows (names or glob patterns)."""
        return self._critical

    def is_critical(self, flow: str) -> bool:
        """Whether `flow` matches a declared critical flow."""
        return any(fnmatch.fnmatchcase(flow, pattern) for pattern in self._critical)

    def declare_critical(self, *flows: str) -> None:
        """Declare flows that may not be experimented on.

        Raises:
            SpecDefinitionError: A registered experiment already affects one of them.
        """
        new = tuple(f for f in flows if f not in self._critical)
        self._critical += new
        for spec in self._experiments.values():
            self._check_flows(spec)

    def _check_flows(self, spec: ExperimentSpec) -> None:
        for flow in spec.flows:
            for pattern in self._critical:
                if fnmatch.fnmatchcase(flow, pattern) or fnmatch.fnmatchcase(pattern, flow):
                    raise SpecDefinitionError(
                        f"experiment {spec.key!r} affects {flow!r}, a critical flow "
                        f"({pattern!r}) that may not be experimented on; roll changes to it out "
                        "with SpecExperimentController guardrails instead, or remove it from flows",
                        details={"experiment": spec.key, "flow": flow},
                    )

    def register(self, *experiments: ExperimentSpec) -> None:
        """Add experiments (a higher `version` of a key replaces the older one).

        Raises:
            SpecDefinitionError: Not an `ExperimentSpec`; a different spec with the same key and
                version exists; it affects a critical flow; or its namespace range overlaps an
                experiment of the same namespace whose time window overlaps its own.
        """
        for spec in experiments:
            if not isinstance(spec, ExperimentSpec):
                raise SpecDefinitionError(
                    f"{spec!r} is not an experiment; make one with define_experiment()"
                )
            current = self._experiments.get(spec.key)
            if current is not None:
                if current is spec:
                    continue
                if current.version == spec.version:
                    raise SpecDefinitionError(
                        f"experiment {spec.key!r}@{spec.version} is already registered; bump "
                        "version= for a new definition",
                        details={"experiment": spec.key},
                    )
                if current.version > spec.version:
                    continue
            self._check_flows(spec)
            if spec.namespace is not None:
                for other in self._experiments.values():
                    if (
                        other.key != spec.key
                        and other.namespace is not None
                        and spec.namespace.overlaps(other.namespace)
                        and _windows_overlap(spec, other)
                    ):
                        raise SpecDefinitionError(
                            f"experiments {spec.key!r} and {other.key!r} both claim part of "
                            f"namespace {spec.namespace.name!r} ([{spec.namespace.start}, "
                            f"{spec.namespace.end}) and [{other.namespace.start}, "
                            f"{other.namespace.end})); give them disjoint ranges so they stay "
                            "mutually exclusive",
                            details={"experiment": spec.key, "namespace": spec.namespace.name},
                        )
            self._experiments[spec.key] = spec

    def replace(self, spec: ExperimentSpec) -> ExperimentSpec:
        """Swap the registered definition of `spec.key` for `spec` (a new phase: raised coverage,
        new weights, an end date), with the same checks as `register`.

        Returns:
            The definition it replaced.

        Raises:
            NotFoundError: No experiment with that key is registered.
            SpecDefinitionError: As `register`.
        """
        previous = self.get(spec.key)
        del self._experiments[spec.key]
        try:
            self.register(spec)
        except BaseException:
            self._experiments[spec.key] = previous
            raise
        return previous

    def get(self, key: str) -> ExperimentSpec:
        """The experiment registered under `key`.

        Raises:
            NotFoundError: No such experiment.
        """
        spec = self._experiments.get(key)
        if spec is None:
            known = ", ".join(sorted(self._experiments)) or "none"
            raise NotFoundError(
                f"unknown experiment {key!r}; registered experiments: {known}",
                details={"experiment": key},
            )
        return spec

    def __iter__(self) -> Iterator[ExperimentSpec]:
        return iter([self._experiments[k] for k in sorted(self._experiments)])

    def __len__(self) -> int:
        return len(self._experiments)

    def __contains__(self, key: object) -> bool:
        return key in self._experiments


def _windows_overlap(a: ExperimentSpec, b: ExperimentSpec) -> bool:
    if not (a.active and b.active):
        return False
    a_start, b_start = a.start, b.start
    if a.end is not None and b_start is not None and a.end <= b_start:
        return False
    return not (b.end is not None and a_start is not None and b.end <= a_start)


# -- assignment -----------------------------------------------------------------------------------


class AssignmentReason(enum.StrEnum):
    """Why a subject got the variation it got."""

    ASSIGNED = "assigned"
    FORCED = "forced"
    INACTIVE = "inactive"
    NOT_STARTED = "not_started"
    ENDED = "ended"
    NO_HASH_ATTRIBUTE = "no_hash_attribute"
    NOT_IN_NAMESPACE = "not_in_namespace"
    NOT_TARGETED = "not_targeted"
    NOT_COVERED = "not_covered"


class Assignment(NamedTuple):
    """The outcome of assigning one subject to one experiment.

    Attributes:
        experiment: Experiment key.
        variation: Key of the arm to serve; the control when `in_experiment` is false.
        variation_index: Position of that arm (0 = control).
        value: The arm's value.
        in_experiment: Whether the subject is part of the experiment (count it in the analysis).
        hash_used: Whether the variation came from hashing (false when forced or excluded).
        hash_attribute: Attribute used to identify the subject.
        hash_value: Its value as hashed, or `None` when missing.
        bucket: The subject's bucket in `[0, 1)`, or `None` when not hashed.
        reason: Why (an `AssignmentReason`).
    """

    experiment: str
    variation: str
    variation_index: int
    value: Any
    in_experiment: bool
    hash_used: bool
    hash_attribute: str
    hash_value: str | None
    bucket: float | None
    reason: AssignmentReason

    @property
    def tracked(self) -> bool:
        """Whether an exposure should be recorded (hashed into the experiment, not forced)."""
        return self.in_experiment and self.hash_used


@define(frozen=True, eq=False)
class Assignments:
    """Vectorised assignments of many subjects (from `ExperimentRunner.assign_many`).

    Attributes:
        experiment: The experiment.
        variation_index: `int16` array, the arm of each subject, `-1` for subjects not in the
            experiment (they are served the control).
        bucket: `float64` array of buckets, `NaN` where no bucket was computed.
    """

    experiment: ExperimentSpec
    variation_index: npt.NDArray[np.int16]
    bucket: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.variation_index.shape[0])

    @property
    def in_experiment(self) -> npt.NDArray[np.bool_]:
        """Boolean mask of subjects in the experiment."""
        return self.variation_index >= 0

    def variations(self) -> npt.NDArray[np.object_]:
        """Variation key of each subject, `None` for subjects not in the experiment."""
        keys = np.array([*self.experiment.variation_keys, None], dtype=object)
        return keys[self.variation_index]  # -1 picks the trailing None

    def counts(self) -> dict[str, int]:
        """Subjects per variation key (excluded subjects are not counted)."""
        counts = np.bincount(
            self.variation_index[self.variation_index >= 0],
            minlength=len(self.experiment.variations),
        )
        return {k: int(c) for k, c in zip(self.experiment.variation_keys, counts, strict=True)}

    def _repr_html_(self) -> str:
        """Jupyter's view: subjects and share per variation, and how many were left out."""
        import html

        total = len(self)
        counts = self.counts()
        assigned = sum(counts.values())
        rows = "".join(
            f"<tr><td>{html.escape(key)}</td><td>{n:,}</td>"
            f"<td>{n / assigned:.1%}</td><td>{weight:.1%}</td></tr>"
            if assigned
            else f"<tr><td>{html.escape(key)}</td><td>0</td><td>&mdash;</td><td>{weight:.1%}</td></tr>"
            for (key, n), weight in zip(counts.items(), self.experiment.weights, strict=True)
        )
        return (
            f"<table><caption>Assignments of {html.escape(self.experiment.key)}: {total:,} "
            f"subjects, {assigned:,} in the experiment, {total - assigned:,} not (served the "
            "control)</caption><thead><tr><th>variation</th><th>subjects</th><th>share</th>"
            f"<th>weight</th></tr></thead><tbody>{rows}</tbody></table>"
        )


def subject_attributes(ctx: CallContext, **extra: Any) -> dict[str, Any]:
    """Targeting attributes of a call's actor: `id`, `user_id`, `org_id`, `roles`, `actor_kind`,
    the actor's own attributes (plan, segment, ...) and `extra`.

    `id` is the actor id, so experiments hash users by default; pass `hash_attribute="org_id"`
    to an experiment to bucket whole organisations together. Anonymous callers get `id=None`
    (they are never hashed into an experiment: all of them would share one bucket).
    """
    actor = ctx.actor
    actor_id = None if actor.is_anonymous else actor.id  # anonymous callers share no identity
    attributes: dict[str, Any] = {
        "id": actor_id,
        "user_id": actor_id,
        "org_id": ctx.org_id,
        "roles": sorted(actor.roles),
        "actor_kind": actor.kind.value,
    }
    attributes.update(actor.attributes)
    attributes.update(extra)
    return attributes


Subject = Mapping[str, Any] | CallContext | str


class ExperimentRunner:
    """Assigns subjects to experiments, deterministically and GrowthBook-compatibly.

    Assignment is pure computation: no I/O, no state. Record exposures with an
    `ExperimentTracker` when the subject actually sees the variation.

    Args:
        registry: The experiments.
        clock: Time source for `start`/`end` windows (system clock by default).
        forced: `{experiment_key: variation_key}` overrides for QA and demos; forced subjects
            are in the experiment but not hashed, so they are not tracked.
        saved_groups: Segments for `$inGroup` conditions: `{name: [ids...]}`.
    """

    def __init__(
        self,
        registry: ExperimentRegistry,
        *,
        clock: Clock | None = None,
        forced: Mapping[str, str] | None = None,
        saved_groups: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.forced: dict[str, str] = dict(forced or {})
        self.saved_groups: dict[str, Sequence[Any]] = dict(saved_groups or {})

    def _spec(self, experiment: str | ExperimentSpec) -> ExperimentSpec:
        if isinstance(experiment, ExperimentSpec):
            return experiment
        return self.registry.get(experiment)

    def _excluded(
        self,
        spec: ExperimentSpec,
        reason: AssignmentReason,
        hash_value: str | None = None,
        bucket: float | None = None,
    ) -> Assignment:
        control = spec.variations[0]
        return Assignment(
            spec.key,
            control.key,
            0,
            control.value,
            False,
            False,
            spec.hash_attribute,
            hash_value,
            bucket,
            reason,
        )

    def _window(self, spec: ExperimentSpec, at: datetime | None) -> AssignmentReason | None:
        if not spec.active:
            return AssignmentReason.INACTIVE
        if spec.start is None and spec.end is None:
            return None
        now = at or self.clock.now()
        if spec.start is not None and now < spec.start:
            return AssignmentReason.NOT_STARTED
        if spec.end is not None and now >= spec.end:
            return AssignmentReason.ENDED
        return None

    def assign(
        self, experiment: str | ExperimentSpec, subject: Subject, *, at: datetime | None = None
    ) -> Assignment:
        """Assign one subject.

        The checks run in GrowthBook's order: forced variation, active and time window, hash
        attribute present, namespace, targeting, then the bucket decides (outside coverage means
        not in the experiment).

        Args:
            experiment: Experiment key or spec.
            subject: Attributes (`{"id": ..., "plan": ...}`), a `CallContext` (see
                `subject_attributes`) or a bare id string.
            at: Time to check the window against (default: the clock's now).

        Returns:
            The `Assignment`; excluded subjects get the control with `in_experiment=False`.

        Raises:
            NotFoundError: Unknown experiment key.
        """
        spec = experiment if type(experiment) is ExperimentSpec else self._spec(experiment)
        if type(subject) is dict:
            attributes: Mapping[str, Any] = subject
        elif isinstance(subject, str):
            attributes = {spec.hash_attribute: subject}
        elif isinstance(subject, CallContext):
            attributes = subject_attributes(subject)
        else:
            attributes = subject
        if self.forced:
            forced = self.forced.get(spec.key)
            if forced is not None:
                return self._forced(spec, forced, attributes)
        if not spec.active or spec.start is not None or spec.end is not None:
            reason = self._window(spec, at)
            if reason is not None:
                return self._excluded(spec, reason)
        raw = attributes.get(spec.hash_attribute)
        hash_value = raw if type(raw) is str and raw else hash_key(raw)
        if hash_value is None:
            return self._excluded(spec, AssignmentReason.NO_HASH_ATTRIBUTE)
        ns = spec.namespace
        if ns is not None:
            n_ns = bucket_hash("__" + ns.name, hash_value, 1)
            if not ns.start <= n_ns < ns.end:
                return self._excluded(spec, AssignmentReason.NOT_IN_NAMESPACE, hash_value)
        if spec.targeting is not None and not eval_condition(
            attributes, spec.targeting, self.saved_groups
        ):
            return self._excluded(spec, AssignmentReason.NOT_TARGETED, hash_value)
        if spec.hash_version == 2:
            k = fnv1a32_decimal(fnv1a32(hash_value, spec._seed_state)) % 10000
            n = k / 10000
        else:
            k = fnv1a32(hash_value + spec.seed) % 1000
            n = k / 1000
        i = spec._variation_of(k)  # == choose_variation(n, spec.ranges), precomputed per bucket
        if i < 0:
            return self._excluded(spec, AssignmentReason.NOT_COVERED, hash_value, n)
        arm = spec.variations[i]
        return Assignment(
            spec.key,
            arm.key,
            i,
            arm.value,
            True,
            True,
            spec.hash_attribute,
            hash_value,
            n,
            AssignmentReason.ASSIGNED,
        )

    def _forced(
        self, spec: ExperimentSpec, forced: str, attributes: Mapping[str, Any]
    ) -> Assignment:
        i = spec.index_of(forced)
        arm = spec.variations[i]
        return Assignment(
            spec.key,
            arm.key,
            i,
            arm.value,
            True,
            False,
            spec.hash_attribute,
            hash_key(attributes.get(spec.hash_attribute)),
            None,
            AssignmentReason.FORCED,
        )

    def assign_many(
        self,
        experiment: str | ExperimentSpec,
        ids: Sequence[str] | npt.NDArray[Any],
        *,
        eligible: npt.NDArray[np.bool_] | Sequence[bool] | None = None,
        at: datetime | None = None,
    ) -> Assignments:
        """Assign many subjects at once with NumPy (back-fills, offline analysis).

        Identical to calling `assign(experiment, {hash_attribute: id})` for each id (forced
        variations included), but hashes whole arrays and looks buckets up in a precomputed table.

        Args:
            experiment: Experiment key or spec.
            ids: Hash-attribute values: strings (a list, a NumPy `StringDType`, object or `<U`
                array) or an integer array. Empty strings and `0` cannot identify anyone and are
                excluded. Ids ending in NUL characters are hashed with them, as `assign` does,
                from a list, `StringDType` or object array; a `<U` array cannot hold them
                (NumPy strips trailing NULs when it builds one).
            eligible: Boolean mask of subjects that pass the experiment's targeting (required
                when the experiment has targeting: attributes are not vectorised).
            at: Time to check the window against (default: the clock's now).

        Returns:
            `Assignments` with `variation_index == -1` for subjects not in the experiment.

        Raises:
            NotFoundError: Unknown experiment key.
            SpecValidationError: The experiment has targeting and `eligible` is missing, the mask
                has the wrong length, or an id is not a string.
        """
        spec = self._spec(experiment)
        if not isinstance(ids, np.ndarray):
            ids = list(ids)
        elif ids.dtype.kind not in "Uiu":  # object or StringDType arrays: keep every character
            ids = ids.reshape(-1).tolist()
        n = len(ids)
        mask: npt.NDArray[np.bool_] | None = None
        if eligible is not None:
            mask = np.asarray(eligible, dtype=bool).reshape(-1)
            if mask.shape[0] != n:
                raise SpecValidationError(
                    f"eligible has {mask.shape[0]} entries for {n} ids; give one per id",
                    details={"field": "eligible"},
                )
        elif spec.targeting is not None:
            raise SpecValidationError(
                f"experiment {spec.key!r} has targeting, which assign_many cannot evaluate per "
                "id; pass eligible= (a boolean mask of subjects that match the targeting)",
                details={"field": "eligible"},
            )
        bucket = np.full(n, np.nan)
        forced = self.forced.get(spec.key)
        if forced is not None:
            index = np.full(n, spec.index_of(forced), dtype=np.int16)
            return Assignments(spec, index, bucket)
        if self._window(spec, at) is not None or n == 0:
            return Assignments(spec, np.full(n, -1, dtype=np.int16), bucket)
        if isinstance(ids, np.ndarray):
            flat = ids.reshape(-1)
            present = (flat != 0) if flat.dtype.kind in "iu" else (np.char.str_len(flat) > 0)
        else:
            present = np.fromiter(map(bool, ids), dtype=bool, count=n)
        k = _buckets(spec.seed, spec.hash_version, ids)
        index = spec.table()[k]
        bucket = k / (10000.0 if spec.hash_version == 2 else 1000.0)
        keep = present
        ns = spec.namespace
        if ns is not None:
            n_ns = _buckets("__" + ns.name, 1, ids) / 1000.0
            keep = keep & (n_ns >= ns.start) & (n_ns < ns.end)
        if mask is not None:
            keep = keep & mask
        bucket[~keep] = np.nan
        index[~keep] = -1
        return Assignments(spec, index, bucket)
