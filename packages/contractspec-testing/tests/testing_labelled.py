"""A labelled corpus for the redaction detectors: what must vanish, and what must survive.

Every `Sample` is a JSON-like record (free text, headers, nested objects) with two labels:

* `secrets`: values that must not appear anywhere in the redacted record (recall must be 1.0);
* `keep`: non-secret values that should survive verbatim (at least 98 % of them must).

The samples are generated from the categories of issue 15: IP addresses (v4, v6, inside
`X-Forwarded-For` and `Forwarded`), IBANs, national identifiers, ASCII and internationalised
e-mail addresses, phone numbers in the national and international formats of many countries
(libphonenumber's own example numbers), credentials in URLs and DSNs, inline `key=value`
secrets, provider API keys, secret-named keys wherever the secret word stands, cookie and
authorization headers; and from negative controls: Luhn-failing card-like numbers, ISBNs, UUIDs,
hex digests, version strings, epoch timestamps in milliseconds, amounts, dates and order numbers.
Random parts come from a seeded generator, so the corpus is the same on every run.
"""

from __future__ import annotations

import hashlib
import random
import string
import uuid
from typing import Any

import phonenumbers
from attrs import define, field
from stdnum import ean, isbn, luhn

#: Countries whose phone numbers the corpus holds (the redactor's default national formats).
PHONE_REGIONS = (
    "US", "GB", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "PT", "IE", "SE", "DK", "NO",
    "FI", "PL", "JP", "CN", "IN", "BR", "MX", "AU",
)  # fmt: skip


@define(frozen=True)
class Sample:
    """One labelled record: its category, the record, and the two label sets."""

    category: str
    record: Any
    secrets: list[str] = field(factory=list)
    keep: list[str] = field(factory=list)


_RNG = random.Random(15)


def _rand(alphabet: str, n: int) -> str:
    return "".join(_RNG.choice(alphabet) for _ in range(n))


_ALNUM = string.ascii_letters + string.digits
_HEX = "0123456789abcdef"

#: Valid IBANs of several countries (checked by the tests with python-stdnum).
IBANS = [
    "DE89370400440532013000",
    "GB29NWBK60161331926819",
    "FR1420041010050500013M02606",
    "NL91ABNA0417164300",
    "ES9121000418450200051332",
    "IT60X0542811101000000123456",
    "CH9300762011623852957",
    "PL61109010140000071219812874",
    "SE4550000000058398257466",
    "AT611904300234573201",
    "IE29AIBK93115212345678",
]

#: National identifiers as they appear in text: `(stdnum module, text before it, the number)`.
NATIONAL_IDS = [
    ("us.ssn", "SSN", "536-22-1234"),
    ("us.ssn", "social security number", "536 22 1234"),
    ("es.dni", "DNI", "12345678Z"),
    ("es.nie", "NIE", "X1234567L"),
    ("it.codicefiscale", "codice fiscale", "RSSMRA85T10A562S"),
    ("fi.hetu", "henkilötunnus", "131052-308T"),
    ("ch.ssn", "AHV", "756.1234.5678.97"),
    ("br.cpf", "CPF", "390.533.447-05"),
    ("be.nn", "rijksregisternummer", "85.07.30-033.28"),
    ("fr.nir", "numéro de sécurité sociale", "2 95 10 99 126 111 93"),
    ("de.idnr", "Steuer-IdNr", "36 574 261 809"),
    ("gb.nhs", "NHS number", "943 476 5919"),
    ("in_.aadhaar", "Aadhaar", "2341 2341 2346"),
    ("nl.bsn", "BSN", "111222333"),
    ("pl.pesel", "PESEL", "44051401359"),
    ("se.personnummer", "personnummer", "880320-0016"),
    ("dk.cpr", "CPR", "211062-5629"),
]

EMAILS = [
    "jane.doe+billing@example.org",
    "MARC.DUPONT@orange.fr",
    "o'brien@mail.example.ie",
    "josé@exämple.de",
    "用户@例子.广告",
    "Δοκιμή@παράδειγμα.δοκιμή",
    "иван@почта.рф",
    "müller@bücher.de",
    "user@xn--bcher-kva.example",
]

IPS_V4 = ["81.2.69.160", "203.0.113.195", "150.172.238.178", "10.24.3.7", "172.16.254.1"]
IPS_V6 = [
    "2a00:1450:4007:80e::200e",
    "2001:db8:85a3::8a2e:370:7334",
    "fe80::1ff:fe23:4567:890a",
    "2606:4700:4700:0000:0000:0000:0000:1111",
]


