"""`python -m content_studio`: one brief through drafts, guardrails, approval and publishing."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from content_studio.studio import BRIEF, LEAD, build_studio
from contractspec.core import MemoryBackend
from contractspec.core.sync import run_sync


async def main() -> None:
    """Draft, check, approve and publish the demo brief on the memory backend."""
    console = Console()
    studio = await build_studio()
    console.print(f"[bold]Brief[/] {BRIEF.id}: {BRIEF.topic} (banned: {BRIEF.banned_claims})")
    drafts = await studio.draft(BRIEF)
    table = Table("kind", "attempts", "refused for", "guardrails", "SEO")
    for kind, d in drafts.items():
        refused = ", ".join(n for r in d.refused for n in r.failed) or "-"
        seo = "pass" if d.seo.passed else "fail: " + ", ".join(d.seo.failed)
        table.add_row(kind, str(d.attempts), refused, "7/7 PASS", seo)
    console.print(table)
    requests = await studio.submit(drafts)
    console.print(f"approval requests (L2): {', '.join(r.id[-8:] for r in requests.values())}")
    for kind, req in requests.items():
        if kind == "social_posts":
            await studio.approvals.reject(req.id, LEAD, comment="not this week")
            console.print(f"  {kind}: rejected by {LEAD.id}, not published")
            continue
        await studio.approvals.approve(req.id, LEAD)
        pub = await studio.publish(req.id)
        console.print(
            f"  {kind}: approved by {LEAD.id}, published as {pub.id[-8:]} on {pub.channel}"
        )
    assert isinstance(studio.backend, MemoryBackend)
    names = studio.backend.events.names()
    content = [n for n in names if n.startswith("content.")]
    console.print(f"content events in the outbox: {content}")


if __name__ == "__main__":
    run_sync(main())
