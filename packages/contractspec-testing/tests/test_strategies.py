"""Spec-driven Hypothesis strategies: valid inputs are accepted, invalid ones rejected."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel, Field
from testing_app import (
    CreateCustomer,
    QuoteIn,
    build_registry,
    create_customer,
    ctx,
    make_executor,
    quote,
)

from contractspec.core import ConfigurationError, SpecValidationError
from contractspec.testing.strategies import inputs_for, invalid_inputs_for, json_inputs_for

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Color(enum.Enum):
    RED = 1
    BLUE = 2


class Item(BaseModel):
    code: Annotated[str, Field(pattern=r"^[A-Z]{2}-\d{3}$")]
    weight: Annotated[float, Field(gt=0, le=50)]


class Kitchen(BaseModel):
    count: Annotated[int, Field(ge=-3, lt=10, multiple_of=2)]
    price: Annotated[Decimal, Field(ge=0, max_digits=6, decimal_places=2)]
    when: AwareDatetime
    day: dt.date
    ref: uuid.UUID
    color: Color
    mode: Literal["a", "b"]
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=3)]], Field(max_length=4)]
    items: list[Item]
    extra: dict[str, int] = {}
    pair: tuple[int, str] | None = None
    flags: frozenset[int] = frozenset()


@SETTINGS
@given(value=inputs_for(Kitchen))
def test_inputs_for_covers_types_and_constraints(value: Kitchen) -> None:
    """Every generated instance satisfies the declared constraints."""
    assert isinstance(value, Kitchen)
    assert -3 <= value.count < 10
    assert value.count % 2 == 0
    assert value.price >= 0
    assert len(value.price.as_tuple().digits) <= 6
    assert value.when.tzinfo is not None
    assert all(1 <= len(t) <= 3 for t in value.tags)
    assert len(value.tags) <= 4
    assert all(0 < i.weight <= 50 and len(i.code) == 6 for i in value.items)


@SETTINGS
@given(payload=inputs_for(quote))
async def test_generated_inputs_run_through_the_executor(payload: QuoteIn) -> None:
    """Valid-by-construction inputs of an operation are accepted and answered."""
    executor = make_executor(build_registry())
    out: Any = await executor.execute("billing.invoice.quote", payload, ctx("h"))
    assert out.lines == len(payload.lines)


@SETTINGS
@given(payload=invalid_inputs_for(quote))
async def test_invalid_inputs_are_rejected_by_the_executor(payload: Any) -> None:
    """Every invalid input raises SpecValidationError before the handler runs."""
    executor = make_executor(build_registry())
    with pytest.raises(SpecValidationError, match=r"invalid input for billing\.invoice\.quote@1"):
        await executor.execute("billing.invoice.quote", payload, ctx("h"))


@SETTINGS
@given(payload=invalid_inputs_for(Kitchen))
def test_invalid_inputs_never_validate(payload: Any) -> None:
    """invalid_inputs_for only yields values the model rejects."""
    with pytest.raises(ValueError):
        Kitchen.model_validate(payload)


@SETTINGS
@given(payload=json_inputs_for(create_customer))
def test_json_inputs_are_plain_json(payload: dict[str, Any]) -> None:
    """json_inputs_for yields JSON-compatible dicts that validate."""
    assert set(payload) == {"name", "email", "phone"}
    assert CreateCustomer.model_validate(payload).name == payload["name"]


@given(spec=st.sampled_from([None, 3, "crm.deal.create", dict]))
def test_strategies_reject_non_specs(spec: Any) -> None:
    """Anything but an operation spec or a model raises ConfigurationError naming the argument."""
    with pytest.raises(
        ConfigurationError, match="strategies need an OperationSpec or a pydantic model"
    ):
        inputs_for(spec)
