"""The breaking-change rule table: one case per rule, in both directions, in every role."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

import attrs
import pydantic
import pytest
from core_regen_specs import Color, ColorPlus, Inner, InnerSmall, JobSpec, crm_like, registry_with
from pydantic import BaseModel, Field

from contractspec.core import (
    SpecRegistry,
    authenticated,
    define_command,
    define_entity,
    define_event,
    define_query,
    public,
    requires,
)
from contractspec.core.diff import RULES, Change, Severity, diff_ir


class Card(BaseModel):
    kind: Literal["card"] = "card"
    number: str


class Bank(BaseModel):
    kind: Literal["bank"] = "bank"
    iban: str


class Cash(BaseModel):
    kind: Literal["cash"] = "cash"
    amount: int


#: `Bank` with one more required field (same schema name, same discriminator value).
BankSwift = pydantic.create_model(
    "Bank", kind=(Literal["bank"], "bank"), iban=(str, ...), swift=(str, ...)
)
#: `Bank` renamed, same shape.
Account = pydantic.create_model("Account", kind=(Literal["bank"], "bank"), iban=(str, ...))


def tagged(*members: Any) -> Any:
    """A pydantic discriminated union on `kind` (its JSON Schema has `discriminator.mapping`)."""
    return Annotated[Union[members], Field(discriminator="kind")]  # noqa: UP007 - runtime tuple


# --------------------------------------------------------------------------------------------
# Schema rules: (id, old fields, new fields, forward findings, reverse findings, model config)
# Findings are (suffix, path below the role). The same case runs in every role; the rule id is
# `<role prefix>-<suffix>` and the severity comes from the rule table.
# --------------------------------------------------------------------------------------------

Finding = tuple[str, str]
SchemaCase = tuple[str, dict[str, Any], dict[str, Any], list[Finding], list[Finding]]

SCHEMA_CASES: list[SchemaCase] = [
    ("field-removed", {"x": (int, ...)}, {}, [("property-removed", "x")],
     [("required-property-added", "x")]),
    ("optional-field-added", {}, {"x": (int, 0)}, [("optional-property-added", "x")],
     [("property-removed", "x")]),
    ("became-required", {"x": (int, 0)}, {"x": (int, ...)}, [("property-became-required", "x")],
     [("property-became-optional", "x")]),
    ("became-nullable", {"x": (int, ...)}, {"x": (int | None, ...)}, [("became-nullable", "x")],
     [("became-non-nullable", "x")]),
    ("type-changed", {"x": (str, ...)}, {"x": (int, ...)}, [("type-changed", "x")],
     [("type-changed", "x")]),
    ("int-to-number", {"x": (int, ...)}, {"x": (float, ...)}, [("type-widened", "x")],
     [("type-narrowed", "x")]),
    ("union-widened", {"x": (int, ...)}, {"x": (int | str, ...)}, [("type-widened", "x")],
     [("type-narrowed", "x")]),
    ("any-narrowed", {"x": (Any, ...)}, {"x": (int, ...)}, [("type-narrowed", "x")],
     [("type-widened", "x")]),
    ("literal-value-removed", {"x": (Literal["a", "b"], ...)}, {"x": (Literal["a"], ...)},
     [("enum-value-removed", "x")], [("enum-value-added", "x")]),
    ("enum-value-added", {"x": (Color, ...)}, {"x": (ColorPlus, ...)},
     [("enum-value-added", "x")], [("enum-value-removed", "x")]),
    ("enum-introduced", {"x": (str, ...)}, {"x": (Literal["a", "b"], ...)},
     [("enum-introduced", "x")], [("enum-dropped", "x")]),
    ("max-length-decreased", {"x": (Annotated[str, Field(max_length=10)], ...)},
     {"x": (Annotated[str, Field(max_length=5)], ...)}, [("constraint-tightened", "x")],
     [("constraint-loosened", "x")]),
    ("minimum-increased", {"x": (Annotated[int, Field(ge=0)], ...)},
     {"x": (Annotated[int, Field(ge=1)], ...)}, [("constraint-tightened", "x")],
     [("constraint-loosened", "x")]),
    ("maximum-added", {"x": (int, ...)}, {"x": (Annotated[int, Field(le=9)], ...)},
     [("constraint-tightened", "x")], [("constraint-loosened", "x")]),
    ("pattern-added", {"x": (str, ...)}, {"x": (Annotated[str, Field(pattern="^a")], ...)},
     [("constraint-tightened", "x")], [("constraint-loosened", "x")]),
    ("pattern-changed", {"x": (Annotated[str, Field(pattern="^a")], ...)},
     {"x": (Annotated[str, Field(pattern="^b")], ...)}, [("constraint-changed", "x")],
     [("constraint-changed", "x")]),
    ("max-items-added", {"x": (list[int], ...)},
     {"x": (Annotated[list[int], Field(max_length=3)], ...)}, [("constraint-tightened", "x")],
     [("constraint-loosened", "x")]),
    ("multiple-of-changed", {"x": (Annotated[int, Field(multiple_of=2)], ...)},
     {"x": (Annotated[int, Field(multiple_of=3)], ...)}, [("constraint-changed", "x")],
     [("constraint-changed", "x")]),
    ("multiple-of-finer", {"x": (Annotated[int, Field(multiple_of=2)], ...)},
     {"x": (Annotated[int, Field(multiple_of=4)], ...)}, [("constraint-tightened", "x")],
     [("constraint-loosened", "x")]),
    ("format-added", {"x": (str, ...)}, {"x": (dt.datetime, ...)}, [("format-added", "x")],
     [("format-removed", "x")]),
    ("format-changed", {"x": (dt.date, ...)}, {"x": (dt.datetime, ...)},
     [("format-changed", "x")], [("format-changed", "x")]),
    ("decimal-scale", {"x": (Annotated[Decimal, Field(max_digits=12, decimal_places=2)], ...)},
     {"x": (Annotated[Decimal, Field(max_digits=12, decimal_places=4)], ...)},
     [("decimal-scale-changed", "x")], [("decimal-scale-changed", "x")]),
    ("decimal-precision", {"x": (Annotated[Decimal, Field(max_digits=12, decimal_places=2)], ...)},
     {"x": (Annotated[Decimal, Field(max_digits=10, decimal_places=2)], ...)},
     [("constraint-tightened", "x")], [("constraint-loosened", "x")]),
    ("decimal-minimum", {"x": (Annotated[Decimal, Field(decimal_places=2)], ...)},
     {"x": (Annotated[Decimal, Field(decimal_places=2, ge=0)], ...)},
     [("constraint-tightened", "x")], [("constraint-loosened", "x")]),
    ("float-to-decimal", {"x": (float, ...)}, {"x": (Decimal, ...)},
     [("decimal-type-changed", "x")], [("decimal-type-changed", "x")]),
    ("default-changed", {"x": (int, 1)}, {"x": (int, 2)}, [("default-changed", "x")],
     [("default-changed", "x")]),
    ("nested-field-removed", {"x": (Inner, ...)}, {"x": (InnerSmall, ...)},
     [("property-removed", "x.b")], [("required-property-added", "x.b")]),
    ("list-item-type", {"x": (list[int], ...)}, {"x": (list[str], ...)},
     [("type-changed", "x[]")], [("type-changed", "x[]")]),
    ("dict-value-type", {"x": (dict[str, int], ...)}, {"x": (dict[str, str], ...)},
     [("type-changed", "x{}")], [("type-changed", "x{}")]),
    ("unknown-keyword", {"x": (int, ...)},
     {"x": (Annotated[int, Field(json_schema_extra={"x-unit": "ms"})], ...)},
     [("schema-changed", "x")], [("schema-changed", "x")]),
    ("renamed", {"a": (int, ...)}, {"b": (int, ...)},
     [("property-removed", "a"), ("required-property-added", "b")],
     [("property-removed", "b"), ("required-property-added", "a")]),
    # Union members pair by discriminator value, $ref target, structure; position last.
    ("union-member-added", {"x": (tagged(Card, Bank), ...)}, {"x": (tagged(Card, Bank, Cash), ...)},
     [("union-member-added", "x")], [("union-member-removed", "x")]),
    ("untagged-union-member-added", {"x": (Card | Bank, ...)}, {"x": (Card | Bank | Cash, ...)},
     [("union-member-added", "x")], [("union-member-removed", "x")]),
    ("union-member-replaced", {"x": (tagged(Card, Bank), ...)}, {"x": (tagged(Card, Cash), ...)},
     [("union-member-removed", "x"), ("union-member-added", "x")],
     [("union-member-removed", "x"), ("union-member-added", "x")]),
    ("union-member-changed", {"x": (tagged(Card, Bank), ...)},
     {"x": (tagged(BankSwift, Card), ...)}, [("required-property-added", "x.swift")],
     [("property-removed", "x.swift")]),
    ("untagged-union-member-changed", {"x": (Card | Bank, ...)}, {"x": (BankSwift | Card, ...)},
     [("required-property-added", "x.swift")], [("property-removed", "x.swift")]),
]  # fmt: skip

#: Changes that carry no meaning: each must give an empty diff in both directions.
NO_CHANGE_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("union-reordered", {"x": (tagged(Card, Bank), ...)}, {"x": (tagged(Bank, Card), ...)}),
    ("untagged-union-reordered", {"x": (Card | Bank, ...)}, {"x": (Bank | Card, ...)}),
    ("structural-union-reordered", {"x": (list[int] | list[str], ...)},
     {"x": (list[str] | list[int], ...)}),
    ("required-reordered", {"a": (int, ...), "b": (int, ...)}, {"b": (int, ...), "a": (int, ...)}),
    ("enum-reordered", {"x": (Literal["a", "b"], ...)}, {"x": (Literal["b", "a"], ...)}),
]  # fmt: skip

#: Role → (rule-id prefix, path prefix of findings).
ROLES = {
    "input": ("input", "input"),
    "output": ("output", "output"),
    "payload": ("payload", "payload"),
    "model": ("entity", "model"),
    "job": ("schema", "payload"),
}


def schema_findings(old: SpecRegistry, new: SpecRegistry) -> set[tuple[str, Severity, str]]:
    """(rule, severity, path) of the schema-level changes between two registries."""
    spec_level = {"breaking-change-without-version-bump", "metadata-changed"}
    return {
        (c.rule, c.severity, c.path)
        for c in diff_ir(old.to_ir(), new.to_ir()).changes
        if c.rule not in spec_level
    }


def expected(role: str, findings: list[Finding]) -> set[tuple[str, Severity, str]]:
    prefix, path = ROLES[role]
    out = set()
    for suffix, sub in findings:
        rule = f"{prefix}-{suffix}"
        out.add((rule, RULES[rule].severity, f"{path}.{sub}"))
    return out


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize(
    ("case", "old", "new", "forward", "reverse"), SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES]
)
def test_schema_rule_both_directions(
    role: str,
    case: str,
    old: dict[str, Any],
    new: dict[str, Any],
    forward: list[Finding],
    reverse: list[Finding],
) -> None:
    """Each schema case yields exactly its rules, with the role's severity, old→new and new→old."""
    before, after = registry_with(role, old), registry_with(role, new)
    assert schema_findings(before, after) == expected(role, forward)
    assert schema_findings(after, before) == expected(role, reverse)


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize(
    ("case", "old", "new"), NO_CHANGE_CASES, ids=[c[0] for c in NO_CHANGE_CASES]
)
def test_reordering_is_no_change(role: str, case: str, old: Any, new: Any) -> None:
    """Reordered union members, `required` or `enum` lists give an empty diff, both ways."""
    before, after = registry_with(role, old).to_ir(), registry_with(role, new).to_ir()
    assert before != after  # the IRs really differ (in order only)
    assert diff_ir(before, after).changes == ()
    assert diff_ir(after, before).changes == ()


