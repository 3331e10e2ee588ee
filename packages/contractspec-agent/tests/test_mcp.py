"""Issue 22 (consuming): an external MCP server's tools behind the gateway.

The server is a real process (`mcp_shop_server.py`, the SDK's MCPServer) spoken to over stdio;
it appends every call it receives to a file, so each test checks what reached it and what never
did. Runs go through `AgentRunner` with a scripted model, on memory, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_support import LEAD, OWNER, AgentEnv, audit_actions
from mcp import StdioServerParameters

from contractspec.agent import (
    ActionStatus,
    ModelRequest,
    RiskLevel,
    RunStatus,
    ToolMessage,
    define_agent,
    refund_limit,
)
from contractspec.agent.mcp import MCPConnectionError, MCPToolset, mcp_tools
from contractspec.agent.testing import FunctionModel, ScriptedModel, call
from contractspec.core import MemoryBackend, SpecDefinitionError

SERVER = Path(__file__).with_name("mcp_shop_server.py")


def server_params(log: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=[str(SERVER)], env={"MCP_CALL_LOG": str(log)}
    )


def seen(log: Path) -> list[tuple[str, dict[str, Any]]]:
    """The calls the server received, in order."""
    if not log.exists():
        return []
    lines = log.read_text(encoding="utf-8").splitlines()
    return [(row["tool"], row["arguments"]) for row in map(json.loads, lines)]


def tool_results(model: ScriptedModel, request: int) -> list[Any]:
    return [
        json.loads(m.content)
        for m in model.requests[request].messages
        if isinstance(m, ToolMessage)
    ]


async def ledger(env: AgentEnv, run_id: str) -> list[tuple[str, ActionStatus, int]]:
    tx = await env.backend.unit_of_work.begin(readonly=True)
    try:
        return [(a.tool, a.status, a.attempts) for a in await env.runs.actions(tx, run_id)]
    finally:
        await tx.rollback()


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[tuple[MCPToolset, Path]]:
    """The shop server's tools: reads L0, notes L1, refunds L1 under a 50.00 limit; the
    account closure is declared nowhere, so it is L2 although the server calls it read-only."""
    log = tmp_path / "calls.jsonl"
    async with await mcp_tools(
        server_params(log),
        risk={"lookup_order": RiskLevel.L0, "add_note": RiskLevel.L1, "issue_refund": 1},
        invariants={"issue_refund": [refund_limit(5000, field="amount_cents")]},
        include=["lookup_order", "add_note", "issue_refund", "close_account"],
        read_timeout_s=60,
    ) as toolset:
        yield toolset, log


async def test_an_agent_run_calls_the_server_through_the_gateway(
    env: AgentEnv, shop: tuple[MCPToolset, Path]
) -> None:
    """A read and an L1 call run (the L1 one ledgered and audited once); a refund over the
    invariant is blocked and never reaches the server; the closure the server calls read-only
    still waits for an approval, then runs exactly once."""
    toolset, log = shop
    info = toolset.info["close_account"]
    assert (info.risk, info.risk_source) == (RiskLevel.L2, "default")
    assert info.annotations == {"readOnlyHint": True, "destructiveHint": False}
    assert toolset.get("issue_refund").parameters["required"] == ["order_id", "amount_cents"]

    agent = define_agent("shop.mcp", model="m", instructions="help", tools=[*toolset])
    model = ScriptedModel(
        [
            [call("lookup_order", order_id="o-1"), call("add_note", order_id="o-1", text="hi")],
            call("issue_refund", order_id="o-1", amount_cents=90000),
            call("close_account", customer_id="c-1"),
        ]
    )
    runner = env.runner(model)
    waiting = await runner.run(agent, "help o-1", OWNER)

    assert waiting.status is RunStatus.WAITING_APPROVAL
    assert [(p.tool, p.decision, p.risk) for p in waiting.packets] == [
        ("lookup_order", "execute", 0),
        ("add_note", "execute", 1),
        ("issue_refund", "blocked", 1),
        ("close_account", "needs_approval", 2),
    ]
    lookup, note = tool_results(model, 1)
    assert lookup == {"order_id": "o-1", "total_cents": 12000, "status": "delivered"}
    assert note == {"result": "note added to o-1"}  # the server's structuredContent, as sent
    blocked = tool_results(model, 2)[-1]
    assert blocked["proof"][0]["verdict"] == "FAIL"
    # the blocked refund and the unapproved closure never reached the server (the two calls of
    # one model turn run concurrently, so the server may see them in either order)
    assert sorted(name for name, _ in seen(log)) == ["add_note", "lookup_order"]

    (approval_id,) = waiting.pending_approvals
    request = await env.approvals.get(approval_id)
    assert (request.action, request.arguments) == ("close_account", {"customer_id": "c-1"})
    await env.approvals.approve(approval_id, LEAD)
    with runner.override(model=ScriptedModel(["Closed."])):
        done = await runner.resume(waiting.run_id)
        again = await runner.resume(waiting.run_id)
    assert (done.status, done.output, again.output) == (RunStatus.COMPLETED, "Closed.", "Closed.")
    calls = seen(log)
    assert sorted(calls[:2], key=lambda c: c[0]) == [
        ("add_note", {"order_id": "o-1", "text": "hi"}),
        ("lookup_order", {"order_id": "o-1"}),
    ]
    assert calls[2:] == [("close_account", {"customer_id": "c-1"})]
    assert sorted(await ledger(env, waiting.run_id)) == [
        ("add_note", ActionStatus.SUCCEEDED, 1),
        ("close_account", ActionStatus.SUCCEEDED, 1),
    ]
    audited = await audit_actions(env)
    assert audited.count(("agent.tool.add_note", "success")) == 1
    assert audited.count(("agent.tool.issue_refund", "denied")) == 1
    assert audited.count(("agent.tool.close_account", "success")) == 1


async def test_a_repeated_call_in_a_later_step_replays_instead_of_calling_again(
    env: AgentEnv, shop: tuple[MCPToolset, Path]
) -> None:
    """The same L1 call made again later in the run is a retry: the ledger replays the result,
    the server sees one call."""
    toolset, log = shop
    agent = define_agent("shop.mcp", model="m", instructions="help", tools=[*toolset])
    note = call("add_note", order_id="o-2", text="once")
    model = ScriptedModel([note, note, "ok"])
    result = await env.runner(model).run(agent, "note", OWNER)
    assert result.status is RunStatus.COMPLETED
    assert [p.decision for p in result.packets] == ["execute", "replayed"]
    assert seen(log) == [("add_note", {"order_id": "o-2", "text": "once"})]
    assert await ledger(env, result.run_id) == [("add_note", ActionStatus.SUCCEEDED, 1)]


async def test_invalid_arguments_never_reach_the_server(shop: tuple[MCPToolset, Path]) -> None:
    """Arguments are checked against the server's inputSchema first; the model gets each field."""
    from contractspec.agent import AgentRunner

    toolset, log = shop
    agent = define_agent("shop.mcp", model="m", instructions="help", tools=[*toolset])
    model = ScriptedModel(
        [
            call("issue_refund", order_id="o-1", amount_cents="lots"),
            call("issue_refund", order_id="o-1", amount_cents=1500),
            "refunded",
        ]
    )
    result = await AgentRunner(model=model).run(agent, "refund", OWNER)
    (invalid,) = tool_results(model, 1)
    assert invalid["status"] == "invalid"
    assert invalid["errors"] == [
        {
            "field": "amount_cents",
            "message": "'lots' is not of type 'integer'",
            "type": "json_schema",
        }
    ]
    assert [p.decision for p in result.packets] == ["execute"]
    assert seen(log) == [("issue_refund", {"order_id": "o-1", "amount_cents": 1500})]


