"""Import the real CDNOW purchase history into the CRM, through the runtime, and report on it.

Every customer becomes a contact; every purchase becomes a deal that is created and moved through
the pipeline (lead → qualified → won, or lost for zero-value orders; June 1998 orders stay open);
won orders above $100 get a thank-you task that is completed. Every call is validated, authorized,
persisted to SQLite (or PostgreSQL) together with its events (outbox) and audit record, in group
commits of about `--commit-every` calls (whole purchases) with one savepoint per call.

A rerun on the same database resumes: the import reads what is stored, derives what each purchase
still misses and issues only those calls; progress only ever reports committed work.

Run it with `uv run crm-pipeline` (see `--help`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from attrs import asdict, define, field
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contractspec.core import (
    Actor,
    Batch,
    BatchCommitError,
    CallContext,
    ConflictError,
    ContractSpecError,
    Executor,
    Invocation,
    Middleware,
    VerifyResult,
)
from contractspec.core.sql import (
    SqlBackend,
    audit_table,
    drop_all,
    outbox_table,
    sqlite_engine,
)
from crm_pipeline.models import (
    CLOSED_STAGES,
    CompleteTask,
    CreateContact,
    CreateDeal,
    CreateTask,
    MoveDeal,
    ReportSummary,
    Stage,
    SummaryRequest,
    Task,
    contact_entity,
    deal_entity,
    task_entity,
)
from crm_pipeline.spec import policy, registry

__all__ = [
    "CRASH_AFTER_CALLS_ENV",
    "MAX_CALLS_PER_PURCHASE",
    "ORG_ID",
    "ImportEvent",
    "ImportStats",
    "Purchase",
    "StoredState",
    "Tally",
    "data_file",
    "import_purchases",
    "load_state",
    "main",
    "read_purchases",
    "run",
    "target_stage",
    "wants_thank_you",
]

#: The tenant the import writes into.
ORG_ID = "cdnow"
#: Orders on or after this day are still open (qualified); on or after OPEN_LEAD they are new leads.
OPEN_FROM = date(1998, 6, 1)
OPEN_LEAD = date(1998, 6, 15)
THANK_YOU_ABOVE = Decimal("100")
THANK_YOU_TITLE = "Send a thank-you note"
IMPORTER = CallContext(
    actor=Actor.system("cdnow-importer", roles="importer"), org_id=ORG_ID, channel="script"
)
#: The most calls one purchase needs: contact, deal, two moves, the task and its completion.
MAX_CALLS_PER_PURCHASE = 6
#: Test aid: with this variable set to N, the importer ends its process with `os._exit` inside
#: its N-th call (after the handler ran, before the call's savepoint is released), like a crash.
CRASH_AFTER_CALLS_ENV = "CRM_PIPELINE_CRASH_AFTER_CALLS"
CRASH_EXIT_CODE = 70
#: Error messages kept in `ImportStats.errors` (every failure is still counted and reported to
#: `on_report`, e.g. the `--commit-log`).
MAX_ERRORS_KEPT = 1000


@define(frozen=True)
class Purchase:
    """One CDNOW transaction."""

    line: int
    customer_id: str
    day: date
    cds: int
    value: Decimal


def target_stage(p: Purchase) -> Stage:
    """The stage a purchase's deal ends in: lead or qualified (June 1998), else won or lost ($0)."""
    if p.day >= OPEN_LEAD:
        return Stage.LEAD
    if p.day >= OPEN_FROM:
        return Stage.QUALIFIED
    return Stage.WON if p.value > 0 else Stage.LOST


def wants_thank_you(p: Purchase) -> bool:
    """Whether the purchase's deal gets a (completed) thank-you task: won and above $100."""
    return p.day < OPEN_FROM and p.value > THANK_YOU_ABOVE


