"""Wiring: one database for everything, one executor, an outbox relay, the HTTP surface.

```text
HTTP (Bearer token -> user + org, signed) ─┐   POST /files/upload/saas.project.files/{id}
in-process CallContext ────────────────────┴─> Executor(policy = identity's PolicyEngine)
    middleware: SeatCap (seats gauge, capped) -> QuotaMiddleware (api.calls, upload.bytes)
    -> identity.* | saas.* | files.* handlers -> SqlBackend (cs_ tables, outbox, audit chain)
cs_outbox ─> OutboxRelay ─> EventBus ─> JourneyEngine.handle (onboarding steps)
```

Every store is the SQL one, on the engine you pass (a SQLite file or PostgreSQL); blobs go to a
local directory.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any

from attrs import define
from itsdangerous import BadSignature, URLSafeSerializer
from pydantic import BaseModel
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request

from contractspec.bus import EventBus, OutboxRelay
from contractspec.bus.sql import SqlAuditTrail, SqlOutboxStore
from contractspec.bus.sql import metadata as bus_metadata
from contractspec.core import (
    Actor,
    CallContext,
    Clock,
    Executor,
    Invocation,
    SpecRegistry,
    SystemClock,
)
from contractspec.core.handler import NextFn
from contractspec.core.http import Principal, create_app
from contractspec.core.sql import SqlBackend
from contractspec.files import Files, LocalFileStorage
from contractspec.files.http import file_routes
from contractspec.files.sql import SqlFileStore
from contractspec.files.sql import metadata as files_metadata
from contractspec.growth import FlagEvaluator, JourneyEngine
from contractspec.growth.journeys_sql import SqlJourneyStore
from contractspec.identity import Identity, Org, OrgMembership, User, register_identity
from contractspec.identity.sql import SqlIdentityStore
from contractspec.metering import Metering
from contractspec.metering.sql import SqlMeteringStore
from contractspec.metering.sql import metadata as metering_metadata
from saas_boilerplate.handlers import Handlers, seats_in_use
from saas_boilerplate.spec import (
    ACCESS,
    declare,
    export_flag,
    onboarding,
    project_files,
    seats,
)

__all__ = ["SaasApp", "SeatCap", "Tokens", "build_app", "wire_app"]

#: Operations after which the org's seat count is recorded on the `seats` gauge.
SEAT_CHANGES = frozenset(
    {
        "identity.org.create",
        "identity.member.invite",
        "identity.member.remove",
        "identity.org.leave",
        "identity.member.suspend",
        "identity.member.reactivate",
    }
)


@define
class SeatCap:
    """Executor middleware: every membership change records the org's seat count on the `seats`
    gauge with `Metering.gauge`, which checks it against the plan's seat cap
    (`Limit("seats", n)`).

    It runs in the call's transaction after the handler: the gauge lock (a row lock on
    PostgreSQL) is taken before the seats are counted, so of two concurrent invitations into
    the last seat the second counts the first's membership and is refused, and a refused call
    rolls back with its invitation. Removing members is never refused, even over the cap.

    Raises:
        QuotaExceededError: The change would take the seats past the plan's cap (HTTP 402).
    """

    identity: Identity
    metering: Metering

    async def __call__(self, invocation: Invocation, call_next: NextFn) -> BaseModel:
        if invocation.spec.name not in SEAT_CHANGES:
            return await call_next(invocation)
        output = await call_next(invocation)
        ctx = invocation.ctx
        org_id = output.id if isinstance(output, Org) else ctx.org_id  # a new org: its owner
        if org_id is not None:

            async def count() -> int:
                return await seats_in_use(self.identity, ctx, org_id)

            await self.metering.gauge(ctx, seats, count, org_id=org_id, subject="members")
        return output


class Tokens:
    """API tokens: a signed `(user, org)` pair (itsdangerous), issued by the server.

    The tenant of a call comes from the token, never from the request; the executor still
    checks on every call that the user is a member of that org (a removed member's token stops
    working at once). Real apps add expiry and revocation, or use their identity provider.

    Args:
        secret: Signing key (at least 32 bytes; keep it out of the database).
    """

    def __init__(self, secret: str) -> None:
        self._signer = URLSafeSerializer(secret, salt="saas.api-token")

    def issue(self, user_id: str, org_id: str) -> str:
        """A token acting as `user_id` in `org_id`."""
        return str(self._signer.dumps({"u": user_id, "o": org_id}))

    def authenticate(self, request: Request) -> Principal | None:
        """`Authorization: Bearer <token>` -> the token's user and org; anything else: anonymous."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            data = self._signer.loads(token)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not {"u", "o"} <= data.keys():
            return None  # signed by us, so never in practice: still no KeyError (500)
        return Principal(Actor.user(str(data["u"])), org_id=str(data["o"]))


