"""`python -m agent_console [--db FILE] COMMAND`: the agent console in a terminal.

Commands: `tools`, `agents`, `run AGENT TEXT`, `history`, `status RUN_ID`, `logs RUN_ID`,
`pending`, `approve APPROVAL_ID APPROVER`, `resume`, `metrics`, `events`, `demo`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from agent_console.console import AgentConsole, open_console

out = Console()


def table(title: str, rows: list[dict[str, Any]]) -> None:
    """Print dict rows as a table."""
    if not rows:
        out.print(f"{title}: none")
        return
    t = Table(*rows[0].keys(), title=title)
    for row in rows:
        t.add_row(*(v if isinstance(v, str) else json.dumps(v, default=str) for v in row.values()))
    out.print(t)


async def show_run(console: AgentConsole, result: Any) -> None:
    if isinstance(result, str):
        out.print(f"[red]failed[/red] {result}")
        return
    out.print(f"run {result.run_id}: [bold]{result.status.value}[/bold] -> {result.output!r}")
    if result.pending_approvals:
        out.print(f"waiting for approval(s): {', '.join(result.pending_approvals)}")


async def command(args: argparse.Namespace) -> None:
    async with open_console(args.db) as console:
        match args.command:
            case "tools":
                table("tools", console.tools())
            case "agents":
                table("agents", console.agents())
            case "run":
                await show_run(console, await console.run(args.agent, args.text))
            case "history":
                table("runs", [
                    {"run": r.id, "agent": r.agent, "status": r.status.value, "steps": r.steps,
                     "input": r.input[:40]} for r in await console.history()
                ])  # fmt: skip
            case "status":
                run = await console.status(args.run_id)
                table("run", [{"run": run.id, "status": run.status.value, "steps": run.steps,
                               "output": run.output, "error": run.error, "usage": dict(run.usage)}])  # fmt: skip
            case "logs":
                table("logs", [
                    {"seq": line.seq, "event": line.event, "message": line.message}
                    for line in await console.logs(args.run_id)
                ])  # fmt: skip
            case "pending":
                table("pending approvals", [
                    {"approval": r.id, "action": r.action, "arguments": dict(r.arguments), "risk": r.risk}
                    for r in await console.pending()
                ])  # fmt: skip
            case "approve":
                req = await console.approve(args.approval_id, args.approver)
                out.print(f"approval {req.id}: {req.status.value}")
            case "resume":
                for result in await console.resume_ready():
                    await show_run(console, result)
            case "metrics":
                m = await console.metrics()
                table("metrics", [{"runs": m.runs, "by status": m.by_status, "avg steps": m.avg_steps,
                                   "tool calls": m.tool_calls, "tokens": m.tokens,
                                   "pending approvals": m.pending_approvals}])  # fmt: skip
            case "events":
                table("events", [{"#": e["position"], "event": e["name"], "payload": e["payload"]}
                                 for e in await console.events()])  # fmt: skip
            case "demo":
                for agent, text in (
                    ("ops.reporter", "status of api"),
                    ("ops.assistant", "restart worker"),
                    ("ops.assistant", "restart database"),
                    ("ops.assistant", "scale api to 6"),
                    ("ops.assistant", "loop forever"),
                ):
                    out.print(f"> {agent}: {text}")
                    await show_run(console, await console.run(agent, text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="agent-console", description=__doc__)
    parser.add_argument("--db", default="agent_console.db", help="SQLite file (created if missing)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("tools", "agents", "history", "pending", "resume", "metrics", "events", "demo"):
        sub.add_parser(name)
    run = sub.add_parser("run")
    run.add_argument("agent")
    run.add_argument("text")
    for name in ("status", "logs"):
        sub.add_parser(name).add_argument("run_id")
    approve = sub.add_parser("approve")
    approve.add_argument("approval_id")
    approve.add_argument("approver")
    asyncio.run(command(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
