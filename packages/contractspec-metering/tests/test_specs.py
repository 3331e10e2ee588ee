"""Meter, plan and binding definitions: validation, windows and the IR."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from metering_support import build_registry, free
from pydantic import BaseModel

from contractspec.core import SpecDefinitionError, SpecRegistry, SpecValidationError, define_query
from contractspec.metering import (
    Feature,
    Limit,
    MemoryMeteringStore,
    Metering,
    Price,
    Tier,
    UsageEvent,
    Window,
    define_meter,
    define_plan,
    meter_operation,
    window_bounds,
)


class In(BaseModel):
    q: str = ""


def test_windows_are_utc_and_months_are_calendar_months() -> None:
    """hour/day/month bounds contain the instant; a non-UTC instant is converted first."""
    at = datetime(2024, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5)))  # Jan 1 UTC
    assert window_bounds(Window.HOUR, at) == (
        datetime(2025, 1, 1, 4, tzinfo=UTC),
        datetime(2025, 1, 1, 5, tzinfo=UTC),
    )
    assert window_bounds("day", at)[0] == datetime(2025, 1, 1, tzinfo=UTC)
    assert window_bounds("month", datetime(2024, 12, 5, tzinfo=UTC)) == (
        datetime(2024, 12, 1, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
    )
    assert window_bounds("month", datetime(2024, 2, 29, 12, tzinfo=UTC))[1] == datetime(
        2024, 3, 1, tzinfo=UTC
    )
    with pytest.raises(SpecValidationError, match="no timezone"):
        window_bounds("day", datetime(2024, 1, 1))


def test_window_bounds_memo_never_answers_with_another_window() -> None:
    """`window_bounds` reuses the window it returned last; instants interleaved across windows,
    at the exact edges (`end` belongs to the next window) and in other zones still get their own
    window, computed here field by field."""
    edge = datetime(2024, 3, 1, tzinfo=UTC)
    minus5 = timezone(timedelta(hours=-5))
    instants = [
        edge - timedelta(microseconds=1),
        edge,
        edge - timedelta(microseconds=1),
        edge + timedelta(hours=1),
        datetime(2024, 2, 29, 20, tzinfo=minus5),  # 2024-03-01 01:00 UTC
        datetime(2024, 2, 29, 18, 59, 59, tzinfo=minus5),  # 2024-02-29 23:59:59 UTC
        datetime(2024, 12, 31, 23, 30, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
        edge,
    ]
    for window in Window:
        for at in instants:
            t = at.astimezone(UTC)
            if window is Window.HOUR:
                start = datetime(t.year, t.month, t.day, t.hour, tzinfo=UTC)
            elif window is Window.DAY:
                start = datetime(t.year, t.month, t.day, tzinfo=UTC)
            else:
                start = datetime(t.year, t.month, 1, tzinfo=UTC)
            got_start, got_end = window_bounds(window, at)
            assert got_start == start, (window, at)
            assert got_start <= at < got_end, (window, at)
            assert got_start.tzinfo is UTC
            assert window_bounds(window, got_end)[0] == got_end, (window, at)


_GOOD_EVENT: dict[str, object] = {
    "id": "ev-1",
    "org_id": "org-1",
    "user_id": "u1",
    "subject": "api",
    "meter": "api.calls",
    "value": Decimal(1),
    "timestamp": datetime(2024, 1, 1, tzinfo=UTC),
    "unique_key": "k",
}


@pytest.mark.parametrize("name", ["id", "org_id", "user_id", "subject", "meter", "unique_key"])
@pytest.mark.parametrize("bad", ["", "x" * 256, "a\x00b", 7])
def test_usage_event_refuses_each_bad_text_field_by_name(name: str, bad: object) -> None:
    """Every text field (the optional ones too) is checked: empty, over 255 characters, NUL or
    not a string is a SpecValidationError naming that field; `None` is fine only for the
    optional ones."""
    assert UsageEvent(**_GOOD_EVENT).user_id == "u1"  # type: ignore[arg-type]
    with pytest.raises(SpecValidationError) as info:
        UsageEvent(**{**_GOOD_EVENT, name: bad})  # type: ignore[arg-type]
    assert info.value.details["field"] == name
    if name in ("user_id", "unique_key"):
        assert getattr(UsageEvent(**{**_GOOD_EVENT, name: None}), name) is None  # type: ignore[arg-type]
    else:
        with pytest.raises(SpecValidationError):
            UsageEvent(**{**_GOOD_EVENT, name: None})  # type: ignore[arg-type]


def test_meter_definitions_are_checked() -> None:
    """Bad keys, aggregations, windows and missing value paths are definition errors."""
    with pytest.raises(SpecDefinitionError, match="dotted lowercase"):
        define_meter("API Calls", unit="call")
    with pytest.raises(SpecDefinitionError, match="aggregation must be one of"):
        define_meter("api.calls", unit="call", aggregation="avg")
    with pytest.raises(SpecDefinitionError, match="window must be one of"):
        define_meter("api.calls", unit="call", window="week")
    with pytest.raises(SpecDefinitionError, match="needs value="):
        define_meter("storage.bytes", unit="byte", event="files.file.uploaded")
    with pytest.raises(SpecDefinitionError, match="dotted path"):
        define_meter("storage.bytes", unit="byte", event="x.y", value="a..b")
    count = define_meter("uploads", unit="file", aggregation="count", event="files.file.uploaded")
    assert count.value is None


def test_plan_definitions_are_checked() -> None:
    """Duplicate limits or prices, bad tiers and foreign items are definition errors."""
    with pytest.raises(SpecDefinitionError, match="two limits"):
        define_plan("p", entitlements=[Limit("a.b", 1), Limit("a.b", 2)])
    with pytest.raises(SpecDefinitionError, match="two prices"):
        define_plan("p", prices=[Price("a.b", unit_amount=1), Price("a.b", unit_amount=2)])
    with pytest.raises(SpecDefinitionError, match="Feature"):
        define_plan("p", entitlements=["sso"])  # type: ignore[list-item]
    with pytest.raises(SpecDefinitionError, match="strictly ascending"):
        Price("a.b", mode="graduated", tiers=[Tier(10, 1), Tier(5, 1), Tier(None, 1)])
    with pytest.raises(SpecDefinitionError, match="only the last tier"):
        Price("a.b", mode="volume", tiers=[Tier(10, 1), Tier(20, 1)])
    with pytest.raises(SpecDefinitionError, match="not tiers"):
        Price("a.b", tiers=[Tier(None, 1)])
    with pytest.raises(SpecDefinitionError, match=">= 0"):
        Limit("a.b", -1)
    with pytest.raises(SpecDefinitionError, match="kind must be one of"):
        Limit("a.b", 1, kind="soft")
    with pytest.raises(SpecDefinitionError, match="more than 6 decimal places"):
        Price("a.b", unit_amount="0.0000001")
    assert Limit("a.b", "2.5").limit == Decimal("2.5")


def test_meter_operation_needs_a_meter_or_feature_and_valid_paths() -> None:
    """A binding without meter or feature, or with a path outside input/output, is refused."""
    with pytest.raises(SpecDefinitionError, match="meter= and/or feature="):
        meter_operation("app.search")
    with pytest.raises(SpecDefinitionError, match=r"must start with 'input\.' or 'output\.'"):
        meter_operation("app.search", meter="api.calls", amount="tokens")
    with pytest.raises(SpecDefinitionError, match="amount"):
        meter_operation("app.search", meter="api.calls", amount=float("nan"))


def test_metering_checks_cross_references() -> None:
    """Unknown meters, limits on unique_count meters and an unknown default plan are refused; a
    limit on a latest gauge is its cap."""
    seats = define_meter("seats", unit="seat", aggregation="latest")
    calls = define_meter("api.calls", unit="call", aggregation="count")
    with pytest.raises(SpecDefinitionError, match="names meter 'nope', which is not registered"):
        Metering(SpecRegistry(calls, meter_operation("app.x", meter="nope")), MemoryMeteringStore())
    users = define_meter("users", unit="user", aggregation="unique_count")
    with pytest.raises(SpecDefinitionError, match="needs a sum or count meter"):
        Metering(
            SpecRegistry(users, define_plan("p", entitlements=[Limit("users", 3)])),
            MemoryMeteringStore(),
        )
    capped = Metering(
        SpecRegistry(seats, define_plan("p", entitlements=[Limit("seats", 3)])),
        MemoryMeteringStore(),
    )
    assert capped.cap(capped.plans["p"], "seats") == Limit("seats", 3)
    lookup = define_query("app.lookup", input=In, output=In)
    with pytest.raises(SpecDefinitionError, match="is a query"):
        Metering(
            SpecRegistry(calls, lookup, meter_operation(lookup, meter=calls)), MemoryMeteringStore()
        )
    gated = Metering(
        SpecRegistry(lookup, meter_operation(lookup, feature="sso")), MemoryMeteringStore()
    )
    assert gated.bindings["app.lookup"].feature == "sso"
    with pytest.raises(SpecDefinitionError, match="default_plan 'gold'"):
        Metering(SpecRegistry(calls), MemoryMeteringStore(), default_plan="gold")


def test_meters_plans_and_bindings_appear_in_the_ir() -> None:
    """registry.to_ir() describes meters, plans and metered operations, deterministically."""
    ir = build_registry().to_ir()["specs"]
    meters = {m["name"]: m for m in ir["meter"]}
    assert meters["storage.bytes"] == {
        "kind": "meter",
        "name": "storage.bytes",
        "version": 1,
        "schemas": {},
        "unit": "byte",
        "aggregation": "sum",
        "window": "day",
        "event": "files.file.uploaded",
        "value": "size_bytes",
        "subject": "project_id",
        "description": "",
    }
    plans = {p["name"]: p for p in ir["plan"]}
    assert plans["free"]["limits"][2] == {
        "type": "limit",
        "meter": "api.burst",
        "limit": "3",
        "window": "hour",
        "kind": "rate",
        "overage": "deny",
    }
    assert plans["pro"]["features"] == ["export"]
    assert plans["pro"]["prices"][0]["tiers"][2] == {
        "up_to": None,
        "unit_amount": "0.001",
        "flat_amount": "1",
    }
    bound = {b["name"]: b for b in ir["metered_operation"]}
    assert bound["app.note.add"]["amount"] == "input.tokens"
    assert bound["app.export"]["feature"] == "export"
    assert build_registry().to_ir() == build_registry().to_ir()
    assert free.has_feature("export") is False
    assert Feature("sso").to_ir() == {"type": "feature", "key": "sso"}


@pytest.mark.parametrize(
    ("new_limit", "rule", "breaking"),
    [
        (Limit("api.calls", 500), "plan-limit-lowered", True),
        (Limit("api.calls", 1500), "plan-limit-raised", False),
        (Limit("api.calls", 1000, overage="allow"), "plan-limit-raised", False),
    ],
)
def test_plan_limit_changes_in_place_are_classified(
    new_limit: Limit, rule: str, breaking: bool
) -> None:
    """Lowering a real plan's limit at the same version is breaking; raising it is not."""
    from contractspec.core.diff import diff_ir

    old = SpecRegistry(define_plan("pro", entitlements=[Limit("api.calls", 1000)])).to_ir()
    new = SpecRegistry(define_plan("pro", entitlements=[new_limit])).to_ir()
    report = diff_ir(old, new)
    assert rule in {c.rule for c in report.changes}
    assert report.has_breaking is breaking
    assert diff_ir(new, old).has_breaking is not breaking