@define
class SaasApp:
    """The wired app.

    Attributes:
        engine: The database (not disposed by the app).
        executor: Runs every operation (policy, tenant, quotas, audit, outbox).
        identity: Users, orgs, memberships, the policy engine.
        files: Attachments (blobs under `files_dir`, records in `cs_files`/`cs_attachments`).
        metering: Plans and usage.
        journeys: Onboarding progress, fed by the relay.
        relay: Delivers the outbox to `bus` (run it in the background, or `pump()` it).
        trail: Audit queries and chain verification.
        tokens: API token issuer and HTTP authenticator.
        clock: Time source of everything above.
        metadatas: Every table of the app, for Alembic's `target_metadata`.
    """

    engine: AsyncEngine
    executor: Executor
    identity: Identity
    files: Files
    metering: Metering
    journeys: JourneyEngine
    bus: EventBus
    relay: OutboxRelay
    trail: SqlAuditTrail
    tokens: Tokens
    clock: Clock
    metadatas: tuple[MetaData, ...]

    async def create_tables(self) -> None:
        """Create every table of `metadatas` that does not exist yet (tests and demos; migrate
        with Alembic in production)."""
        async with self.engine.begin() as conn:
            for metadata in self.metadatas:
                await conn.run_sync(metadata.create_all)

    async def start(self) -> None:
        """Load the policy engine from the database (once the tables exist)."""
        await self.identity.load(self.executor.unit_of_work)

    async def signup(self, email: str, org_name: str) -> tuple[CallContext, str]:
        """Create a user and their org (on the free plan) as the system; the owner's call
        context and API token."""
        user = await self.executor.execute(
            "identity.user.create", {"email": email}, CallContext(actor=Actor.system("signup"))
        )
        assert isinstance(user, User)
        org = await self.executor.execute(
            "identity.org.create", {"name": org_name}, CallContext(actor=Actor.user(user.id))
        )
        assert isinstance(org, Org)
        await self.metering.assign_plan(org.id, "free")
        return self.as_user(user.id, org.id), self.tokens.issue(user.id, org.id)

    async def join(self, owner: CallContext, email: str, role: str) -> tuple[CallContext, str]:
        """`owner` invites `email` with `role` and the invitee accepts; their context and token."""
        invited = await self.executor.execute(
            "identity.member.invite", {"email": email, "role": role}, owner
        )
        assert isinstance(invited, OrgMembership)
        assert owner.org_id is not None
        ctx = self.as_user(invited.user_id, owner.org_id)
        await self.executor.execute("identity.invitation.accept", {}, ctx)
        return ctx, self.tokens.issue(invited.user_id, owner.org_id)

    @staticmethod
    def as_user(user_id: str, org_id: str) -> CallContext:
        """The in-process call context of a user in an org (what the HTTP adapter builds)."""
        return CallContext(actor=Actor.user(user_id), org_id=org_id)

    async def upload(
        self, ctx: CallContext, project_id: str, chunks: AsyncIterable[bytes], filename: str
    ) -> Any:
        """Attach a file to a project in process (what `POST /files/upload/...` does)."""
        assert ctx.org_id is not None
        staged = await self.files.stage(
            project_files, chunks, org_id=ctx.org_id, actor_id=ctx.actor.id, filename=filename
        )
        return await self.executor.execute(
            "files.upload", {"token": staged.token, "entity_id": project_id}, ctx
        )

    async def pump(self) -> int:
        """Deliver every pending outbox event (onboarding progress); the number delivered."""
        return await self.relay.drain()

    def http(self) -> Starlette:
        """The HTTP surface: every operation at `/<name with />/v<version>`, plus file routes."""
        app = create_app(self.executor, authenticate=self.tokens.authenticate, title="SaaS")
        app.router.routes.extend(
            file_routes(self.executor, self.files, authenticate=self.tokens.authenticate)
        )
        return app


