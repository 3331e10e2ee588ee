"""The spec: who may do what, projects, attachments, plans and meters, a flag, the onboarding track.

Everything a reviewer reads lives here; `app.py` only wires it to databases and HTTP.

```text
identity (owner / admin / member)      plans (free, pro): api.calls, upload.bytes, seats
        |                                     |  QuotaMiddleware (402 / 429) + seat cap (402)
        v                                     v
saas.project.* ---- files.* (slot saas.project.files) ---- saas.billing.*  saas.audit.list
        |  events through the outbox                         flag projects.export (per plan)
        v
onboarding track: first_project -> first_file, invite_teammate   (saas.onboarding.progress)
```
"""

from __future__ import annotations

import enum
import secrets
import tempfile
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contractspec.core import (
    Index,
    OperationSpec,
    SpecRegistry,
    authenticated,
    define_command,
    define_entity,
    define_event,
    define_query,
    requires,
)
from contractspec.files import (
    AttachmentSlot,
    Files,
    LocalFileStorage,
    MemoryFileStore,
    define_attachment_slot,
    register_file_operations,
)
from contractspec.growth import (
    EventCondition,
    Module,
    Step,
    define_flag,
    define_track,
    force,
    rollout,
)
from contractspec.growth.flags import target
from contractspec.identity import AccessModel, Permission, Role, identity_specs
from contractspec.metering import Feature, Limit, Price, define_meter, define_plan, meter_operation

__all__ = [
    "ACCESS",
    "EXPORT_FLAG",
    "PLAN_SEATS",
    "Project",
    "ProjectStatus",
    "access_model",
    "declare",
    "operations",
    "registry",
    "registry_edited",
    "registry_v2",
]

OWNERS = ("saas-platform",)
_STRICT = ConfigDict(extra="forbid")
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Name = Annotated[str, Field(min_length=1, max_length=120)]

# -- who may do what ------------------------------------------------------------------------------

#: The app's own permissions, declared so a role granting one is checked (and diffed).
PERMISSIONS = [
    Permission(name="project.edit", description="Create and rename projects, attach files."),
    Permission(name="project.files.delete", description="Delete a project's files."),
    Permission(name="audit.view", description="Read the org's audit log."),
]


def access_model() -> AccessModel:
    """Identity's built-in roles, extended: members create projects and attach files; admins
    also archive projects, delete files and read the audit log; owners (`*`) also manage billing.

    | role | rank | adds to identity's built-in role |
    |---|---|---|
    | `owner` | 100 | nothing (`*`) |
    | `admin` | 50 | `project.edit`, `project.files.delete`, `audit.view` |
    | `member` | 10 | `project.edit` |
    """
    return AccessModel(
        permissions=PERMISSIONS,
        roles=[
            Role(
                name="admin",
                title="Admin",
                rank=50,
                permissions=(
                    *("member.view", "member.invite", "member.manage", "access.manage"),
                    *("billing.view", "project.view", "project.manage", "project.edit"),
                    *("project.files.delete", "audit.view"),
                ),
            ),
            Role(
                name="member",
                title="Member",
                rank=10,
                permissions=("member.view", "project.view", "project.edit"),
            ),
        ],
    )


ACCESS = access_model()

# -- projects: the tenant's core resource ---------------------------------------------------------


class ProjectStatus(enum.StrEnum):
    """A project is `active` until an admin archives it."""

    ACTIVE = "active"
    ARCHIVED = "archived"


class Project(BaseModel):
    """A project of an org (tenant-scoped: every query is filtered by the caller's org)."""

    id: Id
    name: Name
    description: Annotated[str, Field(max_length=2000)] = ""
    status: ProjectStatus = ProjectStatus.ACTIVE
    created_by: str
    created_at: AwareDatetime
    archived_at: AwareDatetime | None = None


project_entity = define_entity(
    "saas.project",
    Project,
    indexes=["status", Index(("name",))],
    description="An org's projects; files attach to them.",
    owners=OWNERS,
)


class CreateProject(BaseModel):
    """Input of `saas.project.create`."""

    model_config = _STRICT
    name: Name
    description: Annotated[str, Field(max_length=2000)] = ""


class ProjectRef(BaseModel):
    """One project of the caller's org."""

    model_config = _STRICT
    project_id: Id


class RenameProject(BaseModel):
    """Input of `saas.project.rename`."""

    model_config = _STRICT
    project_id: Id
    name: Name


class ListProjects(BaseModel):
    """Input of `saas.project.list`."""

    model_config = _STRICT
    status: ProjectStatus | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    offset: Annotated[int, Field(ge=0)] = 0


class ProjectList(BaseModel):
    """A page of projects, newest first."""

    projects: list[Project]
    total: int


