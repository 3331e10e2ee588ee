"""The SaaS example end to end, over HTTP, on a SQLite file and on PostgreSQL.

Every test drives the app the way a client does (HTTP with a bearer token from which the server
derives user and tenant), except for set-up steps that have no route (sign-up).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from saas_boilerplate.app import SaasApp, Tokens, build_app, wire_app
from saas_boilerplate.spec import PLAN_SEATS, registry, registry_v2
from saas_boilerplate.story import run_story
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from contractspec.core import CallContext, PolicyDeniedError
from contractspec.core.cli import app as cli
from contractspec.core.diff import check_lock
from contractspec.core.testing import FakeClock
from contractspec.core.testing.migrations import (
    metadata_from_config,
    migrate_and_check,
    titled_block,
)
from contractspec.identity.operations import Members
from contractspec.metering import QuotaExceededError, UsageEvent

HERE = Path(__file__).resolve().parents[1]
ROOT = HERE.parents[1]
PDF = b"%PDF-1.7\n" + b"%" * 3000 + b"\n%%EOF\n"


@dataclass
class Org:
    """An org with an owner, an admin and a member, and their tokens."""

    id: str
    owner: CallContext
    admin: CallContext
    member: CallContext
    tokens: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@dataclass
class World:
    app: SaasApp
    clock: FakeClock
    http: httpx.AsyncClient
    acme: Org
    globex: Org


async def _org(app: SaasApp, name: str) -> Org:
    slug = name.lower()
    owner, owner_token = await app.signup(f"owner@{slug}.test", name)
    admin, admin_token = await app.join(owner, f"admin@{slug}.test", "admin")
    member, member_token = await app.join(owner, f"member@{slug}.test", "member")
    assert owner.org_id is not None
    tokens = {"owner": owner_token, "admin": admin_token, "member": member_token}
    return Org(owner.org_id, owner, admin, member, tokens)


@pytest.fixture
async def world(sql_engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[World]:
    """The app on a fresh SQLite file or PostgreSQL schema, two orgs, an HTTP client."""
    clock = FakeClock()
    app = await build_app(sql_engine, tmp_path / "files", clock=clock)
    acme, globex = await _org(app, "Acme"), await _org(app, "Globex")
    transport = httpx.ASGITransport(app=app.http())
    async with httpx.AsyncClient(transport=transport, base_url="http://saas") as client:
        yield World(app, clock, client, acme, globex)


async def post(w: World, op: str, body: dict[str, Any], org: Org, who: str) -> httpx.Response:
    return await w.http.post(f"/{op.replace('.', '/')}/v1", json=body, headers=org.auth(who))


async def get(w: World, op: str, params: dict[str, Any], org: Org, who: str) -> httpx.Response:
    return await w.http.get(f"/{op.replace('.', '/')}/v1", params=params, headers=org.auth(who))


async def project(w: World, org: Org, who: str = "member", name: str = "Apollo") -> str:
    created = await post(w, "saas.project.create", {"name": name}, org, who)
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


async def upload(w: World, org: Org, who: str, project_id: str, data: bytes) -> httpx.Response:
    return await w.http.post(
        f"/files/upload/saas.project.files/{project_id}",
        files={"file": ("Spec v1.pdf", data, "application/pdf")},
        headers=org.auth(who),
    )


async def test_tenant_comes_from_the_token(world: World) -> None:
    """401 without or with a forged token; the org is the token's (an X-Org-Id header is not
    read); another org's project is not found; a removed member's token stops working."""
    w = world
    pid = await project(w, w.acme)
    assert (await w.http.post("/saas/project/create/v1", json={"name": "x"})).status_code == 401
    forged = {"Authorization": f"Bearer {w.acme.tokens['member'][:-2]}xx"}
    assert (await w.http.get("/saas/project/list/v1", headers=forged)).status_code == 401
    foreign = Tokens("another-deployment-secret-of-32-bytes!").issue(
        w.acme.owner.actor.id, w.acme.id
    )
    other_key = {"Authorization": f"Bearer {foreign}"}
    assert (await w.http.get("/saas/project/list/v1", headers=other_key)).status_code == 401
    steer = {**w.globex.auth("owner"), "X-Org-Id": w.acme.id}
    listed = await w.http.get("/saas/project/list/v1", headers=steer)
    assert (listed.status_code, listed.json()["total"]) == (200, 0)  # globex's projects
    other = await get(w, "saas.project.get", {"project_id": pid}, w.globex, "owner")
    assert (other.status_code, other.json()["code"]) == (404, "not_found")
    mine = await get(w, "saas.project.get", {"project_id": pid}, w.acme, "owner")
    assert mine.json()["name"] == "Apollo"
    removed = await post(
        w, "identity.member.remove", {"user_id": w.acme.member.actor.id}, w.acme, "owner"
    )
    assert removed.status_code == 200, removed.text
    gone = await get(w, "saas.project.list", {}, w.acme, "member")
    assert (gone.status_code, gone.json()["code"]) == (403, "policy_denied")


async def test_members_cannot_do_admin_things(world: World) -> None:
    """Members create and rename projects; archiving, inviting and the audit log are for admins,
    plans for owners; a refused call changes nothing."""
    w, acme = world, world.acme
    pid = await project(w, acme)
    renamed = await post(w, "saas.project.rename", {"project_id": pid, "name": "Apollo 2"}, acme,
                         "member")  # fmt: skip
    assert renamed.json()["name"] == "Apollo 2"
    refused = [
        await post(w, "saas.project.archive", {"project_id": pid}, acme, "member"),
        await post(w, "identity.member.invite", {"email": "eve@acme.test"}, acme, "member"),
        await get(w, "saas.audit.list", {}, acme, "member"),
        await post(w, "saas.billing.change_plan", {"plan": "pro"}, acme, "member"),
        await post(w, "saas.billing.change_plan", {"plan": "pro"}, acme, "admin"),
    ]
    assert [(r.status_code, r.json()["code"]) for r in refused] == [(403, "policy_denied")] * 5
    assert "does not grant 'project.manage'" in refused[0].json()["message"]
    state = await get(w, "saas.project.get", {"project_id": pid}, acme, "member")
    assert state.json()["status"] == "active"
    summary = await get(w, "saas.billing.summary", {}, acme, "admin")
    assert (summary.json()["plan"], summary.json()["seats_used"]) == ("free", 3)
    archived = await post(w, "saas.project.archive", {"project_id": pid}, acme, "admin")
    assert archived.json()["status"] == "archived"
    frozen = await post(w, "saas.project.rename", {"project_id": pid, "name": "x"}, acme, "member")
    assert (frozen.status_code, frozen.json()["code"]) == (409, "conflict")
    # a member cannot promote themselves either (identity's rank rule)
    promote = await post(w, "identity.member.change_role",
                         {"user_id": acme.member.actor.id, "role": "admin"}, acme, "member")  # fmt: skip
    assert promote.status_code == 403


async def test_seats_are_capped_per_plan(world: World) -> None:
    """The free plan has 3 seats (taken by owner, admin, member): a 4th invitation is 402 and
    leaves no membership; on pro it passes. The seats gauge follows every change."""
    w, acme = world, world.acme
    assert PLAN_SEATS["free"] == 3
    full = await post(w, "identity.member.invite", {"email": "dan@acme.test"}, acme, "admin")
    assert (full.status_code, full.json()["code"]) == (402, "quota_exceeded")
    assert full.json()["details"]["meter"] == "seats"
    members = await get(w, "identity.member.list", {}, acme, "admin")
    assert len(members.json()["members"]) == 3
    downgrade_blocked = await post(w, "saas.billing.change_plan", {"plan": "pro"}, acme, "owner")
    assert downgrade_blocked.json()["plan"] == "pro"
    ok = await post(w, "identity.member.invite", {"email": "dan@acme.test"}, acme, "admin")
    assert ok.status_code == 200, ok.text
    back = await post(w, "saas.billing.change_plan", {"plan": "free"}, acme, "owner")
    assert (back.status_code, back.json()["details"]["seats_used"]) == (409, 4)
    start, end = w.clock.now() - timedelta(days=1), w.clock.now() + timedelta(days=1)
    gauge = await w.app.metering.usage("seats", acme.id, start, end, by_subject=False)
    assert [g.value for g in gauge] == [4]


async def test_last_seat_goes_to_one_of_two_concurrent_invitations(world: World) -> None:
    """Two admins inviting at once into the last free seat: exactly one invitation is kept."""
    w, acme = world, world.acme
    removed = await w.app.executor.execute(
        "identity.member.remove", {"user_id": acme.member.actor.id}, acme.owner
    )
    assert removed is not None
    results = await asyncio.gather(
        w.app.executor.execute("identity.member.invite", {"email": "x@acme.test"}, acme.owner),
        w.app.executor.execute("identity.member.invite", {"email": "y@acme.test"}, acme.admin),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1, results
    assert isinstance(refused[0], QuotaExceededError)
    members = await w.app.executor.execute("identity.member.list", {}, acme.owner)
    assert isinstance(members, Members)
    assert len(members.members) == 3


async def test_api_call_rate_limit_per_day(world: World) -> None:
    """Free orgs get 1,000 commands a day: the 1,001st is 429 with Retry-After until midnight
    UTC and leaves nothing behind; the next day it passes; other orgs are not affected."""
    w, acme = world, world.acme
    now = w.clock.now()
    used = [
        UsageEvent(f"pre-{n}", acme.id, None, "import", "api.calls", 1, now) for n in range(999)
    ]
    await w.app.metering.record_many(used)
    await project(w, acme, name="last")
    over = await post(w, "saas.project.create", {"name": "over"}, acme, "member")
    assert (over.status_code, over.json()["code"]) == (429, "quota_rate_limited")
    assert over.headers["Retry-After"] == str(24 * 3600)  # the fake clock is at 00:00 UTC
    listed = await get(w, "saas.project.list", {}, acme, "member")
    assert [p["name"] for p in listed.json()["projects"]] == ["last"]
    await project(w, world.globex, name="elsewhere")
    w.clock.advance(timedelta(days=1))
    await project(w, acme, name="tomorrow")
    summary = await get(w, "saas.billing.summary", {}, acme, "owner")
    calls = next(m for m in summary.json()["meters"] if m["meter"] == "api.calls")
    assert (calls["used"], calls["limit"]) == ("1", "1000")


async def test_export_flag_gates_the_feature_per_plan(world: World) -> None:
    """`projects.export` is off on free (403, audited as a denial naming the flag) and on for
    pro, where the export lists the projects and their files."""
    w, acme = world, world.acme
    pid = await project(w, acme)
    assert (await upload(w, acme, "member", pid, PDF)).status_code == 201
    off = await get(w, "saas.project.export", {}, acme, "member")
    assert (off.status_code, off.json()["code"]) == (403, "policy_denied")
    assert "flag 'projects.export'" in off.json()["message"]
    await post(w, "saas.billing.change_plan", {"plan": "pro"}, acme, "owner")
    on = await get(w, "saas.project.export", {}, acme, "member")
    assert on.status_code == 200, on.text
    [exported] = on.json()["projects"]
    assert exported["project"]["id"] == pid
    assert [(f["filename"], f["size"]) for f in exported["files"]] == [("Spec v1.pdf", len(PDF))]
    still_off = await get(w, "saas.project.export", {}, world.globex, "owner")  # globex: free
    assert still_off.status_code == 403
    with pytest.raises(PolicyDeniedError):
        await w.app.executor.execute("saas.project.export", {}, world.globex.member)


async def test_attachment_upload_and_download(world: World) -> None:
    """A member uploads a PDF over multipart; files.get gives a signed link whose download has
    the same bytes, the sniffed type and a safe disposition. Spoofed types, another org's upload
    and a member's delete are refused; an admin deletes."""
    w, acme = world, world.acme
    pid = await project(w, acme)
    up = await upload(w, acme, "member", pid, PDF)
    assert up.status_code == 201, up.text
    attachment = up.json()["attachment"]["id"]
    got = await get(w, "files.get", {"attachment_id": attachment}, acme, "member")
    down = await w.http.get(got.json()["download_path"])
    assert down.status_code == 200
    assert (down.content, down.headers["content-type"]) == (PDF, "application/pdf")
    assert down.headers["content-disposition"].startswith('attachment; filename="Spec v1.pdf"')
    exe = b"MZ\x90\x00" + b"\x00" * 100 + b"PE\x00\x00"
    spoofed = await upload(w, acme, "member", pid, exe)
    assert (spoofed.status_code, spoofed.json()["code"]) == (415, "media_type_refused")
    foreign = await upload(w, world.globex, "owner", pid, PDF)
    assert foreign.status_code == 404  # acme's project does not exist in globex
    listed = await get(w, "files.attachments.list", {"entity": "saas.project", "entity_id": pid},
                       acme, "member")  # fmt: skip
    assert len(listed.json()["items"]) == 1
    denied = await post(w, "files.delete", {"attachment_id": attachment}, acme, "member")
    assert denied.status_code == 403
    deleted = await post(w, "files.delete", {"attachment_id": attachment}, acme, "admin")
    assert deleted.status_code == 200, deleted.text
    await w.app.files.drain()
    assert (await w.http.get(got.json()["download_path"])).status_code == 404
    summary = await get(w, "saas.billing.summary", {}, acme, "owner")
    uploaded = next(m for m in summary.json()["meters"] if m["meter"] == "upload.bytes")
    assert uploaded["used"] == str(len(PDF))