async def test_shadow_mode_never_calls_the_server(tmp_path: Path) -> None:
    """In shadow mode a side-effecting MCP call is classified and logged, not sent; a read-only
    (L0) call runs for real so later decisions see real data."""
    from contractspec.agent import AgentRunner

    log = tmp_path / "calls.jsonl"
    async with await mcp_tools(
        server_params(log),
        risk={"lookup_order": RiskLevel.L0, "add_note": RiskLevel.L1},
        shadow=True,
        read_timeout_s=60,
    ) as toolset:
        agent = define_agent("shop.mcp", model="m", instructions="help", tools=[*toolset])
        model = ScriptedModel(
            [
                [
                    call("lookup_order", order_id="o-1"),
                    call("add_note", order_id="o-1", text="x"),
                    call("close_account", customer_id="c-1"),
                ],
                "done",
            ]
        )
        result = await AgentRunner(model=model).run(agent, "shadow", OWNER)
    assert [(p.tool, p.mode, p.decision) for p in result.packets] == [
        ("lookup_order", "live", "execute"),
        ("add_note", "shadow", "shadow"),
        ("close_account", "shadow", "shadow"),
    ]
    _, note, closure = tool_results(model, 1)
    assert (note["status"], note["would"]) == ("shadowed", "execute")
    assert (closure["status"], closure["would"]) == ("shadowed", "needs_approval")
    assert [name for name, _ in seen(log)] == ["lookup_order"]