class ExportedFile(BaseModel):
    """One attachment in an export."""

    filename: str
    media_type: str
    size: int
    sha256: str


class ExportedProject(BaseModel):
    """A project with its files' metadata."""

    project: Project
    files: list[ExportedFile]


class ProjectExport(BaseModel):
    """Output of `saas.project.export` (behind the `projects.export` flag)."""

    projects: list[ExportedProject]


class ProjectCreated(BaseModel):
    """Payload of `saas.project.created`."""

    project_id: str
    name: str


class ProjectArchived(BaseModel):
    """Payload of `saas.project.archived`."""

    project_id: str


project_created = define_event("saas.project.created", payload=ProjectCreated, key="project_id")
project_archived = define_event("saas.project.archived", payload=ProjectArchived, key="project_id")

#: Files on projects: PDFs, images, text and CSV, 5 MiB each, 20 per project. Members upload and
#: view (`project.edit`/`project.view`); deleting needs `project.files.delete` (admins).
project_files = define_attachment_slot(
    project_entity,
    "files",
    media_types=["application/pdf", "image/png", "image/jpeg", "text/plain", "text/csv"],
    max_size=5 * 1024 * 1024,
    max_count=20,
    upload="project.edit",
    view="project.view",
    delete="project.files.delete",
)

# -- plans and meters (contractspec-metering) -----------------------------------------------------

#: Every metered call counts one API call (per UTC day; the free plan is rate-limited).
api_calls = define_meter(
    "api.calls", unit="call", aggregation="count", window="day",
    description="Calls of the app's operations, per org and UTC day.",
)  # fmt: skip
#: Bytes uploaded into project files, per month.
upload_bytes = define_meter(
    "upload.bytes", unit="byte", aggregation="sum", window="month",
    description="Bytes uploaded into project files, per org and month.",
)  # fmt: skip
#: Seats in use (active and invited members): a gauge, recorded when membership changes and
#: capped per plan (a `Limit` on a `latest` meter is a cap, checked by `Metering.gauge`).
seats = define_meter(
    "seats", unit="seat", aggregation="latest", window="month",
    description="Members (active and invited) of the org; billed per seat on pro.",
)  # fmt: skip

free_plan = define_plan(
    "free",
    entitlements=[
        Limit("seats", 3),
        Limit("api.calls", 1_000, window="day", kind="rate"),
        Limit("upload.bytes", 20 * 1024 * 1024, window="month"),
    ],
    description="Up to 3 seats, 1,000 calls a day, 20 MiB of uploads a month.",
)
pro_plan = define_plan(
    "pro",
    entitlements=[
        Feature("audit_log"),
        Limit("seats", 50),
        Limit("api.calls", 100_000, window="day", kind="rate"),
        Limit("upload.bytes", 5 * 1024**3, window="month"),
    ],
    prices=[Price("seats", unit_amount="12.00")],
    description="Up to 50 seats at 12.00 each, the audit log, 5 GiB of uploads a month.",
)
#: Seat cap per plan: the plans' `Limit("seats", n)` (enforced by `app.SeatCap` through
#: `Metering.gauge`).
PLAN_SEATS: dict[str, int] = {
    plan.key: int(limit.limit)
    for plan in (free_plan, pro_plan)
    for limit in plan.limits_for("seats")
}

# -- feature flag (contractspec-growth) -----------------------------------------------------------

#: The flag of the export feature: on for the pro plan, off for the rest (rules in order).
EXPORT_FLAG = "projects.export"
export_flag = define_flag(
    EXPORT_FLAG,
    default=False,
    rules=[force(True, when=target(plan="pro"), id="pro-plan")],
    description="Project export (JSON of projects and their files), rolled out to pro orgs.",
)

# -- onboarding track (contractspec-growth journeys) ----------------------------------------------

_STEPS = [
    Step(
        "first_project",
        "Create your **first project**.",
        action="saas.project.create",
        completion=EventCondition("saas.project.created"),
    ),
    Step(
        "first_file",
        "Attach a file to a project.",
        action="files.upload",
        completion=EventCondition("files.uploaded"),
        # growth's `converter=tuple` fields type as Iterable[_T_co] under mypy --strict
        prerequisites=("first_project",),
    ),
    Step(
        "invite_teammate",
        "Invite a teammate.",
        action="identity.member.invite",
        completion=EventCondition("member.invited"),
    ),
]
#: Onboarding: every member creates a project, then attaches a file; inviting a teammate can
#: happen at any time. Steps complete on the product's own events, delivered by the relay.
onboarding = define_track(
    "onboarding",
    1,
    title="Get your team started",
    modules=[Module("setup", steps=_STEPS)],
)