async def test_onboarding_steps_complete_on_real_events(world: World) -> None:
    """Steps complete when the relay delivers the product's own events: creating a project,
    uploading a file (after the first project), inviting someone; a redelivery changes nothing."""
    w, acme = world, world.acme
    await w.app.pump()  # the set-up's events (acme's owner invited two people)
    before = await get(w, "saas.onboarding.progress", {}, acme, "member")
    assert before.json()["completed"] == []
    pid = await project(w, acme)
    pending = await get(w, "saas.onboarding.progress", {}, acme, "member")
    assert pending.json()["completed"] == []  # committed, not yet delivered
    assert await w.app.pump() == 1
    after = await get(w, "saas.onboarding.progress", {}, acme, "member")
    assert after.json()["completed"] == ["first_project"]
    assert (await upload(w, acme, "member", pid, PDF)).status_code == 201
    await w.app.pump()
    done = await get(w, "saas.onboarding.progress", {}, acme, "member")
    assert done.json()["completed"] == ["first_project", "first_file"]
    owner = await get(w, "saas.onboarding.progress", {}, acme, "owner")
    assert owner.json()["completed"] == ["invite_teammate"]  # the owner invited, never created
    # a redelivered event (at-least-once) completes nothing twice
    [event] = await w.app.journeys.store.events(
        acme.id, ["saas.project.created"], actor_id=acme.member.actor.id
    )
    assert await w.app.journeys.handle(event) == []


