"""Webhook signatures: HMAC-SHA256 over the timestamp and the raw body.

The sender puts two headers on every request:

* `X-ContractSpec-Timestamp`: Unix time in seconds when the request was signed;
* `X-ContractSpec-Signature`: `v1=<hex>`, where `hex = HMAC-SHA256(secret, f"{timestamp}.".encode() + body)`.

This is the scheme Stripe and Svix use: signing the timestamp with the body lets a receiver reject
replays older than a tolerance. Receivers call `verify_webhook` with the raw body bytes (not a
re-serialised JSON object). A request replayed *inside* the tolerance carries a valid signature;
pass `replay_guard=MemoryReplayGuard()` (or your shared store implementing `ReplayGuard`) to
refuse a signature seen before (`WebhookReplayError`).

Every malformed header (missing, non-ASCII, a timestamp that is not 1 to 12 ASCII digits, a
value that is not text) raises `WebhookSignatureError`, never `TypeError` or `OverflowError`.

```python
from contractspec.bus import verify_webhook

verify_webhook(secret, request.body, request.headers)   # raises WebhookSignatureError
```
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from contractspec.core import ConfigurationError, ContractSpecError

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "MemoryReplayGuard",
    "ReplayGuard",
    "WebhookReplayError",
    "WebhookSignatureError",
    "sign_webhook",
    "verify_webhook",
]

#: Header carrying the signing time (Unix seconds).
TIMESTAMP_HEADER = "X-ContractSpec-Timestamp"
#: Header carrying `v1=<hex HMAC-SHA256>`; several comma-separated values are allowed (rotation).
SIGNATURE_HEADER = "X-ContractSpec-Signature"


class WebhookSignatureError(ContractSpecError, PermissionError):
    """A webhook request's signature is missing, malformed, wrong or too old."""

    code = "webhook_signature_invalid"


class WebhookReplayError(WebhookSignatureError):
    """An authentic, fresh webhook request whose signature the replay guard has seen before."""

    code = "webhook_replayed"


@runtime_checkable
class ReplayGuard(Protocol):
    """Remembers the signatures of accepted webhook requests until they expire.

    `verify_webhook` calls `check_and_remember` once a request is authentic and fresh. An
    implementation shared by several receiver processes (Redis `SET NX EX`, a database row with
    a unique key) must make the check and the insert one atomic step.
    """

    def check_and_remember(self, key: str, expires_at: float, now: float) -> bool:
        """Remember `key` until `expires_at`; return False if it was seen and has not expired.

        Args:
            key: The accepted request's signature (`v1=<hex>`).
            expires_at: Unix seconds after which the key may be forgotten.
            now: Current Unix seconds, as `verify_webhook` sees them.
        """
        ...


class MemoryReplayGuard:
    """`ReplayGuard` in process memory (one receiver process), thread-safe.

    Entries expire at the end of the request's tolerance window, after which `verify_webhook`
    refuses the request as too old anyway; expired entries are dropped as new ones arrive.

    Args:
        max_entries: Upper bound on remembered signatures; when full, a new request is refused
            (`WebhookReplayError`) rather than forgetting an unexpired one.

    Raises:
        ConfigurationError: `max_entries` is not a positive integer.
    """

    def __init__(self, *, max_entries: int = 1_000_000) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(
                f"max_entries must be a positive integer, got {max_entries!r}",
                details={"field": "max_entries"},
            )
        self.max_entries = max_entries
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_remember(self, key: str, expires_at: float, now: float) -> bool:
        """See `ReplayGuard`."""
        with self._lock:
            expiry = self._seen.get(key)
            if expiry is not None and expiry > now:
                return False
            if len(self._seen) >= self.max_entries:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
                if len(self._seen) >= self.max_entries:
                    return False
            self._seen[key] = expires_at
            return True


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode()
    if not secret:
        raise WebhookSignatureError(
            "the webhook secret is empty; configure a random secret of at least 32 bytes",
            details={"field": "secret"},
        )
    return secret


