"""Helpers for testing apps that use the bus: capturing subscribers and channels.

```python
from contractspec.bus.testing import CapturingChannel, capture

events = capture(bus, "crm.*")        # a list that fills as events are delivered
email = CapturingChannel("email")      # a channel that keeps messages instead of sending them
```
"""

from __future__ import annotations

from contractspec.bus.bus import EventBus
from contractspec.bus.notifications import OutgoingMessage
from contractspec.core import EventEnvelope

__all__ = ["CapturingChannel", "capture"]


def capture(bus: EventBus, pattern: str = "*", *, name: str | None = None) -> list[EventEnvelope]:
    """Subscribe a recorder to `pattern` and return the list it appends delivered events to."""
    seen: list[EventEnvelope] = []
    bus.subscribe(
        pattern, seen.append, name=name or f"contractspec.testing.capture:{pattern}:{id(seen)}"
    )
    return seen


class CapturingChannel:
    """A notification channel that records messages; it can be told to fail the next sends.

    Args:
        name: Channel name to stand in for (`email`, `in_app`, `webhook`).
        fail_times: Raise `ConnectionError` on this many sends before succeeding.

    Attributes:
        sent: Messages delivered, in order.
        attempts: Every call to `send`, including failed ones.
    """

    def __init__(self, name: str, *, fail_times: int = 0) -> None:
        self.name = name
        self.fail_times = fail_times
        self.sent: list[OutgoingMessage] = []
        self.attempts = 0

    async def send(self, message: OutgoingMessage) -> None:
        """Record the message, or raise while `fail_times` is not used up."""
        self.attempts += 1
        if self.fail_times > 0:
            self.fail_times -= 1
            raise ConnectionError(f"{self.name} is down (simulated)")
        self.sent.append(message)
