"""Redaction coverage (issue 15): PII echoes, detector categories, keys, headers, the labelled corpus."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import phonenumbers
import pytest
from stdnum import iban as stdnum_iban
from stdnum import luhn
from testing_labelled import IBANS, NATIONAL_IDS, PHONE_REGIONS, build_corpus

from contractspec.core import ConfigurationError
from contractspec.testing import Placeholders, Redactor
from contractspec.testing.redaction import DEFAULT_PHONE_REGIONS, is_secret_key


def _strings(value: Any) -> Iterator[str]:
    """Every key, string and scalar of a JSON-like value, as text."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif value is not None:
        yield str(value)


# -- spec PII, wherever it is echoed -----------------------------------------------------------


def test_spec_pii_values_are_redacted_wherever_they_are_echoed() -> None:
    """A name at a pii path vanishes from output text, error messages, substrings, any case."""
    redactor = Redactor()
    inp, out, err = redactor.redact_call(
        {"name": "Ann Lee-Smith", "city": "Oslo"},
        {
            "greeting": "Hello Ann Lee-Smith, welcome!",
            "audit": {"lines": ["created ANN LEE-SMITH", "ok"]},
            "raw": json.dumps({"who": "Ann Lee-Smith"}),
            "shout": "annleesmith",  # not the value: kept
        },
        {"code": "conflict", "type": "ConflictError", "message": "ann lee-smith already exists"},
        frozenset({"input.name"}),
    )
    assert inp == {"name": "[redacted-1]", "city": "Oslo"}
    assert out == {
        "greeting": "Hello [redacted-1], welcome!",
        "audit": {"lines": ["created [redacted-1]", "ok"]},
        "raw": '{"who": "[redacted-1]"}',
        "shout": "annleesmith",
    }
    assert err is not None
    assert err["message"] == "[redacted-1] already exists"


def test_pii_echoes_keep_the_shape_of_the_value_and_json_escaped_forms() -> None:
    """An e-mail echoed is the same shaped placeholder; a quoted value is found JSON-escaped."""
    done = Redactor().redact_record(
        {"email": "zoë@example.com", "nick": 'Jo "JJ" Ba'},
        {"note": "sent to zoë@example.com", "log": json.dumps({"n": 'Jo "JJ" Ba'})},
        pii=frozenset({"input.email", "input.nick"}),
    )
    assert done.input == {"email": "redacted-1@example.com", "nick": "[redacted-1]"}
    assert done.output == {"note": "sent to redacted-1@example.com", "log": '{"n": "[redacted-1]"}'}


def test_short_pii_values_are_replaced_at_their_paths_only() -> None:
    """Values shorter than `min_echo_length` would hit unrelated text: only their path changes."""
    done = Redactor().redact_record(
        {"initials": "AL", "name": "Ann"},
        {"msg": "ALL good, Ann"},
        pii=["input.initials", "input.name"],
    )
    assert done.input == {"initials": "[redacted-1]", "name": "[redacted-2]"}
    assert done.output == {"msg": "ALL good, [redacted-2]"}


def test_event_payloads_are_redacted_with_their_pii_paths_and_echoes() -> None:
    """Event pii paths are replaced and their values vanish from input, output and error too."""
    done = Redactor().redact_record(
        {"contact": "c-1"},
        {"summary": "welcome mail sent to Ada Lovelace"},
        {"code": "x", "type": "X", "message": "retry for ada lovelace"},
        events=[
            {
                "type": "crm.contact.created",
                "version": 1,
                "payload": {"name": "Ada Lovelace", "id": "c-1"},
            },
            {"type": "crm.other", "version": 1, "payload": {"text": "Ada Lovelace joined"}},
        ],
        event_pii={"crm.contact.created@1": ["name"]},
    )
    assert done.events == [
        {
            "type": "crm.contact.created",
            "version": 1,
            "payload": {"name": "[redacted-1]", "id": "c-1"},
        },
        {"type": "crm.other", "version": 1, "payload": {"text": "[redacted-1] joined"}},
    ]
    assert done.output == {"summary": "welcome mail sent to [redacted-1]"}
    assert done.error == {"code": "x", "type": "X", "message": "retry for [redacted-1]"}
    assert "Ada" not in json.dumps([done.input, done.output, done.error, done.events])


