"""Demo: `python -m crm_notifications` runs the CRM on a SQLite file and shows what was notified.

Email and webhook deliveries are captured (no server needed); see the tests for real SMTP and
HTTP endpoints.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from contractspec.bus.testing import CapturingChannel
from contractspec.core.sql import sqlite_engine
from crm_notifications.app import ORG_ID, build
from crm_notifications.flow import run_pipeline


async def demo(path: Path) -> None:
    engine = sqlite_engine(path)
    try:
        email, webhook = CapturingChannel("email"), CapturingChannel("webhook")
        app = await build(engine, email=email, webhook=webhook)
        deal_id = await run_pipeline(app.executor)
        delivered = await app.deliver()
        print(f"relay delivered {delivered} events")
        for entry in await app.deal_timeline(deal_id):
            print(f"  timeline  {entry.occurred_at:%H:%M:%S}  {entry.event:15} by {entry.actor_id}")
        for message in email.sent:
            print(f"  email     to {message.recipient.email}: {message.subject}")
        for message in webhook.sent:
            print(f"  webhook   {message.notification}: {message.body}")
        for user in ("ann", "marc"):
            page = await app.inbox.list(ORG_ID, user)
            for item in page:
                print(f"  in-app    {user}: {item.title}")
        verdict = await app.trail.verify(ORG_ID)
        print(f"audit chain of {ORG_ID}: {'verified' if verdict.ok else verdict.reason}")
    finally:
        await engine.dispose()


def main() -> None:
    """Entry point."""
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(demo(Path(tmp) / "crm_notifications.db"))


if __name__ == "__main__":
    main()
