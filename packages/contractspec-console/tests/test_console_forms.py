"""Forms built from input models: widgets, constraints, labels, parsing back, error placement,
and the page a model with every kind of field renders to."""

from __future__ import annotations

import enum
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from console_support import ORG, POLICY, SECRET, USERS, assert_safe_html
from pydantic import AwareDatetime, BaseModel, Field
from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.testclient import TestClient

from contractspec.console import Console
from contractspec.console._forms import errors_by_field, form_fields, parse_form
from contractspec.core import (
    Executor,
    HandlerCtx,
    SpecRegistry,
    SpecValidationError,
    define_command,
    requires,
)
from contractspec.core.http import Principal


class Colour(enum.Enum):
    DARK_RED = "dark-red"
    BLUE = "blue"


class Inner(BaseModel):
    x: int


class Everything(BaseModel):
    title: Annotated[str, Field(max_length=80, title="Headline", description="Shown on top.")]
    count: Annotated[int, Field(ge=1, le=10)]
    ratio: float = 0.5
    amount: Annotated[Decimal, Field(max_digits=8, decimal_places=3)]
    whole: Annotated[Decimal, Field(decimal_places=0)] = Decimal(0)
    day: date
    at: AwareDatetime | None = None
    colour: Colour = Colour.BLUE
    size: Literal["s", "m", "l"]
    urgent: bool = False
    maybe: bool | None = None
    scores: list[int] = []
    inner: Inner | None = None


def test_each_kind_gets_its_widget_and_constraints() -> None:
    """str/int/float/decimal(scale)/date/datetime/enum/Literal/bool/optional bool/list/JSON."""
    fields = {f.name: f for f in form_fields(Everything)}
    assert fields["title"].widget == "text"
    assert (fields["title"].label, fields["title"].help, fields["title"].max_length) == (
        "Headline",
        "Shown on top.",
        80,
    )
    assert (fields["count"].widget, fields["count"].step) == ("number", "1")
    assert (fields["count"].minimum, fields["count"].maximum) == ("1", "10")
    assert (fields["ratio"].step, fields["ratio"].required) == ("any", False)
    assert (fields["amount"].widget, fields["amount"].step) == ("number", "0.001")
    assert fields["whole"].step == "1"
    assert fields["day"].widget == "date"
    assert (fields["at"].widget, fields["at"].nullable) == ("datetime-local", True)
    assert fields["colour"].choices == (("dark-red", "Dark red"), ("blue", "Blue"))
    assert fields["size"].choices == (("s", "S"), ("m", "M"), ("l", "L"))
    assert fields["urgent"].widget == "checkbox"
    assert fields["maybe"].widget == "tristate"
    assert (fields["scores"].kind, fields["scores"].item_kind) == ("list", "int")
    assert (fields["inner"].kind, fields["inner"].widget) == ("json", "textarea")
    assert [f.name for f in form_fields(Everything) if f.required] == [
        "title",
        "count",
        "amount",
        "day",
        "size",
    ]


def test_submitted_text_becomes_raw_input_the_model_accepts() -> None:
    """Empty inputs are left out, checkboxes are booleans, lists split by line, JSON parsed,
    local datetimes read as UTC; the model then validates the result."""
    fields = form_fields(Everything)
    form = ImmutableMultiDict(
        [
            ("title", "  Hello  "),
            ("count", "3"),
            ("ratio", ""),
            ("amount", "1.250"),
            ("day", "2026-02-03"),
            ("at", "2026-02-03T04:05"),
            ("colour", "dark-red"),
            ("size", "m"),
            ("maybe", "false"),
            ("scores", "1\n 2 \n\n3"),
            ("inner", '{"x": 4}'),
        ]
    )
    raw = parse_form(fields, form)
    assert raw == {
        "title": "  Hello  ",
        "count": "3",
        "amount": "1.250",
        "day": "2026-02-03",
        "at": "2026-02-03T04:05Z",
        "colour": "dark-red",
        "size": "m",
        "urgent": False,
        "maybe": False,
        "scores": ["1", "2", "3"],
        "inner": {"x": 4},
    }
    model = Everything.model_validate(raw)
    assert model.at == datetime.fromisoformat("2026-02-03T04:05+00:00")
    assert (model.scores, model.inner, model.ratio) == ([1, 2, 3], Inner(x=4), 0.5)


