"""A small notes app for the HTTP adapter and codegen tests: every error path is reachable."""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field

from contractspec.core import (
    PII,
    ApprovalRequiredError,
    ConflictError,
    HandlerCtx,
    NotFoundError,
    RolePermissions,
    SpecRegistry,
    authenticated,
    define_command,
    define_entity,
    define_event,
    define_query,
    public,
    requires,
)


class Priority(enum.StrEnum):
    """How urgent a note is."""

    LOW = "low"
    HIGH = "high"


class Note(BaseModel):
    """A stored note."""

    id: str
    title: Annotated[str, Field(min_length=1, max_length=80)]
    priority: Priority = Priority.LOW
    budget: Annotated[Decimal, Field(ge=0, max_digits=8, decimal_places=2)] = Decimal("0")
    tags: list[str] = []
    author_email: Annotated[str | None, PII] = None


class NoteCreated(BaseModel):
    """Payload of notes.note.created."""

    note_id: str
    title: str


class CreateNote(BaseModel):
    """Input of notes.note.create."""

    id: Annotated[str, Field(min_length=1, max_length=32, pattern="^[a-z0-9-]+$")]
    title: Annotated[str, Field(min_length=1, max_length=80)]
    priority: Priority = Priority.LOW
    budget: Annotated[Decimal, Field(ge=0, max_digits=8, decimal_places=2)] = Decimal("0")
    tags: Annotated[list[Annotated[str, Field(max_length=20)]], Field(max_length=5)] = []


class SearchNotes(BaseModel):
    """Input of notes.note.search."""

    priority: Priority | None = None
    tags: list[str] = []
    limit: Annotated[int, Field(ge=1, le=50)] = 10


class NoteList(BaseModel):
    """Output of notes.note.search."""

    notes: list[Note]
    total: int


class NoteRef(BaseModel):
    """A note id."""

    id: Annotated[str, Field(min_length=1, max_length=32)]


class Echo(BaseModel):
    """What the server saw of the call."""

    actor_id: str
    org_id: str | None
    request_id: str | None
    trace_id: str | None
    idempotency_key: str | None
    channel: str


class Empty(BaseModel):
    """No fields."""


note_entity = define_entity("notes.note", Note, indexes=["priority"], description="A note.")
note_created = define_event("notes.note.created", payload=NoteCreated, key="note_id")

create_note = define_command(
    "notes.note.create",
    input=CreateNote,
    output=Note,
    emits=[note_created],
    auth=requires("notes.write"),
    idempotent=True,
    description="Create a note.\n\nIds are unique per org.",
    errors=["conflict"],
)
search_notes = define_query(
    "notes.note.search",
    input=SearchNotes,
    output=NoteList,
    auth=authenticated(),
    description="Find notes by priority and tags.",
)
get_note = define_query("notes.note.get", input=NoteRef, output=Note, auth=authenticated())
archive_note = define_command(
    "notes.note.archive",
    input=NoteRef,
    output=Note,
    auth=requires("notes.admin"),
    description="Archive a note (needs an approval).",
)
whoami = define_query("notes.debug.whoami", input=Empty, output=Echo, auth=public())
explode = define_command("notes.debug.explode", input=Empty, output=Empty, auth=public())

POLICY = RolePermissions({"writer": ["notes.write"], "admin": ["notes.*"]})


def build_notes_registry() -> SpecRegistry:
    """The notes registry with handlers bound."""
    registry = SpecRegistry(note_entity, note_created)
    registry.register(create_note, search_notes, get_note, archive_note, whoami, explode)

    @registry.handler(create_note)
    async def _create(inp: CreateNote, ctx: HandlerCtx) -> Note:
        repo = ctx.repo(note_entity)
        if await repo.get(inp.id) is not None:
            raise ConflictError(f"note {inp.id!r} already exists", details={"field": "id"})
        note = Note(**inp.model_dump())
        await repo.add(note)
        ctx.emit(note_created, NoteCreated(note_id=note.id, title=note.title))
        return note

    @registry.handler(search_notes)
    async def _search(inp: SearchNotes, ctx: HandlerCtx) -> NoteList:
        repo = ctx.repo(note_entity)
        where = {"priority": inp.priority} if inp.priority else None
        notes = [n for n in await repo.find(where, order_by=["id"]) if set(inp.tags) <= set(n.tags)]
        return NoteList(notes=notes[: inp.limit], total=len(notes))

    @registry.handler(get_note)
    async def _get(inp: NoteRef, ctx: HandlerCtx) -> Note:
        note = await ctx.repo(note_entity).get(inp.id)
        if note is None:
            raise NotFoundError(f"note {inp.id!r} not found", details={"id": inp.id})
        return note

    @registry.handler(archive_note)
    async def _archive(inp: NoteRef, ctx: HandlerCtx) -> Note:
        raise ApprovalRequiredError(f"archiving {inp.id!r} needs an approval")

    @registry.handler(whoami)
    async def _whoami(inp: Empty, ctx: HandlerCtx) -> Echo:
        call = ctx.call
        return Echo(
            actor_id=call.actor.id,
            org_id=call.org_id,
            request_id=call.request_id,
            trace_id=call.trace_id,
            idempotency_key=call.idempotency_key,
            channel=call.channel,
        )

    @registry.handler(explode)
    async def _explode(inp: Empty, ctx: HandlerCtx) -> Empty:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    return registry
