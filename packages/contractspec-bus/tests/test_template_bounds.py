"""Notification templates cannot hang the renderer or render without bound, and every render
failure is one `NotificationRenderError`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from contractspec.bus import (
    NotificationRenderError,
    Recipient,
    Template,
    define_notification,
    to_user,
)
from contractspec.core import EventEnvelope, SpecDefinitionError, define_event


class Digest(BaseModel):
    text: str
    width: int = 10
    items: list[str] = []
    nested: list[Any] = []


digest = define_event("ops.digest", payload=Digest)
ANN = Recipient("u1", email="ann@example.com", name="Ann")


def _spec(body: str, **kwargs: Any) -> Any:
    return define_notification(
        "ops.digest_ready",
        event=digest,
        recipients=[to_user("u1")],
        channels=["in_app"],
        templates={"en": Template(subject="Digest", body=body)},
        **kwargs,
    )


def _event(payload: Digest) -> EventEnvelope:
    return EventEnvelope(
        id="e1", name="ops.digest", version=1, occurred_at=datetime(2024, 1, 1, tzinfo=UTC),
        payload=payload,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{% for a in items %}{% for b in items %}{{ b }}{% endfor %}{% endfor %}", "nested loops"),
        (
            "{% for a in items %}{% if a %}{% for b in items %}x{% endfor %}{% endif %}{% endfor %}",
            "nested loops",
        ),
        ("{% for a in items recursive %}{{ loop(items) }}{% endfor %}", "recursive loops"),
        ("{{ text|center(1000000000) }}", "|center argument"),
        ("{{ text|indent(width=1e9) }}", "|indent argument"),
        ("{{ text * 1000000000 }}", "multiplying"),
        ("{{ 9 ** 9 ** 9 }}", r"\*\* operator"),
        ("{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}", "macros"),
        ("{{ text.ljust(1000000000) }}", "a call argument"),
    ],
)
def test_templates_that_could_render_unboundedly_are_refused_at_definition(
    body: str, reason: str
) -> None:
    """Nested/recursive loops, macros, ** and huge constant sizes: SpecDefinitionError when the
    notification is defined, naming the construct."""
    with pytest.raises(SpecDefinitionError, match=reason) as info:
        _spec(body)
    assert info.value.details == {"field": "templates"}


@pytest.mark.parametrize(
    ("body", "payload"),
    [
        ("{{ text|center(width) }}", Digest(text="x", width=10**9)),  # 1 GB on the old code
        ("{{ text * width }}", Digest(text="ab", width=10**8)),
        ("{{ text.ljust(width) }}", Digest(text="ab", width=10**9)),
        ("{{ '%*s'|format(width, text) }}", Digest(text="ab", width=10**9)),
        ("{% for i in items %}{{ text }}{% endfor %}", Digest(text="y" * 1000, items=["i"] * 500)),
    ],
)
def test_output_past_max_render_chars_is_a_render_error(body: str, payload: Digest) -> None:
    """Sizes that come from the payload are checked at render time, before the big value is
    built where Python would build it in one step."""
    spec = _spec(body)
    started = time.monotonic()
    with pytest.raises(NotificationRenderError) as info:
        spec.render("in_app", _event(payload), ANN)
    assert time.monotonic() - started < 2
    assert info.value.details["limit"] == "chars"
    assert info.value.details["notification"] == "ops.digest_ready@1"


def test_a_slow_render_stops_at_render_timeout() -> None:
    """A single loop whose body is slow (quadratic work) stops at the timeout, not minutes later."""
    spec = _spec(
        "{% for i in items %}{{ items|join(',')|length }}{% endfor %}",
        render_timeout=0.2,
        max_render_chars=10**7,
    )
    payload = Digest(text="", items=[f"item-{n}" for n in range(30_000)])
    started = time.monotonic()
    with pytest.raises(NotificationRenderError, match="render_timeout") as info:
        spec.render("in_app", _event(payload), ANN)
    assert time.monotonic() - started < 1.5
    assert info.value.details["limit"] == "time"


def test_recursion_error_is_wrapped_in_notification_render_error() -> None:
    """A value whose str() recurses too deep: NotificationRenderError, not RecursionError."""
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    spec = _spec("{{ nested }}", max_render_chars=10**7)
    payload = Digest.model_construct(text="", width=1, items=[], nested=nested)
    with pytest.raises(NotificationRenderError, match="RecursionError"):
        spec.render("in_app", _event(payload), ANN)


def test_ordinary_templates_still_render_and_bounds_are_validated() -> None:
    """Loops, filters and sizes within bounds render as before; bad bounds are refused."""
    spec = _spec("{% for i in items %}{{ i|upper }},{% endfor %} {{ text|center(7) }}")
    out = spec.render("in_app", _event(Digest(text="ok", items=["a", "b"])), ANN)
    assert out["body"] == "A,B, " + "ok".center(7)
    with pytest.raises(SpecDefinitionError) as info:
        _spec("{{ text }}", render_timeout=0)
    assert info.value.details == {"field": "render_timeout"}
    with pytest.raises(SpecDefinitionError) as info:
        _spec("{{ text }}", max_render_chars=0)
    assert info.value.details == {"field": "max_render_chars"}
