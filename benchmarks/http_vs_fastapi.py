"""ContractSpec's HTTP adapter vs a hand-written FastAPI endpoint, same CRM operation.

Both serve `POST /crm/deal/create/v1`: look the bearer token up (user, roles and org), validate
the JSON body (title, contact id, decimal amount with 2 places), check the caller's
`crm.deal.write` permission from its roles, store the deal per org, record a `crm.deal.created`
event and an audit entry, and answer the deal as JSON.

* ours: `contractspec.core.http.create_app` over an `Executor` (memory backend, `RolePermissions`),
  i.e. the full pipeline: validation, policy, transaction, outbox, hash-chained audit, output check;
* peer: a FastAPI endpoint written by hand the way its docs teach (pydantic body, `Header`
  parameters, `response_model`), doing the same work with dicts and lists;
* hosted: the same executor served by FastAPI through `contractspec.core.fastapi`
  (`contractspec_router` with the authenticator as a FastAPI dependency, `install`), i.e. ours
  plus FastAPI's routing and dependency resolution.

Both are driven in-process through `httpx.ASGITransport` with the same requests, alternating
rounds so that machine noise hits both. Prints the median requests/second of each and the ratio
(goal: ours >= FastAPI).

Run: `uv run --all-packages --all-extras --group bench python benchmarks/http_vs_fastapi.py`
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, HTTPException
from pydantic import AwareDatetime, BaseModel, Field
from starlette.requests import Request

from contractspec.core import (
    Actor,
    Executor,
    HandlerCtx,
    RolePermissions,
    SpecRegistry,
    define_command,
    define_entity,
    define_event,
    requires,
)
from contractspec.core.fastapi import contractspec_router, install
from contractspec.core.http import Principal, create_app

REQUESTS = 2000
ROUNDS = 7


class CreateDeal(BaseModel):
    contact_id: Annotated[str, Field(min_length=1, max_length=64)]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    amount: Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]


class Deal(BaseModel):
    id: str
    contact_id: str
    title: str
    amount: Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]
    stage: str = "lead"
    created_at: AwareDatetime


class DealCreated(BaseModel):
    deal_id: str
    amount: Decimal


POLICY = RolePermissions({"sales": ["crm.deal.*"], "viewer": ["crm.read"]})
#: The server's sessions: bearer token -> (user, roles, org).
SESSIONS = {"t-u1": ("u1", ("sales",), "org-1")}

# -- ours ------------------------------------------------------------------------------------

deal_entity = define_entity("crm.deal", Deal)
deal_created = define_event("crm.deal.created", payload=DealCreated, key="deal_id")
create_deal = define_command(
    "crm.deal.create",
    input=CreateDeal,
    output=Deal,
    emits=[deal_created],
    auth=requires("crm.deal.write"),
)


def _executor() -> Executor:
    registry = SpecRegistry(deal_entity)

    @registry.handler(create_deal)
    async def create(inp: CreateDeal, ctx: HandlerCtx) -> Deal:
        deal = Deal(
            id=ctx.new_id(),
            contact_id=inp.contact_id,
            title=inp.title,
            amount=inp.amount,
            created_at=ctx.now(),
        )
        await ctx.repo(deal_entity).add(deal)
        ctx.emit(deal_created, DealCreated(deal_id=deal.id, amount=deal.amount))
        return deal

    return Executor(registry, policy=POLICY)


PRINCIPALS = {
    f"Bearer {token}": Principal(Actor.user(user, roles=roles), org_id=org)
    for token, (user, roles, org) in SESSIONS.items()
}


def authenticate(request: Request) -> Principal | None:
    """The bearer token's session (a Starlette hook and, unchanged, a FastAPI dependency)."""
    return PRINCIPALS.get(request.headers.get("authorization", ""))


def ours() -> Any:
    return create_app(_executor(), authenticate=authenticate)


async def principal(request: Request) -> Principal | None:
    """`authenticate` as an async FastAPI dependency: FastAPI runs a sync one in its threadpool,
    a thread hop per request that a lookup this cheap should not pay."""
    return authenticate(request)