# -- operations -----------------------------------------------------------------------------------


class PlanChange(BaseModel):
    """Input of `saas.billing.change_plan`."""

    model_config = _STRICT
    plan: Literal["free", "pro"]


class PlanChanged(BaseModel):
    """Payload of `saas.plan.changed`."""

    org_id: str
    plan: str
    previous: str | None


plan_changed = define_event("saas.plan.changed", payload=PlanChanged, key="org_id")


class NoInput(BaseModel):
    """No input."""

    model_config = _STRICT


class MeterUsage(BaseModel):
    """One meter's use in its current window."""

    meter: str
    unit: str
    window: str
    used: str
    limit: str | None


class BillingSummary(BaseModel):
    """Output of `saas.billing.summary`: the plan, its seats and its meters."""

    plan: str
    features: list[str]
    seats_used: int
    seats_included: int
    meters: list[MeterUsage]


class AuditQuery(BaseModel):
    """Input of `saas.audit.list`."""

    model_config = _STRICT
    action: Annotated[str | None, Field(max_length=200, description="exact, or a prefix*")] = None
    actor_id: Annotated[str | None, Field(max_length=64)] = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: str | None = None


class AuditItem(BaseModel):
    """One audit entry."""

    seq: int
    occurred_at: AwareDatetime
    action: str
    outcome: str
    actor_id: str | None
    target_type: str | None
    target_id: str | None
    reason: str | None


class AuditPage(BaseModel):
    """Newest first; pass `next_cursor` back for the next page."""

    items: list[AuditItem]
    next_cursor: str | None


class StepView(BaseModel):
    """One onboarding step of the caller."""

    key: str
    content_md: str
    action: str | None
    started_at: AwareDatetime | None
    completed_at: AwareDatetime | None


class OnboardingProgress(BaseModel):
    """Output of `saas.onboarding.progress`."""

    track: str
    version: int
    completed: list[str]
    fraction: float
    steps: list[StepView]


def _ops() -> dict[str, OperationSpec]:
    def cmd(name: str, **kw: Any) -> OperationSpec:
        return define_command(name, owners=OWNERS, **kw)

    def query(name: str, **kw: Any) -> OperationSpec:
        return define_query(name, owners=OWNERS, **kw)

    return {
        "create": cmd(
            "saas.project.create", input=CreateProject, output=Project, emits=[project_created],
            auth=requires("project.edit", resource="saas.project"), idempotent=True,
            description="Create a project in the caller's org.", tags=("projects",),
        ),
        "rename": cmd(
            "saas.project.rename", input=RenameProject, output=Project,
            auth=requires("project.edit", resource="saas.project"),
            description="Rename an active project.", tags=("projects",),
            errors=["not_found", "conflict"],
        ),
        "archive": cmd(
            "saas.project.archive", input=ProjectRef, output=Project, emits=[project_archived],
            auth=requires("project.manage", resource="saas.project"),
            description="Archive a project (admins and owners).", tags=("projects",),
            errors=["not_found"],
        ),
        "get": query(
            "saas.project.get", input=ProjectRef, output=Project,
            auth=requires("project.view", resource="saas.project"),
            description="One project.", tags=("projects",), errors=["not_found"],
        ),
        "list": query(
            "saas.project.list", input=ListProjects, output=ProjectList,
            auth=requires("project.view", resource="saas.project"),
            description="The org's projects, newest first.", tags=("projects",),
        ),
        "export": query(
            "saas.project.export", input=NoInput, output=ProjectExport,
            auth=requires("project.view", resource="saas.project"),
            description=f"Every project with its files' metadata (flag {EXPORT_FLAG!r}).",
            tags=("projects",),
        ),
        "change_plan": cmd(
            "saas.billing.change_plan", input=PlanChange, output=BillingSummary,
            emits=[plan_changed], auth=requires("billing.manage", resource="saas.billing"),
            description="Move the org to another plan (owners).", tags=("billing",),
        ),
        "summary": query(
            "saas.billing.summary", input=NoInput, output=BillingSummary,
            auth=requires("billing.view", resource="saas.billing"),
            description="The org's plan, seats and current usage per meter.", tags=("billing",),
        ),
        "audit": query(
            "saas.audit.list", input=AuditQuery, output=AuditPage,
            auth=requires("audit.view", resource="saas.audit"),
            description="The org's audit log, newest first (plans with the audit_log feature).",
            tags=("audit",),
        ),
        "progress": query(
            "saas.onboarding.progress", input=NoInput, output=OnboardingProgress,
            auth=authenticated(), description="The caller's onboarding steps in this org.",
            tags=("onboarding",),
        ),
    }  # fmt: skip


