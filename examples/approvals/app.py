"""Wiring: executor on a SQL backend, the timer job queue on the same database, HTTP surface.

```text
HTTP (API key -> user, roles, org) ─┐
in-process CallContext ─────────────┴─> Executor ─> procurement.purchase_request.* ─> SqlBackend
                                               └─(enter `submitted`)─> cs_jobs ─> Worker
                                                   (due after 2 days) ─> .timer ─> escalate
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import define
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request

from approvals.spec import policy, registry
from contractspec.core import Actor, CallContext, Clock, Executor, SystemClock
from contractspec.core.http import Principal, create_app
from contractspec.core.sql import SqlBackend
from contractspec.jobs import Worker
from contractspec.jobs.sql import SqlJobQueue
from contractspec.jobs.workflows import workflow_timer_handlers

__all__ = ["ORG", "USERS", "ApiKey", "ApprovalsApp", "build_app"]

#: The one tenant of the demo.
ORG = "acme"


@define(frozen=True)
class ApiKey:
    """What an API key stands for: a user, their roles and their org (decided by the server).

    Attributes:
        user: The user id the calls are made as.
        roles: The user's roles (`requester`, `manager`, `finance`).
        org_id: The tenant the key belongs to.
    """

    user: str
    roles: tuple[str, ...]
    org_id: str = ORG

    def call(self) -> CallContext:
        """The in-process call context of this user (what the HTTP adapter builds per request)."""
        return CallContext(actor=Actor.user(self.user, roles=self.roles), org_id=self.org_id)


#: Demo API keys (a real app keeps hashed keys in its database or uses its identity provider).
USERS: Mapping[str, ApiKey] = {
    "key-alice": ApiKey("alice", ("requester",)),
    "key-bob": ApiKey("bob", ("manager",)),
    "key-carol": ApiKey("carol", ("manager",)),
    "key-fred": ApiKey("fred", ("finance",)),
    "key-zoe": ApiKey("zoe", ("manager",), org_id="globex"),
}


def authenticate(request: Request) -> Principal | None:
    """`Authorization: Bearer <key>` -> the key's user and org; unknown or missing key: anonymous.

    The tenant comes from the key on the server, never from the client.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    key = USERS.get(token) if scheme.lower() == "bearer" else None
    if key is None:
        return None
    return Principal(Actor.user(key.user, roles=key.roles), org_id=key.org_id)


@define
class ApprovalsApp:
    """The approvals app.

    Attributes:
        backend: SQL backend holding instances, history and approvals (`cs_` tables).
        executor: Runs every workflow operation (policy, tenant, audit, outbox).
        queue: Durable job queue on the same engine: SLA timers commit with their transition.
        clock: Time source of the executor and the queue.
    """

    backend: SqlBackend
    executor: Executor
    queue: SqlJobQueue
    clock: Clock

    def worker(self, **options: Any) -> Worker:
        """A jobs worker running the workflow's SLA timers (`procurement.purchase_request.timers`)."""
        options.setdefault("poll_interval", 0.05)
        return Worker(self.queue, workflow_timer_handlers(self.executor), **options)

    def http(self) -> Starlette:
        """The HTTP surface: every operation at `/procurement/purchase_request/<op>/v1`."""
        return create_app(self.executor, authenticate=authenticate, title="Purchase requests")


async def build_app(engine: AsyncEngine, *, clock: Clock | None = None) -> ApprovalsApp:
    """Create the tables on `engine` (SQLite or PostgreSQL, not disposed) and wire the app.

    Args:
        engine: `contractspec.core.sql.sqlite_engine(path)` or a PostgreSQL engine.
        clock: Time source (a `contractspec.core.testing.FakeClock` in the demo and tests).

    Returns:
        The wired app.
    """
    clock = clock or SystemClock()
    backend = SqlBackend(engine, registry)
    await backend.create_all()
    queue = SqlJobQueue(engine, registry, clock=clock)
    await queue.create_all()
    executor = Executor(registry, backend=backend, policy=policy(), jobs=queue, clock=clock)
    return ApprovalsApp(backend=backend, executor=executor, queue=queue, clock=clock)
