"""Breaking-change detection between two spec IRs, in the spirit of oasdiff and buf.

`diff_ir(old, new)` compares two IR documents (see `contractspec.core.ir`) and classifies every
difference with a stable rule id, a severity (`breaking`, `warning`, `info`), the spec and path it
concerns, and a one-line explanation. The rules know the direction of each schema:

* `input` (callers send it): narrowing what is accepted is breaking (new required field, enum value
  removed, `max_length` decreased, type narrowed, became non-nullable, ...);
* `output` and event `payload` (callers and consumers read it): widening what may come back is
  breaking (field removed, became optional or nullable, type generalized `int → number`,
  constraints loosened); a new enum value is a warning (clients must handle unknown values);
* entity `model` (stored records are written and read): the stricter of both.

Spec-level rules cover removals (operations only without a prior deprecation), auth and `pii`
loosening, idempotency, events emitted, decimal scale and type, and finally any breaking change
made without bumping the spec's version. The design favours false positives over false negatives:
a schema keyword the rules do not understand is reported as a `*-schema-changed` warning, and two
different IRs never produce an empty diff.

Example:
    ```python
    from contractspec.core.diff import diff_ir

    result = diff_ir("contractspec.lock.json", registry.to_ir())
    if result.has_breaking:
        print(result.to_text())
    ```
"""

from __future__ import annotations

import enum
import fnmatch
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from attrs import define, evolve

from contractspec.core.errors import ConfigurationError
from contractspec.core.ir import LOCK_FILENAME, as_ir, dumps_ir, load_ir

if TYPE_CHECKING:
    from contractspec.core.registry import SpecRegistry

__all__ = [
    "RULES",
    "Change",
    "LockStatus",
    "Rule",
    "Severity",
    "SpecDiff",
    "check_lock",
    "diff_ir",
]


class Severity(enum.StrEnum):
    """How much a change matters to existing callers and consumers (ordered)."""

    INFO = "info"
    WARNING = "warning"
    BREAKING = "breaking"

    @property
    def rank(self) -> int:
        """0 for info, 1 for warning, 2 for breaking."""
        return _RANK[self]


_RANK: Final = {Severity.INFO: 0, Severity.WARNING: 1, Severity.BREAKING: 2}
BRK, WRN, INF = Severity.BREAKING, Severity.WARNING, Severity.INFO


@define(frozen=True)
class Rule:
    """One classification rule.

    Attributes:
        id: Stable kebab-case identifier (`input-property-removed`).
        severity: Severity of every change the rule reports.
        summary: One-line description (the rule table in the docs).
    """

    id: str
    severity: Severity
    summary: str


#: Schema rules: suffix → (severity on input, severity on output, summary). The rule ids are
#: `input-<suffix>`, `output-<suffix>`, `payload-<suffix>` (event payloads: output severities) and
#: `entity-<suffix>` (stored records: the stricter of both).
_SCHEMA_RULES: Final[dict[str, tuple[Severity, Severity, str]]] = {
    "property-removed": (BRK, BRK, "a field was removed (or renamed)"),
    "required-property-added": (BRK, INF, "a new required field was added"),
    "optional-property-added": (WRN, INF, "a new optional field with a default was added"),
    "property-became-required": (BRK, INF, "an optional field became required"),
    "property-became-optional": (INF, BRK, "a required field became optional"),
    "became-nullable": (INF, BRK, "a value may now be null"),
    "became-non-nullable": (BRK, INF, "a value may no longer be null"),
    "type-changed": (BRK, BRK, "a value changed to an unrelated type"),
    "type-widened": (INF, BRK, "a value's type was generalized (e.g. integer to number)"),
    "type-narrowed": (BRK, INF, "a value's type was narrowed (e.g. number to integer)"),
    "format-added": (BRK, INF, "a string format was added"),
    "format-removed": (INF, BRK, "a string format was removed"),
    "format-changed": (BRK, BRK, "a string format changed"),
    "enum-value-added": (INF, WRN, "an enum value was added"),
    "enum-value-removed": (BRK, INF, "an enum value was removed"),
    "enum-introduced": (BRK, INF, "a free value was restricted to an enum"),
    "enum-dropped": (INF, WRN, "an enum restriction was removed"),
    "constraint-tightened": (
        BRK,
        INF,
        "a constraint was tightened (max decreased, min increased, ...)",
    ),
    "constraint-loosened": (
        INF,
        BRK,
        "a constraint was loosened (max increased, min decreased, ...)",
    ),
    "constraint-changed": (BRK, BRK, "a constraint changed incomparably (pattern, multipleOf)"),
    "decimal-scale-changed": (BRK, BRK, "a decimal's number of decimal places changed"),
    "decimal-type-changed": (BRK, BRK, "a value changed between decimal and another type"),
    "default-changed": (WRN, INF, "a default value changed"),
    "union-member-added": (
        INF,
        BRK,
        "a union (anyOf/oneOf) gained a member (readers may not handle it)",
    ),
    "union-member-removed": (
        BRK,
        INF,
        "a union (anyOf/oneOf) lost a member (senders of it are rejected)",
    ),
    "schema-changed": (WRN, WRN, "a schema keyword the rules do not classify changed"),
}

#: Role of a schema → rule-id prefix and which severity column applies.
_ROLE_DIRECTIONS: Final[dict[str, tuple[str, Literal["input", "output", "both"]]]] = {
    "input": ("input", "input"),
    "output": ("output", "output"),
    "payload": ("payload", "output"),
    "model": ("entity", "both"),
    "*": ("schema", "both"),
}

_SPEC_RULES: Final[tuple[tuple[str, Severity, str], ...]] = (
    ("operation-added", INF, "an operation (or a new version of one) was added"),
    (
        "operation-removed-without-deprecation",
        BRK,
        "an operation version was removed without being deprecated first",
    ),
    ("operation-removed-after-deprecation", WRN, "a deprecated operation version was removed"),
    ("operation-deprecated", INF, "an operation was marked deprecated"),
    ("operation-stability-changed", INF, "an operation's stability changed"),
    (
        "operation-kind-changed",
        BRK,
        "a command became a query or the reverse (HTTP method changes)",
    ),
    ("event-added", INF, "an event (or a new version of one) was added"),
    ("event-removed", BRK, "an event version was removed"),
    ("entity-added", INF, "an entity was added"),
    ("entity-removed", BRK, "an entity was removed (its stored data is orphaned)"),
    ("spec-added", INF, "a spec of another kind (job, agent, flag, ...) was added"),
    ("spec-removed", BRK, "a spec of another kind was removed"),
    ("spec-changed", WRN, "a field of a spec of another kind changed"),
    ("auth-loosened", BRK, "the auth requirement was loosened (safety changes)"),
    ("auth-tightened", BRK, "the auth requirement was tightened (callers may now be denied)"),
    ("auth-resource-changed", WRN, "the resource permissions are checked on changed"),
    ("pii-removed", BRK, "a field is no longer marked as personal data (no longer redacted)"),
    ("pii-added", INF, "a field is now marked as personal data"),
    (
        "pii-field-removed",
        INF,
        "a personal-data field was removed together with its mark (nothing left to redact)",
    ),
    ("idempotency-removed", BRK, "a command no longer accepts idempotency keys"),
    ("idempotency-added", INF, "a command now accepts idempotency keys"),
    ("event-no-longer-emitted", WRN, "an operation no longer emits an event"),
    ("event-newly-emitted", INF, "an operation emits a new event (or another version of one)"),
    ("error-code-added", WRN, "an operation may return a new error code"),
    ("error-code-removed", INF, "an operation no longer declares an error code"),
    ("audit-disabled", WRN, "successful calls no longer leave an audit record"),
    ("audit-enabled", INF, "successful calls now leave an audit record"),
    ("event-key-changed", WRN, "the payload field that orders delivery changed"),
    ("event-retention-shortened", WRN, "events are kept for less time"),
    ("event-retention-extended", INF, "events are kept for longer (or forever)"),
    ("event-severity-changed", INF, "an event's severity changed"),
    ("entity-primary-key-changed", BRK, "an entity's primary key changed"),
    ("entity-tenancy-changed", BRK, "an entity became tenant-scoped or global"),
    ("entity-unique-index-added", WRN, "a unique index was added (existing rows may violate it)"),
    ("entity-index-changed", INF, "a non-unique index was added, removed or a unique one dropped"),
    (
        "workflow-state-removed",
        BRK,
        "a workflow state was removed or renamed (instances may be in it)",
    ),
    ("workflow-state-added", INF, "a workflow state was added"),
    (
        "workflow-state-migrated",
        INF,
        "a state was removed in a new version whose migrations move its instances",
    ),
    (
        "workflow-transition-removed",
        BRK,
        "a workflow transition was removed (callers firing it fail)",
    ),
    ("workflow-transition-added", INF, "a workflow transition was added"),
    (
        "workflow-transition-source-removed",
        BRK,
        "a transition can no longer be fired from a state it could leave before",
    ),
    ("workflow-transition-source-added", INF, "a transition can be fired from one more state"),
    (
        "workflow-transition-changed",
        WRN,
        "a transition's target state, guard or approval step changed",
    ),
    ("workflow-timer-changed", WRN, "a workflow timer's state, due time or action changed"),
    ("workflow-timer-removed", WRN, "a workflow timer was removed (nothing fires when it was due)"),
    ("workflow-timer-added", INF, "a workflow timer was added"),
    (
        "workflow-storage-changed",
        BRK,
        "where a workflow keeps its state changed (entity= or state_field=): existing records or "
        "instances are not moved",
    ),
    (
        "workflow-history-changed",
        WRN,
        "a workflow's history moved between step rows and the audit trail (earlier history "
        "stays where it was written)",
    ),
    (
        "attachment-slot-narrowed",
        BRK,
        "an attachment slot accepts less (a media type, max size or count, archive limits)",
    ),
    (
        "attachment-slot-widened",
        INF,
        "an attachment slot accepts more (a media type, max size or count, archive limits)",
    ),
    (
        "attachment-permission-narrowed",
        BRK,
        "an attachment slot's upload/view/delete permission was added or changed",
    ),
    (
        "attachment-permission-widened",
        WRN,
        "an attachment slot's permission was dropped (any tenant member may now act)",
    ),
    ("attachment-retention-shortened", WRN, "an attachment slot's files are kept for less time"),
    ("attachment-retention-extended", INF, "an attachment slot's files are kept for longer"),
    (
        "plan-limit-lowered",
        BRK,
        "a plan limit was lowered, added or made to deny overage (orgs on it may be refused)",
    ),
    ("plan-limit-raised", INF, "a plan limit was raised, removed or now allows overage"),
    ("plan-feature-removed", BRK, "a plan no longer includes a feature"),
    ("plan-feature-added", INF, "a plan now includes a feature"),
    ("metadata-changed", INF, "documentation or ownership metadata changed"),
    (
        "breaking-change-without-version-bump",
        BRK,
        "a spec changed incompatibly without a new version",
    ),
)


