"""Redaction: detectors, spec paths, secret keys, stable placeholders, and the corpus proof."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from testing_app import build_registry, ctx, make_executor
from testing_corpus import CORPUS, HARMLESS
from testing_support import STORE_KINDS, open_test_store

from contractspec.testing import Placeholders, Redactor, TrafficRecorder
from contractspec.testing.redaction import card_detector, luhn_valid


def test_luhn_matches_known_numbers() -> None:
    """Luhn accepts published test card numbers and rejects a changed digit and non-digits."""
    assert luhn_valid("4111111111111111") is True
    assert luhn_valid("79927398713") is True
    assert luhn_valid("4111111111111112") is False
    assert luhn_valid("") is False
    assert luhn_valid("4111-1111") is False


def test_detectors_replace_inside_text_with_shaped_placeholders() -> None:
    """E-mails, phones, cards and tokens inside free text become shaped placeholders."""
    text = (
        "mail bob@acme.io, call +44 20 7946 0958, card 4111-1111-1111-1111, "
        "Authorization: Bearer abc123def456"
    )
    assert Redactor().redact_value(text) == (
        "mail redacted-1@example.com, call +1-555-0101, card 4000000000000010, "
        "Authorization: Bearer [redacted-token-1]"
    )


def test_same_value_gets_same_placeholder_within_a_snapshot() -> None:
    """Relations survive: one value, one placeholder, across input, output and error."""
    redactor = Redactor()
    inp, out, err = redactor.redact_call(
        {"email": "a@x.io", "cc": ["b@x.io", "a@x.io"]},
        {"owner": "a@x.io"},
        {"code": "conflict", "type": "ConflictError", "message": "b@x.io exists"},
        frozenset({"input.email"}),
    )
    assert inp == {
        "email": "redacted-1@example.com",
        "cc": ["redacted-2@example.com", "redacted-1@example.com"],
    }
    assert out == {"owner": "redacted-1@example.com"}
    assert err == {
        "code": "conflict",
        "type": "ConflictError",
        "message": "redacted-2@example.com exists",
    }


def test_spec_paths_replace_whole_values_through_lists() -> None:
    """A pii path covers every list element; non-string values become `[redacted-n]`."""
    data = {"people": [{"name": "Ann Lee", "age": 41}, {"name": "Bo Ek", "age": 41}], "n": 2}
    got = Redactor().redact_value(data, Placeholders(), frozenset({"people.name", "people.age"}))
    assert got == {
        "people": [
            {"name": "[redacted-1]", "age": "[redacted-2]"},
            {"name": "[redacted-3]", "age": "[redacted-2]"},
        ],
        "n": 2,
    }


def test_secret_named_keys_are_replaced_whatever_they_hold() -> None:
    """Values under password/api_key/token keys are replaced wholesale; token_count is kept."""
    got = Redactor().redact_value(
        {"password": "x", "API_KEY": "short", "refresh_token": 12, "token_count": 7}
    )
    assert got == {
        "password": "[redacted-1]",
        "API_KEY": "[redacted-2]",
        "refresh_token": "[redacted-3]",
        "token_count": 7,
    }


@pytest.mark.parametrize("text", HARMLESS)
def test_harmless_values_survive(text: str) -> None:
    """Dates, UUIDs, amounts, versions and SKUs are not mistaken for personal data."""
    assert Redactor().redact_value({"value": text}) == {"value": text}


def test_detectors_can_be_turned_off() -> None:
    """With no detectors only paths and secret keys are redacted."""
    got = Redactor(detectors=()).redact_value({"note": "bob@acme.io", "secret": "s"})
    assert got == {"note": "bob@acme.io", "secret": "[redacted-1]"}


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    """Luhn-valid 16-digit numbers starting with 4 or 5, grouped by 4 with a separator."""
    body = str(draw(st.sampled_from("45"))) + "".join(
        draw(st.lists(st.sampled_from("0123456789"), min_size=14, max_size=14))
    )
    check = next(d for d in "0123456789" if luhn_valid(body + d))
    digits = body + check
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(digits[i : i + 4] for i in range(0, 16, 4))


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.text(alphabet=st.characters(categories=["L", "Zs"]), max_size=20),
    card=card_numbers(),
    email=st.emails(domains=st.sampled_from(["acme.io", "mail.example.org", "x.co"])),
)
def test_generated_cards_and_emails_never_survive(prefix: str, card: str, email: str) -> None:
    """Hypothesis: any Luhn-valid card and any e-mail inside text is replaced."""
    text = f"{prefix} {card} / {email} ."
    out = Redactor().redact_value({"t": text})["t"]
    assert card not in out
    assert email not in out
    assert card_detector.spans(card) == [(0, len(card))]


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_corpus_nothing_sensitive_reaches_the_store(kind: str, tmp_path: Path) -> None:
    """Every corpus secret, sent through a real executor into every store, is absent from it."""
    async for store in open_test_store(kind, tmp_path):
        recorder = TrafficRecorder(store, sample_rate=1.0)
        executor = make_executor(build_registry(), traffic=recorder)
        for n, (payload, _secrets) in enumerate(CORPUS):
            note = json.dumps(payload, ensure_ascii=False)
            await executor.execute(
                "billing.invoice.quote",
                {
                    "customer_email": "client@real-company.com",
                    "lines": [{"sku": "A", "quantity": 1, "unit_price": "1.00"}],
                    "note": note,
                },
                ctx(f"corpus-{n}"),
            )
            # raw payloads that fail validation are recorded as errors, with the raw input
            with pytest.raises(Exception, match="invalid input"):
                await executor.execute("billing.invoice.quote", payload, ctx(f"bad-{n}"))
        await recorder.aclose()
        stored = await store.query()
        assert len(stored) == 2 * len(CORPUS)
        dump = json.dumps([s.to_dict() for s in stored], ensure_ascii=False)
        secrets = [s for _payload, values in CORPUS for s in values] + ["client@real-company.com"]
        leaked = [s for s in secrets if s in dump]
        assert leaked == []
        assert "redacted-1@example.com" in dump