#: Stored stages a deal may be in on its way to each target stage (anything else contradicts
#: the data and is reported, never "repaired").
_ON_THE_WAY: dict[Stage, frozenset[Stage]] = {
    Stage.LEAD: frozenset({Stage.LEAD}),
    Stage.QUALIFIED: frozenset({Stage.LEAD, Stage.QUALIFIED}),
    Stage.WON: frozenset({Stage.LEAD, Stage.QUALIFIED, Stage.WON}),
    Stage.LOST: frozenset({Stage.LEAD, Stage.QUALIFIED, Stage.LOST}),
}


@define
class Tally:
    """What a set of successful calls stored.

    Attributes:
        calls: Successful calls (each left one audit entry).
        purchases: Purchases these calls completed (deal in its final stage, task done).
        contacts, deals, tasks: Records created.
        events: Events written to the outbox.
    """

    calls: int = 0
    purchases: int = 0
    contacts: int = 0
    deals: int = 0
    tasks: int = 0
    events: int = 0

    def add(self, other: Tally) -> None:
        """Add `other`'s counts to this tally."""
        self.calls += other.calls
        self.purchases += other.purchases
        self.contacts += other.contacts
        self.deals += other.deals
        self.tasks += other.tasks
        self.events += other.events


@define
class ImportStats:
    """What an import did.

    Under group commit a call that returned is not stored until its group commits, so successful
    calls are split into `committed` (durable) and `pending` (returned inside the group that has
    not committed yet: empty when an import ended normally). `lost` counts returned calls whose
    group could not commit (`BatchCommitError`); a rerun redoes them.

    Attributes:
        purchases: Purchases looked at.
        skipped: Purchases already stored completely: no call issued.
        resumed: Purchases partly stored before this run (only their missing calls were issued).
        incomplete: Purchases left unfinished because one of their calls failed.
        mismatched: Purchases whose stored deal contradicts the data (reported, not changed).
        calls: Calls issued, successful or not.
        failures: Calls that raised (`errors` keeps their messages).
        conflicts: Failures that were conflicts (a record already taken, a stale version).
        commits: Group commits done.
        committed: What committed calls stored.
        pending: What returned calls not committed yet stored.
        lost: Returned calls whose group failed to commit.
        settled: Purchases whose outcome is final: committed, skipped or failed.
        aborted: Why the import stopped early (a failed group commit), else `None`.
        seconds: Wall time of the import (without reading the stored state).
        state_seconds: Wall time of reading the stored state before the import.
        writer: Which writer these stats belong to (0 for a single writer).
        errors: Messages of the failures, per call (at most `MAX_ERRORS_KEPT`).
    """

    purchases: int = 0
    skipped: int = 0
    resumed: int = 0
    incomplete: int = 0
    mismatched: int = 0
    calls: int = 0
    failures: int = 0
    conflicts: int = 0
    commits: int = 0
    committed: Tally = field(factory=Tally)
    pending: Tally = field(factory=Tally)
    lost: int = 0
    settled: int = 0
    aborted: str | None = None
    seconds: float = 0.0
    state_seconds: float = 0.0
    writer: int = 0
    errors: list[str] = field(factory=list)

    @property
    def contacts(self) -> int:
        """Contacts created and committed."""
        return self.committed.contacts

    @property
    def calls_per_second(self) -> float:
        """Issued operations per second of wall time."""
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        """Whether every purchase is stored: no failure, contradiction or lost call."""
        return not (self.failures or self.mismatched or self.lost or self.aborted)

    @classmethod
    def combine(cls, parts: Sequence[ImportStats], seconds: float) -> ImportStats:
        """The stats of several writers as one (`seconds` is the wall time of all of them)."""
        total = cls(seconds=seconds)
        for part in parts:
            for name in (
                "purchases",
                "skipped",
                "resumed",
                "incomplete",
                "mismatched",
                "calls",
                "failures",
                "conflicts",
                "commits",
                "lost",
                "settled",
            ):
                setattr(total, name, getattr(total, name) + getattr(part, name))
            total.committed.add(part.committed)
            total.pending.add(part.pending)
            total.aborted = total.aborted or part.aborted
            total.state_seconds = max(total.state_seconds, part.state_seconds)
            total.errors.extend(part.errors)
        return total