def test_errors_go_to_their_top_level_field_and_the_rest_to_the_form() -> None:
    """`loc` picks the field; nested paths keep their tail; unknown locations are form errors."""
    fields = form_fields(Everything)
    by_field, rest = errors_by_field(
        fields,
        [
            {"loc": ["count"], "msg": "too big"},
            {"loc": ["inner", "x"], "msg": "not an int"},
            {"loc": ["scores", 1], "msg": "bad"},
            {"loc": [], "msg": "title and size disagree"},
            {"loc": ["ghost"], "msg": "?"},
        ],
    )
    assert by_field == {"count": ["too big"], "inner": ["x: not an int"], "scores": ["1: bad"]}
    assert rest == ["title and size disagree", "ghost: ?"]


def test_a_form_of_every_kind_renders_labelled_and_round_trips() -> None:
    """Every input has a label and its help is linked; a submit reaches the handler typed."""
    seen: list[Everything] = []
    op = define_command("lab.everything", input=Everything, output=Inner, auth=requires("lab"))
    registry = SpecRegistry(op)

    @registry.handler(op)
    async def handle(inp: Everything, ctx: HandlerCtx) -> Inner:
        if inp.count == 7:
            raise SpecValidationError(
                "nested", errors=[{"loc": ["inner", "x"], "msg": "x must be even"}]
            )
        seen.append(inp)
        return Inner(x=inp.count)

    def auth(request: Request) -> Principal:
        return Principal(USERS["alice"], org_id=ORG)

    console = Console(Executor(registry, policy=POLICY), authenticate=auth, secret_key=SECRET)
    client = TestClient(console)
    page = client.get("/ops/lab.everything")
    soup = assert_safe_html(page.text)
    controls = soup.select("#op-form input:not([type=hidden]), #op-form select, #op-form textarea")
    assert len(controls) == 13
    for control in controls:
        assert soup.select_one(f'label[for="{control["id"]}"]') is not None, control
    assert soup.select_one("#f-title")["aria-describedby"] == "f-title-help"
    assert soup.select_one("#f-title-help").get_text() == "Shown on top."
    assert soup.select_one("#f-amount")["step"] == "0.001"
    token = soup.select_one("input[name=_csrf]")["value"]
    data = {
        "_csrf": token,
        "title": "T",
        "count": "2",
        "amount": "3.5",
        "day": "2026-01-01",
        "size": "l",
        "urgent": "true",
        "scores": "5\n6",
    }
    done = client.post("/ops/lab.everything", data=data)
    assert done.status_code == 200
    assert [d.get_text(strip=True) for d in assert_safe_html(done.text).select(".result dd")] == [
        "2"
    ]
    assert seen[0].urgent is True
    assert seen[0].scores == [5, 6]
    assert seen[0].amount == Decimal("3.5")
    nested = client.post("/ops/lab.everything", data={**data, "count": "7"})
    assert nested.status_code == 422
    assert assert_safe_html(nested.text).select_one("#f-inner-error").get_text() == (
        "x: x must be even"
    )


def test_a_failing_handler_is_a_500_on_the_form_page_without_its_cause() -> None:
    """The page names the request id (a valid X-Request-Id is kept), never the exception; the
    values stay in the form."""
    op = define_command("lab.explode", input=Inner, output=Inner, auth=requires("lab"))
    registry = SpecRegistry(op)

    @registry.handler(op)
    async def explode(inp: Inner, ctx: HandlerCtx) -> Inner:
        raise RuntimeError("secret connection string")

    def auth(request: Request) -> Principal:
        return Principal(USERS["alice"], org_id=ORG)

    console = Console(Executor(registry, policy=POLICY), authenticate=auth, secret_key=SECRET)
    client = TestClient(console)
    token = assert_safe_html(client.get("/ops/lab.explode").text).select_one("input[name=_csrf]")
    for given, kept in (("req-42", True), ("two words", False)):
        answer = client.post(
            "/ops/lab.explode",
            data={"_csrf": token["value"], "x": "5"},
            headers={"X-Request-Id": given},
        )
        assert answer.status_code == 500
        soup = assert_safe_html(answer.text)
        text = soup.select_one(".error-box").get_text()
        assert "secret" not in answer.text
        assert "internal_error" in text
        assert ("req-42" in text) is kept
        assert "two words" not in text
        assert soup.select_one("#f-x")["value"] == "5"