def _provider_keys() -> list[str]:
    """API keys of many providers, with random bodies of the right shape."""
    return [
        "sk-ant-api03-" + _rand(_ALNUM + "_-", 40),
        "sk-proj-" + _rand(_ALNUM, 40),
        "sk_live_" + _rand(_ALNUM, 24),
        "rk_test_" + _rand(_ALNUM, 24),
        "ghp_" + _rand(_ALNUM, 36),
        "github_pat_" + _rand(_ALNUM, 22) + "_" + _rand(_ALNUM, 59),
        "glpat-" + _rand(_ALNUM, 20),
        "xoxb-"
        + _rand(string.digits, 11)
        + "-"
        + _rand(string.digits, 12)
        + "-"
        + _rand(_ALNUM, 24),
        "AKIA" + _rand(string.ascii_uppercase + string.digits, 16),
        "AIza" + _rand(_ALNUM + "_-", 35),
        "SG." + _rand(_ALNUM, 22) + "." + _rand(_ALNUM, 43),
        "hf_" + _rand(_ALNUM, 34),
        "npm_" + _rand(_ALNUM, 36),
        "shpat_" + _rand(_HEX, 32),
        "dop_v1_" + _rand(_HEX, 64),
        "glc_" + _rand(_ALNUM, 40),
        "gsk_" + _rand(_ALNUM, 52),
        "xai-" + _rand(_ALNUM, 60),
        "hvs." + _rand(_ALNUM, 90),
        "lin_api_" + _rand(_ALNUM, 40),
    ]


def _phones() -> list[tuple[str, str]]:
    """`(region, number)`: libphonenumber's example numbers, national and international form."""
    out: list[tuple[str, str]] = []
    kinds = (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE)
    for region in PHONE_REGIONS:
        for kind in kinds:
            number = phonenumbers.example_number_for_type(region, kind)
            if number is None:
                continue
            formats = (
                phonenumbers.PhoneNumberFormat.NATIONAL,
                phonenumbers.PhoneNumberFormat.INTERNATIONAL,
            )
            out.extend((region, phonenumbers.format_number(number, f)) for f in formats)
    return list(dict.fromkeys(out))


def _luhn_failing() -> list[str]:
    """16-digit card-like numbers whose check digit is wrong."""
    found: list[str] = []
    while len(found) < 12:
        digits = _RNG.choice("3456") + _rand(string.digits, 15)
        if not luhn.is_valid(digits):
            found.append(
                digits if len(found) % 2 else " ".join(digits[i : i + 4] for i in (0, 4, 8, 12))
            )
    return found


def _isbns() -> list[str]:
    out: list[str] = []
    for _ in range(6):
        body = "978" + _rand(string.digits, 9)
        thirteen = body + ean.calc_check_digit(body)
        out.append(isbn.format(thirteen))
        out.append(thirteen)
    return out


def _controls() -> list[str]:
    """Values that look numeric or structured and are not personal or secret."""
    uuids = [str(uuid.UUID(int=_RNG.getrandbits(128), version=4)) for _ in range(6)]
    hashes = [
        hashlib.new(name, str(n).encode()).hexdigest()
        for n in range(3)
        for name in ("md5", "sha1", "sha256")
    ]
    epochs = [str(1_600_000_000_000 + _RNG.randrange(200_000_000_000)) for _ in range(8)]
    versions = ["v1.2.3", "2.10.0-rc.1", "10.0.19041.1", "3.12.7", "1.0.0+build.42", "v2024.11.3"]
    misc = [
        "2024-03-15T10:22:31.123Z",
        "2026-12-06",
        "15/03/2024",
        "1,234,567.89",
        "EUR 1.250,00",
        "order 20240101-0042",
        "SKU-123-456",
        "INV-2024-000123",
        "HTTP 503",
        "port 5432",
        "48.8566, 2.3522",
        "tok_count 4096",
        "build 4521",
    ]
    return [*_luhn_failing(), *_isbns(), *uuids, *hashes, *epochs, *versions, *misc]


