"""Job specs: definition checks, payload validation (also with Hypothesis), backoff delays."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jobs_app import Email, send_email

from contractspec.core import SpecDefinitionError, SpecValidationError
from contractspec.jobs import Backoff, MemoryJobQueue, define_job, exponential, fixed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Mail.Send"}, "job name 'Mail.Send' is not valid"),
        ({"name": "cs.internal"}, "uses a prefix reserved for ContractSpec"),
        ({"payload": dict}, "payload must be a pydantic model class"),
        ({"max_attempts": 0}, "max_attempts must be an integer >= 1"),
        ({"timeout": 0}, "timeout must be positive and finite"),
        ({"timeout": "5s"}, "timeout must be a timedelta or a number of seconds"),
        ({"queue": "bad queue"}, "queue 'bad queue' is not valid"),
        ({"priority": 2**40}, "priority must be a 32-bit integer"),
        ({"unique_key": "mail:{email}"}, "names email, which is not a payload field"),
        ({"backoff": 5}, "backoff must come from exponential(...) or fixed(...)"),
        ({"version": 0}, "version must be a positive integer"),
    ],
)
def test_define_job_refuses_bad_definitions(kwargs: dict[str, Any], message: str) -> None:
    """Each definition mistake raises SpecDefinitionError naming the field and the fix."""
    args: dict[str, Any] = {"name": "mail.send", "payload": Email, **kwargs}
    with pytest.raises(SpecDefinitionError) as info:
        define_job(**args)
    assert message in info.value.message


def test_backoff_arguments_are_checked() -> None:
    """exponential() refuses cap < base, factor < 1 and jitter outside [0, 1]."""
    for bad in (
        {"base": 10, "cap": 5},
        {"jitter": 1.5},
        {"factor": 0.5},
        {"base": -1},
        {"cap": float("inf")},
    ):
        with pytest.raises(SpecDefinitionError, match="backoff needs 0 <= base <= cap"):
            exponential(**bad)  # type: ignore[arg-type]


def test_exponential_backoff_doubles_up_to_the_cap() -> None:
    """Without jitter delays are base * 2**(n-1) seconds, capped; fixed() is constant."""
    backoff = exponential(base=2, cap=30, jitter=0)
    assert [backoff.delay(n).total_seconds() for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    assert backoff.delay(10_000).total_seconds() == 30
    assert [fixed(5).delay(n).total_seconds() for n in (1, 2, 9)] == [5, 5, 5]


def test_jitter_takes_at_most_its_share_off() -> None:
    """With jitter j, each delay lies in [(1 - j) * d, d]; seeded randomness is reproducible."""
    backoff = Backoff(base=10, factor=2, cap=1000, jitter=0.5)
    rng = random.Random(7)
    delays = [backoff.delay(3, rng).total_seconds() for _ in range(200)]
    assert min(delays) >= 20.0
    assert max(delays) <= 40.0
    assert len({round(d, 6) for d in delays}) == 200
    again = [backoff.delay(3, random.Random(7)).total_seconds() for _ in range(1)]
    assert again == delays[:1]


@settings(max_examples=60, deadline=None)
@given(
    payload=st.dictionaries(
        st.sampled_from(["to", "subject", "extra"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers())),
    )
)
async def test_enqueue_accepts_exactly_the_payloads_the_model_accepts(
    payload: dict[str, Any],
) -> None:
    """Enqueue stores a payload iff pydantic validates it; otherwise SpecValidationError lists fields."""
    from pydantic import ValidationError

    queue = MemoryJobQueue([send_email])
    try:
        expected: dict[str, Any] | None = Email.model_validate(payload).model_dump(mode="json")
    except ValidationError as exc:
        expected = None
        fields = sorted(".".join(map(str, e["loc"])) for e in exc.errors())
    if expected is None:
        with pytest.raises(SpecValidationError) as info:
            await queue.enqueue("mail.send", payload)
        assert sorted(e["field"] for e in info.value.errors) == fields
        assert await queue.list() == []
    else:
        job_id = await queue.enqueue("mail.send", payload)
        job = await queue.get(job_id)
        assert job is not None
        assert job.payload == expected


@settings(max_examples=40, deadline=None)
@given(delay=st.one_of(st.integers(-5, -1), st.text(max_size=3), st.just(timedelta(seconds=-1))))
async def test_invalid_delays_are_rejected(delay: Any) -> None:
    """Negative or non-numeric delays raise SpecValidationError naming `delay`."""
    queue = MemoryJobQueue([send_email])
    with pytest.raises(SpecValidationError) as info:
        await queue.enqueue("mail.send", {"to": "ada@x.io"}, delay=delay)
    assert info.value.details["field"] == "delay"


def test_unique_key_function_and_errors() -> None:
    """unique_key may be a function; one that fails or returns a non-string is a validation error."""
    by_fn = define_job("mail.digest", payload=Email, unique_key=lambda p: f"digest:{p.to}")
    assert by_fn.key_for(Email(to="ada@x.io")) == "digest:ada@x.io"
    broken = define_job("mail.broken", payload=Email, unique_key=lambda p: 42)
    with pytest.raises(SpecValidationError, match="unique_key must give a non-empty string"):
        broken.key_for(Email(to="ada@x.io"))
    spec = define_job("mail.send", payload=Email, timeout=timedelta(minutes=2))
    assert spec.timeout == 120.0
