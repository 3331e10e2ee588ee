"""Handlers of the app's own operations: plain async functions over the packages' public APIs.

`Handlers` holds what they read besides the call's repositories: the metering runtime (plans,
usage), the identity store (seats), the file records (exports), the flag evaluator, the
journeys engine and the audit trail. `bind` attaches them to a registry.
"""

from __future__ import annotations

from attrs import define

from contractspec.bus import AuditFilter, AuditTrail
from contractspec.core import ConflictError, Handler, HandlerCtx, NotFoundError, SpecRegistry
from contractspec.files import Files
from contractspec.growth import FlagEvaluator, JourneyEngine
from contractspec.growth.experiments import subject_attributes
from contractspec.identity import Identity, MembershipStatus
from contractspec.metering import Metering
from saas_boilerplate.spec import (
    EXPORT_FLAG,
    PLAN_SEATS,
    AuditItem,
    AuditPage,
    AuditQuery,
    BillingSummary,
    CreateProject,
    ExportedFile,
    ExportedProject,
    ListProjects,
    MeterUsage,
    NoInput,
    OnboardingProgress,
    PlanChange,
    PlanChanged,
    Project,
    ProjectArchived,
    ProjectCreated,
    ProjectExport,
    ProjectList,
    ProjectRef,
    ProjectStatus,
    RenameProject,
    StepView,
    onboarding,
    operations,
    plan_changed,
    project_archived,
    project_created,
    project_entity,
    project_files,
)

__all__ = ["Handlers", "seats_in_use"]


def _org(ctx: HandlerCtx) -> str:
    # every app operation is tenant data: the executor checked the caller belongs to ctx.org_id
    if ctx.org_id is None:  # pragma: no cover - the metering middleware refuses org-less calls
        raise NotFoundError("this operation needs an org", details={"field": "org_id"})
    return ctx.org_id


async def seats_in_use(identity: Identity, ctx: HandlerCtx, org_id: str) -> int:
    """Active and invited memberships of `org_id`, read in the call's transaction."""
    members = await identity.store.list_memberships(ctx.tx, org_id)
    return sum(m.status in (MembershipStatus.ACTIVE, MembershipStatus.INVITED) for m in members)