async def test_audit_log_records_successes_and_denials(world: World) -> None:
    """Pro orgs read their audit log: the member's project, their refused archive (with the
    reason), the owner's plan change; the chain verifies. Free orgs lack the feature (403)."""
    w, acme = world, world.acme
    free = await get(w, "saas.audit.list", {}, acme, "owner")
    assert (free.status_code, free.json()["code"]) == (403, "feature_not_entitled")
    pid = await project(w, acme)
    await post(w, "saas.project.archive", {"project_id": pid}, acme, "member")
    await post(w, "saas.billing.change_plan", {"plan": "pro"}, acme, "owner")
    page = await get(w, "saas.audit.list", {"limit": 3}, acme, "admin")
    assert page.status_code == 200, page.text
    rows = [(i["action"], i["outcome"], i["actor_id"]) for i in page.json()["items"]]
    assert rows == [
        ("saas.billing.change_plan", "success", acme.owner.actor.id),
        ("saas.project.archive", "denied", acme.member.actor.id),
        ("saas.project.create", "success", acme.member.actor.id),
    ]
    rest = await get(w, "saas.audit.list", {"cursor": page.json()["next_cursor"]}, acme, "admin")
    refused, *setup = rest.json()["items"]  # free's refused audit.list is audited once (issue 18)
    assert (refused["action"], refused["outcome"], refused["actor_id"]) == (
        "saas.audit.list",
        "denied",
        acme.owner.actor.id,
    )
    assert "feature" in refused["reason"]
    assert [i["action"] for i in setup][:2] == [
        "identity.invitation.accept",
        "identity.member.invite",
    ]  # the set-up: the member joined
    assert "project.manage" in page.json()["items"][1]["reason"]
    created = page.json()["items"][2]
    assert (created["target_type"], created["target_id"]) == ("saas.project", pid)
    mine = await get(w, "saas.audit.list", {"actor_id": acme.member.actor.id, "action": "saas.*"},
                     acme, "owner")  # fmt: skip
    assert {i["action"] for i in mine.json()["items"]} == {"saas.project.create",
                                                           "saas.project.archive"}  # fmt: skip
    assert (await w.app.trail.verify(acme.id)).ok
    other = await get(w, "saas.audit.list", {}, world.globex, "owner")
    assert other.status_code == 403  # globex is on free


