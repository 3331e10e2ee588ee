"""Webhook channel: signed JSON POSTs with httpx.

Install with `pip install 'contractspec-bus[webhook]'`. Receivers verify requests with
`contractspec.bus.verify_webhook` (see `contractspec.bus.signing` for the scheme).
"""

from __future__ import annotations

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.bus.webhook needs httpx: pip install 'contractspec-bus[webhook]'"
    ) from exc

from typing import Any

from contractspec.bus.notifications import OutgoingMessage
from contractspec.bus.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_webhook
from contractspec.core import (
    Clock,
    ConfigurationError,
    ContractSpecError,
    SystemClock,
    canonical_json,
)

__all__ = ["DELIVERY_HEADER", "WebhookChannel", "WebhookDeliveryError"]

#: Header carrying the delivery id (stable across retries: receivers deduplicate on it).
DELIVERY_HEADER = "X-ContractSpec-Delivery"


class WebhookDeliveryError(ContractSpecError, RuntimeError):
    """The endpoint could not be reached or answered with a non-2xx status."""

    code = "webhook_delivery_failed"


class WebhookChannel:
    """POSTs each notification as JSON, signed with HMAC-SHA256 and a timestamp.

    Body: `{"delivery_id", "notification", "event": {...}, "message": {"subject", "body"},
    "recipient": {"id"}}` as canonical JSON. Headers: `X-ContractSpec-Timestamp`,
    `X-ContractSpec-Signature: v1=<hex>`, `X-ContractSpec-Delivery`.

    Args:
        secret: Shared signing secret.
        url: Default endpoint (a recipient's `webhook_url` wins).
        client: Your `httpx.AsyncClient` (not closed here); by default one is created per
            channel and closed by `aclose()`.
        timeout: Seconds per request when the channel creates its client.
        clock: Time source of the timestamp header.
        name: Channel name (default `webhook`).

    Raises:
        ConfigurationError: Empty secret.
    """

    def __init__(
        self,
        *,
        secret: str | bytes,
        url: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        clock: Clock | None = None,
        name: str = "webhook",
    ) -> None:
        if not secret:
            raise ConfigurationError(
                "WebhookChannel needs a non-empty secret", details={"field": "secret"}
            )
        self.secret = secret
        self.url = url
        self._own_client = client is None
        self.client = client if client is not None else httpx.AsyncClient(timeout=timeout)
        self.clock: Clock = clock or SystemClock()
        self.name = name

    def payload(self, message: OutgoingMessage) -> dict[str, Any]:
        """The JSON document sent for a message."""
        return {
            "delivery_id": message.delivery_id,
            "notification": message.notification,
            "event": dict(message.event),
            "message": {"subject": message.subject, "body": message.body},
            "recipient": {"id": message.recipient.id},
        }

    async def send(self, message: OutgoingMessage) -> None:
        """POST the signed payload.

        Raises:
            WebhookDeliveryError: No URL, a transport error, or a non-2xx response.
        """
        url = message.recipient.webhook_url or self.url
        if not url:
            raise WebhookDeliveryError(
                f"no webhook URL for recipient {message.recipient.id!r}: set Recipient.webhook_url "
                "or WebhookChannel(url=...)",
                details={"recipient": message.recipient.id},
            )
        body = canonical_json(self.payload(message)).encode()
        timestamp = int(self.clock.now().timestamp())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign_webhook(self.secret, body, timestamp),
            DELIVERY_HEADER: message.delivery_id,
        }
        try:
            response = await self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise WebhookDeliveryError(
                f"webhook POST to {url} failed: {type(exc).__name__}: {exc}",
                details={"url": url},
            ) from exc
        if not response.is_success:
            raise WebhookDeliveryError(
                f"webhook {url} answered {response.status_code}",
                details={"url": url, "status": response.status_code},
            )

    async def aclose(self) -> None:
        """Close the HTTP client if the channel created it."""
        if self._own_client:
            await self.client.aclose()