def test_renamed_union_member_pairs_by_structure() -> None:
    """An untagged member renamed with the same shape pairs structurally: no schema finding."""
    before = registry_with("input", {"x": (Card | Bank, ...)})
    after = registry_with("input", {"x": (Card | Account, ...)})
    assert schema_findings(before, after) == set()
    assert schema_findings(after, before) == set()


def test_union_member_messages_name_the_member() -> None:
    """A member added to an output union is breaking and names the model and its tag."""
    before = registry_with("output", {"x": (tagged(Card, Bank), ...)}).to_ir()
    after = registry_with("output", {"x": (tagged(Card, Bank, Cash), ...)}).to_ir()
    assert [(c.rule, c.severity, c.path, c.message) for c in diff_ir(before, after).changes] == [
        ("output-union-member-added", Severity.BREAKING, "output.x",
         'union member Cash (kind="cash") added'),
        ("breaking-change-without-version-bump", Severity.BREAKING, "",
         "1 breaking change(s) at the same version; keep t.thing.save@1 (deprecated) and "
         "register the new shape as t.thing.save@2"),
    ]  # fmt: skip


def test_extra_fields_forbidden_is_a_root_constraint() -> None:
    """`extra='forbid'` tightens the input root and loosens it back in reverse."""
    before = registry_with("input", {"x": (int, ...)})
    after = registry_with("input", {"x": (int, ...)}, extra="forbid")
    assert schema_findings(before, after) == {
        ("input-constraint-tightened", Severity.BREAKING, "input")
    }
    assert schema_findings(after, before) == {("input-constraint-loosened", Severity.INFO, "input")}