async def test_tool_errors_and_a_dropped_connection(env: AgentEnv, tmp_path: Path) -> None:
    """A tool error result is a known failure (`mcp_tool_error`, ledger `failed`). A server that
    dies after receiving a call leaves its outcome unknown: `in_doubt`, and the model's retry
    goes to a person instead of being re-sent; a call after the drop is refused as not sent."""
    log = tmp_path / "calls.jsonl"
    async with await mcp_tools(
        server_params(log),
        risk={"out_of_stock": 1, "charge_card": 1, "add_note": 1},
        include=["out_of_stock", "charge_card", "add_note"],
        read_timeout_s=60,
    ) as toolset:
        agent = define_agent("shop.mcp", model="m", instructions="help", tools=[*toolset])
        charge = call("charge_card", customer_id="c-1", amount_cents=700)
        model = ScriptedModel(
            [
                call("out_of_stock", sku="sku-1"),
                charge,
                call("add_note", order_id="o-1", text="after the drop"),
                charge,  # the model retries the charge whose outcome it was told is unknown
            ]
        )
        runner = env.runner(model)
        waiting = await runner.run(agent, "charge", OWNER)

    (error,) = tool_results(model, 1)
    assert (error["status"], error["details"]["tool"]) == ("mcp_tool_error", "out_of_stock")
    assert "sku sku-1 is out of stock" in error["error"]
    in_doubt = tool_results(model, 2)[-1]
    assert in_doubt["status"] == "in_doubt"
    assert "was sent but no answer came back" in in_doubt["error"]
    not_sent = tool_results(model, 3)[-1]
    assert not_sent["status"] == "mcp_tool_error"
    assert not_sent["details"]["sent"] is False

    assert waiting.status is RunStatus.WAITING_APPROVAL
    (approval_id,) = waiting.pending_approvals
    request = await env.approvals.get(approval_id)
    assert (request.action, request.metadata["in_doubt"]) == ("charge_card", True)
    assert [p.decision for p in waiting.packets] == [
        "execute", "in_doubt", "execute", "needs_approval",
    ]  # fmt: skip
    # the charge reached the server once; nothing was re-sent
    assert [name for name, _ in seen(log)] == ["out_of_stock", "charge_card"]
    assert sorted(await ledger(env, waiting.run_id)) == [
        ("add_note", ActionStatus.FAILED, 1),
        ("charge_card", ActionStatus.IN_DOUBT, 1),
        ("out_of_stock", ActionStatus.FAILED, 1),
    ]