@define
class Handlers:
    """The app's handlers and what they read.

    Attributes:
        identity: Users, orgs and memberships (seat counts).
        files: The files runtime (attachment records for exports).
        metering: Plans and usage.
        flags: Feature flags (`projects.export`).
        journeys: Onboarding progress.
        trail: The audit trail over the executor's audit chain.
    """

    identity: Identity
    files: Files
    metering: Metering
    flags: FlagEvaluator
    journeys: JourneyEngine
    trail: AuditTrail

    def bind(self, registry: SpecRegistry) -> None:
        """Bind every handler to its operation in `registry`."""
        handlers: dict[str, Handler] = {
            "create": self.create_project,
            "rename": self.rename_project,
            "archive": self.archive_project,
            "get": self.get_project,
            "list": self.list_projects,
            "export": self.export_projects,
            "change_plan": self.change_plan,
            "summary": self.billing_summary,
            "audit": self.audit_log,
            "progress": self.onboarding_progress,
        }
        for key, handler in handlers.items():
            registry.bind(operations[key], handler)

    # -- projects ---------------------------------------------------------------------------------

    async def create_project(self, inp: CreateProject, ctx: HandlerCtx) -> Project:
        """Create a project; emits `saas.project.created` (which completes an onboarding step)."""
        project = Project(
            id=ctx.new_id(),
            name=inp.name,
            description=inp.description,
            created_by=ctx.actor.id,
            created_at=ctx.now(),
        )
        await ctx.repo(project_entity).add(project)
        ctx.emit(project_created, ProjectCreated(project_id=project.id, name=project.name))
        return project

    async def rename_project(self, inp: RenameProject, ctx: HandlerCtx) -> Project:
        """Rename an active project (archived projects are read-only: `ConflictError`)."""
        repo = ctx.repo(project_entity)
        project = await repo.get_for_update(inp.project_id)
        if project is None:
            raise NotFoundError(
                f"project {inp.project_id!r} not found in this org", details={"field": "project_id"}
            )
        if project.status is ProjectStatus.ARCHIVED:
            raise ConflictError(
                f"project {project.id!r} is archived and read-only; ask an admin to create a new "
                "one",
                details={"field": "project_id"},
            )
        return await repo.update(project.model_copy(update={"name": inp.name}))

    async def archive_project(self, inp: ProjectRef, ctx: HandlerCtx) -> Project:
        """Archive a project (idempotent: archiving an archived project returns it unchanged)."""
        repo = ctx.repo(project_entity)
        project = await repo.get_for_update(inp.project_id)
        if project is None:
            raise NotFoundError(
                f"project {inp.project_id!r} not found in this org", details={"field": "project_id"}
            )
        if project.status is ProjectStatus.ARCHIVED:
            return project
        archived = await repo.update(
            project.model_copy(update={"status": ProjectStatus.ARCHIVED, "archived_at": ctx.now()})
        )
        ctx.emit(project_archived, ProjectArchived(project_id=project.id))
        return archived

    async def get_project(self, inp: ProjectRef, ctx: HandlerCtx) -> Project:
        """One project of the caller's org (another org's id is simply not found)."""
        project = await ctx.repo(project_entity).get(inp.project_id)
        if project is None:
            raise NotFoundError(
                f"project {inp.project_id!r} not found in this org", details={"field": "project_id"}
            )
        return project

    async def list_projects(self, inp: ListProjects, ctx: HandlerCtx) -> ProjectList:
        """The org's projects, newest first, optionally by status."""
        where = {} if inp.status is None else {"status": inp.status}
        repo = ctx.repo(project_entity)
        found = await repo.find(
            where, order_by=["-created_at", "id"], limit=inp.limit, offset=inp.offset
        )
        return ProjectList(projects=found, total=await repo.count(where))

    async def export_projects(self, inp: NoInput, ctx: HandlerCtx) -> ProjectExport:
        """Every project with its files, if the `projects.export` flag is on for the org's plan.

        The flag is evaluated for the caller with the org's plan as the `plan` attribute; when
        it is off the call is refused with `PolicyDeniedError` (HTTP 403), audited once as a
        denial.
        """
        org = _org(ctx)
        plan = await self.metering.plan_of(org, tx=ctx.tx)
        subject = subject_attributes(ctx.call, plan=plan.key if plan else None)
        flag = self.flags.evaluate(EXPORT_FLAG, subject)
        if not flag.value:
            raise ctx.deny(
                EXPORT_FLAG,
                f"project export is not enabled for plan {plan.key if plan else None!r} "
                f"(flag {EXPORT_FLAG!r}: {flag.source}); upgrade to pro",
                rule=f"flag:{EXPORT_FLAG}",
            )
        items = []
        for project in await ctx.repo(project_entity).find(order_by=["-created_at", "id"]):
            attachments = await self.files.store.list_attachments(
                org, project_entity.name, project.id, slot=project_files.name, tx=ctx.tx
            )
            exported = []
            for att in attachments:
                file = await self.files.store.get_file(org, att.file_id, tx=ctx.tx)
                if file is not None:
                    exported.append(
                        ExportedFile(
                            filename=file.filename,
                            media_type=file.media_type,
                            size=file.size,
                            sha256=file.sha256,
                        )
                    )
            items.append(ExportedProject(project=project, files=exported))
        return ProjectExport(projects=items)

    # -- billing ----------------------------------------------------------------------------------

    async def _summary(self, ctx: HandlerCtx, org: str) -> BillingSummary:
        plan = await self.metering.plan_of(org, tx=ctx.tx)
        if plan is None:  # pragma: no cover - the app gives every org the free plan
            raise NotFoundError(f"org {org!r} has no plan", details={"field": "plan"})
        meters = []
        for key in ("api.calls", "upload.bytes"):
            meter = self.metering.meter(key)
            used = await self.metering.current(meter, org)
            limits = plan.limits_for(key)
            meters.append(
                MeterUsage(
                    meter=key,
                    unit=meter.unit,
                    window=meter.window.value,
                    used=str(used.value),
                    limit=str(limits[0].limit) if limits else None,
                )
            )
        return BillingSummary(
            plan=plan.key,
            features=sorted(plan.features),
            seats_used=await seats_in_use(self.identity, ctx, org),
            seats_included=PLAN_SEATS[plan.key],
            meters=meters,
        )

    async def change_plan(self, inp: PlanChange, ctx: HandlerCtx) -> BillingSummary:
        """Move the org to `inp.plan` in the call's transaction; emits `saas.plan.changed`.

        Raises:
            ConflictError: The org has more seats in use than the new plan includes.
        """
        org = _org(ctx)
        previous = await self.metering.plan_of(org, tx=ctx.tx)
        used = await seats_in_use(self.identity, ctx, org)
        if used > PLAN_SEATS[inp.plan]:
            raise ConflictError(
                f"the org has {used} seats in use and plan {inp.plan!r} includes "
                f"{PLAN_SEATS[inp.plan]}; remove members first",
                details={"field": "plan", "seats_used": used},
            )
        await self.metering.assign_plan(org, inp.plan, tx=ctx.tx)
        ctx.set_audit_target("saas.billing", org)
        ctx.emit(
            plan_changed,
            PlanChanged(org_id=org, plan=inp.plan, previous=previous.key if previous else None),
        )
        return await self._summary(ctx, org)

    async def billing_summary(self, inp: NoInput, ctx: HandlerCtx) -> BillingSummary:
        """The org's plan, seats and meters in their current windows."""
        return await self._summary(ctx, _org(ctx))

    # -- audit and onboarding ---------------------------------------------------------------------

    async def audit_log(self, inp: AuditQuery, ctx: HandlerCtx) -> AuditPage:
        """The org's audit entries, newest first (the trail reads committed entries only)."""
        page = await self.trail.query(
            _org(ctx),
            AuditFilter(action=inp.action, actor_id=inp.actor_id),
            limit=inp.limit,
            cursor=inp.cursor,
        )
        items = []
        for entry in page.items:
            record = entry.record
            reason = record.details.get("reason")
            items.append(
                AuditItem(
                    seq=entry.seq,
                    occurred_at=record.occurred_at,
                    action=record.action,
                    outcome=record.outcome,
                    actor_id=record.actor_id,
                    target_type=record.target_type,
                    target_id=record.target_id,
                    reason=str(reason) if reason is not None else None,
                )
            )
        return AuditPage(items=items, next_cursor=page.next_cursor)

    async def onboarding_progress(self, inp: NoInput, ctx: HandlerCtx) -> OnboardingProgress:
        """The caller's onboarding progress in this org (enrolled on first use)."""
        org = _org(ctx)
        await self.journeys.enroll(org, ctx.actor.id, onboarding.key, at=ctx.now())
        progress = await self.journeys.progress(org, ctx.actor.id, onboarding.key)
        track = self.journeys.track(onboarding.key, progress.enrollment.version)
        return OnboardingProgress(
            track=track.key,
            version=track.version,
            completed=list(progress.completed),
            fraction=progress.fraction,
            steps=[
                StepView(
                    key=step.key,
                    content_md=step.content_md,
                    action=step.action,
                    started_at=progress.steps[step.key].started_at,
                    completed_at=progress.steps[step.key].completed_at,
                )
                for step in track.steps
            ],
        )
