"""`define_entity(attachments=...)`: declarations bound to the entity and registered with it."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from pydantic import BaseModel

from contractspec.core import EntitySpec, SpecDefinitionError, SpecRegistry, define_entity


class Doc(BaseModel):
    id: str


@attrs.define(frozen=True)
class BoundSlot:
    """What a package's declaration becomes: a spec of its own kind, named after the entity."""

    kind = "attachment_slot"
    name: str
    entity: str
    tenant_scoped: bool
    version: int = 1

    def to_ir(self) -> dict[str, Any]:
        return {"entity": self.entity}


@attrs.define(frozen=True)
class Declaration:
    """A declaration made inside `define_entity(attachments=[...])`."""

    slot: str

    def bind(self, entity: EntitySpec[Any]) -> BoundSlot:
        return BoundSlot(f"{entity.name}.{self.slot}", entity.name, entity.tenant_scoped)


def test_declarations_are_bound_and_registered_with_the_entity() -> None:
    """Each declaration is bound to the finished entity and registered (and in the IR) with it."""
    doc = define_entity("doc", Doc, attachments=[Declaration("files"), Declaration("images")])
    assert doc.attachments == (
        BoundSlot("doc.files", "doc", True),
        BoundSlot("doc.images", "doc", True),
    )
    registry = SpecRegistry(doc)
    assert [s.name for s in registry.specs("attachment_slot")] == ["doc.files", "doc.images"]
    ir = registry.to_ir()
    assert [s["name"] for s in ir["specs"]["attachment_slot"]] == ["doc.files", "doc.images"]
    assert "attachments" not in ir["specs"]["entity"][0]
    SpecRegistry(doc, doc)  # the same entity twice registers its slots once


def test_entity_without_attachments_is_unchanged() -> None:
    """No `attachments=`: an empty tuple, and only the entity is registered."""
    doc = define_entity("doc", Doc)
    assert doc.attachments == ()
    assert SpecRegistry(doc).kinds() == ["entity"]


@pytest.mark.parametrize(
    ("attachments", "message"),
    [
        ("files", "must be a list"),
        ([object()], "is not a declaration"),
        ([Declaration("files"), Declaration("files")], "'doc.files' twice"),
    ],
)
def test_bad_attachments_name_the_field(attachments: Any, message: str) -> None:
    """A string, a non-declaration or a duplicate slot is a SpecDefinitionError on `attachments`."""
    with pytest.raises(SpecDefinitionError, match=message) as info:
        define_entity("doc", Doc, attachments=attachments)
    assert info.value.details["field"] == "attachments"