# -- detector categories -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from 81.2.69.160 ok", "from 192.0.2.1 ok"),
        ("from 2a00:1450:4007:80e::200e ok", "from 2001:db8::1 ok"),
        ("81.2.69.160, 2a00:1450:4007:80e::200e", "192.0.2.1, 2001:db8::2"),
        ("local 127.0.0.1 and ::1 stay", "local 127.0.0.1 and ::1 stay"),
        ("DE89 3704 0044 0532 0130 00 due", "GB56REDA00000000000001 due"),
        ("SSN 536-22-1234.", "SSN [redacted-id-1]."),
        ("social security no 536 22 1234", "social security no [redacted-id-1]"),
        ("BSN 111222333", "BSN [redacted-id-1]"),
        ("bestel 111222333 stuks", "bestel 111222333 stuks"),  # no context word: not a BSN
        ("à josé@exämple.de!", "à redacted-1@example.com!"),
        ("иван@почта.рф", "redacted-1@example.com"),
        ("appel 06 12 34 56 78", "appel +1-555-0101"),
        ("Tel. 030 12345678", "Tel. +1-555-0101"),
        ("電話 03-1234-5678", "電話 +1-555-0101"),
        ("fone (11) 91234-5678", "fone +1-555-0101"),
        (
            "postgresql://admin:hunter2@db:5432/app",
            "postgresql://admin:redacted-credential-1@db:5432/app",
        ),
        ("redis://:pw0rd@localhost:6379/0", "redis://:redacted-credential-1@localhost:6379/0"),
        ("mysql://root:toor99@10.0.0.5/db", "mysql://root:redacted-credential-1@192.0.2.1/db"),
        ("password=hunter2 retries=3", "password=[redacted-token-1] retries=3"),
        ("db_pass: Tr0ub4dor&3 timeout=30", "db_pass: [redacted-token-1] timeout=30"),
        ("?access_token=abc123def&page=2", "?access_token=[redacted-token-1]&page=2"),
        ("key AIzaSyA1234567890abcdefghijklmnopqrstuv here", "key [redacted-token-1] here"),
    ],
)
def test_detectors_find_each_category_in_text(text: str, expected: str) -> None:
    """IPs, IBANs, national ids, IDN e-mails, national phones, URL credentials, inline secrets."""
    assert Redactor().redact_value(text) == expected


def test_placeholders_keep_the_shape_validators_check() -> None:
    """IBAN, card, e-mail and IP placeholders still validate, so redacted inputs replay."""
    out = Redactor().redact_value(
        {"iban": "GB29NWBK60161331926819", "card": "4111 1111 1111 1111", "ip": "81.2.69.160"}
    )
    assert stdnum_iban.is_valid(out["iban"])
    assert luhn.is_valid(out["card"])
    assert out["ip"] == "192.0.2.1"


def test_unknown_phone_region_names_the_field() -> None:
    """A bad `phone_regions` entry is a ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError, match="phone_regions") as caught:
        Redactor(phone_regions=["GB", "XX"])
    assert caught.value.details["field"] == "phone_regions"
    with pytest.raises(ConfigurationError, match="phone_regions"):
        Redactor(phone_regions=[44])  # type: ignore[list-item]


def test_phone_regions_select_the_national_formats() -> None:
    """Only the configured countries' national formats are known; international ones always."""
    only_us = Redactor(phone_regions=["US"])
    assert only_us.redact_value("appel 06 12 34 56 78") == "appel 06 12 34 56 78"
    assert only_us.redact_value("call +33 6 12 34 56 78") == "call +1-555-0101"
    assert only_us.redact_value("call (415) 555-2671") == "call +1-555-0101"


# -- keys and headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "secret_value",
        "X-Api-Key",
        "x-auth-token",
        "aws_secret_access_key",
        "passwordConfirmation",
        "client-secret-v2",
        "DB_PASSWORD_OLD",
        "session_id",
        "PHPSESSID",
    ],
)
def test_secret_key_names_wherever_the_secret_word_stands(key: str) -> None:
    """Secret words count anywhere in the key, hyphenated or camelCase."""
    assert is_secret_key(key) is True
    assert Redactor().redact_value({key: "value-123"}) == {key: "[redacted-1]"}


@pytest.mark.parametrize(
    "key",
    ["token_type", "expires_at", "api_key_id", "password_updated_at", "max_tokens", "secretary"],
)
def test_keys_that_describe_a_secret_are_kept(key: str) -> None:
    """Keys about a secret (type, expiry, id, counts) are not secrets."""
    assert is_secret_key(key) is False
    assert Redactor().redact_value({key: "value"}) == {key: "value"}


def test_secret_objects_keep_their_non_secret_siblings() -> None:
    """`{"token": {...}}` loses its value and keeps its timestamps and ids."""
    got = Redactor().redact_value(
        {
            "token": {"value": "tv-55aa66bb", "expires_at": 1733467200123, "id": "tok_1"},
            "ssn": "x-1",
        }
    )
    assert got == {
        "token": {"value": "[redacted-1]", "expires_at": 1733467200123, "id": "tok_1"},
        "ssn": "[redacted-2]",
    }


