"""The dead-letter review queue as spec operations (list, show, replay, discard).

```python
from contractspec.bus.review import register_review_operations

review = register_review_operations(registry, bus=bus)     # adds 4 operations + 2 events
executor = Executor(registry, policy=RolePermissions({"ops": {"bus.review.*"}}))
page = await executor.execute("bus.review.dead_letters.list", {"limit": 20}, ctx)
```

| operation | kind | permission | effect |
|---|---|---|---|
| `bus.review.dead_letters.list` | query | `bus.review.read` | still-dead letters, newest first, `{items, next_cursor}` |
| `bus.review.dead_letters.show` | query | `bus.review.read` | one letter (also a replayed one) |
| `bus.review.dead_letters.replay` | command | `bus.review.act` | `EventBus.replay_dead_letters`: delivered again to its subscriber |
| `bus.review.dead_letters.discard` | command | `bus.review.act` | `DeadLetterStore.discard`: deleted |

Each action emits `bus.review.dead_letters.replayed` / `.discarded`, so the audit trail and the
outbox record who acted, on which letter, with which comment. Everything is scoped to the caller's
tenant (`ctx.org_id`, matched against the failed event's `org_id`): a letter of another org is
reported as not found; a caller without an org sees only the letters of events without one.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from attrs import define
from pydantic import BaseModel, Field

from contractspec.bus.stores import DeadLetter
from contractspec.core import (
    PII,
    ConflictError,
    HandlerCtx,
    NotFoundError,
    SpecRegistry,
    define_command,
    define_event,
    define_query,
    requires,
)
from contractspec.core.specs import EventSpec, OperationSpec

if TYPE_CHECKING:
    from contractspec.bus.bus import EventBus

__all__ = [
    "ACT_PERMISSION",
    "READ_PERMISSION",
    "DeadLetterActionInput",
    "DeadLetterDiscarded",
    "DeadLetterReplayed",
    "DiscardResult",
    "ReplayResult",
    "ReviewDeadLetter",
    "ReviewDeadLetterList",
    "ReviewDeadLetterListInput",
    "ReviewDeadLetterShowInput",
    "ReviewOperations",
    "register_review_operations",
]

#: Permission of the list and show queries.
READ_PERMISSION = "bus.review.read"
#: Permission of the replay and discard commands.
ACT_PERMISSION = "bus.review.act"

_PREFIX = "bus.review.dead_letters"
_TAGS = ("bus", "review")
_RESOURCE = "bus.dead_letter"


class ReviewDeadLetter(BaseModel):
    """A dead letter as a reviewer sees it (timestamps UTC).

    `event` (the failed event in JSON form, payload included) and `error` may carry personal data
    and are redacted in audit records and recorded traffic.
    """

    id: str
    event_id: str
    event_name: str
    org_id: str | None
    subscriber: str = Field(description="The subscriber that failed; a replay goes to it only.")
    attempts: int = Field(description="Delivery attempts made before it was dead-lettered.")
    failed_at: datetime
    replayed_at: datetime | None = Field(description="Last successful replay; `None` while dead.")
    error: Annotated[str, PII] = Field(description="`ExceptionType: message` of the last failure.")
    event: Annotated[dict[str, Any], PII]


class ReviewDeadLetterListInput(BaseModel):
    """Input of `bus.review.dead_letters.list`."""

    limit: int = Field(50, ge=1, le=200, description="Page size (1..200).")
    cursor: str | None = Field(
        None,
        pattern=r"^[0-9]{1,19}$",
        description="`next_cursor` of the previous page; omit for the first.",
    )
    event_name: str | None = Field(None, max_length=200, description="Only this event name.")
    subscriber: str | None = Field(None, max_length=300, description="Only this subscriber.")


class ReviewDeadLetterList(BaseModel):
    """One page of still-dead letters, newest first."""

    items: list[ReviewDeadLetter]
    next_cursor: str | None = Field(description="Pass back as `cursor`; `None` on the last page.")


class ReviewDeadLetterShowInput(BaseModel):
    """Input of `bus.review.dead_letters.show`."""

    dead_letter_id: str = Field(min_length=1, max_length=64)


class DeadLetterActionInput(BaseModel):
    """Input of `bus.review.dead_letters.replay` and `.discard`."""

    dead_letter_id: str = Field(min_length=1, max_length=64)
    comment: str | None = Field(
        None, max_length=2000, description="Why; recorded in the emitted event."
    )


class ReplayResult(BaseModel):
    """What the replay did."""

    dead_letter_id: str
    delivered: bool = Field(
        description="The subscriber accepted the event; the letter is replayed."
    )
    attempts: int = Field(description="Attempts of this replay (the subscriber's retry policy).")
    error: Annotated[str | None, PII] = Field(None, description="Last error of a failed replay.")
    new_dead_letter_id: str | None = Field(
        None, description="The dead letter a failed replay wrote (the old one stays dead too)."
    )


class DiscardResult(BaseModel):
    """The discarded letter, as it was."""

    dead_letter: ReviewDeadLetter


class DeadLetterReplayed(BaseModel):
    """Payload of `bus.review.dead_letters.replayed`."""

    dead_letter_id: str
    event_id: str
    event_name: str
    subscriber: str
    delivered: bool
    new_dead_letter_id: str | None = None
    comment: str | None = Field(None, description="The reviewer's reason (kept in the audit).")


class DeadLetterDiscarded(BaseModel):
    """Payload of `bus.review.dead_letters.discarded`."""

    dead_letter_id: str
    event_id: str
    event_name: str
    subscriber: str
    comment: str | None = Field(None, description="The reviewer's reason (kept in the audit).")


@define(frozen=True)
class ReviewOperations:
    """What `register_review_operations` added to the registry.

    Attributes:
        operations: The operation specs (queries then commands), by name.
        events: The event specs the commands emit, by name.
        permissions: `(read, act)`: `bus.review.read` and `bus.review.act`.
    """

    operations: dict[str, OperationSpec]
    events: dict[str, EventSpec]
    permissions: tuple[str, str] = (READ_PERMISSION, ACT_PERMISSION)


def _specs() -> tuple[list[OperationSpec], list[EventSpec]]:
    replayed = define_event(
        f"{_PREFIX}.replayed",
        payload=DeadLetterReplayed,
        key="dead_letter_id",
        tags=_TAGS,
        description="A reviewer replayed a dead letter (delivered or not).",
    )
    discarded = define_event(
        f"{_PREFIX}.discarded",
        payload=DeadLetterDiscarded,
        key="dead_letter_id",
        tags=_TAGS,
        description="A reviewer deleted a dead letter without replaying it.",
    )
    read = requires(READ_PERMISSION, resource=_RESOURCE)
    act = requires(ACT_PERMISSION, resource=_RESOURCE)
    ops = [
        define_query(
            f"{_PREFIX}.list",
            input=ReviewDeadLetterListInput,
            output=ReviewDeadLetterList,
            auth=read,
            tags=_TAGS,
            description="Still-dead letters of the caller's org, newest first.",
        ),
        define_query(
            f"{_PREFIX}.show",
            input=ReviewDeadLetterShowInput,
            output=ReviewDeadLetter,
            auth=read,
            errors=[NotFoundError],
            tags=_TAGS,
            description="One dead letter of the caller's org, with its event and error.",
        ),
        define_command(
            f"{_PREFIX}.replay",
            input=DeadLetterActionInput,
            output=ReplayResult,
            auth=act,
            emits=[replayed],
            idempotent=True,
            errors=[NotFoundError, ConflictError],
            tags=_TAGS,
            description="Deliver a dead letter's event again to the subscriber that failed it.",
        ),
        define_command(
            f"{_PREFIX}.discard",
            input=DeadLetterActionInput,
            output=DiscardResult,
            auth=act,
            emits=[discarded],
            idempotent=True,
            errors=[NotFoundError, ConflictError],
            tags=_TAGS,
            description="Delete a still-dead letter without replaying it.",
        ),
    ]
    return ops, [replayed, discarded]


def _item(letter: DeadLetter) -> ReviewDeadLetter:
    return ReviewDeadLetter(
        id=letter.id,
        event_id=letter.event_id,
        event_name=letter.event_name,
        org_id=letter.org_id,
        subscriber=letter.subscriber,
        attempts=letter.attempts,
        failed_at=letter.failed_at,
        replayed_at=letter.replayed_at,
        error=letter.error,
        event=dict(letter.event),
    )


def register_review_operations(registry: SpecRegistry, *, bus: EventBus) -> ReviewOperations:
    """Register the dead-letter review operations and their handlers in `registry`.

    The handlers act through the bus's public API (`bus.dead_letters.browse/get/discard`,
    `bus.replay_dead_letters`) within the caller's org (`ctx.org_id`), and record their writes in
    the call's transaction (`ctx.tx`): keep the dead-letter store on the executor's database (a
    `SqlDeadLetterStore` with an Executor on a `SqlBackend` of the same engine) or in memory.
    Grant `bus.review.read` to see the queue and `bus.review.act` to replay or discard
    (`RolePermissions({"ops": {"bus.review.*"}})`).

    Args:
        registry: The application's registry (its executor runs the operations).
        bus: The `EventBus` whose dead letters are reviewed; replays go to its subscribers.

    Returns:
        The registered operation and event specs.

    Raises:
        SpecDefinitionError: Operations of these names are already registered.
    """
    ops, emitted = _specs()
    registry.register(*emitted, *ops)
    list_op, show_op, replay_op, discard_op = ops
    replayed, discarded = emitted

    async def find(letter_id: str, ctx: HandlerCtx) -> DeadLetter:
        letter = await bus.dead_letters.get(letter_id, tx=ctx.tx)
        if letter is None or letter.org_id != ctx.org_id:
            raise NotFoundError(
                f"dead letter {letter_id!r} does not exist in this org",
                details={"field": "dead_letter_id"},
            )
        return letter

    def still_dead(letter: DeadLetter, verb: str) -> None:
        if letter.replayed_at is not None:
            raise ConflictError(
                f"dead letter {letter.id!r} was already replayed at "
                f"{letter.replayed_at.isoformat()}; only still-dead letters can be {verb}",
                details={"field": "dead_letter_id"},
            )

    @registry.handler(list_op)
    async def list_letters(inp: ReviewDeadLetterListInput, ctx: HandlerCtx) -> ReviewDeadLetterList:
        page = await bus.dead_letters.browse(
            org_id=ctx.org_id,
            subscriber=inp.subscriber,
            event_name=inp.event_name,
            limit=inp.limit,
            cursor=inp.cursor,
            tx=ctx.tx,
        )
        return ReviewDeadLetterList(items=[_item(d) for d in page], next_cursor=page.next_cursor)

    @registry.handler(show_op)
    async def show_letter(inp: ReviewDeadLetterShowInput, ctx: HandlerCtx) -> ReviewDeadLetter:
        return _item(await find(inp.dead_letter_id, ctx))

    @registry.handler(replay_op)
    async def replay_letter(inp: DeadLetterActionInput, ctx: HandlerCtx) -> ReplayResult:
        letter = await find(inp.dead_letter_id, ctx)
        still_dead(letter, "replayed")
        [report] = await bus.replay_dead_letters(ids=[letter.id], tx=ctx.tx)
        outcome = report.outcomes[0] if report.outcomes else None
        delivered = outcome is not None and outcome.ok
        result = ReplayResult(
            dead_letter_id=letter.id,
            delivered=delivered,
            attempts=outcome.attempts if outcome is not None else 0,
            error=None if outcome is None else outcome.error or None,
            new_dead_letter_id=None if outcome is None else outcome.dead_letter_id,
        )
        ctx.emit(
            replayed,
            DeadLetterReplayed(
                dead_letter_id=letter.id,
                event_id=letter.event_id,
                event_name=letter.event_name,
                subscriber=letter.subscriber,
                delivered=delivered,
                new_dead_letter_id=result.new_dead_letter_id,
                comment=inp.comment,
            ),
        )
        ctx.log.info("contractspec.bus.review", dead_letter_id=letter.id, action="replay")
        return result

    @registry.handler(discard_op)
    async def discard_letter(inp: DeadLetterActionInput, ctx: HandlerCtx) -> DiscardResult:
        letter = await find(inp.dead_letter_id, ctx)
        still_dead(letter, "discarded")
        if not await bus.dead_letters.discard(letter.id, tx=ctx.tx):
            raise NotFoundError(
                f"dead letter {letter.id!r} does not exist in this org",
                details={"field": "dead_letter_id"},
            )
        ctx.emit(
            discarded,
            DeadLetterDiscarded(
                dead_letter_id=letter.id,
                event_id=letter.event_id,
                event_name=letter.event_name,
                subscriber=letter.subscriber,
                comment=inp.comment,
            ),
        )
        ctx.log.info("contractspec.bus.review", dead_letter_id=letter.id, action="discard")
        return DiscardResult(dead_letter=_item(letter))

    return ReviewOperations(
        operations={op.name: op for op in ops}, events={e.name: e for e in emitted}
    )