def _max(a: Severity, b: Severity) -> Severity:
    return a if a.rank >= b.rank else b


def _build_rules() -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for rule_id, severity, summary in _SPEC_RULES:
        rules[rule_id] = Rule(rule_id, severity, summary)
    for role, (prefix, direction) in _ROLE_DIRECTIONS.items():
        where = {
            "input": "input",
            "output": "output",
            "payload": "event payload",
            "model": "entity",
            "*": "schema of another spec kind",
        }
        for suffix, (sev_in, sev_out, summary) in _SCHEMA_RULES.items():
            severity = (
                sev_in
                if direction == "input"
                else sev_out
                if direction == "output"
                else _max(sev_in, sev_out)
            )
            rule_id = f"{prefix}-{suffix}"
            rules[rule_id] = Rule(rule_id, severity, f"{where[role]}: {summary}")
    return dict(sorted(rules.items()))


#: Every rule, by id.
RULES: Final[Mapping[str, Rule]] = _build_rules()


@define(frozen=True)
class Change:
    """One classified difference.

    Attributes:
        rule: Rule id (a key of `RULES`).
        severity: The rule's severity.
        kind: Spec kind (`operation`, `event`, `entity`, or another package's kind).
        spec: `name@version` of the spec concerned.
        path: Dotted location inside the spec (`input.amount`, `output.deals[].stage`, `auth`);
            empty for the spec as a whole. `[]` is an array item, `{}` a dict value.
        message: One-line explanation.
    """

    rule: str
    severity: Severity
    kind: str
    spec: str
    path: str
    message: str

    @property
    def location(self) -> str:
        """`kind name@version path`."""
        return f"{self.kind} {self.spec}" + (f" {self.path}" if self.path else "")

    def to_dict(self) -> dict[str, str]:
        """JSON form: rule, severity, kind, spec, path, message."""
        return {
            "rule": self.rule,
            "severity": self.severity.value,
            "kind": self.kind,
            "spec": self.spec,
            "path": self.path,
            "message": self.message,
        }


FailOn = Literal["breaking", "warning", "info", "never"]