async def test_story_runs_end_to_end(sql_engine: AsyncEngine, tmp_path: Path) -> None:
    """The demo's story on this backend: seats, refusals, onboarding, the flag before and after
    the upgrade, the audit tail."""
    story = await run_story(await build_app(sql_engine, tmp_path / "files", clock=FakeClock()))
    text = "\n".join(story.lines)
    assert "ada invites dan -> quota_exceeded" in text
    assert "cleo's onboarding: first_project, first_file (2/3)" in text
    assert "cleo exports the projects -> Apollo: Design v1.pdf" in text
    assert "seats 4/50; api.calls 2/100000 per day, upload.bytes 12016/" in text
    assert "invoice 2024-01 on pro: seats 4 x 12.00 = 48.00 usd" in text
    assert story.lines[-1] == "audit chain verifies: True"


def test_python_m_saas_boilerplate_prints_the_readme_story() -> None:
    """`python -m saas_boilerplate` runs the story on a temporary SQLite file, as the README
    shows (ids aside)."""
    out = subprocess.run(
        [sys.executable, "-m", "saas_boilerplate"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    readme = (HERE / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- story:begin -->\n```text\n(.*?)```\n<!-- story:end -->", readme, re.S)
    assert block is not None, "README lost its story block"
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    assert uuid.sub("<id>", block.group(1)) == uuid.sub("<id>", out), "README story is stale"


def test_lock_files_match_the_code() -> None:
    """The committed IR locks of version 1 and of version 2 are what the spec produces."""
    assert check_lock(registry(), HERE / "contractspec.lock.json").status == "up-to-date"
    assert check_lock(registry_v2(), HERE / "contractspec.v2.lock.json").status == "up-to-date"


@pytest.mark.parametrize(
    ("marker", "new", "exit_code"),
    [
        ("spec-diff", "contractspec.v2.lock.json", 0),
        ("spec-diff-edited", "saas_boilerplate.spec:registry_edited", 1),
    ],
)
def test_readme_diff_is_the_real_command_output(marker: str, new: str, exit_code: int) -> None:
    """The README's `contractspec spec diff` blocks are what the command prints today (and the
    in-place edit fails it)."""
    readme = (HERE / "README.md").read_text(encoding="utf-8")
    pattern = rf"<!-- {marker}:begin -->\n```text\n(.*?)```\n<!-- {marker}:end -->"
    block = re.search(pattern, readme, re.S)
    assert block is not None, f"README lost its {marker} block"
    # the command itself, run in process (typer's runner): what `contractspec spec diff` prints
    lock = HERE / "contractspec.lock.json"
    target = str(HERE / new) if new.endswith(".json") else new
    real = CliRunner().invoke(cli, ["spec", "diff", str(lock), target])
    assert real.exit_code == exit_code, real.output
    assert block.group(1) == real.stdout


async def test_a_retried_create_runs_and_counts_once(world: World) -> None:
    """The same Idempotency-Key twice: one project, the same answer, one API call counted."""
    w, acme = world, world.acme
    headers = {**acme.auth("member"), "Idempotency-Key": "create-apollo-1"}
    first, again = [
        await w.http.post("/saas/project/create/v1", json={"name": "Apollo"}, headers=headers)
        for _ in range(2)
    ]
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    listed = await get(w, "saas.project.list", {}, acme, "member")
    assert listed.json()["total"] == 1
    calls = await w.app.metering.current("api.calls", acme.id)
    assert calls.value == 1


async def test_upload_allowance_refuses_and_keeps_nothing(world: World) -> None:
    """Free orgs may upload 20 MiB a month: an upload past it is 402, leaves no attachment and
    no counted bytes, and its staged blob is an orphan that collect_orphans removes."""
    w, acme = world, world.acme
    pid = await project(w, acme)
    allowance = 20 * 1024 * 1024
    used = UsageEvent("pre-upload", acme.id, None, "import", "upload.bytes", allowance - 100,
                      w.clock.now())  # fmt: skip
    await w.app.metering.record(used)
    over = await upload(w, acme, "member", pid, PDF)
    assert (over.status_code, over.json()["code"]) == (402, "quota_exceeded")
    assert over.json()["details"]["meter"] == "upload.bytes"
    listed = await get(w, "files.attachments.list", {"entity": "saas.project", "entity_id": pid},
                       acme, "member")  # fmt: skip
    assert listed.json()["items"] == []
    assert (await w.app.metering.current("upload.bytes", acme.id)).value == allowance - 100
    # orphans are judged by the blob's real write time: move the fake clock past it
    w.clock.advance(datetime.now(UTC) - w.clock.now() + timedelta(minutes=1))
    assert await w.app.files.collect_orphans(grace=timedelta(0)) == 1
    assert [o async for o in w.app.files.storage.list("blobs/")] == []


async def test_concurrent_calls_at_the_limit_admit_exactly_the_rest(world: World) -> None:
    """995 of 1,000 daily calls used, 10 members' creates at once: exactly 5 pass, 5 are
    rate-limited, and exactly 5 projects exist."""
    w, acme = world, world.acme
    now = w.clock.now()
    used = [
        UsageEvent(f"pre-{n}", acme.id, None, "import", "api.calls", 1, now) for n in range(995)
    ]
    await w.app.metering.record_many(used)
    results = await asyncio.gather(
        *(
            w.app.executor.execute("saas.project.create", {"name": f"p{n}"}, acme.member)
            for n in range(10)
        ),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 5, results
    assert all(isinstance(r, QuotaExceededError) for r in refused)
    listed = await get(w, "saas.project.list", {}, acme, "member")
    assert listed.json()["total"] == 5
    assert (await w.app.metering.current("api.calls", acme.id)).value == 1000


async def test_an_org_created_over_http_starts_on_free(world: World) -> None:
    """A user creating a second org (identity.org.create) owns it, and it is on the free plan
    (the default) with one seat used; their token for the first org does not reach it."""
    w, acme = world, world.acme
    created = await post(w, "identity.org.create", {"name": "Side Co"}, acme, "member")
    assert created.status_code == 200, created.text
    side = created.json()["id"]
    token = w.app.tokens.issue(acme.member.actor.id, side)
    summary = await w.http.get(
        "/saas/billing/summary/v1", headers={"Authorization": f"Bearer {token}"}
    )
    assert (summary.json()["plan"], summary.json()["seats_used"]) == ("free", 1)
    in_acme = await get(w, "saas.billing.summary", {}, acme, "member")
    assert in_acme.status_code == 403  # a member of acme, the owner of Side Co


async def test_the_schema_migrates_with_alembic(sql_engine: AsyncEngine, tmp_path: Path) -> None:
    """`app.metadatas` is the whole schema: Alembic autogenerates a migration that creates every
    table, `alembic check` finds nothing missing, and the story runs on the migrated database."""
    env_py = metadata_from_config(
        titled_block(ROOT / "docs" / "core" / "sql.md", "migrations/env.py"),
        "from myapp.db import target_metadata",
    )
    app = wire_app(sql_engine, tmp_path / "files", clock=FakeClock())
    await migrate_and_check(sql_engine, tmp_path / "migrations", app.metadatas, env_py=env_py)
    await app.start()
    story = await run_story(app)
    assert story.lines[-1] == "audit chain verifies: True"


async def test_a_background_relay_drives_onboarding(world: World) -> None:
    """As deployed: the relay runs beside the HTTP app (`relay.run`) and the member's progress
    follows their calls without anyone draining the outbox by hand."""
    w, acme = world, world.acme
    stop = asyncio.Event()
    relay = asyncio.create_task(w.app.relay.run(stop=stop))
    try:
        pid = await project(w, acme)
        assert (await upload(w, acme, "member", pid, PDF)).status_code == 201
        completed: list[str] = []
        for _ in range(100):  # up to 10 s; the relay polls every 0.5 s when idle
            progress = await get(w, "saas.onboarding.progress", {}, acme, "member")
            completed = progress.json()["completed"]
            if len(completed) == 2:
                break
            await asyncio.sleep(0.1)
        assert completed == ["first_project", "first_file"]
    finally:
        stop.set()
        await relay
