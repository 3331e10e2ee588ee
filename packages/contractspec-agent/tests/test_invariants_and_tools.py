"""Invariant expressions (parsed, never eval'd) and tool definitions from signatures."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from contractspec.agent import (
    Invariant,
    RiskLevel,
    RiskRule,
    ToolContext,
    budget_cap,
    margin_floor,
    parse_expression,
    refund_limit,
    tool,
)
from contractspec.core import SpecDefinitionError

OPS = {">=": Decimal.__ge__, ">": Decimal.__gt__, "<=": Decimal.__le__, "<": Decimal.__lt__,
       "==": Decimal.__eq__, "!=": Decimal.__ne__}  # fmt: skip
numbers = st.decimals(min_value=-10_000, max_value=10_000, places=2, allow_nan=False)


@settings(deadline=None, max_examples=200)
@given(a=numbers, b=numbers, c=numbers, op=st.sampled_from(sorted(OPS)))
def test_arithmetic_comparisons_match_exact_decimal_maths(
    a: Decimal, b: Decimal, c: Decimal, op: str
) -> None:
    """`x + y * 2 <op> z` evaluates like exact Decimal arithmetic, and reports the values it read."""
    expr = parse_expression(f"x + y * 2 {op} z")
    passed, seen, message = expr.evaluate({"x": a, "y": b, "z": c})
    assert passed is OPS[op](a + b * 2, c)
    assert set(seen) == {"x", "y", "z"}
    assert message == ("" if passed else f"x + y * 2 {op} z is false")


def test_exact_decimals_strings_lists_and_nesting() -> None:
    """0.1 + 0.2 == 0.3 holds; strings, lists, parentheses, unary minus and dotted paths work."""
    ns = {"a": 0.1, "b": 0.2, "region": "eu", "order": {"total": 120, "items": 3}}
    assert parse_expression("a + b == 0.3").evaluate(ns)[0] is True
    assert parse_expression("region in ['eu', 'us']").evaluate(ns)[0] is True
    assert parse_expression("region not in ['eu']").evaluate(ns)[0] is False
    assert parse_expression("(order.total - 20) / order.items > -(1)").evaluate(ns)[:2] == (
        True, {"order.total": 120, "order.items": 3},
    )  # fmt: skip
    assert parse_expression('region == "eu"').paths == ("region",)


def test_missing_values_and_type_mismatches_fail_closed() -> None:
    """A path that does not resolve, or values that cannot be compared, are a FAIL with a reason."""
    assert parse_expression("margin >= 0.1").evaluate({}) == (False, {}, "margin is missing")
    passed, _, message = parse_expression("name > 3").evaluate({"name": "x"})
    assert passed is False
    assert message.startswith("cannot evaluate 'name > 3'")
    assert parse_expression("a / b > 1").evaluate({"a": 1, "b": 0})[0] is False


@pytest.mark.parametrize(
    "text",
    [
        "",
        "amount",
        "amount >=",
        "amount >= 1 2",
        "a = 1",
        "import os",
        "__import__('os') > 1",
        "1 > 2)",
    ],
)
def test_bad_expressions_are_definition_errors(text: str) -> None:
    """Anything that is not one comparison raises SpecDefinitionError naming the expression."""
    with pytest.raises(SpecDefinitionError) as info:
        Invariant("bad", text)
    assert info.value.details["field"] == "expression"


@settings(deadline=None)
@given(st.text(alphabet="abc<>=!()[]+-*/ '\"0123456789.,", max_size=20))
def test_any_text_parses_or_raises_a_definition_error(text: str) -> None:
    """Any text either parses (and evaluates to PASS, or FAIL with a reason) or is a definition
    error on the expression field; nothing else escapes."""
    error: SpecDefinitionError | None = None
    try:
        expr = parse_expression(text)
    except SpecDefinitionError as exc:
        error = exc
    if error is not None:
        assert error.details["field"] == "expression"
    else:
        passed, _, message = expr.evaluate({})
        assert isinstance(passed, bool)
        assert passed or message != ""


def test_named_invariants_and_risk_rules() -> None:
    """The stock invariants read the documented fields; risk rules treat missing data as risky."""
    assert margin_floor(0.15).check({"projected_margin": 0.2}).verdict == "PASS"
    assert refund_limit(500, field="cents").check({"cents": 501}).to_dict() == {
        "name": "refund_limit", "expression": "cents <= 500", "verdict": "FAIL",
        "values": {"cents": 501}, "message": "cents <= 500 is false",
    }  # fmt: skip
    assert budget_cap(1000).check({"budget_spent": 900, "amount": 100}).passed is True
    assert (
        budget_cap().check({"budget_spent": 900, "amount": 101, "budget_cap": 1000}).passed is False
    )
    rule = RiskRule("amount > 100", RiskLevel.L2)
    assert (rule.applies({"amount": 101}), rule.applies({"amount": 5}), rule.applies({})) == (
        True,
        False,
        True,
    )


class Address(BaseModel):
    city: str
    zip_code: Annotated[str, Field(pattern=r"^\d{5}$")]


def test_tool_schema_comes_from_the_signature() -> None:
    """Parameters become the JSON Schema; ToolContext is injected, not exposed; docstring describes."""

    @tool(risk=RiskLevel.L1, timeout=2.5)
    async def ship(
        order_id: str, address: Address, express: bool = False, ctx: ToolContext | None = None
    ) -> str:
        """Ship an order.

        More details that the model does not need.
        """
        return "ok"

    assert (ship.name, ship.description, ship.risk, ship.timeout, ship.side_effects) == (
        "ship", "Ship an order.", RiskLevel.L1, 2.5, True,
    )  # fmt: skip
    assert ship.parameters["required"] == ["order_id", "address"]
    assert sorted(ship.parameters["properties"]) == ["address", "express", "order_id"]
    assert ship.definition().to_openai()["function"]["name"] == "ship"

    @tool
    def geocode(address: Address) -> str:
        """Geocode an address."""
        return address.city

    assert geocode.input is Address
    assert (geocode.risk, geocode.side_effects) == (RiskLevel.L0, False)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"name": "has space"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"risk": 7}, "risk"),
        ({"timeout": 0}, "timeout"),
        ({"risk": RiskLevel.L3}, "approvers"),
        ({"quorum": 0}, "quorum"),
        ({"approvers": ["a"], "quorum": 2}, "quorum"),
        ({"invariants": ["amount < 3"]}, "invariants"),
    ],
)
def test_bad_tool_options_name_the_field(options: dict[str, object], field: str) -> None:
    """Each invalid option raises SpecDefinitionError with the field in its details."""

    def fn(a: int) -> int:
        return a

    with pytest.raises(SpecDefinitionError) as info:
        tool(**options)(fn)  # type: ignore[call-overload]
    assert info.value.details["field"] == field


def test_untyped_or_variadic_functions_are_refused() -> None:
    """A parameter without annotation, or *args, cannot become a schema."""

    def untyped(a):  # type: ignore[no-untyped-def]
        return a

    def variadic(*args: int) -> int:
        return 0

    with pytest.raises(SpecDefinitionError, match="has no type annotation"):
        tool(untyped)
    with pytest.raises(SpecDefinitionError, match=r"\*args and \*\*kwargs"):
        tool(variadic)
