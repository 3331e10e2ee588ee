"""verify_webhook against hostile headers and replays inside the tolerance window."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contractspec.bus import (
    MemoryReplayGuard,
    ReplayGuard,
    WebhookReplayError,
    WebhookSignatureError,
    sign_webhook,
    verify_webhook,
)
from contractspec.core import ConfigurationError

BODY = b'{"notification":"crm.deal_won"}'
TS = "X-ContractSpec-Timestamp"
SIG = "X-ContractSpec-Signature"


def _headers(timestamp: int = 1000) -> dict[str, str]:
    return {TS: str(timestamp), SIG: sign_webhook("k", BODY, timestamp)}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (TS, "9" * 400),  # was OverflowError (int too large to convert to float)
        (TS, "-" + "9" * 400),
        (TS, "\u0661\u0660\u0660\u0660"),  # Arabic-Indic digits: int() accepts them
        (TS, "1e3"),
        (TS, "+1000"),
        (TS, ""),
        (SIG, "v1=" + "é" * 64),  # was TypeError from hmac.compare_digest
        (SIG, "v1=" + "0" * 63 + "\u0660"),
        (SIG, "v1=" + "z" * 64),
        (SIG, "v1=" + "0" * 10_000),
        (SIG, ""),
    ],
)
def test_malformed_headers_are_webhook_signature_errors(field: str, value: str) -> None:
    """Non-ASCII signatures, 400-digit or Unicode-digit timestamps: a WebhookSignatureError
    naming the header, never TypeError or OverflowError."""
    headers = {**_headers(), field: value}
    with pytest.raises(WebhookSignatureError) as info:
        verify_webhook("k", BODY, headers, now=1000.0)  # a float, like time.time()
    assert info.value.details == {"field": field}


@pytest.mark.parametrize("value", [None, 1000, 1000.0, ["1000"], b"\xff\xfe"])
def test_header_values_that_are_not_text_are_webhook_signature_errors(value: Any) -> None:
    """Frameworks hand over odd values; each is refused as a malformed header."""
    headers: dict[str, Any] = {**_headers(), TS: value}
    with pytest.raises(WebhookSignatureError):
        verify_webhook("k", BODY, headers, now=1000)


def test_raw_byte_headers_are_accepted() -> None:
    """ASGI servers give headers as bytes: those are decoded, not refused."""
    raw = {k.encode(): v.encode() for k, v in _headers().items()}
    assert verify_webhook("k", BODY, raw, now=1000) == 1000  # type: ignore[arg-type]


_header_text = st.one_of(
    st.text(max_size=500),
    st.integers(min_value=-(10**500), max_value=10**500).map(str),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=300, deadline=None)
@given(
    timestamp=st.one_of(st.none(), _header_text),
    signature=st.one_of(st.none(), _header_text, _header_text.map(lambda s: "v1=" + s)),
    now=st.floats(min_value=0, max_value=2e9),
)
def test_any_header_values_either_verify_or_raise_webhook_signature_error(
    timestamp: str | None, signature: str | None, now: float
) -> None:
    """Hypothesis: whatever the two headers hold, the only exception is WebhookSignatureError."""
    headers = {}
    if timestamp is not None:
        headers[TS] = timestamp
    if signature is not None:
        headers[SIG] = signature
    with contextlib.suppress(WebhookSignatureError):
        verify_webhook("k", BODY, headers, now=now)


def test_a_replay_inside_the_tolerance_is_refused_with_a_replay_guard() -> None:
    """The same signed request twice within the window: accepted once, then WebhookReplayError;
    without a guard it is accepted again (what the guard exists for)."""
    guard = MemoryReplayGuard()
    assert isinstance(guard, ReplayGuard)
    headers = _headers()
    assert verify_webhook("k", BODY, headers, now=1010, replay_guard=guard) == 1000
    with pytest.raises(WebhookReplayError) as info:
        verify_webhook("k", BODY, headers, now=1020, replay_guard=guard)
    assert isinstance(info.value, WebhookSignatureError)
    assert info.value.details == {"field": SIG}
    assert verify_webhook("k", BODY, headers, now=1020) == 1000  # no guard: accepted
    # Another request (new timestamp, so a new signature) is not a replay.
    assert verify_webhook("k", BODY, _headers(1001), now=1020, replay_guard=guard) == 1001
    # A forged or stale request never enters the guard.
    with pytest.raises(WebhookSignatureError):
        verify_webhook("other", BODY, _headers(1002), now=1020, replay_guard=guard)
    assert len(guard) == 2


def test_replay_guard_entries_expire_with_the_tolerance_window() -> None:
    """An entry is kept until timestamp + tolerance; a full guard forgets only expired entries
    and otherwise refuses rather than forgetting an unexpired signature."""
    guard = MemoryReplayGuard(max_entries=1)
    assert guard.check_and_remember("a", 1300.0, 1000.0)
    assert not guard.check_and_remember("b", 1300.0, 1000.0)  # full, "a" still valid: refuse
    assert guard.check_and_remember("b", 1600.0, 1301.0)  # "a" expired and was dropped
    assert not guard.check_and_remember("b", 1600.0, 1302.0)
    with pytest.raises(ConfigurationError):
        MemoryReplayGuard(max_entries=0)