def build_corpus() -> list[Sample]:
    """The labelled corpus (deterministic)."""
    samples: list[Sample] = []
    add = samples.append
    for n, address in enumerate(IPS_V4 + IPS_V6):
        add(
            Sample(
                "ip", {"note": f"login from {address} at 09:14", "attempt": n}, [address], ["09:14"]
            )
        )
    add(
        Sample(
            "ip-header",
            {
                "X-Forwarded-For": f"{IPS_V4[0]}, {IPS_V6[0]}, {IPS_V4[2]}",
                "Forwarded": f'for={IPS_V4[3]};proto=https;by="[{IPS_V6[1]}]:4711"',
                "X-Request-Id": "req-7f3a9c",
            },
            [IPS_V4[0], IPS_V6[0], IPS_V4[2], IPS_V4[3], IPS_V6[1]],
            ["req-7f3a9c", "proto=https"],
        )
    )
    for value in IBANS:
        grouped = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
        add(Sample("iban", {"memo": f"refund to {grouped} by Friday"}, [grouped], ["Friday"]))
        add(Sample("iban", {"iban_check": "ok", "account": value}, [value], ["ok"]))
    for _module, label, number in NATIONAL_IDS:
        add(
            Sample(
                "national-id",
                {"note": f"{label}: {number}, verified 2024-05-01"},
                [number],
                ["2024-05-01"],
            )
        )
    for address in EMAILS:
        add(Sample("email", {"message": f"write to {address}, ticket #4521"}, [address], ["#4521"]))
    for region, number in _phones():
        add(Sample(f"phone-{region}", {"comment": f"call {number} after 5pm"}, [number], ["5pm"]))
    dsns = [
        ("postgresql://admin:hunter2@db:5432/app", "hunter2"),
        ("postgresql+psycopg://svc:S3cr3t!pw@localhost:5432/app", "S3cr3t!pw"),
        ("mysql://root:toorPass99@10.0.0.5:3306/shop", "toorPass99"),
        ("redis://:r3d1s-pw@127.0.0.1:6379/0", "r3d1s-pw"),
        ("https://deploy:ghs3cret@git.example.com/repo.git", "ghs3cret"),
        ("amqp://worker:Zm9vYmFy@[2001:db8::5]:5672/vhost", "Zm9vYmFy"),
    ]
    for dsn, password in dsns:
        add(
            Sample(
                "url-credential",
                {"error": f"could not connect to {dsn} (timeout 30s)"},
                [password],
                ["timeout 30s"],
            )
        )
    inline = [
        ("password=hunter2 retries=3", ["hunter2"], ["retries=3"]),
        ("DB_PASSWORD='p@ss w0rd!' host=db", ["p@ss w0rd!"], ["host=db"]),
        ("api_key: AbCd1234EfGh5678 region: eu-west-1", ["AbCd1234EfGh5678"], ["eu-west-1"]),
        ("client-secret=xyz789abcQRS&page=2", ["xyz789abcQRS"], ["page=2"]),
        ('{"client_secret": "cs_9f8e7d6c5b4a"} status=200', ["cs_9f8e7d6c5b4a"], ["status=200"]),
        ("login ok, pwd=Tr0ub4dor&3 user=ann", ["Tr0ub4dor&3"], ["user=ann"]),
        ("GET /cb?access_token=ya1.AbCdEf123456&state=xyz", ["ya1.AbCdEf123456"], ["state=xyz"]),
        (
            "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            ["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
            [],
        ),
        ("x-auth-token: 7c9e6679f425 sent", ["7c9e6679f425"], []),
    ]
    for text, secrets, keep in inline:
        add(Sample("inline-secret", {"log": text}, secrets, keep))
    for key in _provider_keys():
        add(Sample("provider-key", {"log": f"using {key} for sync job 42"}, [key], ["sync job 42"]))
    add(
        Sample(
            "secret-keys",
            {
                "secret_value": "s3-value-1",
                "X-Api-Key": "k-abc-123",
                "aws_secret_access_key": "wJalrXUtnFEMIK7MDENGbPxRfi",
                "passwordConfirmation": "pw-confirm-9",
                "client-secret-v2": "cs-v2-777",
                "token_type": "bearer",
                "expires_at": 1733467200123,
                "api_key_id": "key_01HZX",
                "token": {"value": "tv-55aa66bb", "expires_in": 3600, "id": "tok_123"},
            },
            [
                "s3-value-1",
                "k-abc-123",
                "wJalrXUtnFEMIK7MDENGbPxRfi",
                "pw-confirm-9",
                "cs-v2-777",
                "tv-55aa66bb",
            ],
            ["bearer", "1733467200123", "key_01HZX", "3600", "tok_123"],
        )
    )
    add(
        Sample(
            "headers",
            {
                "Cookie": "sessionid=38afes7a8x; theme=dark; lang=en",
                "Set-Cookie": "sid=abcdef1234567890; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly",
                "Authorization": "Bearer abc.def.ghi123456",
                "Proxy-Authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
                "Date": "Wed, 21 Oct 2026 07:28:00 GMT",
            },
            ["38afes7a8x", "abcdef1234567890", "abc.def.ghi123456", "YWxhZGRpbjpvcGVuc2VzYW1l"],
            [
                "theme=dark",
                "lang=en",
                "Path=/",
                "Expires=Wed, 21 Oct 2026 07:28:00 GMT",
                "HttpOnly",
                "Bearer",
                "Basic",
            ],
        )
    )
    for n, value in enumerate(_controls()):
        add(Sample("control", {"ref": value, "text": f"item {value} processed"}, [], [value]))
        if n % 3 == 0 and value.isdigit():
            add(Sample("control", {"n": int(value)}, [], [value]))
    return samples
