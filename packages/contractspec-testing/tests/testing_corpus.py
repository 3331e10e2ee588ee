"""A corpus of realistic payloads with personal data and secrets, and the values that must vanish.

Every entry is `(payload, secrets)`: after redaction, no string in `secrets` may appear anywhere in
what is stored (checked on the serialised store content, so keys, nesting and error messages count).
"""

from __future__ import annotations

from typing import Any

CORPUS: list[tuple[dict[str, Any], list[str]]] = [
    (
        {
            "subject": "Refund request",
            "body": "Hi, I'm Jane (jane.doe+billing@example.org). Please call me on "
            "+44 20 7946 0958 or (415) 555-2671 after 5pm.",
        },
        ["jane.doe+billing@example.org", "+44 20 7946 0958", "(415) 555-2671"],
    ),
    (
        {
            "payment": {"card": "4111 1111 1111 1111", "exp": "12/29", "holder": "J DOE"},
            "backup_cards": ["5500-0000-0000-0004", "340000000000009"],
        },
        ["4111 1111 1111 1111", "5500-0000-0000-0004", "340000000000009"],
    ),
    (
        {
            "headers": {
                "Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "X-Request-Id": "req-42",
            },
            "query": "api_key=AbCdEf1234567890&page=2",
        },
        [
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "AbCdEf1234567890",
        ],
    ),
    (
        {
            "integration": {
                "provider": "stripe",
                "secret": "sk_live_51HqLyjWDarjtT1zdp7dcXYZ",
                "webhook": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            },
            "log": "retrying with key sk-proj-8fJk2LmN0pQrStUvWxYz1234 and token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
            "aws": "AKIAIOSFODNN7EXAMPLE",
        },
        [
            "sk_live_51HqLyjWDarjtT1zdp7dcXYZ",
            "sk-proj-8fJk2LmN0pQrStUvWxYz1234",
            "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
            "AKIAIOSFODNN7EXAMPLE",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ],
    ),
    (
        {
            "user": {"email": "MARC.DUPONT@orange.fr", "password": "correct horse battery"},
            "contacts": [
                {"name": "Ana", "mobile": "06 12 34 56 78"},
                {"name": "Bo", "mobile": "+1 (212) 555-0147"},
            ],
            "client_secret": 987654321,
        },
        [
            "MARC.DUPONT@orange.fr",
            "correct horse battery",
            "06 12 34 56 78",
            "+1 (212) 555-0147",
            "987654321",
        ],
    ),
    (
        {"jane.doe+billing@example.org": {"visits": 3}, "card_on_file": 4242424242424242},
        ["jane.doe+billing@example.org", "4242424242424242"],
    ),
]

#: Values that look numeric or structured but are not sensitive: they must survive redaction.
HARMLESS: list[str] = [
    "2024-01-01T10:00:00+00:00",
    "01936f3e-7c2a-7b1d-9f3e-2c4b5d6e7f80",
    "1234567.89",
    "order 20240101-0042",
    "v1.2.3",
    "SKU-123-456",
    "12.50",
]