@pytest.mark.parametrize(
    ("role", "rule", "severity"),
    [
        ("input", "input-property-removed", Severity.BREAKING),
        ("output", "output-type-widened", Severity.BREAKING),
        ("payload", "payload-became-nullable", Severity.BREAKING),
        ("model", "entity-enum-value-added", Severity.WARNING),
        ("input", "input-union-member-added", Severity.INFO),
        ("input", "input-union-member-removed", Severity.BREAKING),
        ("output", "output-union-member-added", Severity.BREAKING),
        ("payload", "payload-union-member-added", Severity.BREAKING),
        ("output", "output-union-member-removed", Severity.INFO),
    ],
)
def test_direction_decides_the_severity(role: str, rule: str, severity: Severity) -> None:
    """The rule table gives direction-aware severities (spot checks of the derived table)."""
    assert RULES[rule].severity is severity


# --------------------------------------------------------------------------------------------
# Spec-level rules: (id, old registry, new registry, forward rules, reverse rules)
# --------------------------------------------------------------------------------------------


def _job(**changes: Any) -> SpecRegistry:
    from core_regen_specs import model

    return SpecRegistry(JobSpec("t.sync", 1, model("SyncIn", {}), **changes))


def _cmd_query(kind: str) -> SpecRegistry:
    from core_regen_specs import model

    define = define_command if kind == "command" else define_query
    return SpecRegistry(define("t.thing.get", input=model("In", {}), output=model("Out", {})))


def _entity_pk(pk: str) -> SpecRegistry:
    from core_regen_specs import model

    return SpecRegistry(define_entity("t.thing", model("T", {"code": (str, ...)}), primary_key=pk))


def _with_email(*, email: bool, version: int = 1, entity: bool = False) -> SpecRegistry:
    """A command (or entity) whose model has a personal-data `email` field, or not."""
    from core_regen_specs import model

    fields: dict[str, Any] = {"email": (str, ...)} if email else {}
    if entity:
        return SpecRegistry(
            define_entity("t.person", model("Person", fields), pii=["email"] if email else ())
        )
    return SpecRegistry(
        define_command(
            "t.person.save", version=version, input=model("In", fields), output=model("O", {}),
            pii=["input.email"] if email else (),
        )
    )  # fmt: skip


def _save(version: int, fields: dict[str, Any]) -> SpecRegistry:
    from core_regen_specs import model

    return SpecRegistry(
        define_command("t.thing.save", version=version, input=model("In", fields),
                       output=model("O", {}))
    )  # fmt: skip


def _saved(version: int, fields: dict[str, Any]) -> SpecRegistry:
    from core_regen_specs import model

    return SpecRegistry(define_event("t.thing.saved", version=version, payload=model("P", fields)))


BUMP = "breaking-change-without-version-bump"


@attrs.define(frozen=True)
class ForeignSpec:
    """A spec of another package (an attachment slot, a plan) described by its `to_ir()`."""

    kind: str
    name: str
    ir: dict[str, Any]
    version: int = 1

    def to_ir(self) -> dict[str, Any]:
        return self.ir


def _slot(**changes: Any) -> SpecRegistry:
    """contractspec-files' `project.docs` slot IR (AttachmentSlot.to_ir), with `changes`."""
    ir: dict[str, Any] = {
        "entity": "project", "slot": "docs", "media_types": ["application/pdf", "image/*"],
        "max_size": 1000, "max_count": 3,
        "permissions": {"upload": "files.upload", "view": None, "delete": "files.delete"},
        "retention": {"days": 30, "action": "archive"}, "legal_hold": False,
        "archive_limits": None, "description": "",
    }  # fmt: skip
    return SpecRegistry(ForeignSpec("attachment_slot", "project.docs", {**ir, **changes}))


