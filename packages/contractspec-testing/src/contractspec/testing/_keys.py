"""Mapping keys that name secrets or personal identifiers, and the ones that only describe them.

A key is split into lowercase words (`snake_case`, `kebab-case`, `camelCase`, dots and spaces all
separate words: `X-Api-Key` -> `x api key`, `clientSecretV2` -> `client secret v2`). It names a
**secret** when one of its words is a secret word (`password`, `secret`, `token`, `cookie`,
`authorization`, ...), contains one (`accesstoken`, `PHPSESSID`), or two neighbouring words make a
secret pair (`api key`, `private key`, `session id`), wherever that word stands: `secret_value`,
`password_confirmation`, `X-Auth-Token`, `aws_secret_access_key`. It does **not** when its last
word only describes a secret (`token_type`, `password_updated_at`, `api_key_id`, `expires_in`,
`token_count`, `max_tokens`): those are the harmless siblings a record keeps.

The same rules (with their own words) find keys of **personal identifiers** whose values are
redacted wholesale: `ssn`, `national_id`, `tax_id`, `passport_number`, `bsn`, `pesel`, ...
"""

from __future__ import annotations

import enum
import itertools
import re
from functools import lru_cache
from typing import Final

__all__ = ["KeyKind", "describes_secret", "is_secret_key", "key_kind", "key_words"]


class KeyKind(enum.Enum):
    """What a mapping key says about its value."""

    PLAIN = "plain"
    SECRET = "secret"
    IDENTIFIER = "identifier"
    COOKIE = "cookie"
    SET_COOKIE = "set-cookie"
    AUTHORIZATION = "authorization"


_SEPARATORS = re.compile(r"[\W_]+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")

#: Words that make a key secret wherever they stand in it.
SECRET_WORDS: Final = frozenset(
    {
        "password", "passwd", "passphrase", "passcode", "pwd", "pass", "secret", "secrets",
        "token", "apikey", "credential", "credentials", "creds", "cookie", "cookies",
        "authorization", "auth", "jwt", "bearer", "otp", "totp", "mfa", "pin", "cvv", "cvc",
        "cvv2", "sid", "sessionid", "sessid", "phpsessid", "jsessionid", "privatekey",
        "signature", "sig", "salt", "hmac", "mnemonic", "passwort", "kennwort", "motdepasse",
        "contraseña", "contrasena", "senha", "wachtwoord", "lösenord",
    }
)  # fmt: skip

#: Substrings that make a single word secret (`accesstoken`, `dbpassword`, `XSRFTOKEN`).
SECRET_PARTS: Final = (
    "password", "passwd", "passphrase", "secret", "token", "apikey", "accesskey", "privatekey",
    "secretkey", "sessionid", "sessid", "credential",
)  # fmt: skip

#: Words that contain a secret part but are not secrets.
NOT_SECRET_WORDS: Final = frozenset(
    {"secretary", "secretariat", "tokens", "tokenizer", "tokenize", "tokenized", "tokenization"}
)

#: Two neighbouring words that together name a secret (`api key`, `session id`).
SECRET_PAIRS: Final = frozenset(
    {
        ("api", "key"), ("access", "key"), ("secret", "key"), ("private", "key"),
        ("signing", "key"), ("encryption", "key"), ("master", "key"), ("account", "key"),
        ("subscription", "key"), ("client", "key"), ("app", "key"), ("auth", "key"),
        ("shared", "key"), ("session", "key"), ("license", "key"), ("ssh", "key"),
        ("session", "id"), ("session", "token"), ("refresh", "key"), ("recovery", "code"),
        ("backup", "code"), ("verification", "code"), ("security", "code"), ("reset", "code"),
        ("card", "number"), ("card", "no"), ("de", "passe"),
    }
)  # fmt: skip

#: Last words that describe a secret without being one (`token_type`, `api_key_id`).
QUALIFIERS: Final = frozenset(
    {
        "id", "ids", "type", "types", "kind", "count", "counts", "length", "len", "size",
        "at", "on", "ts", "time", "timestamp", "date", "expires", "expiry", "expiration",
        "expire", "exp", "in", "ttl", "age", "policy", "policies", "hint", "hints", "name",
        "names", "label", "labels", "url", "uri", "endpoint", "path", "prefix", "suffix",
        "last4", "last", "required", "enabled", "disabled", "set", "present", "valid",
        "changed", "strength", "version", "format", "scheme", "alg", "algorithm", "method",
        "mode", "provider", "status", "state", "source", "field", "fields", "header",
        "headers", "location", "rotation", "rotated", "updated", "created", "used", "issued",
        "scope", "scopes", "audience", "issuer", "ref", "reference", "fingerprint", "min",
        "max", "attempts", "retries", "error", "errors", "message", "file", "env", "flag",
        "rule", "rules", "description", "duration", "seconds", "ms", "minutes", "hours",
        "days", "mask", "masked", "placeholder", "verified", "sent", "usage",
    }
)  # fmt: skip

