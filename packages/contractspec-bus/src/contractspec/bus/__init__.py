"""Event bus, transactional outbox relay, hash-chained audit trail and notifications.

```python
from contractspec.bus import EventBus, OutboxRelay, NotificationCenter, define_notification
from contractspec.bus.sql import SqlOutboxStore, SqlAuditTrail      # pip install 'contractspec-bus[sql]'
from contractspec.bus.email import EmailChannel                     # pip install 'contractspec-bus[email]'
from contractspec.bus.webhook import WebhookChannel                 # pip install 'contractspec-bus[webhook]'
```
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from contractspec.bus._retry import RetryPolicy
from contractspec.bus.audit import (
    PURGE_ACTION,
    AuditableEventBus,
    AuditFilter,
    AuditTrail,
    ChainVerifier,
    Checkpoint,
    MemoryAuditTrail,
    PurgeResult,
    VerifyResult,
    mask_pii,
    pii_paths,
    verify_chain,
)
from contractspec.bus.bus import (
    DeliveryOutcome,
    DeliveryReport,
    EventBus,
    EventFilter,
    EventHandler,
    FilteredEventBus,
    RawPayload,
    Subscription,
    envelope_from_dict,
    where_filter,
)
from contractspec.bus.notifications import (
    Channel,
    InAppChannel,
    MemoryDirectory,
    NotificationCenter,
    NotificationRenderError,
    NotificationSpec,
    OutgoingMessage,
    Recipient,
    RecipientDirectory,
    RecipientRule,
    Template,
    define_notification,
    to_field,
    to_resolver,
    to_role,
    to_user,
)
from contractspec.bus.outbox import (
    IdempotentConsumer,
    OutboxRelay,
    RelayStats,
    idempotent_consumer,
    message_to_envelope,
)
from contractspec.bus.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    MemoryReplayGuard,
    ReplayGuard,
    WebhookReplayError,
    WebhookSignatureError,
    sign_webhook,
    verify_webhook,
)
from contractspec.bus.stores import (
    DeadLetter,
    DeadLetterStore,
    DeliveryLogStore,
    DeliveryRecord,
    InAppNotification,
    InAppStore,
    MemoryDeadLetterStore,
    MemoryDeliveryLog,
    MemoryInAppStore,
    MemoryOutboxStore,
    MemoryPreferenceStore,
    MemoryProcessedEventStore,
    OutboxMessage,
    OutboxStore,
    Page,
    Preference,
    PreferenceStore,
    ProcessedEventStore,
    resolve_preference,
)

try:
    __version__ = version("contractspec-bus")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "PURGE_ACTION",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "AuditFilter",
    "AuditTrail",
    "AuditableEventBus",
    "ChainVerifier",
    "Channel",
    "Checkpoint",
    "DeadLetter",
    "DeadLetterStore",
    "DeliveryLogStore",
    "DeliveryOutcome",
    "DeliveryRecord",
    "DeliveryReport",
    "EventBus",
    "EventFilter",
    "EventHandler",
    "FilteredEventBus",
    "IdempotentConsumer",
    "InAppChannel",
    "InAppNotification",
    "InAppStore",
    "MemoryAuditTrail",
    "MemoryDeadLetterStore",
    "MemoryDeliveryLog",
    "MemoryDirectory",
    "MemoryInAppStore",
    "MemoryOutboxStore",
    "MemoryPreferenceStore",
    "MemoryProcessedEventStore",
    "MemoryReplayGuard",
    "NotificationCenter",
    "NotificationRenderError",
    "NotificationSpec",
    "OutboxMessage",
    "OutboxRelay",
    "OutboxStore",
    "OutgoingMessage",
    "Page",
    "Preference",
    "PreferenceStore",
    "ProcessedEventStore",
    "PurgeResult",
    "RawPayload",
    "Recipient",
    "RecipientDirectory",
    "RecipientRule",
    "RelayStats",
    "ReplayGuard",
    "RetryPolicy",
    "Subscription",
    "Template",
    "VerifyResult",
    "WebhookReplayError",
    "WebhookSignatureError",
    "__version__",
    "define_notification",
    "envelope_from_dict",
    "idempotent_consumer",
    "mask_pii",
    "message_to_envelope",
    "pii_paths",
    "resolve_preference",
    "sign_webhook",
    "to_field",
    "to_resolver",
    "to_role",
    "to_user",
    "verify_chain",
    "verify_webhook",
    "where_filter",
]