def test_credential_headers_lose_only_their_credentials() -> None:
    """Cookie, Set-Cookie and Authorization keep schemes, attributes and harmless cookies."""
    got = Redactor().redact_value(
        {
            "Cookie": "sessionid=38afes7a8x; theme=dark; lang=en",
            "Set-Cookie": "sid=abcdef1234567890; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly",
            "Authorization": "Bearer abc.def.ghi123456",
            "Proxy-Authorization": 'Digest username="ann", realm="api", uri="/x", response="6629fae49393a05397450978507c4ef1"',
        }
    )
    assert got == {
        "Cookie": "sessionid=[redacted-token-1]; theme=dark; lang=en",
        "Set-Cookie": "sid=[redacted-token-2]; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly",
        "Authorization": "Bearer [redacted-token-3]",
        "Proxy-Authorization": 'Digest username="[redacted-token-4]", realm="api", uri="/x", '
        'response="[redacted-token-5]"',
    }


# -- the labelled corpus -----------------------------------------------------------------------


def test_corpus_labels_are_real_data() -> None:
    """The corpus's IBANs, national ids and phone numbers pass their own checksums and metadata."""
    assert all(stdnum_iban.is_valid(value) for value in IBANS)
    for module, _label, number in NATIONAL_IDS:
        compact = number.replace(" ", "")  # written grouped, checked compact
        assert importlib.import_module(f"stdnum.{module}").is_valid(compact), number
    assert set(PHONE_REGIONS) == set(DEFAULT_PHONE_REGIONS)
    phones = [s for s in build_corpus() if s.category.startswith("phone-")]
    assert len({s.category for s in phones}) == len(PHONE_REGIONS)
    for sample in phones:
        region = sample.category.removeprefix("phone-")
        assert phonenumbers.is_valid_number(phonenumbers.parse(sample.secrets[0], region))


def test_corpus_recall_is_total_on_secrets_and_non_secrets_survive() -> None:
    """Every labelled secret vanishes (recall 1.0); at least 98 % of the non-secret values stay."""
    corpus = build_corpus()
    categories = Counter(s.category.split("-")[0] for s in corpus)
    for needed in (
        "ip",
        "iban",
        "national",
        "email",
        "phone",
        "url",
        "inline",
        "provider",
        "control",
    ):
        assert categories[needed] > 0, needed
    redactor = Redactor()
    missed: list[tuple[str, str]] = []
    kept = total = 0
    for sample in corpus:
        text = "\n".join(_strings(redactor.redact_value(sample.record, Placeholders())))
        missed.extend((sample.category, s) for s in sample.secrets if s in text)
        total += len(sample.keep)
        kept += sum(1 for value in sample.keep if value in text)
    secrets = sum(len(s.secrets) for s in corpus)
    assert secrets >= 150
    assert total >= 200
    assert missed == []
    assert kept / total >= 0.98, f"{total - kept} of {total} non-secret values were changed"


def test_combined_national_id_detector_finds_what_the_single_ones_find() -> None:
    """The one-pass detector of DEFAULT_DETECTORS equals running every national id detector."""
    from contractspec.testing.redaction import national_id_detector, national_id_detectors

    texts = [f"{label}: {number}, and BSN 111222333" for _m, label, number in NATIONAL_IDS]
    texts += ["order 111222333 shipped", "call 06 12 34 56 78", "SSN 536-22-1234 / 12345678Z"]
    for text in texts:
        single = sorted({span for d in national_id_detectors for span in d.spans(text)})
        assert national_id_detector.spans(text) == single, text


def test_findings_cache_keeps_no_original_text() -> None:
    """Findings are remembered across records by digest: no original string stays in memory."""
    redactor = Redactor()
    assert redactor.redact_value({"note": "mail jane@acme.io"}) == {
        "note": "mail redacted-1@example.com"
    }
    cache = redactor._found  # the cross-record cache
    assert len(cache) >= 1
    assert all(isinstance(key, bytes) and len(key) == 16 for key in cache)
    assert "jane" not in repr(cache)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"detectors": ["email"]}, "detectors"),
        ({"secret_keys": "password"}, "secret_keys"),
        ({"extra_paths": ["notes"]}, "extra_paths"),
        ({"extra_paths": "input.notes"}, "extra_paths"),
        ({"min_echo_length": 0}, "min_echo_length"),
        ({"phone_regions": "GB"}, "phone_regions"),
    ],
)
def test_bad_redactor_configuration_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    """A configuration that would fail later or do nothing is refused, naming the argument."""
    with pytest.raises(ConfigurationError, match=f"Redactor {field}") as caught:
        Redactor(**kwargs)
    assert caught.value.details["field"] == field


def test_extra_paths_are_redacted_with_their_echoes() -> None:
    """`extra_paths` work like spec PII paths: replaced there and wherever echoed."""
    done = Redactor(extra_paths=["input.nickname"]).redact_record(
        {"nickname": "Captain Zed"}, {"banner": "Ahoy, captain zed!"}
    )
    assert done.input == {"nickname": "[redacted-1]"}
    assert done.output == {"banner": "Ahoy, [redacted-1]!"}
