"""Import the real CDNOW purchase history into the CRM, through the runtime, and report on it.

Every customer becomes a contact; every purchase becomes a deal that is created and moved through
the pipeline (lead → qualified → won, or lost for zero-value orders; June 1998 orders stay open);
won orders above $100 get a thank-you task that is completed. Every call is validated, authorized,
persisted to SQLite (or PostgreSQL) together with its events (outbox) and audit record, in group
commits of `--commit-every` calls with one savepoint per call.

Run it with `uv run crm-pipeline` (see `--help`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterable
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from attrs import define, field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contractspec.core import Actor, CallContext, ContractSpecError, Executor, VerifyResult
from contractspec.core.sql import SqlBackend, audit_table, outbox_table, sqlite_engine
from crm_pipeline.models import (
    CompleteTask,
    CreateContact,
    CreateDeal,
    CreateTask,
    Deal,
    MoveDeal,
    ReportSummary,
    Stage,
    SummaryRequest,
    Task,
)
from crm_pipeline.spec import policy, registry

__all__ = [
    "ORG_ID",
    "ImportStats",
    "Purchase",
    "data_file",
    "import_purchases",
    "main",
    "read_purchases",
    "run",
]

#: The tenant the import writes into.
ORG_ID = "cdnow"
#: Orders on or after this day are still open (qualified); on or after OPEN_LEAD they are new leads.
OPEN_FROM = date(1998, 6, 1)
OPEN_LEAD = date(1998, 6, 15)
THANK_YOU_ABOVE = Decimal("100")
IMPORTER = CallContext(
    actor=Actor.system("cdnow-importer", roles="importer"), org_id=ORG_ID, channel="script"
)


@define(frozen=True)
class Purchase:
    """One CDNOW transaction."""

    line: int
    customer_id: str
    day: date
    cds: int
    value: Decimal


@define
class ImportStats:
    """What an import did."""

    purchases: int = 0
    contacts: int = 0
    calls: int = 0
    failures: int = 0
    seconds: float = 0.0
    errors: list[str] = field(factory=list)

    @property
    def calls_per_second(self) -> float:
        """Executed operations per second of wall time."""
        return self.calls / self.seconds if self.seconds else 0.0


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


async def import_purchases(
    executor: Executor,
    purchases: Iterable[Purchase],
    *,
    commit_every: int = 1000,
    on_progress: Callable[[int], None] | None = None,
) -> ImportStats:
    """Run every purchase through the CRM operations; failures are counted, never hidden."""
    stats = ImportStats()
    seen: set[str] = set()
    started = time.perf_counter()

    async def call(name: str, payload: Any) -> Any:
        stats.calls += 1
        try:
            return await executor.execute(name, payload, IMPORTER)
        except ContractSpecError as exc:
            stats.failures += 1
            if len(stats.errors) < 20:
                stats.errors.append(f"{name}: {exc.code}: {exc.message}")
            return None

    async with executor.batch(commit_every=commit_every):
        for p in purchases:
            stats.purchases += 1
            contact_id = f"cdnow-{p.customer_id}"
            if p.customer_id not in seen:
                seen.add(p.customer_id)
                if await call(
                    "crm.contact.create",
                    CreateContact(
                        id=contact_id, name=f"CDNOW customer {p.customer_id}", source="cdnow"
                    ),
                ):
                    stats.contacts += 1
            deal = await call(
                "crm.deal.create",
                CreateDeal(
                    id=f"cdnow-{p.line}",
                    contact_id=contact_id,
                    title=f"{p.cds} CD{'s' if p.cds != 1 else ''} ordered {p.day.isoformat()}",
                    amount=p.value,
                    opened_on=p.day,
                ),
            )
            if isinstance(deal, Deal):
                await _advance(call, deal, p)
            if on_progress is not None:
                on_progress(1)
    stats.seconds = time.perf_counter() - started
    return stats


async def _advance(call: Callable[[str, Any], Any], deal: Deal, p: Purchase) -> None:
    if p.day >= OPEN_LEAD:
        return
    if not await call(
        "crm.deal.move", MoveDeal(deal_id=deal.id, to_stage=Stage.QUALIFIED, on=p.day)
    ):
        return
    if p.day >= OPEN_FROM:
        return
    outcome = Stage.WON if p.value > 0 else Stage.LOST
    if not await call("crm.deal.move", MoveDeal(deal_id=deal.id, to_stage=outcome, on=p.day)):
        return
    if outcome is Stage.WON and p.value > THANK_YOU_ABOVE:
        task = await call(
            "crm.task.create", CreateTask(deal_id=deal.id, title="Send a thank-you note")
        )
        if isinstance(task, Task):
            await call("crm.task.complete", CompleteTask(task_id=task.id))


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
) -> tuple[ImportStats, ReportSummary, VerifyResult]:
    """Create the schema, import `purchases`, and return the stats, the summary report and the
    audit chain's `VerifyResult` (truthy when it verifies)."""
    console = console or Console(stderr=True)
    backend = SqlBackend(engine, registry)
    await backend.create_all()
    executor = Executor(registry, backend=backend, policy=policy())
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
        started = time.perf_counter()

        def advance(n: int) -> None:
            progress.advance(task, n)
            done = progress.tasks[0].completed
            if done % 500 == 0:
                elapsed = time.perf_counter() - started
                progress.update(task, rate=f"{done / elapsed:,.0f} purchases/s")

        stats = await import_purchases(
            executor, purchases, commit_every=commit_every, on_progress=advance
        )
    summary = await executor.execute("crm.report.summary", SummaryRequest(top=10), IMPORTER)
    assert isinstance(summary, ReportSummary)
    verified = await backend.audit.verify(ORG_ID)
    return stats, summary, verified


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (`crm-pipeline`)."""
    parser = argparse.ArgumentParser(prog="crm-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="CDNOW_master.txt (default: ../shared/data/cdnow/)"
    )
    parser.add_argument(
        "--db", type=Path, default=Path("crm_pipeline.db"), help="SQLite file to (re)create"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("CRM_POSTGRES_DSN"),
        help="run on PostgreSQL instead (postgresql+psycopg://...; the tables must not exist yet)",
    )
    parser.add_argument("--limit", type=int, default=None, help="import only the first N purchases")
    parser.add_argument("--commit-every", type=int, default=1000, help="calls per group commit")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    console = Console()
    path = args.data or data_file()
    if not path.is_file():
        console.print(
            f"[red]error:[/] CDNOW data not found at {path}; pass --data or set CONTRACTSPEC_DATA_DIR"
        )
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
        for suffix in ("", "-wal", "-shm"):
            Path(f"{args.db}{suffix}").unlink(missing_ok=True)
        engine = sqlite_engine(args.db)
        where = f"SQLite file {args.db}"
    console.print(f"Importing {len(purchases):,} CDNOW purchases from {path} into {where}")

    async def go() -> tuple[ImportStats, ReportSummary, VerifyResult, tuple[int, int]]:
        try:
            stats, summary, verified = await run(
                engine,
                purchases,
                console=console,
                commit_every=args.commit_every,
                show_progress=not args.no_progress,
            )
            return stats, summary, verified, await _counts(engine)
        finally:
            await engine.dispose()

    stats, summary, verified, (events, audits) = asyncio.run(go())
    _print_summary(console, summary)
    console.print(
        f"{stats.purchases:,} purchases → {stats.calls:,} operations in {stats.seconds:.1f} s: "
        f"[bold]{stats.calls_per_second:,.0f} operations/s[/] "
        f"({stats.purchases / stats.seconds:,.0f} purchases/s); {events:,} events in the outbox, "
        f"{audits:,} audit entries, audit chain "
        + (
            "verified"
            if verified
            else f"[red]BROKEN[/] at {verified.first_bad_seq}: {verified.reason}"
        )
    )
    if stats.failures or not verified:
        for line in stats.errors:
            console.print(f"[red]failed:[/] {line}")
        console.print(f"[red]{stats.failures} operation(s) failed[/]")
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
