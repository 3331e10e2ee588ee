"""Slots declared on the entity (`define_entity(attachments=[attachment_slot(...)])`), their IR
and how the breaking-change diff classifies narrowing and widening them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from files_support import PDF, SECRET, NewProject, Project, chunks, ctx
from files_support import POLICY as FILES_POLICY

from contractspec.core import (
    Executor,
    HandlerCtx,
    SpecDefinitionError,
    SpecRegistry,
    define_command,
    define_entity,
)
from contractspec.core.diff import Severity, diff_ir
from contractspec.files import (
    Files,
    LocalFileStorage,
    MemoryFileStore,
    Retention,
    attachment_slot,
    attachment_slots,
    define_attachment_slot,
    register_file_operations,
)

SLOT_ARGS: dict[str, Any] = {
    "media_types": ["application/pdf", "image/*"],
    "max_size": 64 * 1024,
    "max_count": 3,
    "upload": "project.files.upload",
    "view": "project.files.view",
    "retention": Retention(days=30),
}


def registry_for(**changes: Any) -> SpecRegistry:
    """A registry whose `project` entity declares its `docs` slot, with `changes` to it."""
    entity = define_entity(
        "project", Project, attachments=[attachment_slot("docs", **{**SLOT_ARGS, **changes})]
    )
    return SpecRegistry(entity)


def test_entity_declared_slot_is_the_same_spec_as_a_separate_one() -> None:
    """`attachment_slot` on the entity yields the `define_attachment_slot` spec and IR."""
    registry = registry_for()
    separate = define_attachment_slot(define_entity("project", Project), "docs", **SLOT_ARGS)
    assert attachment_slots(registry) == [separate]
    (slot_ir,) = registry.to_ir()["specs"]["attachment_slot"]
    assert slot_ir["name"] == "project.docs"
    assert slot_ir["entity"] == "project"
    assert slot_ir["max_size"] == 64 * 1024
    assert slot_ir["permissions"]["upload"] == "project.files.upload"


async def test_upload_into_an_entity_declared_slot(tmp_path: Path) -> None:
    """Files built from `attachment_slots(registry)` accepts uploads through the executor."""
    create = define_command("app.project.create", input=NewProject, output=Project, auth=None)
    registry = registry_for()
    registry.register(create)
    (entity,) = registry.entities()

    @registry.handler(create)
    async def _create(inp: NewProject, hctx: HandlerCtx) -> Project:
        return await hctx.repo(entity).add(Project(id=inp.id, name=inp.name))

    files = Files(
        storage=LocalFileStorage(tmp_path / "blobs", fsync=False), store=MemoryFileStore(),
        secret=SECRET, slots=attachment_slots(registry),
    )  # fmt: skip
    register_file_operations(registry, files)
    executor = Executor(registry, policy=FILES_POLICY)
    await executor.execute("app.project.create", {"id": "p1", "name": "p"}, ctx(roles=["admin"]))
    staged = await files.stage(
        "project.docs", chunks(PDF), org_id="org-1", actor_id="u-1", filename="a.pdf"
    )
    out: Any = await executor.execute(
        "files.upload", {"token": staged.token, "entity_id": "p1"}, ctx()
    )
    assert (out.file.slot, out.file.media_type) == ("project.docs", "application/pdf")


@pytest.mark.parametrize(
    ("changes", "rule", "severity"),
    [
        ({"media_types": ["application/pdf"]}, "attachment-slot-narrowed", Severity.BREAKING),
        ({"max_size": 1024}, "attachment-slot-narrowed", Severity.BREAKING),
        ({"max_count": 2}, "attachment-slot-narrowed", Severity.BREAKING),
        ({"delete": "project.files.delete"}, "attachment-permission-narrowed", Severity.BREAKING),
        ({"media_types": ["application/*", "image/*"]}, "attachment-slot-widened", Severity.INFO),
        ({"max_size": 1 << 20}, "attachment-slot-widened", Severity.INFO),
        ({"max_count": None}, "attachment-slot-widened", Severity.INFO),
        ({"upload": None}, "attachment-permission-widened", Severity.WARNING),
        ({"retention": Retention(days=7)}, "attachment-retention-shortened", Severity.WARNING),
    ],
)
def test_diff_of_real_slots(changes: dict[str, Any], rule: str, severity: Severity) -> None:
    """Narrowing a real slot in place is breaking, widening is not (`contractspec diff` rules)."""
    report = diff_ir(registry_for().to_ir(), registry_for(**changes).to_ir())
    found = {(c.rule, c.severity) for c in report.changes}
    assert (rule, severity) in found
    assert report.has_breaking is (severity is Severity.BREAKING)


def test_removing_a_slot_from_the_entity_is_breaking() -> None:
    """Dropping the declaration removes the slot spec: `spec-removed`, breaking."""
    before = registry_for().to_ir()
    after = SpecRegistry(define_entity("project", Project)).to_ir()
    assert [(c.rule, c.spec) for c in diff_ir(before, after).changes] == [
        ("spec-removed", "project.docs@1")
    ]


def test_bad_declarations_fail_where_they_are_written() -> None:
    """Bad slot arguments fail at `attachment_slot(...)`; an untenanted entity at `define_entity`."""
    with pytest.raises(SpecDefinitionError) as info:
        attachment_slot("docs", media_types=["pdf"], max_size=10)
    assert info.value.details["field"] == "media_types"
    with pytest.raises(SpecDefinitionError) as info:
        attachment_slot("docs", media_types=["application/pdf"], max_size=0)
    assert info.value.details["field"] == "max_size"
    with pytest.raises(SpecDefinitionError, match="not tenant-scoped"):
        define_entity(
            "site", Project, tenant_scoped=False,
            attachments=[attachment_slot("logo", media_types=["image/png"], max_size=10)],
        )  # fmt: skip
