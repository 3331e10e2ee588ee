"""`python -m ai_support_bot`: handle three sample tickets and print what happened."""

from __future__ import annotations

import asyncio

from rich.console import Console
from rich.table import Table

from ai_support_bot.bot import SupportBot

TICKETS = (
    ("T-1", "I was charged twice for my order, can I get a refund?"),
    ("T-2", "My parcel has not moved in tracking for a week."),
    ("T-3", "Your app's colours hurt my eyes."),
)


async def main() -> None:
    bot = SupportBot()
    table = Table("ticket", "category", "answer", "citations", "escalated")
    for ticket_id, text in TICKETS:
        outcome = await bot.handle(ticket_id, text)
        table.add_row(
            ticket_id, outcome.category, outcome.answer or "-", ", ".join(outcome.citations) or "-",
            "yes" if outcome.escalated else "no",
        )  # fmt: skip
        await bot.record(outcome, resolved=not outcome.escalated)
    Console().print(table)
    stats = await (await bot.parts()).feedback.stats(org_id="helpdesk")
    overall = stats["*"]
    Console().print(
        f"resolution rate {overall.resolution_rate:.0%}, deflection {overall.deflection_rate:.0%} "
        f"over {overall.tickets} tickets"
    )


if __name__ == "__main__":
    asyncio.run(main())
