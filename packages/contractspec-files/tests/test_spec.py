"""Attachment slots: definition checks and their place in the IR."""

from __future__ import annotations

import pytest
from files_support import SECRET, docs_slot, images_slot, project

from contractspec.core import SpecDefinitionError, SpecRegistry, define_entity
from contractspec.files import (
    Files,
    LocalFileStorage,
    MemoryFileStore,
    Retention,
    define_attachment_slot,
    register_file_operations,
)


def test_slot_is_in_the_ir_with_its_rules(tmp_path: object) -> None:
    """A registered slot appears in `to_ir()` as kind attachment_slot with every declared rule."""
    files = Files(
        storage=LocalFileStorage(f"{tmp_path}/b"), store=MemoryFileStore(), secret=SECRET,
        slots=[docs_slot, images_slot],
    )  # fmt: skip
    registry = SpecRegistry(project)
    register_file_operations(registry, files)
    ir = registry.to_ir()
    slots = {s["name"]: s for s in ir["specs"]["attachment_slot"]}
    docs = slots["project.docs"]
    assert docs["media_types"] == ["application/pdf", "application/zip", "image/*"]
    assert docs["max_size"] == 64 * 1024
    assert docs["max_count"] == 3
    assert docs["permissions"] == {
        "upload": "project.files.upload",
        "view": "project.files.view",
        "delete": "project.files.delete",
    }
    assert docs["retention"] == {"days": 30, "action": "delete"}
    assert docs["archive_limits"]["max_members"] == 10
    assert slots["project.images"]["archive_limits"] is None
    assert slots["project.images"]["retention"] == {"days": 7, "action": "archive"}
    names = {op["name"] for op in ir["specs"]["operation"]}
    assert {"files.upload", "files.get", "files.delete", "files.attachments.list"} <= names


def test_wildcard_media_types_match_subtypes_only() -> None:
    """`image/*` accepts image/png but not text/html or image-like prefixes of other types."""
    assert docs_slot.allows("image/png")
    assert docs_slot.allows("application/pdf")
    assert not docs_slot.allows("text/html")
    assert not docs_slot.allows("application/pdfx")
    assert docs_slot.accepts_archives
    assert not images_slot.accepts_archives


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"media_types": []}, "media_types"),
        ({"media_types": ["Image/PNG"]}, "media_types"),
        ({"media_types": ["png"]}, "media_types"),
        ({"max_size": 0}, "max_size"),
        ({"max_size": True}, "max_size"),
        ({"max_count": 0}, "max_count"),
        ({"upload": "bad perm"}, "upload"),
    ],
)
def test_bad_slot_definitions_name_the_field(kwargs: dict[str, object], field: str) -> None:
    """Each bad argument raises SpecDefinitionError naming the field."""
    args: dict[str, object] = {"media_types": ["application/pdf"], "max_size": 10, **kwargs}
    with pytest.raises(SpecDefinitionError) as info:
        define_attachment_slot(project, "docs", **args)  # type: ignore[arg-type]
    assert info.value.details["field"] == field


def test_bad_slot_name_and_untenanted_entity_are_refused() -> None:
    """Slot names are lowercase identifiers; entities without a tenant cannot hold files."""
    with pytest.raises(SpecDefinitionError, match="slot name"):
        define_attachment_slot(project, "../x", media_types=["image/png"], max_size=1)
    global_entity = define_entity("setting", fields={"id": str}, tenant_scoped=False)
    with pytest.raises(SpecDefinitionError, match="not tenant-scoped"):
        define_attachment_slot(global_entity, "x", media_types=["image/png"], max_size=1)


def test_retention_is_checked() -> None:
    """Retention needs positive days and a known action."""
    with pytest.raises(SpecDefinitionError):
        Retention(days=0)
    with pytest.raises(SpecDefinitionError):
        Retention(days=1, action="shred")  # type: ignore[arg-type]