async def test_a_call_over_its_timeout_is_in_doubt_and_the_session_goes_on(tmp_path: Path) -> None:
    """The gateway cancels a call over its timeout: the server had started it, so it is
    `in_doubt` (not retried); the same connection serves the next call."""
    from contractspec.agent import AgentRunner

    log = tmp_path / "calls.jsonl"
    async with await mcp_tools(
        server_params(log),
        risk={"export_report": 1, "add_note": 1},
        include=["export_report", "add_note"],
        timeout={"export_report": 2.0},
        read_timeout_s=60,
    ) as toolset:
        timeouts = [(t.name, t.timeout) for t in toolset]
        assert timeouts == [("add_note", None), ("export_report", 2.0)]
        agent = define_agent("shop.mcp", model="m", instructions="help", tools=[*toolset])
        model = ScriptedModel(
            [
                call("export_report", report="q3", seconds=120),
                call("add_note", order_id="o-1", text="export pending"),
                "done",
            ]
        )
        result = await AgentRunner(model=model).run(agent, "export", OWNER)
    assert [p.decision for p in result.packets] == ["in_doubt", "execute"]
    assert "did not finish within 2 s" in tool_results(model, 1)[0]["error"]
    assert [name for name, _ in seen(log)] == ["export_report", "add_note"]  # never finished


async def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    """A command that does not start, or a server that exits during the handshake, raises
    `MCPConnectionError` naming the target and the cause."""
    with pytest.raises(MCPConnectionError, match="FileNotFoundError") as info:
        await mcp_tools(StdioServerParameters(command=str(tmp_path / "no-such-server")))
    assert info.value.details["server"] == str(tmp_path / "no-such-server")
    with pytest.raises(SpecDefinitionError, match="StdioServerParameters"):
        await mcp_tools(42)
    exits = StdioServerParameters(command=sys.executable, args=["-c", "raise SystemExit(2)"])
    with pytest.raises(MCPConnectionError, match="Connection closed"):
        await mcp_tools(exits, read_timeout_s=60)


async def test_over_streamable_http_a_server_that_dies_mid_run(tmp_path: Path) -> None:
    """Over streamable HTTP (the toolset owns the connection it opened from the URL): a call
    runs; the server process is killed; the next call is `in_doubt` (the request may have gone
    out), never retried, and its ledger entry says so."""
    from contractspec.agent import AgentRunner, MemoryRunStore

    log = tmp_path / "calls.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SERVER), "--http", env={**os.environ, "MCP_CALL_LOG": str(log)},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), timeout=120))

        async def model(request: ModelRequest) -> Any:
            done = [m for m in request.messages if isinstance(m, ToolMessage)]
            if not done:
                return call("add_note", order_id="o-1", text="over http")
            if len(done) == 1:
                proc.kill()
                await proc.wait()
                return call("issue_refund", order_id="o-1", amount_cents=100)
            return "stopped"

        runs = MemoryRunStore()
        async with await mcp_tools(
            f"http://127.0.0.1:{port}/mcp",
            risk={"add_note": 1, "issue_refund": 1},
            include=["add_note", "issue_refund"],
            read_timeout_s=60,
        ) as toolset:
            agent = define_agent("shop.mcp", model="m", instructions="help", tools=[*toolset])
            result = await AgentRunner(model=FunctionModel(model), runs=runs).run(
                agent, "http", OWNER
            )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert toolset.server == "shop-mcp"
    assert [(p.tool, p.decision) for p in result.packets] == [
        ("add_note", "execute"), ("issue_refund", "in_doubt"),
    ]  # fmt: skip
    assert seen(log) == [("add_note", {"order_id": "o-1", "text": "over http"})]
    tx = await MemoryBackend().unit_of_work.begin()  # memory stores accept any memory tx
    statuses = sorted((a.tool, a.status) for a in await runs.actions(tx, result.run_id))
    assert statuses == [
        ("add_note", ActionStatus.SUCCEEDED), ("issue_refund", ActionStatus.IN_DOUBT),
    ]  # fmt: skip
