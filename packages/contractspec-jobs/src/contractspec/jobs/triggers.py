"""Event-triggered jobs: `on_event("invoice.overdue", enqueue=job)` wired into the executor.

`EventJobs` implements core's `EventPublisher` port. Put it in front of your publisher (the outbox)
and every event a command emits enqueues its triggered jobs **in the command's transaction**: the
jobs exist iff the command commits, exactly like its events.

```python
from contractspec.jobs import EventJobs

events = EventJobs(queue, registry, then=backend.events)
executor = Executor(registry, backend=backend, events=events, jobs=queue)
```

Events that arrive another way (a bus subscription, a webhook) can be fed to `handle()`.
"""

from __future__ import annotations

from collections.abc import Sequence

from contractspec.core import EventEnvelope, EventPublisher, SpecRegistry, Transaction
from contractspec.jobs.queue import JobQueue
from contractspec.jobs.specs import EventTrigger

__all__ = ["EventJobs"]


class EventJobs:
    """An `EventPublisher` that enqueues the jobs of `on_event` triggers, then passes events on.

    Args:
        queue: Where triggered jobs go.
        triggers: A `SpecRegistry` (its `job_trigger` specs) or `EventTrigger`s.
        then: The publisher events are forwarded to afterwards (e.g. `backend.events`), or
            `None` when jobs are the only consumers.
    """

    def __init__(
        self,
        queue: JobQueue,
        triggers: SpecRegistry | Sequence[EventTrigger],
        *,
        then: EventPublisher | None = None,
    ) -> None:
        self.queue = queue
        self.then = then
        specs = (
            triggers.specs("job_trigger") if isinstance(triggers, SpecRegistry) else list(triggers)
        )
        self._by_event: dict[str, list[EventTrigger]] = {}
        for trigger in specs:
            self._by_event.setdefault(trigger.event, []).append(trigger)

    async def handle(self, event: EventEnvelope, tx: Transaction | None = None) -> list[str]:
        """Enqueue the jobs one event triggers; returns their ids.

        Raises:
            SpecValidationError: A trigger maps the event to an invalid job payload.
        """
        ids: list[str] = []
        for trigger in self._by_event.get(event.name, ()):
            payload = trigger.job_payload(event)
            options = {"org_id": event.org_id} if event.org_id is not None else {}
            ids.append(await self.queue.enqueue(trigger.job, payload, tx=tx, **options))
        return ids

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        """Enqueue triggered jobs inside `tx`, then forward `events` to `then`."""
        for event in events:
            await self.handle(event, tx)
        if self.then is not None:
            await self.then.publish(events, tx)