@define(frozen=True)
class ImportEvent:
    """What `import_purchases` reports to its `on_report` hook.

    Attributes:
        phase: `committing` (a group is about to commit: `stats.pending` is what it holds),
            `committed` (it did: `stats.committed` includes it), `progress` (purchases settled
            with nothing to commit, e.g. already stored) or `failed` (a call failed: `error`).
        stats: The writer's live stats (read them in the hook; they change afterwards).
        error: The failure's message for `failed`.
    """

    phase: Literal["committing", "committed", "progress", "failed"]
    stats: ImportStats
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible dict (one line of `--commit-log`)."""
        s = self.stats
        record: dict[str, Any] = {
            "phase": self.phase,
            "writer": s.writer,
            "commits": s.commits,
            "purchases": s.purchases,
            "skipped": s.skipped,
            "resumed": s.resumed,
            "incomplete": s.incomplete,
            "settled": s.settled,
            "committed": asdict(s.committed),
            "pending": asdict(s.pending),
            "failures": s.failures,
            "conflicts": s.conflicts,
            "lost": s.lost,
        }
        if self.error is not None:
            record["error"] = self.error
        return record


ReportHook = Callable[[ImportEvent], None]


@define
class StoredState:
    """What the database already holds of an import, by id.

    Attributes:
        contacts: Ids of stored contacts.
        deals: Stage of each stored deal.
        tasks: Per deal id, one of its tasks as `(task id, done)` (a done one when there is one).
    """

    contacts: set[str] = field(factory=set)
    deals: dict[str, Stage] = field(factory=dict)
    tasks: dict[str, tuple[str, bool]] = field(factory=dict)


async def load_state(executor: Executor, org_id: str = ORG_ID) -> StoredState:
    """Read the org's contacts, deals and tasks as stored now.

    On a `SqlBackend` three column-only queries (about 0.1 s after a full CDNOW import on
    SQLite); on any other backend the executor's repositories, in one read-only transaction.
    """
    backend = executor.backend
    if isinstance(backend, SqlBackend):
        return await _load_sql_state(backend, org_id)
    state = StoredState()
    tx = await executor.unit_of_work.begin(readonly=True)
    try:
        store = executor.entities
        for contact in await store.repository(contact_entity, tx, org_id).find():
            state.contacts.add(contact.id)
        for deal in await store.repository(deal_entity, tx, org_id).find():
            state.deals[deal.id] = deal.stage
        for task in await store.repository(task_entity, tx, org_id).find():
            _keep_task(state, task.deal_id, task.id, task.done)
    finally:
        await tx.rollback()
    return state


async def _load_sql_state(backend: SqlBackend, org_id: str) -> StoredState:
    state = StoredState()
    contacts, deals, tasks = (
        backend.table(contact_entity),
        backend.table(deal_entity),
        backend.table(task_entity),
    )
    async with backend.engine.connect() as conn:
        rows = await conn.execute(select(contacts.c.id).where(contacts.c.org_id == org_id))
        state.contacts.update(row[0] for row in rows)
        rows = await conn.execute(select(deals.c.id, deals.c.stage).where(deals.c.org_id == org_id))
        state.deals.update((row[0], Stage(row[1])) for row in rows)
        rows = await conn.execute(
            select(tasks.c.deal_id, tasks.c.id, tasks.c.done).where(tasks.c.org_id == org_id)
        )
        for deal_id, task_id, done in rows:
            _keep_task(state, deal_id, task_id, bool(done))
    return state


def _keep_task(state: StoredState, deal_id: str, task_id: str, done: bool) -> None:
    """Remember one task per deal, a done one when there is one."""
    known = state.tasks.get(deal_id)
    if known is None or (done and not known[1]):
        state.tasks[deal_id] = (task_id, done)


class _CallFailed(Exception):
    """A call of the import raised (already counted and reported)."""

    def __init__(self, conflict: bool) -> None:
        self.conflict = conflict


class _Writer:
    """Imports one sequence of purchases in one `executor.batch()`, committing whole purchases."""

    def __init__(
        self,
        executor: Executor,
        state: StoredState,
        stats: ImportStats,
        commit_every: int,
        on_report: ReportHook | None,
    ) -> None:
        self.executor = executor
        self.state = state
        self.stats = stats
        self.commit_every = commit_every
        self.on_report = on_report
        self.processed = 0

    def _report(self, phase: Literal["committing", "committed", "progress", "failed"]) -> None:
        if self.on_report is not None:
            self.on_report(ImportEvent(phase, self.stats))

    def _failed(self, message: str) -> None:
        stats = self.stats
        if len(stats.errors) < MAX_ERRORS_KEPT:
            stats.errors.append(message)
        if self.on_report is not None:
            self.on_report(ImportEvent("failed", stats, message))

    async def call(self, name: str, payload: BaseModel, subject: str) -> Any:
        """Run one operation; a failure is counted, reported and raised as `_CallFailed`."""
        stats = self.stats
        stats.calls += 1
        try:
            output = await self.executor.execute(name, payload, IMPORTER)
        except BatchCommitError:
            raise  # the batch's transaction is gone: not this call's failure alone
        except ContractSpecError as exc:
            stats.failures += 1
            conflict = isinstance(exc, ConflictError)
            stats.conflicts += conflict
            self._failed(f"{name} {subject}: {exc.code}: {exc.message}")
            raise _CallFailed(conflict) from None
        stats.pending.calls += 1
        return output

    async def purchase(self, p: Purchase) -> None:
        """Issue the calls `p` still misses (all of them on an empty database)."""
        stats, state = self.stats, self.state
        deal_id = f"cdnow-{p.line}"
        target = target_stage(p)
        thank_you = wants_thank_you(p)
        stage = state.deals.get(deal_id)
        task = state.tasks.get(deal_id) if thank_you else None
        if stage is not None:
            if stage is target and (not thank_you or (task is not None and task[1])):
                stats.skipped += 1
                return
            if stage not in _ON_THE_WAY[target]:
                stats.mismatched += 1
                self._failed(
                    f"deal {deal_id}: stored as {stage.value} but the data says "
                    f"{target.value}; left as is"
                )
                return
            stats.resumed += 1
        pending = stats.pending
        try:
            contact_id = f"cdnow-{p.customer_id}"
            if contact_id not in state.contacts:
                try:
                    await self.call(
                        "crm.contact.create",
                        CreateContact(
                            id=contact_id, name=f"CDNOW customer {p.customer_id}", source="cdnow"
                        ),
                        contact_id,
                    )
                    pending.contacts += 1
                except _CallFailed as failed:
                    if not failed.conflict:
                        raise
                    # Taken: another importer stored it first; the deal can still go on.
                state.contacts.add(contact_id)
            if stage is None:
                await self.call(
                    "crm.deal.create",
                    CreateDeal(
                        id=deal_id,
                        contact_id=contact_id,
                        title=f"{p.cds} CD{'s' if p.cds != 1 else ''} ordered {p.day.isoformat()}",
                        amount=p.value,
                        opened_on=p.day,
                    ),
                    deal_id,
                )
                pending.deals += 1
                pending.events += 1
                stage = Stage.LEAD
            if stage is Stage.LEAD and target is not Stage.LEAD:
                await self.call(
                    "crm.deal.move",
                    MoveDeal(deal_id=deal_id, to_stage=Stage.QUALIFIED, on=p.day),
                    deal_id,
                )
                pending.events += 1
                stage = Stage.QUALIFIED
            if stage is Stage.QUALIFIED and target in CLOSED_STAGES:
                await self.call(
                    "crm.deal.move", MoveDeal(deal_id=deal_id, to_stage=target, on=p.day), deal_id
                )
                pending.events += 1
            if thank_you:
                if task is None:
                    created: Task = await self.call(
                        "crm.task.create",
                        CreateTask(deal_id=deal_id, title=THANK_YOU_TITLE),
                        deal_id,
                    )
                    pending.tasks += 1
                    task = (created.id, False)
                if not task[1]:
                    await self.call("crm.task.complete", CompleteTask(task_id=task[0]), deal_id)
                    pending.events += 1
            pending.purchases += 1
        except _CallFailed:
            stats.incomplete += 1

    async def commit(self, batch: Batch) -> None:
        """Commit the group (reporting before and after), or report progress if it is empty."""
        stats = self.stats
        if batch.pending == 0 and stats.pending.calls == 0:
            if self.processed > stats.settled:
                stats.settled = self.processed
                self._report("progress")
            return
        self._report("committing")
        await batch.commit()
        stats.commits += 1
        stats.committed.add(stats.pending)
        stats.pending = Tally()
        stats.settled = self.processed
        self._report("committed")

    async def run(self, purchases: Iterable[Purchase]) -> None:
        stats = self.stats
        every = self.commit_every
        try:
            # The batch's own commit threshold is never reached: this writer commits at purchase
            # boundaries, so a group holds whole purchases and is announced before it commits.
            async with self.executor.batch(commit_every=every + MAX_CALLS_PER_PURCHASE) as batch:
                for p in purchases:
                    stats.purchases += 1
                    await self.purchase(p)
                    self.processed += 1
                    if batch.pending >= every or self.processed - stats.settled >= every:
                        await self.commit(batch)
                await self.commit(batch)
        except BatchCommitError as exc:
            stats.lost += stats.pending.calls
            stats.pending = Tally()
            stats.aborted = f"{exc.code}: {exc.message}"
            self._failed(f"group commit: {stats.aborted}")


def _partition(purchases: Iterable[Purchase], writers: int) -> list[list[Purchase]]:
    """Split purchases by customer (CRC-32 of the id), keeping the file order in each part."""
    parts: list[list[Purchase]] = [[] for _ in range(writers)]
    for p in purchases:
        parts[zlib.crc32(p.customer_id.encode()) % writers].append(p)
    return parts


async def import_purchases(
    executor: Executor,
    purchases: Iterable[Purchase],
    *,
    commit_every: int = 1000,
    writers: int = 1,
    state: StoredState | None = None,
    on_report: ReportHook | None = None,
) -> ImportStats:
    """Run the purchases through the CRM operations, issuing only the calls still missing.

    The stored state (`load_state`, unless `state` is given) says, per purchase, what is already
    there; each purchase's final state follows from the data (`target_stage`, `wants_thank_you`),
    so only the missing calls run: all of them on an empty database, none after a complete import.
    This holds wherever an earlier run stopped, also between a deal's creation and its moves.

    Calls run in `executor.batch()` groups that commit after about `commit_every` calls, always at
    a purchase boundary. `on_report` hears each group before (`committing`) and after
    (`committed`) its commit, and each failed call: only `committed` work is durable.

    Args:
        executor: The CRM executor (any backend).
        purchases: The purchases, in file order.
        commit_every: Calls per group commit (a group ends at the purchase that reaches it).
        writers: Concurrent writers (asyncio tasks, each with its own batch); purchases are
            split by customer so writers never touch the same records. Useful on PostgreSQL.
        state: What is stored already (read with `load_state` when `None`).
        on_report: Called with an `ImportEvent` around each group commit and for each failure.

    Returns:
        The combined `ImportStats`. Failed calls are counted (`failures`, `conflicts`) and
        reported, never hidden; a failed group commit ends the import (`aborted`, `lost`).

    Raises:
        ValueError: `writers` or `commit_every` is below 1.
    """
    if writers < 1 or commit_every < 1:
        raise ValueError(
            f"writers and commit_every must be at least 1, got {writers}, {commit_every}"
        )
    started = time.perf_counter()
    if state is None:
        state = await load_state(executor)
    state_seconds = time.perf_counter() - started
    started = time.perf_counter()
    if writers == 1:
        stats = ImportStats()
        await _Writer(executor, state, stats, commit_every, on_report).run(purchases)
        stats.seconds = time.perf_counter() - started
    else:
        parts = [ImportStats(writer=n) for n in range(writers)]
        await asyncio.gather(
            *(
                _Writer(executor, state, parts[n], commit_every, on_report).run(chunk)
                for n, chunk in enumerate(_partition(purchases, writers))
            )
        )
        stats = ImportStats.combine(parts, time.perf_counter() - started)
    stats.state_seconds = state_seconds
    return stats


@define
class _CrashAfter:
    """Middleware of `CRASH_AFTER_CALLS_ENV`: `os._exit` inside the N-th call (a test aid)."""

    calls: int
    seen: int = 0

    async def __call__(
        self, invocation: Invocation, call_next: Callable[[Invocation], Awaitable[BaseModel]]
    ) -> BaseModel:
        output = await call_next(invocation)
        self.seen += 1
        if self.seen >= self.calls:
            os._exit(CRASH_EXIT_CODE)  # no cleanup, no commit: like a killed process
        return output


def _crash_middleware() -> list[Middleware]:
    value = os.environ.get(CRASH_AFTER_CALLS_ENV)
    return [_CrashAfter(int(value))] if value else []


def data_file() -> Path:
    """Where CDNOW_master.txt is: `$CONTRACTSPEC_DATA_DIR/cdnow/` or `../shared/data/cdnow/`
    relative to the project root (or the current directory)."""
    candidates = []
    if env := os.environ.get("CONTRACTSPEC_DATA_DIR"):
        candidates.append(Path(env) / "cdnow" / "CDNOW_master.txt")
    project_root = Path(__file__).resolve().parents[2]
    candidates.append(project_root.parent / "shared" / "data" / "cdnow" / "CDNOW_master.txt")
    candidates.append(Path.cwd().parent / "shared" / "data" / "cdnow" / "CDNOW_master.txt")
    for path in candidates:
        if path.is_file():
            return path
    return candidates[-1]


def read_purchases(path: Path, limit: int | None = None) -> list[Purchase]:
    """Parse `customer_id YYYYMMDD number_of_cds dollar_value` lines (whitespace separated).

    Raises:
        ValueError: A malformed line, with its number and the reason.
    """
    purchases: list[Purchase] = []
    with path.open(encoding="ascii") as handle:
        for number, raw in enumerate(handle, start=1):
            fields = raw.split()
            if not fields or fields[0] == "customer_id":
                continue
            if len(fields) != 4:
                raise ValueError(f"{path}:{number}: expected 4 fields, got {len(fields)}: {raw!r}")
            cid, day, cds, value = fields
            try:
                parsed = Purchase(
                    number,
                    cid,
                    date(int(day[:4]), int(day[4:6]), int(day[6:8])),
                    int(cds),
                    Decimal(value),
                )
            except (ValueError, InvalidOperation) as exc:
                raise ValueError(f"{path}:{number}: {exc}: {raw!r}") from None
            purchases.append(parsed)
            if limit is not None and len(purchases) >= limit:
                break
    return purchases


async def _counts(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        events = (await conn.execute(select(func.count()).select_from(outbox_table))).scalar_one()
        audits = (await conn.execute(select(func.count()).select_from(audit_table))).scalar_one()
    return int(events), int(audits)


def _print_summary(console: Console, summary: ReportSummary) -> None:
    table = Table(title="Pipeline by stage", show_footer=True)
    table.add_column("stage", footer="total")
    table.add_column("deals", justify="right", footer=f"{summary.deals:,}")
    table.add_column(
        "value ($)", justify="right", footer=f"{sum(s.value for s in summary.stages):,.2f}"
    )
    for s in summary.stages:
        table.add_row(s.stage.value, f"{s.deals:,}", f"{s.value:,.2f}")
    console.print(table)
    console.print(
        f"open pipeline ${summary.pipeline_value:,.2f} · won ${summary.won_value:,.2f} · "
        f"win rate {summary.win_rate:.1%} · {summary.contacts:,} contacts"
    )
    top = Table(title=f"Top {len(summary.top_customers)} customers by won value")
    top.add_column("contact")
    top.add_column("won deals", justify="right")
    top.add_column("won value ($)", justify="right")
    for c in summary.top_customers:
        top.add_row(c.contact_id, str(c.won_deals), f"{c.won_value:,.2f}")
    console.print(top)
    months = Table(title="New deals per month")
    months.add_column("month")
    months.add_column("deals", justify="right")
    months.add_column("value ($)", justify="right")
    for m in summary.monthly_new_deals:
        months.add_row(m.month, f"{m.deals:,}", f"{m.value:,.2f}")
    console.print(months)


async def run(
    engine: AsyncEngine,
    purchases: list[Purchase],
    *,
    console: Console | None = None,
    commit_every: int = 1000,
    show_progress: bool = True,
    fresh: bool = False,
    writers: int = 1,
    on_report: ReportHook | None = None,
) -> tuple[ImportStats, ReportSummary, VerifyResult]:
    """Create the missing tables, import what `purchases` still miss, and return the stats, the
    summary report and the audit chain's `VerifyResult` (truthy when it verifies).

    Args:
        engine: The database (a rerun on the same database resumes).
        purchases: The purchases to import.
        console: Where the progress bar goes.
        commit_every: Calls per group commit.
        show_progress: Show a progress bar of committed purchases.
        fresh: Drop the CRM's and ContractSpec's tables first and import everything again.
        writers: Concurrent writers (see `import_purchases`).
        on_report: Hears each group commit and failure (see `ImportEvent`).
    """
    console = console or Console(stderr=True)
    backend = SqlBackend(engine, registry)
    if fresh:
        await drop_all(engine, *backend.metadatas)
    await backend.create_all()
    executor = Executor(registry, backend=backend, policy=policy(), middleware=_crash_middleware())
    with Progress(
        TextColumn("[bold]importing CDNOW"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rate]}"),
        console=console,
        disable=not show_progress,
    ) as progress:
        task = progress.add_task("import", total=len(purchases), rate="")
        settled = [0] * writers
        started = time.perf_counter()

        def report(event: ImportEvent) -> None:
            if on_report is not None:
                on_report(event)
            if event.phase in ("committed", "progress"):  # only committed work counts as done
                settled[event.stats.writer] = event.stats.settled
                done = sum(settled)
                elapsed = time.perf_counter() - started
                rate = f"{done / elapsed:,.0f} purchases/s committed" if elapsed else ""
                progress.update(task, completed=done, rate=rate)

        stats = await import_purchases(
            executor, purchases, commit_every=commit_every, writers=writers, on_report=report
        )
    summary = await executor.execute("crm.report.summary", SummaryRequest(top=10), IMPORTER)
    assert isinstance(summary, ReportSummary)
    verified = await backend.audit.verify(ORG_ID)
    return stats, summary, verified


def _describe(stats: ImportStats) -> str:
    """One line: what was already there, what this run stored, and how fast."""
    c = stats.committed
    if stats.calls == 0 and stats.skipped == stats.purchases:
        return (
            f"all {stats.purchases:,} purchases were already imported: nothing to do "
            f"(0 operations; reading the stored state took {stats.state_seconds:.1f} s)"
        )
    parts = [f"{stats.purchases:,} purchases"]
    if stats.skipped or stats.resumed:
        parts.append(
            f"{stats.skipped:,} already stored, {stats.resumed:,} partly stored and resumed"
        )
    rate = f"{stats.purchases / stats.seconds:,.0f}" if stats.seconds else "-"
    parts.append(
        f"{stats.calls:,} operations in {stats.seconds:.1f} s: "
        f"[bold]{stats.calls_per_second:,.0f} operations/s[/] ({rate} purchases/s)"
    )
    parts.append(
        f"committed {c.calls:,} operations in {stats.commits:,} group commits "
        f"({c.purchases:,} purchases completed, {c.contacts:,} contacts, {c.deals:,} deals)"
    )
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (`crm-pipeline`)."""
    parser = argparse.ArgumentParser(prog="crm-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="CDNOW_master.txt (default: ../shared/data/cdnow/)"
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=Path("crm_pipeline.db"),
        help="SQLite file (created if missing; an existing one is resumed)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("CRM_POSTGRES_DSN"),
        help="run on PostgreSQL instead (postgresql+psycopg://...; existing tables are resumed)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start over: delete the SQLite file, or drop the CRM's and ContractSpec's cs_* "
        "tables on PostgreSQL, then import everything",
    )
    parser.add_argument("--limit", type=int, default=None, help="import only the first N purchases")
    parser.add_argument("--commit-every", type=int, default=1000, help="calls per group commit")
    parser.add_argument(
        "--writers", type=int, default=1, help="concurrent writers, split by customer (PostgreSQL)"
    )
    parser.add_argument(
        "--commit-log",
        type=Path,
        default=None,
        help="append one JSON line per group commit (before and after it) and per failed call",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    console = Console()
    path = args.data or data_file()
    if not path.is_file():
        console.print(
            f"[red]error:[/] CDNOW data not found at {path}; pass --data or set CONTRACTSPEC_DATA_DIR"
        )
        raise SystemExit(2)
    if args.commit_every < 1 or args.writers < 1:
        console.print("[red]error:[/] --commit-every and --writers must be at least 1")
        raise SystemExit(2)
    try:
        purchases = read_purchases(path, args.limit)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None
    if args.postgres:
        engine = create_async_engine(args.postgres)
        where = "PostgreSQL"
    else:
        if args.fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{args.db}{suffix}").unlink(missing_ok=True)
        engine = sqlite_engine(args.db)
        where = f"SQLite file {args.db}"
    console.print(f"Importing {len(purchases):,} CDNOW purchases from {path} into {where}")
    log = args.commit_log.open("a", encoding="utf-8") if args.commit_log else None

    def write_log(event: ImportEvent) -> None:
        if log is not None:
            log.write(json.dumps(event.to_json()) + "\n")
            log.flush()  # a killed process must leave every line it reported

    async def go() -> tuple[ImportStats, ReportSummary, VerifyResult, tuple[int, int]]:
        try:
            stats, summary, verified = await run(
                engine,
                purchases,
                console=console,
                commit_every=args.commit_every,
                show_progress=not args.no_progress,
                fresh=args.fresh and bool(args.postgres),
                writers=args.writers,
                on_report=write_log,
            )
            return stats, summary, verified, await _counts(engine)
        finally:
            await engine.dispose()
            if log is not None:
                log.close()

    stats, summary, verified, (events, audits) = asyncio.run(go())
    _print_summary(console, summary)
    console.print(_describe(stats))
    console.print(
        f"{events:,} events in the outbox, {audits:,} audit entries, audit chain "
        + (
            "verified"
            if verified
            else f"[red]BROKEN[/] at {verified.first_bad_seq}: {verified.reason}"
        )
    )
    if stats.ok and verified:
        return
    for line in stats.errors[:20]:
        console.print(f"[red]failed:[/] {line}")
    if len(stats.errors) > 20:
        console.print(f"… and {len(stats.errors) - 20:,} more (see --commit-log)")
    if stats.failures:
        console.print(
            f"[red]{stats.failures:,} operation(s) failed[/] ({stats.conflicts:,} conflicts); "
            f"{stats.incomplete:,} purchase(s) are incomplete: rerun to resume them"
        )
    if stats.mismatched:
        console.print(f"[red]{stats.mismatched:,} stored deal(s) contradict the data[/]")
    if stats.aborted:
        console.print(
            f"[red]stopped:[/] {stats.aborted}; {stats.lost:,} operation(s) that returned were "
            "not stored: rerun to resume"
        )
    sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