def wire_app(
    engine: AsyncEngine,
    files_dir: str | Path,
    *,
    secret: str | None = None,
    clock: Clock | None = None,
) -> SaasApp:
    """Wire the app on `engine` without touching the database (see `build_app`).

    Use it with Alembic: put `app.metadatas` in your `env.py`'s `target_metadata`, migrate,
    then `await app.start()`.
    """
    clock = clock or SystemClock()
    secret = secret or secrets.token_hex(32)
    file_store = SqlFileStore(engine)
    files = Files(storage=LocalFileStorage(files_dir), store=file_store, secret=secret, clock=clock)
    registry = declare(SpecRegistry(), files)
    backend = SqlBackend(engine, registry)
    identity = register_identity(registry, SqlIdentityStore(backend.tables), model=ACCESS)
    # orgs without an assignment (e.g. created through identity.org.create) are on free
    metering = Metering(registry, SqlMeteringStore(engine), clock=clock, default_plan="free")
    journey_store = SqlJourneyStore(engine)
    journeys = JourneyEngine([onboarding], journey_store, clock=clock)
    trail = SqlAuditTrail(engine, clock=clock)
    Handlers(
        identity=identity,
        files=files,
        metering=metering,
        flags=FlagEvaluator([export_flag]),
        journeys=journeys,
        trail=trail,
    ).bind(registry)
    registry.validate(require_handlers=True)
    executor = Executor(
        registry,
        backend=backend,
        policy=identity.engine,
        clock=clock,
        middleware=[SeatCap(identity, metering), metering.middleware()],
    )
    bus = EventBus()
    journeys.subscribe(bus)  # saas.project.created, files.uploaded, member.invited
    relay = OutboxRelay(SqlOutboxStore(engine), bus, registry=registry)
    return SaasApp(
        engine=engine,
        executor=executor,
        identity=identity,
        files=files,
        metering=metering,
        journeys=journeys,
        bus=bus,
        relay=relay,
        trail=trail,
        tokens=Tokens(secret),
        clock=clock,
        metadatas=(
            *backend.metadatas,  # core's tables; identity's and the project's
            bus_metadata,  # audit checkpoints, dead letters, processed events, ...
            files_metadata,  # cs_files, cs_attachments
            metering_metadata,  # usage events, counters, plan assignments
            journey_store.metadata,  # onboarding events, enrollments, steps
        ),
    )


async def build_app(
    engine: AsyncEngine,
    files_dir: str | Path,
    *,
    secret: str | None = None,
    clock: Clock | None = None,
) -> SaasApp:
    """Wire the app, create its tables on `engine` (SQLite or PostgreSQL, not disposed) and
    start it. Production apps migrate with Alembic instead (`wire_app`, `app.metadatas`).

    Args:
        engine: `contractspec.core.sql.sqlite_engine(path)` or a PostgreSQL engine.
        files_dir: Directory of uploaded blobs.
        secret: Key signing API tokens, upload tokens and download links (32+ bytes; random by
            default, so tokens do not survive a restart).
        clock: Time source (a `contractspec.core.testing.FakeClock` in the tests).

    Returns:
        The started app.
    """
    app = wire_app(engine, files_dir, secret=secret, clock=clock)
    await app.create_tables()
    await app.start()
    return app
