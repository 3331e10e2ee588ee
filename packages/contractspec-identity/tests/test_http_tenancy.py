"""Over HTTP, an org-A user never reads or changes org B's data by naming org B: the adapter takes
the tenant from the authenticator, and behind a trusted org header the engine's membership check
denies non-members (on memory, SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import httpx
from identity_support import IdentityApp, as_user
from pydantic import BaseModel
from starlette.requests import Request

from contractspec.core import Actor, HandlerCtx, authenticated, define_command, define_query
from contractspec.core.http import Principal, create_app
from contractspec.identity import Org, OrgMembership, User


class Empty(BaseModel):
    """No fields."""


class Roster(BaseModel):
    """The members of the call's org."""

    org_id: str
    user_ids: list[str]


class Rename(BaseModel):
    """A new name for the call's org."""

    name: str


class Renamed(BaseModel):
    """The org after the rename."""

    org_id: str
    name: str


roster = define_query("team.roster", input=Empty, output=Roster, auth=authenticated())
rename = define_command("team.rename", input=Rename, output=Renamed, auth=authenticated())


def add_team_operations(app: IdentityApp) -> None:
    """Two app operations left on `authenticated()` that read and change the call's org."""
    store = app.identity.store

    @app.registry.handler(roster)
    async def _roster(inp: Empty, ctx: HandlerCtx) -> Roster:
        assert ctx.org_id is not None
        members = await store.list_memberships(ctx.tx, ctx.org_id)
        return Roster(org_id=ctx.org_id, user_ids=sorted(m.user_id for m in members))

    @app.registry.handler(rename)
    async def _rename(inp: Rename, ctx: HandlerCtx) -> Renamed:
        assert ctx.org_id is not None
        org = await store.lock_org(ctx.tx, ctx.org_id)
        changed = await store.update_org(ctx.tx, org.model_copy(update={"name": inp.name}))
        return Renamed(org_id=changed.id, name=changed.name)


class Tenants:
    """Org A (ada owner, bob member) and org B (zed owner, xi member), and their sessions."""

    a: Org
    b: Org
    ada: User
    bob: User
    zed: User
    xi: User
    sessions: dict[str, Principal]


async def two_orgs(app: IdentityApp) -> Tenants:
    """Build both orgs through the identity operations; each user's session is in its own org."""
    t = Tenants()
    t.ada = await app.user("ada@a.example")
    t.a = await app.org(t.ada, "A", "org-a")
    t.bob = await app.member(t.a, t.ada, "bob@a.example")
    t.zed = await app.user("zed@b.example")
    t.b = await app.org(t.zed, "B", "org-b")
    t.xi = await app.member(t.b, t.zed, "xi@b.example")
    t.sessions = {
        f"t-{user.id}": Principal(Actor.user(user.id), org_id=org.id)
        for user, org in ((t.ada, t.a), (t.bob, t.a), (t.zed, t.b), (t.xi, t.b))
    }
    add_team_operations(app)
    return t


def client(app: IdentityApp, t: Tenants, **options: Any) -> httpx.AsyncClient:
    """An httpx client of the app served by the runtime adapter with bearer-token sessions."""

    def authenticate(request: Request) -> Principal | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return t.sessions.get(token) if scheme == "Bearer" else None

    served = create_app(app.executor, authenticate=authenticate, **options)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=served), base_url="http://t")


def bearer(user: User, org: Org | None = None) -> dict[str, str]:
    """The user's session token, naming `org` in `X-Org-Id` when given."""
    headers = {"Authorization": f"Bearer t-{user.id}"}
    return headers | ({"X-Org-Id": org.id} if org is not None else {})


async def org_b(app: IdentityApp, t: Tenants) -> Roster:
    """Org B's roster and name, read in-process as its owner."""
    out = await app.run("team.roster", {}, as_user(t.zed, t.b))
    assert isinstance(out, Roster)
    stored = await app.read(lambda tx: app.store.get_org(tx, t.b.id))
    assert stored.name == "B"
    return out


async def test_org_header_is_ignored_by_default(app: IdentityApp) -> None:
    """Without trust_org_header, ada naming org B reads and renames her own org A."""
    t = await two_orgs(app)
    async with client(app, t) as http:
        read = await http.get("/team/roster/v1", headers=bearer(t.ada, t.b))
        write = await http.post(
            "/team/rename/v1", json={"name": "Mine"}, headers=bearer(t.ada, t.b)
        )
    assert read.json() == {"org_id": t.a.id, "user_ids": sorted([t.ada.id, t.bob.id])}
    assert write.json() == {"org_id": t.a.id, "name": "Mine"}
    assert (await org_b(app, t)).user_ids == sorted([t.zed.id, t.xi.id])


async def test_trusted_org_header_still_needs_membership(app: IdentityApp) -> None:
    """Behind a trusted header, ada naming org B is denied (403) everywhere; her own org works."""
    t = await two_orgs(app)
    async with client(app, t, trust_org_header=True) as http:
        read = await http.get("/team/roster/v1", headers=bearer(t.ada, t.b))
        write = await http.post(
            "/team/rename/v1", json={"name": "Mine"}, headers=bearer(t.ada, t.b)
        )
        members = await http.get("/identity/member/list/v1", headers=bearer(t.ada, t.b))
        own = await http.get("/team/roster/v1", headers=bearer(t.ada, t.a))
    for denied in (read, write, members):
        assert (denied.status_code, denied.json()["code"]) == (403, "policy_denied")
    assert own.json() == {"org_id": t.a.id, "user_ids": sorted([t.ada.id, t.bob.id])}
    assert (await org_b(app, t)).user_ids == sorted([t.zed.id, t.xi.id])


async def test_suspended_members_are_shut_out_and_invitees_can_accept(app: IdentityApp) -> None:
    """A suspended member of B is denied in B; an invitee to B accepts over HTTP and then reads."""
    t = await two_orgs(app)
    await app.run("identity.member.suspend", {"user_id": t.xi.id}, as_user(t.zed, t.b))
    invited = await app.run(
        "identity.member.invite", {"email": "new@b.example"}, as_user(t.zed, t.b)
    )
    assert isinstance(invited, OrgMembership)
    t.sessions["t-new"] = Principal(Actor.user(invited.user_id))
    invitee = {"Authorization": "Bearer t-new", "X-Org-Id": t.b.id}
    async with client(app, t, trust_org_header=True) as http:
        suspended = await http.get("/team/roster/v1", headers=bearer(t.xi, t.b))
        accepted = await http.post("/identity/invitation/accept/v1", json={}, headers=invitee)
        after = await http.get("/team/roster/v1", headers=invitee)
    assert (suspended.status_code, suspended.json()["code"]) == (403, "policy_denied")
    assert (accepted.status_code, accepted.json()["status"]) == (200, "active")
    assert after.json()["user_ids"] == sorted([t.zed.id, t.xi.id, invited.user_id])