def hosted() -> Any:
    app = FastAPI()
    app.include_router(contractspec_router(_executor(), authenticate=principal))
    return install(app)


# -- hand-written FastAPI --------------------------------------------------------------------


def peer() -> Any:
    app = FastAPI()
    deals: dict[tuple[str, str], Deal] = {}
    events: list[dict[str, Any]] = []
    audit: list[dict[str, Any]] = []

    @app.post("/crm/deal/create/v1", response_model=Deal)
    async def create(body: CreateDeal, authorization: Annotated[str, Header()] = "") -> Deal:
        scheme, _, token = authorization.partition(" ")
        session = SESSIONS.get(token) if scheme == "Bearer" else None
        if session is None:
            raise HTTPException(401, "authentication required")
        user, roles, org = session
        actor = Actor.user(user, roles=roles)
        if not POLICY._decide(actor.roles, "crm.deal.write").allowed:
            raise HTTPException(403, "policy denied")
        deal = Deal(
            id=uuid.uuid4().hex,
            contact_id=body.contact_id,
            title=body.title,
            amount=body.amount,
            created_at=datetime.now(UTC),
        )
        deals[(org, deal.id)] = deal
        events.append({"name": "crm.deal.created", "deal_id": deal.id, "amount": str(deal.amount)})
        audit.append({"action": "crm.deal.create", "actor": user, "target": deal.id})
        return deal

    return app


# -- driver ----------------------------------------------------------------------------------

HEADERS = {"Authorization": "Bearer t-u1"}
BODY = {"contact_id": "c-1", "title": "ACME renewal", "amount": "1250.50"}


async def rate(client: httpx.AsyncClient, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        resp = await client.post("/crm/deal/create/v1", json=BODY, headers=HEADERS)
        if resp.status_code != 200:  # pragma: no cover - a broken benchmark must not report
            raise SystemExit(f"unexpected {resp.status_code}: {resp.text}")
    return n / (time.perf_counter() - started)


async def main() -> None:
    apps = {"contractspec": ours(), "fastapi": peer(), "hosted": hosted()}
    clients = {
        name: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
        for name, app in apps.items()
    }
    try:
        for client in clients.values():  # warm-up and equal answers
            await rate(client, 200)
        a = (
            await clients["contractspec"].post("/crm/deal/create/v1", json=BODY, headers=HEADERS)
        ).json()
        b = (
            await clients["fastapi"].post("/crm/deal/create/v1", json=BODY, headers=HEADERS)
        ).json()
        c = (await clients["hosted"].post("/crm/deal/create/v1", json=BODY, headers=HEADERS)).json()
        if sorted(a) != sorted(b) or a["amount"] != b["amount"]:  # pragma: no cover
            raise SystemExit(f"the two endpoints answer differently: {a} vs {b}")
        if sorted(c) != sorted(a) or c["amount"] != a["amount"]:  # pragma: no cover
            raise SystemExit(f"the FastAPI-hosted routes answer differently: {c} vs {a}")
        results: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(ROUNDS):
            for name, client in clients.items():
                results[name].append(await rate(client, REQUESTS))
    finally:
        for client in clients.values():
            await client.aclose()
    ours_rps = statistics.median(results["contractspec"])
    peer_rps = statistics.median(results["fastapi"])
    hosted_rps = statistics.median(results["hosted"])
    print(f"POST /crm/deal/create/v1, {REQUESTS} requests x {ROUNDS} rounds, httpx ASGITransport")
    print(f"  contractspec.core.http : {ours_rps:8.0f} req/s (median)")
    print(f"  hand-written FastAPI   : {peer_rps:8.0f} req/s (median)")
    print(f"  core.fastapi (hosted)  : {hosted_rps:8.0f} req/s (median)")
    print(f"  ratio ours/FastAPI     : {ours_rps / peer_rps:8.2f}x (goal >= 1.00)")
    print(f"  ratio hosted/FastAPI   : {hosted_rps / peer_rps:8.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
