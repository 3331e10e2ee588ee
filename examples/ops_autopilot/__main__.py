"""`python -m ops_autopilot`: retention waves over the CDNOW customers, then off-policy estimates.

Each wave starts retention tasks for the riskiest customers not yet contacted, lets a retention
lead decide the 25 % offers, publishes the simulated business events, moves the clock past the
30-day horizon and settles the rewards, so the bandit learns between waves. From
`--shadow-from` on, a candidate trained on the earlier waves runs in shadow mode and the end of
the run compares it with the live policy.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from contractspec.core import Actor
from contractspec.core.testing import FakeClock, SequentialIds
from contractspec.growth import MemoryDecisionLog
from contractspec.growth.decisions import MemoryOutcomeStore
from ops_autopilot.autopilot import Autopilot, approve_when_cheap, open_on_sqlite
from ops_autopilot.data import AS_OF, data_file, load_customers
from ops_autopilot.spec import ARMS

LEAD = Actor.user("lead-1", roles=["retention-lead"])


async def run(
    *,
    customers: int | None,
    waves: int,
    per_wave: int,
    budget: float,
    sqlite: Path | None,
    console: Console,
    shadow_from: int | None = None,
) -> Autopilot:
    """Run the demo and print its tables; returns the autopilot (for tests)."""
    facts = load_customers(data_file(), customers=customers)
    clock = FakeClock(AS_OF.replace(tzinfo=dt.UTC))
    engine = None
    if sqlite is None:
        pilot = Autopilot(facts, log=MemoryDecisionLog(), outcomes=MemoryOutcomeStore(),
                          clock=clock, budget=budget, ids=SequentialIds("run"))  # fmt: skip
    else:
        from contractspec.core.sql import sqlite_engine

        engine = sqlite_engine(sqlite)
        pilot = await open_on_sqlite(facts, engine, clock=clock, budget=budget,
                                     ids=SequentialIds("run"))  # fmt: skip
    outcomes = pilot.loop.outcomes
    try:
        table = Table("wave", "tasks", "sent", "L2 approved", "L2 rejected", "blocked",
                      "spent $", "settled", "mean reward $", title="retention waves")  # fmt: skip
        for wave in range(1, waves + 1):
            if shadow_from is not None and wave == shadow_from:
                await pilot.shadow_candidate()
            tasks = await pilot.scan(limit=per_wave)
            waiting = sum(t.outcome == "waiting_approval" for t in tasks)
            await pilot.review(approve_when_cheap(pilot), LEAD)
            done = Counter(pilot.tasks[t.task_id].outcome for t in tasks)
            await pilot.observe()
            clock.advance(dt.timedelta(days=31))
            settled = await pilot.settle()
            rewards = [d.reward or 0.0 for d in settled]
            approved = waiting - done["rejected"]
            table.add_row(str(wave), str(len(tasks)), str(done["sent"]), str(approved),
                          str(done["rejected"]), str(done["blocked"]), f"{pilot.budget.spent:.2f}",
                          str(len(settled)),
                          f"{sum(rewards) / len(rewards):.2f}" if rewards else "-")  # fmt: skip
            if not tasks:
                break
        console.print(table)
        ope = Table("always offer", "IPS $", "SNIPS $", "DR $ (95 % CI)", "support",
                    title="off-policy value per decision")  # fmt: skip
        for arm in ARMS:
            e = await pilot.evaluate(arm)
            ope.add_row(arm, f"{e.ips.value:.2f}", f"{e.snips.value:.2f}",
                        f"{e.dr.value:.2f} ({e.dr.ci_low:.2f} .. {e.dr.ci_high:.2f})",
                        f"{e.support:.0%}")  # fmt: skip
        console.print(ope)
        if pilot.loop.candidate is not None:
            report = await pilot.loop.shadow_report()
            shadow = Table("policy", "decisions", "value $ per decision (95 % CI)", "method",
                           title=f"shadow mode from wave {shadow_from}: "
                           f"agreement {report.agreement:.0%}")  # fmt: skip
            live = report.live
            shadow.add_row(report.live_policy, str(report.n),
                           f"{live.value:.2f} ({live.ci_low:.2f} .. {live.ci_high:.2f})",
                           "observed")  # fmt: skip
            for est in (report.candidate.ips, report.candidate.snips, report.candidate.dr):
                shadow.add_row(report.candidate_policy, str(report.n),
                               f"{est.value:.2f} ({est.ci_low:.2f} .. {est.ci_high:.2f})",
                               est.method)  # fmt: skip
            console.print(shadow)
            verdict = ("would be promoted" if report.candidate.dr.ci_low >= live.value
                       else "stays in shadow: not shown to be at least as good")  # fmt: skip
            console.print(f"candidate {verdict} (DR lower bound {report.candidate.dr.ci_low:.2f} "
                          f"vs live mean {live.value:.2f})")  # fmt: skip
        labels = await outcomes.labels()
        console.print(f"{len(labels)} decisions overridden (labels): "
                      f"{Counter(x.actor for x in labels)}")  # fmt: skip
        return pilot
    finally:
        if engine is not None:
            await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m ops_autopilot", description=__doc__)
    parser.add_argument("--customers", type=int, default=3000,
                        help="first N CDNOW customer ids (default 3000; 0 for all 23,570)")  # fmt: skip
    parser.add_argument("--waves", type=int, default=4)
    parser.add_argument("--per-wave", type=int, default=150)
    parser.add_argument("--budget", type=float, default=2000.0, help="US dollars")
    parser.add_argument("--sqlite", type=Path, default=None,
                        help="keep decisions and outcomes in this SQLite file")  # fmt: skip
    parser.add_argument("--shadow-from", type=int, default=3,
                        help="wave from which a candidate trained on earlier waves runs in "
                        "shadow mode (0: none; default 3)")  # fmt: skip
    args = parser.parse_args(argv)
    asyncio.run(
        run(customers=args.customers or None, waves=args.waves, per_wave=args.per_wave,
            budget=args.budget, sqlite=args.sqlite, console=Console(),
            shadow_from=args.shadow_from or None)
    )  # fmt: skip


if __name__ == "__main__":
    main()