def test_slot_of_an_unregistered_entity_is_a_definition_error(tmp_path: object) -> None:
    """register_file_operations refuses a slot whose entity the registry does not know."""
    files = Files(
        storage=LocalFileStorage(f"{tmp_path}/b"), store=MemoryFileStore(), secret=SECRET,
        slots=[docs_slot],
    )  # fmt: skip
    with pytest.raises(SpecDefinitionError, match="unknown entity 'project'"):
        register_file_operations(SpecRegistry(), files)


def test_short_secret_is_refused(tmp_path: object) -> None:
    """A signing secret under 32 bytes is a ConfigurationError."""
    from contractspec.core import ConfigurationError

    with pytest.raises(ConfigurationError, match="32 bytes"):
        Files(storage=LocalFileStorage(f"{tmp_path}/b"), store=MemoryFileStore(), secret="short")


def test_a_narrowed_slot_is_registered_as_a_new_version_beside_the_old(tmp_path: object) -> None:
    """Narrowing a slot in place is breaking and the diff advises `@2`; `version=2` registered
    beside `@1` puts both in the IR, the diff reports `@2` as a new version (no narrowing, no
    breaking change), and `attachment_slots` gives `Files` the newest one."""
    from contractspec.core.diff import diff_ir
    from contractspec.files import attachment_slot, attachment_slots

    v1 = define_attachment_slot(
        project, "contracts", media_types=["application/pdf", "image/*"], max_size=1000
    )
    narrowed = define_attachment_slot(
        project, "contracts", media_types=["application/pdf"], max_size=500
    )
    v2 = define_attachment_slot(
        project, "contracts", media_types=["application/pdf"], max_size=500, version=2
    )
    assert (v1.ref, v2.ref) == ("project.contracts@1", "project.contracts@2")
    old = SpecRegistry(project, v1)
    in_place = diff_ir(old.to_ir(), SpecRegistry(project, narrowed).to_ir())
    assert "attachment-slot-narrowed" in {c.rule for c in in_place.changes}
    advice = next(c for c in in_place.changes if c.rule == "breaking-change-without-version-bump")
    assert "project.contracts@2" in advice.message

    registry = SpecRegistry(project, v1, v2)
    ir = registry.to_ir()
    assert [(s["name"], s["version"], s["max_size"]) for s in ir["specs"]["attachment_slot"]] == [
        ("project.contracts", 1, 1000),
        ("project.contracts", 2, 500),
    ]
    changes = diff_ir(old.to_ir(), ir).changes
    assert [(c.rule, c.spec, c.severity.value) for c in changes] == [
        ("spec-added", "project.contracts@2", "info")
    ]
    assert "new version (previous: @1)" in changes[0].message

    assert attachment_slots(registry) == [v2]
    files = Files(
        storage=LocalFileStorage(f"{tmp_path}/b"), store=MemoryFileStore(), secret=SECRET,
        slots=attachment_slots(registry),
    )  # fmt: skip
    register_file_operations(registry, files)
    assert files.slot("project.contracts") == v2
    assert {s.version for s in registry.specs("attachment_slot")} == {1, 2}

    declared = define_entity(
        "folder",
        fields={"id": str},
        attachments=[attachment_slot("scans", media_types=["image/png"], max_size=9, version=3)],
    )
    assert [s.ref for s in SpecRegistry(declared).specs("attachment_slot")] == ["folder.scans@3"]


@pytest.mark.parametrize("version", [0, -1, True, "2", 1.0])
def test_a_bad_slot_version_names_the_field(version: object) -> None:
    """version must be a positive integer: SpecDefinitionError with field `version`."""
    with pytest.raises(SpecDefinitionError, match="version must be a positive integer") as info:
        define_attachment_slot(
            project,
            "docs",
            media_types=["application/pdf"],
            max_size=10,
            version=version,  # type: ignore[arg-type]
        )
    assert info.value.details["field"] == "version"