#: The app's own operations by short name.
operations: dict[str, OperationSpec] = _ops()

#: Every app command counts one API call (queries run in read-only transactions, where the
#: metering middleware cannot record usage; identity and files calls are not counted); the audit
#: log needs the `audit_log` feature; uploads count their bytes.
METERED = [
    meter_operation(op, meter=api_calls) for op in operations.values() if op.kind == "command"
]
METERED += [
    meter_operation(operations["audit"], feature="audit_log"),
    meter_operation("files.upload", meter=upload_bytes, amount="output.file.size"),
]

#: Every spec of the app besides identity's and the `files.*` operations (registered by their
#: packages in `app.build_registry`).
SPECS: list[Any] = [
    project_entity,
    project_created,
    project_archived,
    plan_changed,
    *operations.values(),
    api_calls,
    upload_bytes,
    seats,
    free_plan,
    pro_plan,
    *METERED,
    export_flag,
    onboarding,
]


def declare(
    registry: SpecRegistry,
    files: Files,
    *,
    specs: list[Any] | None = None,
    slot: AttachmentSlot | None = None,
) -> SpecRegistry:
    """Register every spec of the app in `registry`: identity's (with the app's access model),
    the app's own (`specs`, default `SPECS`) and the `files.*` operations with the project slot
    (`slot`, default `project_files`).

    `app.build_app` then binds the handlers; `registry()` below uses this alone for the IR.
    """
    registry.register(*identity_specs(ACCESS))
    registry.register(*(SPECS if specs is None else specs))
    files.add_slot(project_files if slot is None else slot)
    register_file_operations(registry, files)
    onboarding.check(registry)  # its step actions and completion events exist
    return registry


def _unwired(specs: list[Any] | None = None, slot: AttachmentSlot | None = None) -> SpecRegistry:
    # `register_file_operations` needs a `Files` runtime even to declare the `files.*` specs, so
    # one is built on a throw-away directory and an in-memory store; nothing is ever stored.
    with tempfile.TemporaryDirectory() as tmp:
        files = Files(
            storage=LocalFileStorage(tmp), store=MemoryFileStore(), secret=secrets.token_hex(32)
        )
        return declare(SpecRegistry(), files, specs=specs, slot=slot)


def registry() -> SpecRegistry:
    """The app's specs without handlers or databases: what `contractspec spec export
    saas_boilerplate.spec:registry` locks (`contractspec.lock.json`)."""
    return _unwired()


# -- the README's spec change ---------------------------------------------------------------------

#: Version 2 of the spec (the README's reviewed change): admins restore archived projects, and
#: free orgs get a 10 % trial of the export.
restore_project = define_command(
    "saas.project.restore",
    input=ProjectRef,
    output=Project,
    auth=requires("project.manage", resource="saas.project"),
    owners=OWNERS,
    description="Restore an archived project (admins and owners).",
    tags=("projects",),
    errors=["not_found"],
)
export_flag_v2 = define_flag(
    EXPORT_FLAG,
    default=False,
    rules=[
        force(True, when=target(plan="pro"), id="pro-plan"),
        rollout(True, coverage=0.1, when=target(plan="free"), id="free-trial"),
    ],
    description=export_flag.description,
)


def registry_v2() -> SpecRegistry:
    """Version 2 (`contractspec.v2.lock.json`): `saas.project.restore` added, the export flag
    rolled out to 10 % of free orgs."""
    specs = [export_flag_v2 if x is export_flag else x for x in SPECS]
    return _unwired([*specs, restore_project])


class CreateProjectWithKey(CreateProject):
    """`CreateProject` with a required short key (the breaking edit of the README)."""

    key: Annotated[str, Field(pattern=r"^[A-Z]{2,8}$", description="Short code, e.g. APOLLO")]


def registry_edited() -> SpecRegistry:
    """What NOT to do (never served): `saas.project.create@1` edited in place to require a
    `key`, and the project slot narrowed in place (no JPEG, 2 MiB)."""
    create = operations["create"]
    edited = define_command(
        create.name,
        input=CreateProjectWithKey,
        output=Project,
        emits=[project_created],
        auth=create.auth,
        idempotent=True,
        owners=OWNERS,
        description=create.description,
        tags=("projects",),
    )
    narrowed = define_attachment_slot(
        project_entity,
        "files",
        media_types=["application/pdf", "image/png", "text/plain", "text/csv"],
        max_size=2 * 1024 * 1024,
        max_count=20,
        upload="project.edit",
        view="project.view",
        delete="project.files.delete",
    )
    specs = [edited if x is create else x for x in SPECS]
    return _unwired(specs, narrowed)