def sign_webhook(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The signature header value `v1=<hex>` for `body` signed at `timestamp` (Unix seconds)."""
    mac = hmac.new(_key(secret), str(int(timestamp)).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


#: Unix seconds: 1 to 12 ASCII digits (no sign, no Unicode digits, no exponent).
_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
#: One `v1=` signature: 64 lower-case hex digits.
_SIGNATURE = re.compile(r"v1=[0-9a-f]{64}", re.ASCII)


def _header(headers: Mapping[Any, Any], name: str) -> str | None:
    wanted = name.lower()
    try:
        items = list(headers.items())
    except Exception as exc:
        raise WebhookSignatureError(
            f"webhook headers must be a mapping of names to values, got {type(headers).__name__}",
            details={"field": "headers"},
        ) from exc
    for key, value in items:
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if not isinstance(key, str) or key.lower() != wanted:
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")  # what HTTP/1.1 servers hand over for raw headers
        if not isinstance(value, str):
            raise WebhookSignatureError(
                f"{name} must be text, got {type(value).__name__}", details={"field": name}
            )
        if len(value) > 4096 or not value.isascii():
            raise WebhookSignatureError(
                f"{name} must be ASCII of at most 4096 characters", details={"field": name}
            )
        return value
    return None


def verify_webhook(
    secret: str | bytes,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance: float = 300.0,
    now: float | None = None,
    replay_guard: ReplayGuard | None = None,
) -> int:
    """Check a received webhook; return its timestamp when it is authentic and fresh.

    Args:
        secret: The shared secret (one of them, when rotating: call once per secret).
        body: The raw request body, byte for byte.
        headers: The request headers (looked up case-insensitively).
        tolerance: Maximum age (and clock skew into the future) in seconds.
        now: Current Unix time (defaults to `time.time()`).
        replay_guard: Refuses a signature already accepted within its tolerance window (each
            accepted signature is remembered until `timestamp + tolerance`). Without one, a
            request replayed inside the tolerance is accepted again.

    Returns:
        The signed timestamp (Unix seconds).

    Raises:
        WebhookSignatureError: A header is missing or malformed (not ASCII text, a timestamp
            that is not 1 to 12 digits, no well-formed `v1=<64 hex>` value), the timestamp is
            outside the tolerance, or no `v1` signature matches (compared in constant time).
        WebhookReplayError: With `replay_guard`, the signature was accepted before.
    """
    raw_ts = _header(headers, TIMESTAMP_HEADER)
    raw_sig = _header(headers, SIGNATURE_HEADER)
    if raw_ts is None or raw_sig is None:
        missing = TIMESTAMP_HEADER if raw_ts is None else SIGNATURE_HEADER
        raise WebhookSignatureError(
            f"webhook request has no {missing} header", details={"field": missing}
        )
    stripped = raw_ts.strip()
    if not _TIMESTAMP.fullmatch(stripped):
        raise WebhookSignatureError(
            f"{TIMESTAMP_HEADER} must be Unix seconds (1 to 12 digits), got {raw_ts[:40]!r}",
            details={"field": TIMESTAMP_HEADER},
        )
    timestamp = int(stripped)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookSignatureError(
            f"webhook timestamp is {int(current - timestamp)} s away from now (tolerance "
            f"{int(tolerance)} s): a replay or a wrong clock",
            details={"field": TIMESTAMP_HEADER},
        )
    expected = sign_webhook(secret, body, timestamp)
    candidates = [part.strip() for part in raw_sig.split(",") if _SIGNATURE.fullmatch(part.strip())]
    if not candidates:
        raise WebhookSignatureError(
            f"{SIGNATURE_HEADER} has no well-formed v1=<64 hex digits> signature",
            details={"field": SIGNATURE_HEADER},
        )
    matched = [c for c in candidates if hmac.compare_digest(expected.encode(), c.encode())]
    if not matched:
        raise WebhookSignatureError(
            "webhook signature does not match: wrong secret or the body was altered",
            details={"field": SIGNATURE_HEADER},
        )
    if replay_guard is not None and not replay_guard.check_and_remember(
        expected, timestamp + tolerance, current
    ):
        raise WebhookReplayError(
            "webhook request was already accepted (same signature): a replay",
            details={"field": SIGNATURE_HEADER},
        )
    return timestamp
