"""Webhook signatures: HMAC-SHA256 over the timestamp and the raw body.

The sender puts two headers on every request:

* `X-ContractSpec-Timestamp`: Unix time in seconds when the request was signed;
* `X-ContractSpec-Signature`: `v1=<hex>`, where `hex = HMAC-SHA256(secret, f"{timestamp}.".encode() + body)`.

This is the scheme Stripe and Svix use: signing the timestamp with the body lets a receiver reject
replays older than a tolerance. Receivers call `verify_webhook` with the raw body bytes (not a
re-serialised JSON object).

```python
from contractspec.bus import verify_webhook

verify_webhook(secret, request.body, request.headers)   # raises WebhookSignatureError
```
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from contractspec.core import ContractSpecError

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
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


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def verify_webhook(
    secret: str | bytes,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> int:
    """Check a received webhook; return its timestamp when it is authentic and fresh.

    Args:
        secret: The shared secret (one of them, when rotating: call once per secret).
        body: The raw request body, byte for byte.
        headers: The request headers (looked up case-insensitively).
        tolerance: Maximum age (and clock skew into the future) in seconds.
        now: Current Unix time (defaults to `time.time()`).

    Returns:
        The signed timestamp (Unix seconds).

    Raises:
        WebhookSignatureError: A header is missing or malformed, the timestamp is outside the
            tolerance, or no `v1` signature matches (compared in constant time).
    """
    raw_ts = _header(headers, TIMESTAMP_HEADER)
    raw_sig = _header(headers, SIGNATURE_HEADER)
    if raw_ts is None or raw_sig is None:
        missing = TIMESTAMP_HEADER if raw_ts is None else SIGNATURE_HEADER
        raise WebhookSignatureError(
            f"webhook request has no {missing} header", details={"field": missing}
        )
    try:
        timestamp = int(raw_ts.strip())
    except ValueError:
        raise WebhookSignatureError(
            f"{TIMESTAMP_HEADER} must be Unix seconds, got {raw_ts[:40]!r}",
            details={"field": TIMESTAMP_HEADER},
        ) from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookSignatureError(
            f"webhook timestamp is {int(current - timestamp)} s away from now (tolerance "
            f"{int(tolerance)} s): a replay or a wrong clock",
            details={"field": TIMESTAMP_HEADER},
        )
    expected = sign_webhook(secret, body, timestamp)
    candidates = [part.strip() for part in raw_sig.split(",") if part.strip().startswith("v1=")]
    if not candidates:
        raise WebhookSignatureError(
            f"{SIGNATURE_HEADER} has no v1= signature", details={"field": SIGNATURE_HEADER}
        )
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise WebhookSignatureError(
            "webhook signature does not match: wrong secret or the body was altered",
            details={"field": SIGNATURE_HEADER},
        )
    return timestamp
