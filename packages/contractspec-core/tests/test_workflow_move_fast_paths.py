"""The per-move shortcuts of workflows on an entity (`contractspec.core.workflows`) behave as the
pydantic calls they replace: `_copy_with(record, updates)` is `record.model_copy(update=updates)`
and `_attr(record, name)` is `getattr(record, name, None)`, for plain models, models with extra
values (`extra="allow"`), private attributes, properties, their own `__getattr__` or
`model_copy`, and non-pydantic objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, PrivateAttr

from contractspec.core.workflows import _attr, _copy_with

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Plain(BaseModel):
    id: str
    stage: str = "new"
    note: str | None = None


class Stamped(BaseModel):
    id: str
    stage: str = "new"
    created_at: datetime = WHEN


class Extra(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    stage: str = "new"


class Private(BaseModel):
    id: str
    stage: str = "new"
    _cache: dict[str, Any] = PrivateAttr(default_factory=dict)


class Property(BaseModel):
    id: str
    stage: str = "new"

    @property
    def created_at(self) -> datetime:
        return WHEN


class OwnGetattr(BaseModel):
    id: str
    stage: str = "new"

    def __getattr__(self, name: str) -> Any:
        if name == "updated_at":
            return WHEN
        return super().__getattr__(name)  # type: ignore[misc]


class OwnCopy(BaseModel):
    id: str
    stage: str = "new"
    note: str | None = None

    def model_copy(self, *, update: Any = None, deep: bool = False) -> OwnCopy:
        return super().model_copy(update={**(update or {}), "note": "own copy"}, deep=deep)


class NotPydantic:
    def __init__(self) -> None:
        self.created_at = WHEN


def _state(model: BaseModel) -> tuple[Any, ...]:
    return (
        type(model),
        model.__dict__,
        model.__pydantic_fields_set__,
        model.__pydantic_extra__,
        model.__pydantic_private__,
    )


def _records() -> list[BaseModel]:
    private = Private(id="p")
    private._cache["k"] = 1
    return [
        Plain(id="a"),
        Plain(id="b", note="x"),
        Stamped(id="s"),
        Extra(id="e", created_at=WHEN, colour="red"),
        private,
        Property(id="r"),
        OwnGetattr(id="g"),
        OwnCopy(id="c"),
    ]


@settings(max_examples=60, deadline=None)
@given(
    stage=st.text(max_size=8),
    note=st.none() | st.text(max_size=8),
    extra_key=st.sampled_from(["stage", "note", "colour"]),
)
def test_copy_with_is_model_copy(stage: str, note: str | None, extra_key: str) -> None:
    for record in _records():
        updates: dict[str, Any] = {"stage": stage}
        if extra_key != "stage":
            updates[extra_key] = note
        if extra_key == "colour" and not isinstance(record, Extra):
            updates.pop("colour")
        fast = _copy_with(record, dict(updates))
        slow = record.model_copy(update=dict(updates))
        assert _state(fast) == _state(slow), type(record).__name__
        assert fast == slow
        # The copy is independent of the original (its dicts are not shared).
        assert fast.__dict__ is not record.__dict__
        assert fast.__pydantic_fields_set__ is not record.__pydantic_fields_set__


def test_attr_is_getattr() -> None:
    objects: list[Any] = [*_records(), NotPydantic(), object()]
    for obj in objects:
        for name in ("created_at", "updated_at", "id", "colour", "missing"):
            assert _attr(obj, name) == getattr(obj, name, None), (type(obj).__name__, name)
            assert _attr(obj, name) == getattr(obj, name, None)  # again, from the cache
