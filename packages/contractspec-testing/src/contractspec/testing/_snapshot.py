"""`Snapshot`: one recorded call, redacted and serialised to JSON-compatible values."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from attrs import define, field

from contractspec.testing.errors import SnapshotFormatError

__all__ = ["Snapshot"]

_REQUIRED = ("id", "operation", "version", "recorded_at", "input")


def _events(value: Iterable[Mapping[str, Any]] | None) -> tuple[Mapping[str, Any], ...] | None:
    return None if value is None else tuple(value)


@define(frozen=True, slots=True)
class Snapshot:
    """One recorded call of an operation, as kept by a `TrafficStore`.

    Every value is JSON-compatible (the input and output are pydantic JSON-mode dumps) and already
    redacted: nothing personal or secret is left in it when it reaches a store.

    Attributes:
        id: Unique snapshot id.
        operation: Operation name (`crm.deal.create`).
        version: Operation version that ran.
        recorded_at: UTC start time of the call.
        duration_ms: Wall time of the call, in milliseconds.
        input: The validated input (JSON form), or the raw input when validation failed.
        output: The output (JSON form), or `None` on failure.
        error: `{"code", "type", "message"}` of the `ContractSpecError` raised, or `None`.
        events: The events the call emitted and committed, in emission order:
            `[{"type": "billing.customer.created", "version": 1, "payload": {...}}, ...]`
            (empty for failed calls); `None` in snapshots stored before events were recorded
            (golden cases made from them do not compare events).
        org_id: Tenant of the call.
        actor_id: Who called.
        trace_id: Trace id (the sampling decision is made from it).
        request_id: Request id.
        channel: Where the call came from (`api`, `http`, `job`, ...).
        variant: Version chosen by a `VariantResolver`, if any.
    """

    id: str
    operation: str
    version: int
    recorded_at: datetime
    input: Any
    output: Any = None
    error: Mapping[str, Any] | None = None
    events: tuple[Mapping[str, Any], ...] | None = field(default=(), converter=_events)
    duration_ms: float = 0.0
    org_id: str | None = None
    actor_id: str | None = None
    trace_id: str | None = None
    request_id: str | None = None
    channel: str = "api"
    variant: int | None = None

    @property
    def ref(self) -> str:
        """`operation@version`."""
        return f"{self.operation}@{self.version}"

    @property
    def ok(self) -> bool:
        """Whether the call succeeded."""
        return self.error is None

    @property
    def outcome(self) -> str:
        """`"success"`, or the error code (`"not_found"`, `"validation_error"`, ...)."""
        return "success" if self.error is None else str(self.error.get("code", "error"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (the line written by `JsonlTrafficStore`)."""
        return {
            "id": self.id,
            "operation": self.operation,
            "version": self.version,
            "recorded_at": self.recorded_at.isoformat(),
            "duration_ms": self.duration_ms,
            "input": self.input,
            "output": self.output,
            "error": None if self.error is None else dict(self.error),
            "events": None if self.events is None else [dict(e) for e in self.events],
            "org_id": self.org_id,
            "actor_id": self.actor_id,
            "trace_id": self.trace_id,
            "request_id": self.request_id,
            "channel": self.channel,
            "variant": self.variant,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Snapshot:
        """Rebuild a snapshot from `to_dict()` output.

        Raises:
            SnapshotFormatError: `data` is not a mapping, misses a required key (`id`,
                `operation`, `version`, `recorded_at`, `input`) or holds a wrong type.
        """
        if not isinstance(data, Mapping):
            raise SnapshotFormatError(
                f"a snapshot must be a JSON object, got {type(data).__name__}"
            )
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise SnapshotFormatError(
                f"snapshot is missing {', '.join(missing)}; snapshots are written by "
                "Snapshot.to_dict()",
                details={"field": missing[0]},
            )
        try:
            recorded_at = data["recorded_at"]
            if isinstance(recorded_at, str):
                recorded_at = datetime.fromisoformat(recorded_at)
            if not isinstance(recorded_at, datetime):
                raise TypeError("recorded_at must be an ISO 8601 string")
            if recorded_at.tzinfo is None:
                recorded_at = recorded_at.replace(tzinfo=UTC)
            version = data["version"]
            if isinstance(version, bool) or not isinstance(version, int):
                raise TypeError("version must be an integer")
            error = data.get("error")
            if error is not None and not isinstance(error, Mapping):
                raise TypeError("error must be an object or null")
            variant = data.get("variant")
            events = data.get("events")
            if events is not None and (
                not isinstance(events, list)
                or not all(
                    isinstance(e, Mapping) and isinstance(e.get("type"), str) for e in events
                )
            ):
                raise TypeError('events must be a list of {"type", "version", "payload"} objects')
            return cls(
                id=str(data["id"]),
                operation=str(data["operation"]),
                version=version,
                recorded_at=recorded_at.astimezone(UTC),
                input=data["input"],
                output=data.get("output"),
                error=None if error is None else dict(error),
                events=None if events is None else tuple(dict(e) for e in events),
                duration_ms=float(data.get("duration_ms") or 0.0),
                org_id=data.get("org_id"),
                actor_id=data.get("actor_id"),
                trace_id=data.get("trace_id"),
                request_id=data.get("request_id"),
                channel=str(data.get("channel") or "api"),
                variant=None if variant is None else int(variant),
            )
        except (TypeError, ValueError) as exc:
            raise SnapshotFormatError(
                f"snapshot {data.get('id')!r} is malformed: {exc}",
                details={"id": data.get("id")},
            ) from None
