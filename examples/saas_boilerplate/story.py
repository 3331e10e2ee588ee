"""The scripted story of `python -m saas_boilerplate`, also run by the tests (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from attrs import define, field

from contractspec.core import CallContext, ContractSpecError
from contractspec.metering import window_bounds
from saas_boilerplate.app import SaasApp
from saas_boilerplate.spec import (
    AuditPage,
    BillingSummary,
    OnboardingProgress,
    Project,
    ProjectExport,
)

__all__ = ["PDF", "Story", "run_story"]

#: The file Cleo attaches (a small PDF; its type is sniffed from these bytes).
PDF = b"%PDF-1.7\n" + b"%" * 12_000 + b"\n%%EOF\n"


@define
class Story:
    """What happened: printable lines, and the org id for assertions.

    Attributes:
        lines: One human-readable line per step.
        org_id: Acme's id.
        names: User id -> first name.
    """

    lines: list[str] = field(factory=list)
    org_id: str = ""
    names: dict[str, str] = field(factory=dict)


async def _chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def run_story(app: SaasApp) -> Story:
    """Sign up, fill the free plan's seats, work on a project, hit a flag, upgrade, read the audit.

    Args:
        app: The wired app (any SQL backend, a fake clock in the demo and tests).

    Returns:
        The story.
    """
    story = Story()
    say = story.lines.append
    ex = app.executor

    async def attempt(name: str, payload: dict[str, Any], call: CallContext) -> Any:
        try:
            return await ex.execute(name, payload, call)
        except ContractSpecError as exc:
            return exc

    ada, _ = await app.signup("ada@acme.test", "Acme")
    assert ada.org_id is not None
    story.org_id = ada.org_id
    story.names[ada.actor.id] = "ada"
    say("ada signs up: org Acme on plan free (3 seats), ada is its owner")
    ben, _ = await app.join(ada, "ben@acme.test", "admin")
    cleo, _ = await app.join(ada, "cleo@acme.test", "member")
    story.names.update({ben.actor.id: "ben", cleo.actor.id: "cleo"})
    say("ada invites ben (admin) and cleo (member); both accept")
    full = await attempt("identity.member.invite", {"email": "dan@acme.test"}, ada)
    say(f"ada invites dan -> {full.code}: {full.message}")

    apollo = await ex.execute("saas.project.create", {"name": "Apollo"}, cleo)
    assert isinstance(apollo, Project)
    say(f"cleo creates project {apollo.name!r} ({apollo.status})")
    attached = await app.upload(cleo, apollo.id, _chunks(PDF), "Design v1.pdf")
    say(f"cleo attaches {attached.file.filename!r}: {attached.file.media_type}, "
        f"{attached.file.size} bytes (type sniffed from the bytes)")  # fmt: skip
    denied = await attempt("saas.project.archive", {"project_id": apollo.id}, cleo)
    say(f"cleo archives it -> {denied.code}: {denied.reason}")

    delivered = await app.pump()
    progress = await ex.execute("saas.onboarding.progress", {}, cleo)
    assert isinstance(progress, OnboardingProgress)
    say(f"the relay delivers {delivered} events; cleo's onboarding: "
        f"{', '.join(progress.completed)} ({len(progress.completed)}/{len(progress.steps)})")  # fmt: skip

    off = await attempt("saas.project.export", {}, cleo)
    say(f"cleo exports the projects -> {off.code}: {off.reason}")
    upgraded = await ex.execute("saas.billing.change_plan", {"plan": "pro"}, ada)
    assert isinstance(upgraded, BillingSummary)
    say(f"ada moves Acme to {upgraded.plan} ({upgraded.seats_included} seats, "
        f"features: {', '.join(upgraded.features)})")  # fmt: skip
    export = await ex.execute("saas.project.export", {}, cleo)
    assert isinstance(export, ProjectExport)
    [item] = export.projects
    say(f"cleo exports the projects -> {item.project.name}: "
        f"{', '.join(f.filename for f in item.files)}")  # fmt: skip
    await ex.execute("identity.member.invite", {"email": "dan@acme.test"}, ada)
    summary = await ex.execute("saas.billing.summary", {}, ben)
    assert isinstance(summary, BillingSummary)
    usage = ", ".join(f"{m.meter} {m.used}/{m.limit} per {m.window}" for m in summary.meters)
    say(f"ada invites dan -> ok; seats {summary.seats_used}/{summary.seats_included}; {usage}")
    start, end = window_bounds("month", app.clock.now())
    invoice = await app.metering.invoice(story.org_id, start, end)
    for line in invoice.lines:
        price = app.metering.plans[invoice.plan].price_for(line.meter)
        assert price is not None
        say(f"invoice {start:%Y-%m} on {invoice.plan}: {line.meter} {line.quantity} x "
            f"{price.unit_amount} = {line.amount} {line.currency} (the gauge's latest value)")  # fmt: skip
    archived = await ex.execute("saas.project.archive", {"project_id": apollo.id}, ben)
    assert isinstance(archived, Project)
    say(f"ben archives {archived.name!r} -> {archived.status}")

    page = await ex.execute("saas.audit.list", {"limit": 8}, ben)
    assert isinstance(page, AuditPage)
    say("audit log, the last 8 entries (ben reads it: admins hold audit.view):")
    for entry in reversed(page.items):
        who = story.names.get(entry.actor_id or "", entry.actor_id)
        target = f" {entry.target_type}" if entry.target_type else ""
        say(f"  {entry.seq:>2}. {entry.action:<28} {entry.outcome:<8} by {who}{target}")
    verdict = await app.trail.verify(story.org_id)
    say(f"audit chain verifies: {bool(verdict)}")
    return story