#: Secret pairs that end in a qualifier word but still are secrets (`session_id`).
_SECRET_ENDINGS: Final = frozenset(p for p in SECRET_PAIRS if p[1] in QUALIFIERS)

#: Words and pairs naming personal identifiers (national ids, tax ids, passports).
IDENTIFIER_WORDS: Final = frozenset(
    {
        "ssn", "nino", "bsn", "pesel", "cpf", "nir", "aadhaar", "passport", "idnr",
        "personnummer", "cpr", "hetu", "dni", "nie", "nif", "codicefiscale", "nhs", "sin",
        "tin", "itin", "ahv", "rrn", "curp", "rut", "sofinummer", "steuerid",
    }
)  # fmt: skip
IDENTIFIER_PAIRS: Final = frozenset(
    {
        ("national", "id"), ("national", "number"), ("national", "identifier"), ("tax", "id"),
        ("tax", "number"), ("tax", "identifier"), ("social", "security"), ("passport", "number"),
        ("id", "number"), ("identity", "number"), ("personal", "number"), ("driver", "license"),
        ("drivers", "license"), ("driving", "licence"), ("codice", "fiscale"),
        ("insurance", "number"), ("steuer", "id"), ("health", "number"),
    }
)  # fmt: skip

#: Pairs that end in a qualifier word but still name a secret or an identifier (`session_id`,
#: `national_id`).
_KEPT_ENDINGS: Final = _SECRET_ENDINGS | frozenset(
    p for p in IDENTIFIER_PAIRS if p[1] in QUALIFIERS
)

_HEADERS: Final = {
    "cookie": KeyKind.COOKIE,
    "cookies": KeyKind.COOKIE,
    "set-cookie": KeyKind.SET_COOKIE,
    "authorization": KeyKind.AUTHORIZATION,
    "proxy-authorization": KeyKind.AUTHORIZATION,
    "www-authenticate": KeyKind.PLAIN,
}


def key_words(key: str) -> tuple[str, ...]:
    """The lowercase words of a key: `X-Api-Key` -> `("x", "api", "key")`."""
    words: list[str] = []
    for chunk in _SEPARATORS.split(key):
        if not chunk:
            continue
        if chunk.isascii():
            words.extend(w.lower() for w in _CAMEL.findall(chunk))
        else:  # camelCase splitting is for ASCII identifiers; other scripts stay whole
            words.append(chunk.lower())
    return tuple(words)


def _secret_word(word: str) -> bool:
    if word in SECRET_WORDS:
        return True
    if word in NOT_SECRET_WORDS or len(word) < 6:
        return False
    return any(part in word for part in SECRET_PARTS)


def describes_secret(key: str) -> bool:
    """Whether `key` only describes a secret (`expires_at`, `token_type`, `id`): its last word."""
    words = key_words(key)
    if not words:
        return False
    if len(words) >= 2 and (words[-2], words[-1]) in _KEPT_ENDINGS:
        return False
    return words[-1] in QUALIFIERS


@lru_cache(maxsize=8192)
def key_kind(key: str) -> KeyKind:
    """What a mapping key says about its value (cached: keys repeat across records)."""
    header = _HEADERS.get(key.lower())
    if header is not None:
        return header
    words = key_words(key)
    if not words:
        return KeyKind.PLAIN
    pairs = list(itertools.pairwise(words))
    if words[-1] in QUALIFIERS and not (pairs and pairs[-1] in _KEPT_ENDINGS):
        return KeyKind.PLAIN
    if any(_secret_word(w) for w in words) or any(p in SECRET_PAIRS for p in pairs):
        return KeyKind.SECRET
    if any(w in IDENTIFIER_WORDS for w in words) or any(p in IDENTIFIER_PAIRS for p in pairs):
        return KeyKind.IDENTIFIER
    return KeyKind.PLAIN


def is_secret_key(key: str) -> bool:
    """Whether values under `key` are secrets (`password`, `X-Api-Key`, `secret_value`, ...).

    Cookie and authorization headers count as secret keys here; the `Redactor` redacts only their
    credentials and keeps the harmless parts.
    """
    return key_kind(key) in (
        KeyKind.SECRET,
        KeyKind.COOKIE,
        KeyKind.SET_COOKIE,
        KeyKind.AUTHORIZATION,
    )