def _plan(**changes: Any) -> SpecRegistry:
    """contractspec-metering's `pro` plan IR (Plan.to_ir), with `changes`."""
    limit = {"type": "limit", "meter": "api.calls", "limit": "1000", "window": "month",
             "kind": "hard", "overage": "deny"}  # fmt: skip
    ir: dict[str, Any] = {
        "features": ["sso"], "limits": [limit], "prices": [], "description": "",
    }  # fmt: skip
    for key, value in changes.items():
        if key.startswith("limit_"):
            ir["limits"] = [{**limit, key.removeprefix("limit_"): value}]
        else:
            ir[key] = value
    return SpecRegistry(ForeignSpec("plan", "pro", ir))


SPEC_CASES: list[tuple[str, Any, Any, set[str], set[str]]] = [
    ("operation-removed", lambda: crm_like(), lambda: crm_like(extra_ops=False),
     {"operation-removed-without-deprecation"}, {"operation-added"}),
    ("deprecated-removed", lambda: crm_like(deprecated=True),
     lambda: SpecRegistry(*[s for s in crm_like(deprecated=True) if s.name != "crm.deal.create"]),
     {"operation-removed-after-deprecation"}, {"operation-added"}),
    ("deprecated", lambda: crm_like(), lambda: crm_like(deprecated=True),
     {"operation-deprecated"}, {"operation-stability-changed"}),
    ("stability", lambda: crm_like(stability="beta"), lambda: crm_like(),
     {"operation-stability-changed"}, {"operation-stability-changed"}),
    ("kind", lambda: _cmd_query("command"), lambda: _cmd_query("query"),
     {"operation-kind-changed", "audit-disabled", "idempotency-added",
      "breaking-change-without-version-bump"},
     {"operation-kind-changed", "audit-enabled", "idempotency-removed",
      "breaking-change-without-version-bump"}),
    ("version-bump-in-place", lambda: crm_like(), lambda: crm_like(create_version=2),
     {"operation-removed-without-deprecation", "operation-added"},
     {"operation-removed-without-deprecation", "operation-added"}),
    ("event-removed", lambda: crm_like(), lambda: crm_like(emits=[], with_event=False),
     {"event-no-longer-emitted", "event-removed"}, {"event-newly-emitted", "event-added"}),
    ("entity-removed", lambda: crm_like(),
     lambda: SpecRegistry(*[s for s in crm_like() if s.kind != "entity"]),
     {"entity-removed"}, {"entity-added"}),
    ("job-removed", lambda: _job(), lambda: SpecRegistry(), {"spec-removed"}, {"spec-added"}),
    ("job-field", lambda: _job(), lambda: _job(max_attempts=5),
     {"spec-changed"}, {"spec-changed"}),
    ("auth-to-authenticated", lambda: crm_like(), lambda: crm_like(auth=authenticated()),
     {"auth-loosened", "breaking-change-without-version-bump"},
     {"auth-tightened", "breaking-change-without-version-bump"}),
    ("auth-to-public", lambda: crm_like(auth=authenticated()), lambda: crm_like(auth=public()),
     {"auth-loosened", "breaking-change-without-version-bump"},
     {"auth-tightened", "breaking-change-without-version-bump"}),
    ("permission-dropped", lambda: crm_like(auth=requires("deal.write", "deal.admin")),
     lambda: crm_like(auth=requires("deal.write")),
     {"auth-loosened", "breaking-change-without-version-bump"},
     {"auth-tightened", "breaking-change-without-version-bump"}),
    ("auth-resource", lambda: crm_like(), lambda: crm_like(auth=requires("deal.write", resource="deal")),
     {"auth-resource-changed"}, {"auth-resource-changed"}),
    ("pii", lambda: crm_like(pii=["input.title"]), lambda: crm_like(),
     {"pii-removed", "breaking-change-without-version-bump"}, {"pii-added"}),
    ("entity-pii", lambda: crm_like(entity_pii=["email"]), lambda: crm_like(),
     {"pii-removed", "breaking-change-without-version-bump"}, {"pii-added"}),
    ("idempotency", lambda: crm_like(), lambda: crm_like(idempotent=False),
     {"idempotency-removed", "breaking-change-without-version-bump"}, {"idempotency-added"}),
    ("errors", lambda: crm_like(), lambda: crm_like(errors=["conflict", "not_found"]),
     {"error-code-added"}, {"error-code-removed"}),
    ("audit", lambda: crm_like(), lambda: crm_like(audit=False),
     {"audit-disabled"}, {"audit-enabled"}),
    ("event-key", lambda: crm_like(), lambda: crm_like(event_key=None),
     {"event-key-changed"}, {"event-key-changed"}),
    ("retention", lambda: crm_like(), lambda: crm_like(retention=dt.timedelta(days=30)),
     {"event-retention-shortened"}, {"event-retention-extended"}),
    ("severity", lambda: crm_like(), lambda: crm_like(severity="warning"),
     {"event-severity-changed"}, {"event-severity-changed"}),
    ("primary-key", lambda: _entity_pk("id"), lambda: _entity_pk("code"),
     {"entity-primary-key-changed", "breaking-change-without-version-bump"},
     {"entity-primary-key-changed", "breaking-change-without-version-bump"}),
    ("tenancy", lambda: crm_like(), lambda: crm_like(tenant_scoped=False),
     {"entity-tenancy-changed", "breaking-change-without-version-bump"},
     {"entity-tenancy-changed", "breaking-change-without-version-bump"}),
    ("unique-index", lambda: crm_like(), lambda: crm_like(indexes=[("title",)]),
     {"entity-index-changed"}, {"entity-index-changed"}),
    ("unique-index-added", lambda: crm_like(indexes=["title"]),
     lambda: crm_like(indexes=[__import__("contractspec.core").core.Index(("title",), unique=True)]),
     {"entity-unique-index-added"}, {"entity-index-changed"}),
    ("description", lambda: crm_like(), lambda: crm_like(description="Open a new deal."),
     {"metadata-changed"}, {"metadata-changed"}),
    ("event-description", lambda: crm_like(), lambda: crm_like(event_description="New deal."),
     {"metadata-changed"}, {"metadata-changed"}),
    ("pii-field-removed", lambda: _with_email(email=True), lambda: _with_email(email=False),
     {"input-property-removed", "pii-field-removed", "breaking-change-without-version-bump"},
     {"input-required-property-added", "pii-added", "breaking-change-without-version-bump"}),
    ("entity-pii-field-removed", lambda: _with_email(email=True, entity=True),
     lambda: _with_email(email=False, entity=True),
     {"entity-property-removed", "pii-field-removed", "breaking-change-without-version-bump"},
     {"entity-required-property-added", "pii-added", "breaking-change-without-version-bump"}),
    ("replaced-by-new-version", lambda: _save(1, {"a": (int, ...)}),
     lambda: _save(2, {"b": (int, ...)}),
     {"operation-removed-without-deprecation", "operation-added", "input-property-removed",
      "input-required-property-added"},
     {"operation-removed-without-deprecation", "operation-added", "input-property-removed",
      "input-required-property-added"}),
    ("replaced-by-same-shape", lambda: _save(1, {"a": (int, ...)}),
     lambda: _save(2, {"a": (int, ...)}),
     {"operation-removed-without-deprecation", "operation-added"},
     {"operation-removed-without-deprecation", "operation-added"}),
    ("slot-media-type-removed", lambda: _slot(),
     lambda: _slot(media_types=["application/pdf", "image/png"]),
     {"attachment-slot-narrowed", BUMP}, {"attachment-slot-widened"}),
    ("slot-media-type-swapped", lambda: _slot(), lambda: _slot(media_types=["image/*", "text/csv"]),
     {"attachment-slot-narrowed", "attachment-slot-widened", BUMP},
     {"attachment-slot-narrowed", "attachment-slot-widened", BUMP}),
    ("slot-max-size", lambda: _slot(), lambda: _slot(max_size=999),
     {"attachment-slot-narrowed", BUMP}, {"attachment-slot-widened"}),
    ("slot-max-count", lambda: _slot(), lambda: _slot(max_count=None),
     {"attachment-slot-widened"}, {"attachment-slot-narrowed", BUMP}),
    ("slot-archive-limits", lambda: _slot(archive_limits={"max_members": 10, "max_ratio": 50.0,
     "max_uncompressed": 100}), lambda: _slot(archive_limits={"max_members": 5, "max_ratio": 50.0,
     "max_uncompressed": 100}),
     {"attachment-slot-narrowed", BUMP}, {"attachment-slot-widened"}),
    ("slot-permission-added", lambda: _slot(),
     lambda: _slot(permissions={"upload": "files.upload", "view": "files.view",
                                "delete": "files.delete"}),
     {"attachment-permission-narrowed", BUMP}, {"attachment-permission-widened"}),
    ("slot-permission-changed", lambda: _slot(),
     lambda: _slot(permissions={"upload": "files.admin", "view": None, "delete": "files.delete"}),
     {"attachment-permission-narrowed", BUMP}, {"attachment-permission-narrowed", BUMP}),
    ("slot-retention", lambda: _slot(), lambda: _slot(retention=None),
     {"attachment-retention-extended"}, {"attachment-retention-shortened"}),
    ("slot-retention-action", lambda: _slot(),
     lambda: _slot(retention={"days": 30, "action": "delete"}),
     {"attachment-retention-shortened"}, {"attachment-retention-extended"}),
    ("slot-legal-hold", lambda: _slot(), lambda: _slot(legal_hold=True),
     {"spec-changed"}, {"spec-changed"}),
    ("slot-removed", lambda: _slot(), lambda: SpecRegistry(), {"spec-removed"}, {"spec-added"}),
    ("plan-limit", lambda: _plan(), lambda: _plan(limit_limit="999.5"),
     {"plan-limit-lowered", BUMP}, {"plan-limit-raised"}),
    ("plan-limit-removed", lambda: _plan(), lambda: _plan(limits=[]),
     {"plan-limit-raised"}, {"plan-limit-lowered", BUMP}),
    ("plan-overage", lambda: _plan(), lambda: _plan(limit_overage="allow"),
     {"plan-limit-raised"}, {"plan-limit-lowered", BUMP}),
    ("plan-limit-kind", lambda: _plan(), lambda: _plan(limit_kind="rate"),
     {"spec-changed"}, {"spec-changed"}),
    ("plan-feature", lambda: _plan(), lambda: _plan(features=[]),
     {"plan-feature-removed", BUMP}, {"plan-feature-added"}),
    ("plan-price", lambda: _plan(), lambda: _plan(prices=[{"meter": "api.calls"}]),
     {"spec-changed"}, {"spec-changed"}),
    ("event-replaced-by-new-version", lambda: _saved(1, {"a": (int, ...)}),
     lambda: _saved(2, {"a": (int | None, None)}),
     {"event-removed", "event-added", "payload-became-nullable",
      "payload-property-became-optional"},
     {"event-removed", "event-added", "payload-became-non-nullable",
      "payload-property-became-required"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "old", "new", "forward", "reverse"), SPEC_CASES, ids=[c[0] for c in SPEC_CASES]
)
def test_spec_rule_both_directions(
    case: str, old: Any, new: Any, forward: set[str], reverse: set[str]
) -> None:
    """Each spec-level case yields exactly its rules, old→new and new→old."""
    before, after = old().to_ir(), new().to_ir()
    assert {c.rule for c in diff_ir(before, after).changes} == forward
    assert {c.rule for c in diff_ir(after, before).changes} == reverse


# --------------------------------------------------------------------------------------------
# Workflow rules: (id, old workflow kwargs, new workflow kwargs, forward rules, reverse rules)
# Only the findings on the workflow spec itself are compared (its derived operations are
# ordinary operations with their own rules).
# --------------------------------------------------------------------------------------------


class Ticket(BaseModel):
    title: str


class Close(BaseModel):
    note: str = ""


#: `Close` with one more required field.
CloseWithReason = pydantic.create_model("Close", note=(str, ""), reason=(str, ...))


def not_frozen(_instance: Any, _input: object) -> bool:
    """A guard."""
    return True


def _ticket(
    *,
    states: tuple[str, ...] = ("open", "review", "closed", "archived"),
    archive: bool = True,
    reopen: bool = True,
    close_auth: Any = None,
    close_input: Any = Close,
    close_sources: tuple[str, ...] = ("open", "review"),
    close_guard: Any = None,
    timer_after: dt.timedelta | None = dt.timedelta(hours=1),
    start_auth: Any = None,
    version: int = 1,
    migrations: dict[int, dict[str, str]] | None = None,
) -> SpecRegistry:
    """A ticket workflow; each keyword changes one thing."""
    from contractspec.core import define_workflow, timer, transition

    final = [s for s in ("closed", "archived", "shelved") if s in states]
    transitions = [
        transition("review", source="open", target="review", auth=requires("t.work")),
        transition("close", source=close_sources, target="closed", input=close_input,
                   auth=close_auth or requires("t.close"), guard=close_guard),
    ]  # fmt: skip
    if archive:
        target = "archived" if "archived" in states else "shelved"
        transitions.append(
            transition("archive", source="open", target=target, auth=requires("t.close"))
        )
    if reopen:
        transitions.append(
            transition("reopen", source="review", target="open", auth=requires("t.work"))
        )
    timers = [] if timer_after is None else [timer("review", after=timer_after, fire="reopen")]
    return SpecRegistry(
        define_workflow(
            "t.ticket", subject=Ticket, states=list(states), initial="open", final=final,
            transitions=transitions, timers=timers,
            start_auth=start_auth or requires("t.work"), version=version, migrations=migrations,
        )
    )  # fmt: skip


WORKFLOW_CASES: list[tuple[str, dict[str, Any], dict[str, Any], set[str], set[str]]] = [
    ("state-removed", {}, {"states": ("open", "review", "closed"), "archive": False},
     {"workflow-state-removed", "workflow-transition-removed", BUMP},
     {"workflow-state-added", "workflow-transition-added"}),
    ("state-renamed", {}, {"states": ("open", "review", "closed", "shelved")},
     {"workflow-state-removed", "workflow-state-added", "workflow-transition-changed", BUMP},
     {"workflow-state-removed", "workflow-state-added", "workflow-transition-changed", BUMP}),
    ("transition-removed", {"timer_after": None}, {"timer_after": None, "reopen": False},
     {"workflow-transition-removed", BUMP}, {"workflow-transition-added"}),
    ("transition-auth-narrowed", {}, {"close_auth": requires("t.close", "t.admin")},
     {"auth-tightened", BUMP}, {"auth-loosened", BUMP}),
    ("start-auth-narrowed", {}, {"start_auth": requires("t.work", "t.admin")},
     {"auth-tightened", BUMP}, {"auth-loosened", BUMP}),
    ("transition-source-removed", {}, {"close_sources": ("review",)},
     {"workflow-transition-source-removed", BUMP}, {"workflow-transition-source-added"}),
    ("transition-guard-added", {}, {"close_guard": not_frozen},
     {"workflow-transition-changed"}, {"workflow-transition-changed"}),
    ("transition-input-field-required", {}, {"close_input": CloseWithReason},
     {"input-required-property-added", BUMP}, {"input-property-removed", BUMP}),
    ("transition-input-added", {"close_input": None}, {"close_input": CloseWithReason},
     {"input-optional-property-added", "input-required-property-added", BUMP},
     {"input-property-removed", BUMP}),
    ("timer-changed", {}, {"timer_after": dt.timedelta(hours=2)},
     {"workflow-timer-changed"}, {"workflow-timer-changed"}),
    ("timer-added", {"timer_after": None}, {},
     {"workflow-timer-added"}, {"workflow-timer-removed"}),
    # @1 replaced by @2 whose migrations move instances out of the removed state ("via new
    # version" findings); backwards @2 -> @1 the state comes back and nothing is migrated.
    ("state-migrated-in-new-version", {},
     {"version": 2, "states": ("open", "review", "closed"), "archive": False,
      "migrations": {1: {"archived": "closed"}}},
     {"spec-removed", "spec-added", "workflow-state-migrated", "workflow-transition-removed",
      "spec-changed"},
     {"spec-removed", "spec-added", "workflow-state-added", "workflow-transition-added",
      "spec-changed"}),
]  # fmt: skip


class Desk(BaseModel):
    """A record whose `status` can hold a workflow's state."""

    id: str
    status: str = "open"
    phase: str = "open"


DESK = define_entity("t.desk", Desk)
OTHER_DESK = define_entity("t.other_desk", Desk)


def _desk(
    *, entity: Any = None, state_field: str | None = None, history: str | None = None
) -> SpecRegistry:
    """A two-state workflow kept on instances (default) or on `entity` records."""
    from contractspec.core import define_workflow, transition

    return SpecRegistry(
        define_workflow(
            "t.desk.flow", states=["open", "done"], initial="open", final=["done"],
            transitions=[transition("finish", source="open", target="done")],
            entity=entity, state_field=state_field, history=history,
        )
    )  # fmt: skip


#: Workflows on an entity: moving the state elsewhere is breaking, moving history is a warning.
STORAGE_CASES: list[tuple[str, dict[str, Any], dict[str, Any], set[str], set[str]]] = [
    ("instances-to-entity", {}, {"entity": DESK, "state_field": "status"},
     {"workflow-storage-changed", "workflow-history-changed", BUMP},
     {"workflow-storage-changed", "workflow-history-changed", BUMP}),
    ("state-field-changed", {"entity": DESK, "state_field": "status"},
     {"entity": DESK, "state_field": "phase"},
     {"workflow-storage-changed", BUMP}, {"workflow-storage-changed", BUMP}),
    ("entity-changed", {"entity": DESK, "state_field": "status"},
     {"entity": OTHER_DESK, "state_field": "status"},
     {"workflow-storage-changed", BUMP}, {"workflow-storage-changed", BUMP}),
    ("history-to-audit", {}, {"history": "audit"},
     {"workflow-history-changed"}, {"workflow-history-changed"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "old", "new", "forward", "reverse"), STORAGE_CASES, ids=[c[0] for c in STORAGE_CASES]
)
def test_workflow_storage_rule_both_directions(
    case: str, old: dict[str, Any], new: dict[str, Any], forward: set[str], reverse: set[str]
) -> None:
    """Where a workflow keeps its state and history: exactly these rules, old→new and new→old."""
    before, after = _desk(**old), _desk(**new)
    assert workflow_rules(before, after) == forward
    assert workflow_rules(after, before) == reverse


def workflow_rules(old: SpecRegistry, new: SpecRegistry) -> set[str]:
    """Rules of the changes found on the workflow spec itself."""
    return {c.rule for c in diff_ir(old.to_ir(), new.to_ir()).changes if c.kind == "workflow"}


@pytest.mark.parametrize(
    ("case", "old", "new", "forward", "reverse"), WORKFLOW_CASES, ids=[c[0] for c in WORKFLOW_CASES]
)
def test_workflow_rule_both_directions(
    case: str, old: dict[str, Any], new: dict[str, Any], forward: set[str], reverse: set[str]
) -> None:
    """Each workflow case yields exactly its rules on the workflow, old→new and new→old."""
    before, after = _ticket(**old), _ticket(**new)
    assert workflow_rules(before, after) == forward
    assert workflow_rules(after, before) == reverse


def test_workflow_findings_name_the_state_transition_and_field() -> None:
    """Paths and messages locate each workflow change; a removed state says how to migrate."""
    result = diff_ir(
        _ticket().to_ir(),
        _ticket(states=("open", "review", "closed"), archive=False, close_input=CloseWithReason,
                timer_after=dt.timedelta(hours=2)).to_ir(),
    )  # fmt: skip
    assert [(c.rule, c.severity, c.path, c.message) for c in result.changes
            if c.kind == "workflow"] == [
        ("input-required-property-added", Severity.BREAKING, "input.close.reason",
         "required field 'reason' added"),
        ("workflow-state-removed", Severity.BREAKING, "states.archived",
         "state 'archived' removed: instances in it are stranded; keep it, or register "
         "t.ticket@2 with migrations={1: {'archived': '<new state>'}}"),
        ("workflow-timer-changed", Severity.WARNING, "timers.review_reopen",
         "after_s changed from 3600.0 to 7200.0"),
        ("workflow-transition-removed", Severity.BREAKING, "transitions.archive",
         "transition 'archive' removed: callers firing it fail"),
        ("breaking-change-without-version-bump", Severity.BREAKING, "",
         "3 breaking change(s) at the same version; keep t.ticket@1 (deprecated) and register "
         "the new shape as t.ticket@2"),
    ]  # fmt: skip


def test_version_bump_keeps_the_old_contract() -> None:
    """Adding @2 next to a deprecated @1 is info only; changing @1 in place is breaking."""
    from core_regen_specs import model

    v1 = define_command("t.thing.save", input=model("In", {"a": (int, ...)}), output=model("O", {}))
    v1_deprecated = define_command(
        "t.thing.save",
        input=model("In", {"a": (int, ...)}),
        output=model("O", {}),
        stability="deprecated",
    )
    v2 = define_command(
        "t.thing.save", version=2, input=model("In", {"b": (int, ...)}), output=model("O", {})
    )
    result = diff_ir(SpecRegistry(v1).to_ir(), SpecRegistry(v1_deprecated, v2).to_ir())
    assert [(c.rule, c.severity, c.spec) for c in result.changes] == [
        ("operation-deprecated", Severity.INFO, "t.thing.save@1"),
        ("operation-added", Severity.INFO, "t.thing.save@2"),
    ]
    in_place = define_command(
        "t.thing.save", input=model("In", {"b": (int, ...)}), output=model("O", {})
    )
    result = diff_ir(SpecRegistry(v1).to_ir(), SpecRegistry(in_place).to_ir())
    assert [(c.rule, c.path) for c in result.changes] == [
        ("input-property-removed", "input.a"),
        ("input-required-property-added", "input.b"),
        ("breaking-change-without-version-bump", ""),
    ]
    assert result.changes[-1].message == (
        "2 breaking change(s) at the same version; keep t.thing.save@1 (deprecated) and register "
        "the new shape as t.thing.save@2"
    )


def test_replaced_version_reports_what_changed_for_callers() -> None:
    """`@1` removed and `@2` added in one step: @1 → @2 is compared, marked "via new version"."""
    result = diff_ir(_save(1, {"a": (int, ...)}).to_ir(), _save(2, {"b": (int, ...)}).to_ir())
    assert [(c.rule, c.severity, c.spec, c.path, c.message) for c in result.changes] == [
        ("operation-removed-without-deprecation", Severity.BREAKING, "t.thing.save@1", "",
         "operation removed without a deprecation period; replaced by @2 in the same step (what "
         "changes for its callers is listed on t.thing.save@2, 'via new version'); mark it "
         "stability='deprecated' in one release and remove it in a later one"),
        ("operation-added", Severity.INFO, "t.thing.save@2", "",
         "operation new version (previous: @1)"),
        ("input-property-removed", Severity.BREAKING, "t.thing.save@2", "input.a",
         "via new version (from t.thing.save@1): field 'a' removed"),
        ("input-required-property-added", Severity.BREAKING, "t.thing.save@2", "input.b",
         "via new version (from t.thing.save@1): required field 'b' added"),
    ]  # fmt: skip


def test_no_comparison_when_a_version_remains() -> None:
    """With @1 kept beside @2 callers can stay on @1: the versions are not compared."""
    kept = SpecRegistry(*_save(1, {"a": (int, ...)}), *_save(2, {"b": (int, ...)}))
    added = diff_ir(_save(1, {"a": (int, ...)}).to_ir(), kept.to_ir())
    assert [c.rule for c in added.changes] == ["operation-added"]
    dropped = diff_ir(kept.to_ir(), _save(2, {"b": (int, ...)}).to_ir())
    assert [c.rule for c in dropped.changes] == ["operation-removed-without-deprecation"]


def test_removed_pii_field_is_not_reported_as_unredacted() -> None:
    """A removed PII field says what it means; a PII mark dropped from a kept field still warns."""
    result = diff_ir(_with_email(email=True).to_ir(), _with_email(email=False).to_ir())
    [pii] = [c for c in result.changes if c.path == "input.email" and c.rule.startswith("pii")]
    assert (pii.rule, pii.severity) == ("pii-field-removed", Severity.INFO)
    assert "unredacted" not in pii.message
    assert pii.message == (
        "input.email was removed together with its personal-data mark: it is no longer collected "
        "or returned (records written before keep it redacted); if it was renamed, mark the new "
        "field as personal data"
    )
    unmarked = diff_ir(crm_like(pii=["input.title"]).to_ir(), crm_like().to_ir())
    [kept] = [c for c in unmarked.changes if c.rule.startswith("pii")]
    assert (kept.rule, kept.severity, kept.path) == (
        "pii-removed",
        Severity.BREAKING,
        "input.title",
    )
    assert "will appear unredacted" in kept.message


def test_renamed_operation_is_removal_plus_addition() -> None:
    """Renaming an operation reports the old name removed and the new one added."""
    from core_regen_specs import model

    def reg(name: str) -> SpecRegistry:
        return SpecRegistry(define_query(name, input=model("I", {}), output=model("O", {})))

    result = diff_ir(reg("t.thing.get").to_ir(), reg("t.thing.fetch").to_ir())
    assert [(c.rule, c.spec) for c in result.changes] == [
        ("operation-added", "t.thing.fetch@1"),
        ("operation-removed-without-deprecation", "t.thing.get@1"),
    ]


def test_event_payload_seen_from_the_consumer() -> None:
    """A payload field becoming optional breaks consumers (output rules apply to payloads)."""
    from core_regen_specs import model

    def reg(fields: dict[str, Any]) -> SpecRegistry:
        return SpecRegistry(define_event("t.thing.saved", payload=model("P", fields)))

    result = diff_ir(reg({"x": (int, ...)}).to_ir(), reg({"x": (int | None, None)}).to_ir())
    assert [(c.rule, c.severity, c.path) for c in result.changes] == [
        ("payload-became-nullable", Severity.BREAKING, "payload.x"),
        ("payload-property-became-optional", Severity.BREAKING, "payload.x"),
        ("breaking-change-without-version-bump", Severity.BREAKING, ""),
    ]


def test_every_rule_has_a_case() -> None:
    """The tables above exercise every rule id of `RULES` (no rule is untested)."""
    covered: set[str] = {"input-constraint-tightened", "input-constraint-loosened"}
    for _case, _old, _new, forward, reverse in SCHEMA_CASES:
        for role in ROLES:
            covered |= {r for r, _s, _p in expected(role, forward + reverse)}
    for _case, _old, _new, fwd, rev in [*SPEC_CASES, *WORKFLOW_CASES, *STORAGE_CASES]:
        covered |= fwd | rev
    assert sorted(set(RULES) - covered) == []


def test_every_rule_is_documented() -> None:
    """docs/core/diff.md names every rule id (schema rules by their suffix)."""
    from pathlib import Path

    from contractspec.core.diff import _SCHEMA_RULES

    doc = (Path(__file__).parents[3] / "docs" / "core" / "diff.md").read_text(encoding="utf-8")
    prefixes = {"input", "output", "payload", "entity", "schema"}
    missing = []
    for rule in RULES:
        prefix, _, suffix = rule.partition("-")
        name = suffix if prefix in prefixes and suffix in _SCHEMA_RULES else rule
        if f"`{name}`" not in doc:
            missing.append(rule)
    assert missing == []


def test_change_renders_its_location() -> None:
    """`Change.location` joins kind, spec and path."""
    change = Change(
        "input-property-removed", Severity.BREAKING, "operation", "a.b@1", "input.x", "m"
    )
    assert change.location == "operation a.b@1 input.x"