@define(frozen=True)
class SpecDiff:
    """The classified changes between two IRs, sorted by kind, spec, path and rule.

    Attributes:
        changes: Every change found.
    """

    changes: tuple[Change, ...]

    def __len__(self) -> int:
        return len(self.changes)

    def __bool__(self) -> bool:
        return bool(self.changes)

    def of(self, severity: Severity | str) -> list[Change]:
        """Changes of exactly `severity`."""
        sev = Severity(severity)
        return [c for c in self.changes if c.severity is sev]

    @property
    def breaking(self) -> list[Change]:
        """Breaking changes."""
        return self.of(Severity.BREAKING)

    @property
    def has_breaking(self) -> bool:
        """Whether any change is breaking."""
        return any(c.severity is Severity.BREAKING for c in self.changes)

    def counts(self) -> dict[str, int]:
        """`{"breaking": n, "warning": n, "info": n}`."""
        return {s.value: len(self.of(s)) for s in (BRK, WRN, INF)}

    def fails(self, fail_on: FailOn | Severity = "breaking") -> bool:
        """Whether a change reaches the `fail_on` threshold (`never` never fails).

        Raises:
            ConfigurationError: Unknown threshold.
        """
        if fail_on == "never":
            return False
        try:
            threshold = Severity(fail_on)
        except ValueError:
            raise ConfigurationError(
                f"fail_on must be breaking, warning, info or never, got {fail_on!r}"
            ) from None
        return any(c.severity.rank >= threshold.rank for c in self.changes)

    def summary(self) -> str:
        """`2 breaking, 1 warning, 0 info`."""
        counts = self.counts()
        return f"{counts['breaking']} breaking, {counts['warning']} warning, {counts['info']} info"

    def to_dict(self) -> dict[str, Any]:
        """`{"changes": [...], "summary": {"breaking": n, "warning": n, "info": n}}`."""
        return {"changes": [c.to_dict() for c in self.changes], "summary": self.counts()}

    def to_json(self) -> str:
        """`to_dict()` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_text(self) -> str:
        """One line per change (`BREAKING  rule  where: message`) and a summary line."""
        if not self.changes:
            return "no changes\n"
        width = max(len(c.rule) for c in self.changes)
        lines = [
            f"{c.severity.value.upper():<8}  {c.rule:<{width}}  {c.location}: {c.message}"
            for c in self.changes
        ]
        lines.append(self.summary())
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        """A Markdown table (severity, rule, where, change) and a summary line."""
        if not self.changes:
            return "No changes.\n"
        rows = ["| Severity | Rule | Where | Change |", "| --- | --- | --- | --- |"]
        for c in self.changes:
            where = f"`{c.kind} {c.spec}`" + (f" `{c.path}`" if c.path else "")
            message = c.message.replace("|", "\\|")
            rows.append(f"| {c.severity.value} | `{c.rule}` | {where} | {message} |")
        rows.append("")
        rows.append(f"**{self.summary()}**")
        return "\n".join(rows) + "\n"

    def format(self, fmt: Literal["text", "json", "markdown"] = "text") -> str:
        """Render as `text`, `json` or `markdown`.

        Raises:
            ConfigurationError: Unknown format.
        """
        if fmt == "text":
            return self.to_text()
        if fmt == "json":
            return self.to_json()
        if fmt == "markdown":
            return self.to_markdown()
        raise ConfigurationError(f"format must be text, json or markdown, got {fmt!r}")


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------

_Emit = Callable[[str, str, str], None]

_UPPER: Final = ("maxLength", "maximum", "exclusiveMaximum", "maxItems", "maxProperties")
_LOWER: Final = ("minLength", "minimum", "exclusiveMinimum", "minItems", "minProperties")
#: Keywords without contract meaning (documentation) and those handled explicitly.
_DOC_KEYS: Final = frozenset(
    {"title", "description", "examples", "example", "$comment", "deprecated", "readOnly",
     "writeOnly", "discriminator"}
)  # fmt: skip
#: Keys whose list order carries no meaning (compared as sets): JSON Schema `required`, `enum`,
#: `anyOf`/`oneOf`, and an entity's `columns` and their `enum_values` (columns are read by name).
_UNORDERED: Final = frozenset({"required", "enum", "anyOf", "oneOf", "columns", "enum_values"})
_HANDLED: Final = frozenset(
    {"type", "properties", "required", "enum", "const", "anyOf", "oneOf", "allOf", "items",
     "prefixItems", "additionalProperties", "$ref", "$defs", "format", "pattern", "multipleOf",
     "uniqueItems", "default", "x-decimal", *_UPPER, *_LOWER}
)  # fmt: skip


def _fmt(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


class _SchemaComparer:
    """Compares one role's old and new JSON Schemas and reports suffix-level findings."""

    def __init__(self, old_root: Mapping[str, Any], new_root: Mapping[str, Any], emit: _Emit):
        self.old_root = old_root
        self.new_root = new_root
        self.emit = emit
        self.stack: set[tuple[str, str]] = set()

    # -- resolution ----------------------------------------------------------------------------

    @staticmethod
    def _deref(schema: Any, root: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Follow `$ref` (and single-member `allOf`) chains; merge sibling keywords."""
        if not isinstance(schema, Mapping):
            return ({} if schema is True else {"not": {}}), None
        ref_name: str | None = None
        current: dict[str, Any] = dict(schema)
        for _ in range(64):
            if "$ref" in current:
                ref = current.pop("$ref")
                ref_name = str(ref)
                target = _resolve_pointer(root, ref)
                current = {**target, **current}
                continue
            all_of = current.get("allOf")
            if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], Mapping):
                rest = {k: v for k, v in current.items() if k != "allOf"}
                current = {**all_of[0], **rest}
                continue
            break
        return current, ref_name

    def _variants(
        self, schema: Mapping[str, Any], root: Mapping[str, Any]
    ) -> tuple[list[_Member], bool]:
        """Split a schema into typed members (`anyOf`/`oneOf`/type lists) and a nullable flag.

        Each member keeps its own identity: the `$ref` it came from and, inside a discriminated
        union, its discriminator value (the union's title and description are not merged in).
        """
        out: list[_Member] = []
        nullable = False
        # (schema, discriminator property in scope, discriminator mapping in scope)
        pending: list[tuple[Any, str | None, Mapping[str, Any]]] = [(schema, None, {})]
        while pending:
            raw, prop, mapping = pending.pop(0)
            item, ref = self._deref(raw, root)
            if "x-decimal" in item:
                out.append(_Member("decimal", item, ref, None))
                continue
            members = item.get("anyOf", item.get("oneOf"))
            if isinstance(members, list):
                shared = {
                    k: v
                    for k, v in item.items()
                    if k not in ("anyOf", "oneOf") and k not in _DOC_KEYS
                }
                disc = item.get("discriminator")
                if isinstance(disc, Mapping) and isinstance(disc.get("propertyName"), str):
                    prop, mapping = disc["propertyName"], disc.get("mapping") or {}
                pending[:0] = [
                    ({**shared, **m} if isinstance(m, Mapping) else m, prop, mapping)
                    for m in members
                ]
                continue
            tag = _tag(item, ref, prop, mapping, root)
            types = item.get("type")
            if isinstance(types, list):
                for t in types:
                    if t == "null":
                        nullable = True
                    else:
                        out.append(_Member(str(t), {**item, "type": t}, ref, tag))
                continue
            if types == "null" or ("const" in item and item["const"] is None and types is None):
                nullable = True
                continue
            if types is None:
                if "enum" in item or "const" in item:
                    values = item["enum"] if "enum" in item else [item["const"]]
                    if None in values:
                        nullable = True
                    kinds = {_json_type(v) for v in values if v is not None}
                    out.append(_Member(kinds.pop() if len(kinds) == 1 else "any", item, ref, tag))
                elif "properties" in item:
                    out.append(_Member("object", item, ref, tag))
                else:
                    out.append(_Member("any", item, ref, tag))
                continue
            out.append(_Member(str(types), item, ref, tag))
        return out, nullable

    # -- comparison ----------------------------------------------------------------------------

    def compare(self, old: Any, new: Any, path: str) -> None:
        old_s, old_ref = self._deref(old, self.old_root)
        new_s, new_ref = self._deref(new, self.new_root)
        pair = (old_ref or "", new_ref or "")
        if old_ref is not None and new_ref is not None:
            if pair in self.stack:
                return  # a recursive model: its definition is being compared further up
            self.stack.add(pair)
        try:
            old_vs, old_null = self._variants(old_s, self.old_root)
            new_vs, new_null = self._variants(new_s, self.new_root)
            if old_null and not new_null:
                self.emit("became-non-nullable", path, "null is no longer accepted")
            elif new_null and not old_null:
                self.emit("became-nullable", path, "the value may now be null")
            if "default" in old_s and "default" in new_s and old_s["default"] != new_s["default"]:
                self.emit(
                    "default-changed",
                    path,
                    f"default changed from {_fmt(old_s['default'])} to {_fmt(new_s['default'])}",
                )
            self._types(old_vs, new_vs, path)
        finally:
            self.stack.discard(pair)

    def _types(self, old_vs: list[_Member], new_vs: list[_Member], path: str) -> None:
        old_by = _group(old_vs)
        new_by = _group(new_vs)
        old_t, new_t = set(old_by), set(new_by)
        for t in sorted(old_t & new_t):
            pairs, lost, gained = _pair(old_by[t], new_by[t])
            for o, n in pairs:
                self._same_type(t, o.schema, n.schema, path)
            for m in lost:
                self.emit("union-member-removed", path, f"union member {m.label} removed")
            for m in gained:
                self.emit("union-member-added", path, f"union member {m.label} added")
        removed, added = old_t - new_t, new_t - old_t
        if not removed and not added:
            return
        if "decimal" in removed | added:
            gone = ", ".join(sorted(removed)) or "-"
            came = ", ".join(sorted(added)) or "-"
            self.emit("decimal-type-changed", path, f"type changed from {gone} to {came}")
            return
        if "any" in added:
            self.emit("type-widened", path, "the value is no longer restricted to a type")
            return
        if "any" in removed:
            self.emit(
                "type-narrowed", path, f"any value became {', '.join(sorted(added)) or 'nothing'}"
            )
            return
        if "integer" in removed and "number" in added:
            self.emit("type-widened", path, "type generalized from integer to number")
            self._same_type("number", old_by["integer"][0].schema, new_by["number"][0].schema, path)
            removed, added = removed - {"integer"}, added - {"number"}
        elif "number" in removed and "integer" in added:
            self.emit("type-narrowed", path, "type narrowed from number to integer")
            self._same_type("number", old_by["number"][0].schema, new_by["integer"][0].schema, path)
            removed, added = removed - {"number"}, added - {"integer"}
        if removed and added and not (old_t & new_t):
            self.emit(
                "type-changed",
                path,
                f"type changed from {' | '.join(sorted(removed))} to {' | '.join(sorted(added))}",
            )
            return
        if removed:
            self.emit("type-narrowed", path, f"no longer {' or '.join(sorted(removed))}")
        if added:
            self.emit("type-widened", path, f"may now be {' or '.join(sorted(added))}")

    def _same_type(self, t: str, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        if t == "decimal":
            self._decimal(old["x-decimal"], new["x-decimal"], path)
            old = {k: v for k, v in old.items() if k not in ("anyOf", "pattern", "x-decimal")}
            new = {k: v for k, v in new.items() if k not in ("anyOf", "pattern", "x-decimal")}
        self._enum(old, new, path)
        self._format(old, new, path)
        self._constraints(old, new, path)
        if t == "object" or "properties" in old or "properties" in new:
            self._object(old, new, path)
        if t == "array" or "items" in old or "items" in new:
            self._array(old, new, path)
        self._unknown(old, new, path)

    def _decimal(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        if old.get("decimal_places") != new.get("decimal_places"):
            self.emit(
                "decimal-scale-changed",
                path,
                f"decimal places changed from {old.get('decimal_places')} to "
                f"{new.get('decimal_places')} (amounts change meaning)",
            )
        self._bounds(
            {**old, "x-max-digits": old.get("max_digits")},
            {**new, "x-max-digits": new.get("max_digits")},
            path,
            upper=(*_UPPER, "x-max-digits"),
        )
        for key in ("multipleOf",):
            self._incomparable(old.get(key), new.get(key), key, path)

    def _enum(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        old_e = _enum_values(old)
        new_e = _enum_values(new)
        if old_e is None and new_e is None:
            return
        if old_e is None:
            self.emit(
                "enum-introduced", path, f"restricted to {', '.join(_fmt(v) for v in new_e or [])}"
            )
            return
        if new_e is None:
            self.emit("enum-dropped", path, "no longer restricted to an enum")
            return
        old_keys = {_fmt(v): v for v in old_e}
        new_keys = {_fmt(v): v for v in new_e}
        for key in sorted(old_keys.keys() - new_keys.keys()):
            self.emit("enum-value-removed", path, f"enum value {key} removed")
        for key in sorted(new_keys.keys() - old_keys.keys()):
            self.emit("enum-value-added", path, f"enum value {key} added")

    def _format(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        of, nf = old.get("format"), new.get("format")
        if of == nf:
            return
        if of is None:
            self.emit("format-added", path, f"format {nf!r} added")
        elif nf is None:
            self.emit("format-removed", path, f"format {of!r} removed")
        else:
            self.emit("format-changed", path, f"format changed from {of!r} to {nf!r}")

    def _constraints(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        self._bounds(old, new, path, upper=_UPPER)
        self._incomparable(old.get("pattern"), new.get("pattern"), "pattern", path)
        om, nm = old.get("multipleOf"), new.get("multipleOf")
        if om != nm:
            if om is None:
                self.emit("constraint-tightened", path, f"multipleOf {nm} added")
            elif nm is None:
                self.emit("constraint-loosened", path, f"multipleOf {om} removed")
            elif _is_multiple(nm, om):
                self.emit("constraint-tightened", path, f"multipleOf changed from {om} to {nm}")
            elif _is_multiple(om, nm):
                self.emit("constraint-loosened", path, f"multipleOf changed from {om} to {nm}")
            else:
                self.emit("constraint-changed", path, f"multipleOf changed from {om} to {nm}")
        ou, nu = bool(old.get("uniqueItems")), bool(new.get("uniqueItems"))
        if nu and not ou:
            self.emit("constraint-tightened", path, "items must now be unique")
        elif ou and not nu:
            self.emit("constraint-loosened", path, "items no longer need to be unique")

    def _bounds(
        self,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        path: str,
        *,
        upper: Sequence[str],
    ) -> None:
        for key in (*upper, *_LOWER):
            o, n = old.get(key), new.get(key)
            if o == n or not (_is_number(o) or o is None) or not (_is_number(n) or n is None):
                continue
            name = "max_digits" if key == "x-max-digits" else key
            is_upper = key in upper
            if o is None:
                self.emit("constraint-tightened", path, f"{name} {n} added")
            elif n is None:
                self.emit("constraint-loosened", path, f"{name} {o} removed")
            elif (n < o) == is_upper:
                self.emit("constraint-tightened", path, f"{name} changed from {o} to {n}")
            else:
                self.emit("constraint-loosened", path, f"{name} changed from {o} to {n}")

    def _incomparable(self, o: Any, n: Any, name: str, path: str) -> None:
        if o == n:
            return
        if o is None:
            self.emit("constraint-tightened", path, f"{name} {_fmt(n)} added")
        elif n is None:
            self.emit("constraint-loosened", path, f"{name} {_fmt(o)} removed")
        else:
            self.emit("constraint-changed", path, f"{name} changed from {_fmt(o)} to {_fmt(n)}")

    def _object(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        op: Mapping[str, Any] = old.get("properties") or {}
        np_: Mapping[str, Any] = new.get("properties") or {}
        oreq = set(old.get("required") or ())
        nreq = set(new.get("required") or ())
        prefix = f"{path}." if path else ""
        for name in sorted(op.keys() - np_.keys()):
            self.emit("property-removed", prefix + name, f"field {name!r} removed")
        for name in sorted(np_.keys() - op.keys()):
            if name in nreq:
                self.emit(
                    "required-property-added", prefix + name, f"required field {name!r} added"
                )
            else:
                default = np_[name].get("default") if isinstance(np_[name], Mapping) else None
                self.emit(
                    "optional-property-added",
                    prefix + name,
                    f"optional field {name!r} added (default {_fmt(default)})",
                )
        for name in sorted(op.keys() & np_.keys()):
            if name in nreq and name not in oreq:
                self.emit(
                    "property-became-required", prefix + name, f"field {name!r} is now required"
                )
            elif name in oreq and name not in nreq:
                self.emit(
                    "property-became-optional", prefix + name, f"field {name!r} is now optional"
                )
            self.compare(op[name], np_[name], prefix + name)
        oa, na = old.get("additionalProperties", True), new.get("additionalProperties", True)
        if oa is not False and na is False:
            self.emit("constraint-tightened", path, "extra fields are now forbidden")
        elif oa is False and na is not False:
            self.emit("constraint-loosened", path, "extra fields are now allowed")
        elif isinstance(oa, Mapping) or isinstance(na, Mapping):
            self.compare(oa, na, f"{path}{{}}")

    def _array(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        oi, ni = old.get("items", True), new.get("items", True)
        if oi is not True or ni is not True:
            self.compare(oi, ni, f"{path}[]")
        op, np_ = old.get("prefixItems") or [], new.get("prefixItems") or []
        for i in range(max(len(op), len(np_))):
            if i >= len(op):
                self.emit("type-changed", f"{path}[{i}]", f"tuple item {i} added")
            elif i >= len(np_):
                self.emit("type-changed", f"{path}[{i}]", f"tuple item {i} removed")
            else:
                self.compare(op[i], np_[i], f"{path}[{i}]")

    def _unknown(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        for key in sorted((old.keys() | new.keys()) - _HANDLED - _DOC_KEYS):
            if old.get(key) != new.get(key):
                self.emit("schema-changed", path, f"keyword {key!r} changed; review it by hand")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "any"


def _enum_values(schema: Mapping[str, Any]) -> list[Any] | None:
    if "enum" in schema and isinstance(schema["enum"], list):
        return [v for v in schema["enum"] if v is not None]
    if "const" in schema:
        return [schema["const"]]
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_multiple(a: Any, b: Any) -> bool:
    """Whether `a` is a multiple of `b` (so multiples of `a` are multiples of `b`)."""
    if not (_is_number(a) and _is_number(b)) or b == 0:
        return False
    ratio = a / b
    return bool(abs(ratio - round(ratio)) < 1e-9)


@define(frozen=True)
class _Member:
    """One typed member of a (possibly union) schema and the identity it is paired by."""

    type: str
    schema: dict[str, Any]
    ref: str | None
    tag: str | None  # the discriminator value, inside a discriminated union

    @property
    def fingerprint(self) -> str:
        """Canonical JSON of the member without documentation keywords (structural match)."""
        return _fmt(_canonical(_strip_docs(self.schema)))

    @property
    def label(self) -> str:
        name = self.ref.rsplit("/", 1)[-1] if self.ref else self.schema.get("title")
        parts = [str(name) if name else self.type]
        if self.tag is not None:
            parts.append(f"({self.tag})")
        return " ".join(parts)


def _tag(
    item: Mapping[str, Any],
    ref: str | None,
    prop: str | None,
    mapping: Mapping[str, Any],
    root: Mapping[str, Any],
) -> str | None:
    """`prop=value` of a discriminated-union member (from the mapping, else the member's const)."""
    if prop is None:
        return None
    for value, target in mapping.items():
        if ref is not None and target == ref:
            return f"{prop}={_fmt(value)}"
    field = (item.get("properties") or {}).get(prop)
    if isinstance(field, Mapping):
        schema, _ = _SchemaComparer._deref(field, root)
        values = _enum_values(schema)
        if values is not None and len(values) == 1:
            return f"{prop}={_fmt(values[0])}"
    return None


def _strip_docs(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_docs(v) for k, v in value.items() if k not in _DOC_KEYS}
    if isinstance(value, list):
        return [_strip_docs(v) for v in value]
    return value


def _canonical(value: Any) -> Any:
    """`value` with the lists whose order carries no meaning sorted (required, enum, unions)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            v = _canonical(v)
            if k in _UNORDERED and isinstance(v, list):
                v = sorted(v, key=_fmt)
            out[k] = v
        return out
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _group(variants: list[_Member]) -> dict[str, list[_Member]]:
    out: dict[str, list[_Member]] = {}
    for member in variants:
        out.setdefault(member.type, []).append(member)
    return out


def _pair(
    old: list[_Member], new: list[_Member]
) -> tuple[list[tuple[_Member, _Member]], list[_Member], list[_Member]]:
    """Pair same-typed union members by identity; return (pairs, removed, added).

    Members pair by discriminator value, then by `$ref` target, then by structural fingerprint
    (canonical JSON), and only members with no identity at all by position. Two members with
    different discriminator values never pair. A lone member on each side always pairs (a model
    renamed in place is still the same field) unless their discriminator values differ.
    """
    if len(old) == 1 and len(new) == 1 and not _distinct(old[0], new[0]):
        return [(old[0], new[0])], [], []
    pairs: list[tuple[_Member, _Member]] = []
    rest_old, rest_new = list(old), list(new)
    keys: tuple[Callable[[_Member], str | None], ...] = (
        lambda m: m.tag,
        lambda m: m.ref,
        lambda m: m.fingerprint,
        lambda m: "" if m.tag is None and m.ref is None else None,  # position, anonymous only
    )
    for key in keys:
        for o in list(rest_old):
            k = key(o)
            if k is None:
                continue
            match = next((n for n in rest_new if key(n) == k and not _distinct(o, n)), None)
            if match is not None:
                rest_old.remove(o)
                rest_new.remove(match)
                pairs.append((o, match))
    return pairs, rest_old, rest_new


def _distinct(a: _Member, b: _Member) -> bool:
    """Whether two members are known to be different (different discriminator values)."""
    return a.tag is not None and b.tag is not None and a.tag != b.tag


def _resolve_pointer(root: Mapping[str, Any], ref: Any) -> dict[str, Any]:
    if not isinstance(ref, str) or not ref.startswith("#"):
        return {"x-unresolved-ref": ref}
    node: Any = root
    for part in ref.lstrip("#").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return {"x-unresolved-ref": ref}
    return dict(node) if isinstance(node, Mapping) else {"x-unresolved-ref": ref}


# --------------------------------------------------------------------------------------------
# Spec-level comparison
# --------------------------------------------------------------------------------------------

_AUTH_RANK: Final = {"public": 0, "authenticated": 1, "permissions": 2}
_DOC_FIELDS: Final = frozenset({"description", "owners", "tags"})


class _Differ:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def add(self, rule: str, kind: str, spec: str, path: str, message: str) -> None:
        self.changes.append(Change(rule, RULES[rule].severity, kind, spec, path, message))

    # -- top level -----------------------------------------------------------------------------

    def run(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        old_specs: Mapping[str, list[dict[str, Any]]] = old["specs"]
        new_specs: Mapping[str, list[dict[str, Any]]] = new["specs"]
        for kind in sorted(old_specs.keys() | new_specs.keys()):
            o_index = {(s["name"], s["version"]): s for s in old_specs.get(kind, [])}
            n_index = {(s["name"], s["version"]): s for s in new_specs.get(kind, [])}
            for key in sorted(o_index.keys() - n_index.keys()):
                self._removed(kind, o_index[key], n_index, o_index)
            for key in sorted(n_index.keys() - o_index.keys()):
                self._added(kind, n_index[key], o_index)
            for key in sorted(o_index.keys() & n_index.keys()):
                o, n = o_index[key], n_index[key]
                if _canonical(o) != _canonical(n):
                    self._changed(kind, o, n)
            self._replaced(kind, o_index, n_index)

    def _replaced(
        self,
        kind: str,
        o_index: Mapping[tuple[str, int], Mapping[str, Any]],
        n_index: Mapping[tuple[str, int], Mapping[str, Any]],
    ) -> None:
        """Compare a removed version with the one that replaces it (no version kept across).

        Callers of `X@1` must move to `X@2` when `@1` disappears in the same step: what changed
        for them is reported on `X@2`, each message starting with "via new version".
        """
        old_versions: dict[str, set[int]] = {}
        new_versions: dict[str, set[int]] = {}
        for name, version in o_index:
            old_versions.setdefault(name, set()).add(version)
        for name, version in n_index:
            new_versions.setdefault(name, set()).add(version)
        for name in sorted(old_versions.keys() & new_versions.keys()):
            before, after = old_versions[name], new_versions[name]
            if before & after:
                continue  # a version callers can stay on remains
            gone, came = max(before), max(after)
            old, new = o_index[(name, gone)], n_index[(name, came)]
            sub = _Differ()
            sub._changed(kind, old, new, via=True)
            for c in sub.changes:
                if c.path == "stability" and old.get("stability") == "deprecated":
                    continue  # the removed version was on its way out; not news to callers
                self.changes.append(
                    evolve(c, message=f"via new version (from {name}@{gone}): {c.message}")
                )

    def _removed(
        self,
        kind: str,
        spec: Mapping[str, Any],
        remaining: Mapping[tuple[str, int], Any],
        previous: Mapping[tuple[str, int], Any],
    ) -> None:
        name = spec["name"]
        ref = f"{name}@{spec['version']}"
        newer = sorted(v for (n, v) in remaining if n == name)
        before = {v for (n, v) in previous if n == name}
        hint = f"; @{', @'.join(map(str, newer))} remain" if newer else ""
        if newer and not before & set(newer) and spec["version"] == max(before):
            hint = (
                f"; replaced by @{newer[-1]} in the same step (what changes for its callers is "
                f"listed on {name}@{newer[-1]}, 'via new version')"
            )
        if kind == "operation":
            if spec.get("stability") == "deprecated":
                self.add(
                    "operation-removed-after-deprecation", kind, ref, "",
                    f"deprecated operation removed{hint}",
                )  # fmt: skip
            else:
                self.add(
                    "operation-removed-without-deprecation", kind, ref, "",
                    f"operation removed without a deprecation period{hint}; mark it "
                    "stability='deprecated' in one release and remove it in a later one",
                )  # fmt: skip
        elif kind in ("event", "entity"):
            self.add(f"{kind}-removed", kind, ref, "", f"{kind} removed{hint}")
        else:
            self.add("spec-removed", kind, ref, "", f"{kind} removed{hint}")

    def _added(
        self, kind: str, spec: Mapping[str, Any], previous: Mapping[tuple[str, int], Any]
    ) -> None:
        ref = f"{spec['name']}@{spec['version']}"
        older = sorted(v for (n, v) in previous if n == spec["name"])
        note = f"new version (previous: @{', @'.join(map(str, older))})" if older else "added"
        rule = f"{kind}-added" if kind in ("operation", "event", "entity") else "spec-added"
        self.add(rule, kind, ref, "", f"{kind} {note}")

    def _changed(
        self, kind: str, old: Mapping[str, Any], new: Mapping[str, Any], *, via: bool = False
    ) -> None:
        ref = f"{new['name']}@{new['version']}"
        start = len(self.changes)
        if kind == "operation":
            self._operation(ref, old, new)
        elif kind == "event":
            self._event(ref, old, new)
        elif kind == "entity":
            self._entity(ref, old, new)
        elif kind == "workflow":
            self._workflow(ref, old, new)
        elif kind == "attachment_slot":
            self._attachment_slot(ref, old, new)
        elif kind == "plan":
            self._plan(ref, old, new)
        else:
            self._generic(kind, ref, old, new)
        gone = frozenset(f"input.{t}" for t in _transitions(old).keys() - _transitions(new).keys())
        self._schemas(kind, ref, old.get("schemas") or {}, new.get("schemas") or {}, gone=gone)
        docs = sorted(k for k in _DOC_FIELDS if old.get(k) != new.get(k))
        if docs:
            self.add("metadata-changed", kind, ref, "", f"{', '.join(docs)} changed")
        mine = self.changes[start:]
        if via:
            return  # a new version: no same-version rules, no filler
        if not mine:
            self.add("metadata-changed", kind, ref, "", "schema documentation changed")
        breaking = sum(1 for c in mine if c.severity is Severity.BREAKING)
        if breaking:
            self.add(
                "breaking-change-without-version-bump", kind, ref, "",
                f"{breaking} breaking change(s) at the same version; keep {ref} (deprecated) and "
                f"register the new shape as {new['name']}@{new['version'] + 1}",
            )  # fmt: skip

    def _schemas(
        self,
        kind: str,
        ref: str,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        *,
        gone: frozenset[str] = frozenset(),
    ) -> None:
        for role in sorted(old.keys() | new.keys()):
            if role in gone:
                continue  # its transition was removed: reported once, as such
            known = kind in ("operation", "event", "entity") and role in _ROLE_DIRECTIONS
            prefix = _ROLE_DIRECTIONS[role if known else "*"][0]
            if kind == "workflow" and role.startswith("input."):
                # A transition's input (callers send it); a transition gaining or losing its
                # input is compared with an empty object, field by field.
                prefix = "input"
                old_s, new_s = old.get(role, _EMPTY_OBJECT), new.get(role, _EMPTY_OBJECT)
                if _canonical(old_s) != _canonical(new_s):

                    def emit_input(suffix: str, path: str, message: str) -> None:
                        self.add(f"input-{suffix}", kind, ref, path, message)

                    _SchemaComparer(old_s, new_s, emit_input).compare(old_s, new_s, role)
                continue
            if role not in new:
                self.add(f"{prefix}-property-removed", kind, ref, role, f"{role} schema removed")
                continue
            if role not in old:
                self.add(f"{prefix}-type-changed", kind, ref, role, f"{role} schema added")
                continue
            if _canonical(old[role]) == _canonical(new[role]):
                continue

            def emit(suffix: str, path: str, message: str, _p: str = prefix) -> None:
                self.add(f"{_p}-{suffix}", kind, ref, path, message)

            _SchemaComparer(old[role], new[role], emit).compare(old[role], new[role], role)

    # -- kinds ---------------------------------------------------------------------------------

    def _operation(self, ref: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        kind = "operation"
        if old.get("operation_kind") != new.get("operation_kind"):
            self.add(
                "operation-kind-changed", kind, ref, "operation_kind",
                f"{old.get('operation_kind')} became {new.get('operation_kind')} (the HTTP method "
                "and transaction semantics change)",
            )  # fmt: skip
        os_, ns = old.get("stability"), new.get("stability")
        if os_ != ns:
            if ns == "deprecated":
                self.add("operation-deprecated", kind, ref, "stability", "operation deprecated")
            else:
                self.add(
                    "operation-stability-changed", kind, ref, "stability",
                    f"stability changed from {os_} to {ns}",
                )  # fmt: skip
        self._auth(ref, old.get("auth") or {}, new.get("auth") or {})
        self._pii(kind, ref, old, new)
        if old.get("idempotent") and not new.get("idempotent"):
            self.add(
                "idempotency-removed", kind, ref, "idempotent",
                "no longer idempotent: calls with an Idempotency-Key are now rejected",
            )  # fmt: skip
        elif new.get("idempotent") and not old.get("idempotent"):
            self.add("idempotency-added", kind, ref, "idempotent", "now honours idempotency keys")
        oe, ne = set(old.get("emits") or ()), set(new.get("emits") or ())
        for ev in sorted(oe - ne):
            self.add("event-no-longer-emitted", kind, ref, "emits", f"no longer emits {ev}")
        for ev in sorted(ne - oe):
            self.add("event-newly-emitted", kind, ref, "emits", f"now emits {ev}")
        oc, nc = set(old.get("errors") or ()), set(new.get("errors") or ())
        for code in sorted(nc - oc):
            self.add("error-code-added", kind, ref, "errors", f"may now return error {code!r}")
        for code in sorted(oc - nc):
            self.add(
                "error-code-removed", kind, ref, "errors", f"no longer declares error {code!r}"
            )
        if old.get("audit") and not new.get("audit"):
            self.add("audit-disabled", kind, ref, "audit", "successful calls are no longer audited")
        elif new.get("audit") and not old.get("audit"):
            self.add("audit-enabled", kind, ref, "audit", "successful calls are now audited")

    def _auth(
        self,
        ref: str,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        *,
        kind: str = "operation",
        path: str = "auth",
    ) -> None:
        ok, nk = old.get("kind"), new.get("kind")
        orank, nrank = _AUTH_RANK.get(str(ok), 2), _AUTH_RANK.get(str(nk), 2)
        operm, nperm = set(old.get("permissions") or ()), set(new.get("permissions") or ())

        def describe(kind: Any, perms: set[str]) -> str:
            return f"requires({', '.join(sorted(perms))})" if kind == "permissions" else str(kind)

        before, after = describe(ok, operm), describe(nk, nperm)
        if nrank < orank or (nrank == orank == 2 and operm - nperm):
            self.add("auth-loosened", kind, ref, path, f"auth loosened from {before} to {after}")
        if nrank > orank or (nrank == orank == 2 and nperm - operm):
            self.add(
                "auth-tightened", kind, ref, path,
                f"auth tightened from {before} to {after}; existing callers may be denied",
            )  # fmt: skip
        if old.get("resource") != new.get("resource"):
            self.add(
                "auth-resource-changed", kind, ref, f"{path}.resource",
                f"permissions are now checked on {new.get('resource')!r} instead of "
                f"{old.get('resource')!r}",
            )  # fmt: skip

    def _pii(self, kind: str, ref: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        op, np_ = set(old.get("pii") or ()), set(new.get("pii") or ())
        for path in sorted(op - np_):
            if not _has_field(kind, new, path):
                self.add(
                    "pii-field-removed", kind, ref, path,
                    f"{path} was removed together with its personal-data mark: it is no longer "
                    "collected or returned (records written before keep it redacted); if it was "
                    "renamed, mark the new field as personal data",
                )  # fmt: skip
                continue
            self.add(
                "pii-removed", kind, ref, path,
                f"{path} is no longer marked as personal data: it will appear unredacted in audit "
                "records, recorded traffic and errors",
            )  # fmt: skip
        for path in sorted(np_ - op):
            self.add("pii-added", kind, ref, path, f"{path} is now marked as personal data")

    def _event(self, ref: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        kind = "event"
        self._pii(kind, ref, old, new)
        if old.get("key") != new.get("key"):
            self.add(
                "event-key-changed", kind, ref, "key",
                f"ordering key changed from {old.get('key')!r} to {new.get('key')!r}",
            )  # fmt: skip
        orr, nr = old.get("retention_seconds"), new.get("retention_seconds")
        if orr != nr:
            if nr is not None and (orr is None or nr < orr):
                self.add(
                    "event-retention-shortened", kind, ref, "retention_seconds",
                    f"retention changed from {orr if orr is not None else 'unlimited'} to {nr} s",
                )  # fmt: skip
            else:
                self.add(
                    "event-retention-extended", kind, ref, "retention_seconds",
                    f"retention changed from {orr} s to {nr if nr is not None else 'unlimited'}",
                )  # fmt: skip
        if old.get("severity") != new.get("severity"):
            self.add(
                "event-severity-changed", kind, ref, "severity",
                f"severity changed from {old.get('severity')} to {new.get('severity')}",
            )  # fmt: skip

    def _entity(self, ref: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        kind = "entity"
        self._pii(kind, ref, old, new)
        if old.get("primary_key") != new.get("primary_key"):
            self.add(
                "entity-primary-key-changed", kind, ref, "primary_key",
                f"primary key changed from {old.get('primary_key')!r} to {new.get('primary_key')!r}",
            )  # fmt: skip
        if old.get("tenant_scoped") != new.get("tenant_scoped"):
            scope = "tenant-scoped" if new.get("tenant_scoped") else "global (not tenant-scoped)"
            self.add("entity-tenancy-changed", kind, ref, "tenant_scoped", f"entity is now {scope}")
        if old.get("table_name") != new.get("table_name"):
            self.add(
                "entity-primary-key-changed", kind, ref, "table_name",
                f"table changed from {old.get('table_name')!r} to {new.get('table_name')!r}",
            )  # fmt: skip

        def index_set(spec: Mapping[str, Any]) -> dict[str, bool]:
            return {
                ",".join(i.get("fields") or ()): bool(i.get("unique"))
                for i in spec.get("indexes") or ()
            }

        oi, ni = index_set(old), index_set(new)
        for fields in sorted(oi.keys() | ni.keys()):
            was, now = oi.get(fields), ni.get(fields)
            if was == now:
                continue
            if now and not was:
                self.add(
                    "entity-unique-index-added", kind, ref, "indexes",
                    f"unique index on ({fields}) added: existing rows may violate it",
                )  # fmt: skip
            else:
                state = "removed" if now is None else "added" if was is None else "made non-unique"
                self.add(
                    "entity-index-changed", kind, ref, "indexes", f"index on ({fields}) {state}"
                )

    def _workflow(self, ref: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        kind = "workflow"
        old_states, new_states = set(old.get("states") or ()), set(new.get("states") or ())
        migrations = (new.get("migrations") or {}).get(str(old.get("version"))) or {}
        for state in sorted(old_states - new_states):
            if migrations.get(state) in new_states:
                self.add(
                    "workflow-state-migrated", kind, ref, f"states.{state}",
                    f"state {state!r} removed; {new['name']}.migrate moves instances in it to "
                    f"{migrations[state]!r}",
                )  # fmt: skip
                continue
            self.add(
                "workflow-state-removed", kind, ref, f"states.{state}",
                f"state {state!r} removed: instances in it are stranded; keep it, or register "
                f"{new['name']}@{new['version'] + 1} with migrations={{{old['version']}: "
                f"{{{state!r}: '<new state>'}}}}",
            )  # fmt: skip
        for state in sorted(new_states - old_states):
            self.add("workflow-state-added", kind, ref, f"states.{state}", f"state {state!r} added")
        ot, nt = _transitions(old), _transitions(new)
        for name in sorted(ot.keys() - nt.keys()):
            self.add(
                "workflow-transition-removed", kind, ref, f"transitions.{name}",
                f"transition {name!r} removed: callers firing it fail",
            )  # fmt: skip
        for name in sorted(nt.keys() - ot.keys()):
            self.add(
                "workflow-transition-added", kind, ref, f"transitions.{name}",
                f"transition {name!r} added",
            )  # fmt: skip
        for name in sorted(ot.keys() & nt.keys()):
            o, n, path = ot[name], nt[name], f"transitions.{name}"
            self._auth(
                ref, o.get("auth") or {}, n.get("auth") or {}, kind=kind, path=f"{path}.auth"
            )
            osrc, nsrc = set(o.get("sources") or ()), set(n.get("sources") or ())
            for state in sorted(osrc - nsrc):
                self.add(
                    "workflow-transition-source-removed", kind, ref, f"{path}.sources",
                    f"{name!r} can no longer be fired from {state!r}",
                )  # fmt: skip
            for state in sorted(nsrc - osrc):
                self.add(
                    "workflow-transition-source-added", kind, ref, f"{path}.sources",
                    f"{name!r} can now be fired from {state!r}",
                )  # fmt: skip
            for key in ("target", "guard", "approvals"):
                if o.get(key) != n.get(key):
                    self.add(
                        "workflow-transition-changed", kind, ref, f"{path}.{key}",
                        f"{key} changed from {_fmt(o.get(key))} to {_fmt(n.get(key))}",
                    )  # fmt: skip
            oe, ne = set(o.get("emits") or ()), set(n.get("emits") or ())
            for ev in sorted(oe - ne):
                self.add(
                    "event-no-longer-emitted", kind, ref, f"{path}.emits", f"no longer emits {ev}"
                )
            for ev in sorted(ne - oe):
                self.add("event-newly-emitted", kind, ref, f"{path}.emits", f"now emits {ev}")
        otm = {t["name"]: t for t in old.get("timers") or ()}
        ntm = {t["name"]: t for t in new.get("timers") or ()}
        for name in sorted(otm.keys() - ntm.keys()):
            self.add(
                "workflow-timer-removed", kind, ref, f"timers.{name}",
                f"timer {name!r} removed: pending timers of running instances no longer fire",
            )  # fmt: skip
        for name in sorted(ntm.keys() - otm.keys()):
            self.add("workflow-timer-added", kind, ref, f"timers.{name}", f"timer {name!r} added")
        for name in sorted(otm.keys() & ntm.keys()):
            o, n = otm[name], ntm[name]
            changed = sorted(k for k in o.keys() | n.keys() if o.get(k) != n.get(k))
            if changed:
                self.add(
                    "workflow-timer-changed", kind, ref, f"timers.{name}",
                    ", ".join(f"{k} changed from {_fmt(o.get(k))} to {_fmt(n.get(k))}"
                              for k in changed),
                )  # fmt: skip
        for key in ("entity", "state_field"):
            if old.get(key) != new.get(key):
                self.add(
                    "workflow-storage-changed", kind, ref, key,
                    f"{key} changed from {_fmt(old.get(key))} to {_fmt(new.get(key))}: the "
                    "state of existing instances is not moved; register a new workflow name",
                )  # fmt: skip
        old_history = old.get("history") or "steps"
        new_history = new.get("history") or "steps"
        if old_history != new_history:
            self.add(
                "workflow-history-changed", kind, ref, "history",
                f"history changed from {old_history!r} to {new_history!r}: earlier steps stay "
                "where they were written, later ones are read from the new place",
            )  # fmt: skip
        kept = old_states & new_states  # removed/added states are reported above
        of, nf = set(old.get("final") or ()) & kept, set(new.get("final") or ()) & kept
        if of != nf:
            self.add(
                "spec-changed", kind, ref, "final",
                f"final states changed from {_fmt(sorted(of))} to {_fmt(sorted(nf))}",
            )  # fmt: skip
        for key in ("start_auth", "read_auth", "admin_auth"):
            if key in old or key in new:
                self._auth(ref, old.get(key) or {}, new.get(key) or {}, kind=kind, path=key)
        self._generic(
            kind, ref, old, new,
            handled=frozenset({"states", "final", "transitions", "timers", "start_auth",
                               "read_auth", "admin_auth", "entity", "state_field", "history"}),
        )  # fmt: skip

    def _generic(
        self,
        kind: str,
        ref: str,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        *,
        handled: frozenset[str] = frozenset(),
    ) -> None:
        self._pii(kind, ref, old, new)
        skip = {"kind", "name", "version", "schemas", "pii", *_DOC_FIELDS, *handled}
        for key in sorted((old.keys() | new.keys()) - skip):
            if old.get(key) != new.get(key):
                self.add(
                    "spec-changed", kind, ref, key,
                    f"{key} changed from {_fmt(old.get(key))} to {_fmt(new.get(key))}",
                )  # fmt: skip

    def _attachment_slot(self, ref: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        """`contractspec-files` slots: what an upload may be, who may act, how long files stay."""
        kind = "attachment_slot"
        otypes, ntypes = list(old.get("media_types") or ()), list(new.get("media_types") or ())
        for media_type in sorted(t for t in otypes if not _media_covered(t, ntypes)):
            self.add(
                "attachment-slot-narrowed", kind, ref, "media_types",
                f"{media_type} is no longer accepted",
            )  # fmt: skip
        for media_type in sorted(t for t in ntypes if not _media_covered(t, otypes)):
            self.add(
                "attachment-slot-widened", kind, ref, "media_types", f"{media_type} is now accepted"
            )
        oarch, narch = old.get("archive_limits") or {}, new.get("archive_limits") or {}
        limits = [("max_size", old.get("max_size"), new.get("max_size"))]
        limits.append(("max_count", old.get("max_count"), new.get("max_count")))
        if oarch and narch:
            limits += [(f"archive_limits.{k}", oarch.get(k), narch.get(k)) for k in sorted(oarch)]
        for path, before, after in limits:
            if before == after:
                continue
            lowered = after is not None and (before is None or after < before)
            self.add(
                "attachment-slot-narrowed" if lowered else "attachment-slot-widened", kind, ref,
                path, f"{path} changed from {_fmt_limit(before)} to {_fmt_limit(after)}",
            )  # fmt: skip
        operms, nperms = old.get("permissions") or {}, new.get("permissions") or {}
        for action in sorted(operms.keys() | nperms.keys()):
            before, after = operms.get(action), nperms.get(action)
            if before == after:
                continue
            widened = after is None
            self.add(
                "attachment-permission-widened" if widened else "attachment-permission-narrowed",
                kind, ref, f"permissions.{action}",
                f"{action} permission changed from {before or 'any tenant member'} to "
                f"{after or 'any tenant member'}",
            )  # fmt: skip
        oret, nret = old.get("retention"), new.get("retention")
        if oret != nret:
            shorter = _keep_days(nret) < _keep_days(oret) or (
                oret is not None and nret is not None
                and oret.get("action") == "archive" and nret.get("action") == "delete"
            )  # fmt: skip
            self.add(
                "attachment-retention-shortened" if shorter else "attachment-retention-extended",
                kind, ref, "retention",
                f"retention changed from {_fmt_retention(oret)} to {_fmt_retention(nret)}",
            )  # fmt: skip
        handled = frozenset(
            {"entity", "slot", "media_types", "max_size", "max_count", "archive_limits"}
            | {"permissions", "retention"}
        )
        self._generic(kind, ref, old, new, handled=handled)

    def _plan(self, ref: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        """`contractspec-metering` plans: the features and limits an org on the plan gets."""
        kind = "plan"
        ofeat, nfeat = set(old.get("features") or ()), set(new.get("features") or ())
        for feature in sorted(ofeat - nfeat):
            self.add("plan-feature-removed", kind, ref, "features", f"{feature} removed")
        for feature in sorted(nfeat - ofeat):
            self.add("plan-feature-added", kind, ref, "features", f"{feature} added")

        def by_key(spec: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
            return {
                f"{lim.get('meter')}/{lim.get('window')}": lim
                for lim in spec.get("limits") or ()
                if isinstance(lim, Mapping)
            }

        olim, nlim = by_key(old), by_key(new)
        for key in sorted(olim.keys() | nlim.keys()):
            path = f"limits.{key}"
            before, after = olim.get(key), nlim.get(key)
            if before is None or after is None:
                gone = after is None
                self.add(
                    "plan-limit-raised" if gone else "plan-limit-lowered", kind, ref, path,
                    f"limit {'removed' if gone else 'added'} ({key}: "
                    f"{(before or after or {}).get('limit')})",
                )  # fmt: skip
                continue
            ob, nb = Decimal(str(before.get("limit"))), Decimal(str(after.get("limit")))
            if ob != nb:
                self.add(
                    "plan-limit-lowered" if nb < ob else "plan-limit-raised", kind, ref, path,
                    f"limit changed from {ob} to {nb}",
                )  # fmt: skip
            oo, no = before.get("overage"), after.get("overage")
            if oo != no:
                self.add(
                    "plan-limit-lowered" if no == "deny" else "plan-limit-raised", kind, ref,
                    f"{path}.overage", f"overage changed from {oo} to {no}",
                )  # fmt: skip
            if before.get("kind") != after.get("kind"):
                self.add(
                    "spec-changed", kind, ref, f"{path}.kind",
                    f"limit kind changed from {before.get('kind')} to {after.get('kind')}",
                )  # fmt: skip
        self._generic(kind, ref, old, new, handled=frozenset({"features", "limits"}))


def _media_covered(media_type: str, patterns: list[str]) -> bool:
    """Whether `media_type` (a type or a `type/*` pattern) is accepted by one of `patterns`."""
    return any(fnmatch.fnmatchcase(media_type, p) for p in patterns)


def _fmt_limit(value: Any) -> str:
    return "no limit" if value is None else str(value)


def _keep_days(retention: Any) -> float:
    """Days a slot keeps files (`None`: forever)."""
    if not isinstance(retention, Mapping) or retention.get("days") is None:
        return math.inf
    return float(retention["days"])


def _fmt_retention(retention: Any) -> str:
    if not isinstance(retention, Mapping):
        return "keep forever"
    return f"{retention.get('action')} after {retention.get('days')} days"


_EMPTY_OBJECT: Final[Mapping[str, Any]] = {"type": "object", "properties": {}}


def _transitions(spec: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A workflow IR's transitions by name (empty for other kinds)."""
    return {t["name"]: t for t in spec.get("transitions") or () if isinstance(t, Mapping)}


def _has_field(kind: str, spec: Mapping[str, Any], path: str) -> bool:
    """Whether the dotted `path` (`input.email`, an entity's `email`) exists in `spec`'s schemas.

    Unknown layouts answer True (the conservative `pii-removed` is then reported).
    """
    schemas: Mapping[str, Any] = spec.get("schemas") or {}
    parts = path.split(".")
    if parts[0] in schemas:
        role, parts = parts[0], parts[1:]
    else:
        role = {"entity": "model", "event": "payload"}.get(kind, "")
        if role not in schemas:
            return True
    root = schemas[role]
    if not isinstance(root, Mapping):
        return True

    def has(node: Any, rest: list[str], depth: int = 0) -> bool:
        if depth > 64:
            return True
        schema, _ = _SchemaComparer._deref(node, root)
        if not rest:
            return True
        members = schema.get("anyOf", schema.get("oneOf"))
        if isinstance(members, list) and any(has(m, rest, depth + 1) for m in members):
            return True
        if isinstance(schema.get("items"), Mapping) and has(schema["items"], rest, depth + 1):
            return True
        props = schema.get("properties")
        if isinstance(props, Mapping) and rest[0] in props:
            return has(props[rest[0]], rest[1:], depth + 1)
        return False

    return has(root, parts)


_KIND_SORT: Final = {"entity": 0, "event": 1, "operation": 2, "workflow": 3}


def _sort_key(c: Change) -> tuple[Any, ...]:
    name, _, version = c.spec.rpartition("@")
    return (
        _KIND_SORT.get(c.kind, 3),
        c.kind,
        name,
        int(version) if version.isdigit() else 0,
        c.rule == "breaking-change-without-version-bump",
        c.path,
        c.rule,
        c.message,
    )


IRSource = Mapping[str, Any] | str | os.PathLike[str]


def diff_ir(old: IRSource, new: IRSource) -> SpecDiff:
    """Classify every difference between two IRs.

    Args:
        old: The previous IR: a mapping (`registry.to_ir()`), a lock file path, or JSON text.
        new: The new IR, in any of the same forms.

    Returns:
        A `SpecDiff` whose changes are sorted by kind, spec, path and rule. Two different IRs never
        give an empty diff (at least `metadata-changed`).

    Raises:
        IRFormatError: An input is not valid IR (the message names the field).
    """
    old_ir = load_ir(old)
    new_ir = load_ir(new)
    differ = _Differ()
    differ.run(old_ir, new_ir)
    return SpecDiff(tuple(sorted(differ.changes, key=_sort_key)))


def rules_table(rules: Iterable[Rule] | None = None) -> str:
    """The rule table as Markdown (used by the docs)."""
    rows = ["| Rule | Severity | Meaning |", "| --- | --- | --- |"]
    rows.extend(
        f"| `{rule.id}` | {rule.severity.value} | {rule.summary} |"
        for rule in (rules if rules is not None else RULES.values())
    )
    return "\n".join(rows) + "\n"


@define(frozen=True)
class LockStatus:
    """Result of comparing a committed lock with the code.

    Attributes:
        up_to_date: The lock is byte-identical to what `dumps_ir(to_ir(registry))` produces.
        diff: The classified changes from the lock (old) to the code (new).
        path: The lock file compared.
        exists: Whether the lock file existed (a missing lock is never up to date).
    """

    up_to_date: bool
    diff: SpecDiff
    path: Path
    exists: bool = True

    @property
    def status(self) -> Literal["up-to-date", "stale", "missing"]:
        """`up-to-date`, `stale` or `missing`."""
        if not self.exists:
            return "missing"
        return "up-to-date" if self.up_to_date else "stale"


def check_lock(
    source: SpecRegistry | Mapping[str, Any], path: str | os.PathLike[str] = LOCK_FILENAME
) -> LockStatus:
    """Compare the committed lock at `path` with the current spec.

    Returns:
        A `LockStatus`; its `diff` explains what changed (empty when only formatting differs).

    Raises:
        IRFormatError: The lock exists but is not valid IR.
    """
    current = as_ir(source)
    target = Path(path)
    if not target.exists():
        return LockStatus(False, SpecDiff(()), target, exists=False)
    text = target.read_text(encoding="utf-8")
    locked = load_ir(target)
    return LockStatus(text == dumps_ir(current), diff_ir(locked, current), target)
