"""Issue 22 (consuming): how `mcp_tools` maps a server's listing to tools (in-process server).

Risk is declared, decided by a rule or the default (L2); server annotations never lower it;
per-tool options naming unknown tools, bad levels and name clashes are refused at build time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from pydantic import ValidationError

from contractspec.agent import RiskLevel, RiskRule
from contractspec.agent.mcp import MCPToolError, mcp_tools
from contractspec.core import ConfigurationError, SpecDefinitionError


def billing_server() -> MCPServer:
    server = MCPServer("billing")

    @server.tool(name="invoices.search", annotations=ToolAnnotations(read_only_hint=True))
    def search(query: str, limit: int = 10) -> list[str]:
        """Search invoices."""
        return [query] * limit

    @server.tool(name="invoices/void", annotations=ToolAnnotations(read_only_hint=True))
    def void(invoice_id: str) -> str:
        """Void an invoice."""
        return invoice_id

    @server.tool(name="refund")
    def refund(invoice_id: str, amount: int) -> int:
        """Refund an invoice."""
        return amount

    return server


async def test_risk_declared_ruled_or_default_and_hints_never_lower_it() -> None:
    """A rule decides what it knows; the rest fall to the default L2, whatever the server's
    readOnlyHint says. Names providers reject are rewritten, the remote name kept."""

    def rule(tool: Any) -> RiskLevel | None:
        return RiskLevel.L1 if tool.name == "refund" else None

    async with Client(billing_server()) as client:
        toolset = await mcp_tools(client, risk=rule, prefix="billing_")
        assert [t.name for t in toolset] == [
            "billing_invoices_search", "billing_invoices_void", "billing_refund",
        ]  # fmt: skip
        info = {name: (i.remote_name, i.risk, i.risk_source) for name, i in toolset.info.items()}
        assert info == {
            "billing_invoices_search": ("invoices.search", RiskLevel.L2, "default"),
            "billing_invoices_void": ("invoices/void", RiskLevel.L2, "default"),
            "billing_refund": ("refund", RiskLevel.L1, "rule"),
        }
        assert toolset.info["billing_invoices_void"].annotations == {"readOnlyHint": True}
        assert all(t.side_effects for t in toolset)  # L1+ is ledgered, whatever the hints

        declared = await mcp_tools(
            client, risk={"invoices.search": RiskLevel.L0}, default_risk=RiskLevel.L1
        )
        assert [(t.name, t.risk, t.side_effects) for t in declared] == [
            ("invoices_search", RiskLevel.L0, False),
            ("invoices_void", RiskLevel.L1, True),
            ("refund", RiskLevel.L1, True),
        ]
        await toolset.aclose()  # a borrowed client stays open
        assert (
            await client.call_tool("refund", {"invoice_id": "i", "amount": 2})
        ).is_error is False


async def test_arguments_follow_the_servers_schema() -> None:
    """The tool schema is the server's inputSchema, defaults and all; validation reports every
    field the schema rejects."""
    async with Client(billing_server()) as client:
        search = (await mcp_tools(client, include=["invoices.search"])).get("invoices_search")
        assert search.parameters["properties"]["limit"] == {
            "default": 10, "title": "Limit", "type": "integer",
        }  # fmt: skip
        assert search.input.model_validate({"query": "acme"}).model_dump() == {"query": "acme"}
        with pytest.raises(ValidationError) as info:
            search.input.model_validate({"limit": "ten"})
        assert sorted((e["loc"], e["msg"]) for e in info.value.errors()) == [
            ((), "'query' is a required property"),
            (("limit",), "'ten' is not of type 'integer'"),
        ]
        with pytest.raises(ValidationError):
            search.input.model_validate(["acme"])

    hostile = MCPServer("hostile")

    @hostile.tool(name="echo")
    def echo(model_dump: int, copy: int) -> str:  # pragma: no cover - never called
        return ""

    async with Client(hostile) as client:
        (tool,) = await mcp_tools(client)
        # property names that are pydantic attributes stay plain data
        args = tool.input.model_validate({"model_dump": 1, "copy": 2, "model_config": 3})
        assert args.model_dump() == {"model_dump": 1, "copy": 2, "model_config": 3}


async def test_options_naming_unknown_tools_or_bad_levels_are_refused() -> None:
    """A typo in a per-tool option would leave a tool at the default silently: refused."""
    async with Client(billing_server()) as client:
        with pytest.raises(SpecDefinitionError, match=r"\['refnud'\]") as info:
            await mcp_tools(client, risk={"refnud": RiskLevel.L0})
        assert info.value.details["field"] == "risk"
        with pytest.raises(SpecDefinitionError, match="invariants"):
            await mcp_tools(client, invariants={"nope": []})
        with pytest.raises(SpecDefinitionError, match="include"):
            await mcp_tools(client, include=["nope"])
        with pytest.raises(SpecDefinitionError, match=r"include=\['refund'\]"):
            await mcp_tools(client, include="refund")
        with pytest.raises(SpecDefinitionError, match="not a RiskLevel"):
            await mcp_tools(client, default_risk=7)
        with pytest.raises(SpecDefinitionError, match="approvers"):
            await mcp_tools(client, risk={"refund": RiskLevel.L3})
        with pytest.raises(SpecDefinitionError, match="approvers"):
            await mcp_tools(client, risk_rules={"refund": [RiskRule("amount > 100", RiskLevel.L3)]})
        l3 = await mcp_tools(
            client, risk={"refund": RiskLevel.L3}, approvers={"refund": ["u-cfo"]},
            include=["refund"],
        )  # fmt: skip
        assert (l3[0].risk, l3[0].approvers) == (RiskLevel.L3, ("u-cfo",))


async def test_an_owned_connection_closes_from_any_task_and_then_sends_nothing() -> None:
    """`mcp_tools` opened this connection (an in-process server): `aclose()` from another task
    closes it; a later call is refused as not sent instead of hanging or being in doubt."""
    toolset = await mcp_tools(billing_server(), risk={"refund": RiskLevel.L1})
    refund = toolset.get("refund")
    args = refund.input.model_validate({"invoice_id": "i-1", "amount": 5})
    assert refund.function is not None
    assert await refund.function(args, None) == {"result": 5}
    await asyncio.create_task(toolset.aclose())
    with pytest.raises(MCPToolError, match="is closed") as info:
        await refund.function(args, None)
    assert info.value.details["sent"] is False
    await toolset.aclose()  # idempotent


async def test_two_server_tools_mapping_to_one_name_are_refused() -> None:
    server = MCPServer("clash")

    @server.tool(name="a.b")
    def first() -> str:
        return "1"

    @server.tool(name="a_b")
    def second() -> str:
        return "2"

    async with Client(server) as client:
        with pytest.raises(SpecDefinitionError, match="both become agent tool 'a_b'"):
            await mcp_tools(client)


async def test_without_the_sdk_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)
    with pytest.raises(ConfigurationError, match=r"contractspec-agent\[mcp\]"):
        await mcp_tools(object())


def test_the_agent_package_imports_without_the_sdk() -> None:
    code = (
        "import sys; sys.modules['mcp'] = None\n"
        "import contractspec.agent, contractspec.agent.mcp\n"
        "print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "ok"


async def test_tool_outcome_unknown_is_in_doubt_only_for_side_effecting_tools() -> None:
    """The gateway maps `ToolOutcomeUnknownError` to `in_doubt` (ledgered IN_DOUBT) for an L1
    tool, and to a plain failed result for a read-only one."""
    from contractspec.agent import (
        AgentRunner,
        MemoryRunStore,
        ToolMessage,
        ToolOutcomeUnknownError,
        define_agent,
        tool,
    )
    from contractspec.agent.testing import ScriptedModel, call
    from contractspec.core import Actor, CallContext, MemoryBackend

    @tool(risk=RiskLevel.L1)
    async def send(to: str) -> str:
        """Send."""
        raise ToolOutcomeUnknownError("the line dropped after the request went out")

    @tool
    async def read(key: str) -> str:
        """Read."""
        raise ToolOutcomeUnknownError("the line dropped")

    runs = MemoryRunStore()
    agent = define_agent("t.unknown", model="m", instructions="i", tools=[send, read])
    model = ScriptedModel([[call("send", to="a"), call("read", key="k")], "ok"])
    result = await AgentRunner(model=model, runs=runs).run(
        agent, "go", CallContext(actor=Actor.user("u-1"))
    )
    assert [(p.tool, p.decision) for p in result.packets] == [
        ("send", "in_doubt"),
        ("read", "execute"),
    ]
    sent, read_result = (
        json.loads(m.content) for m in model.requests[1].messages if isinstance(m, ToolMessage)
    )
    assert sent["status"] == "in_doubt"
    assert "the line dropped after the request went out" in sent["error"]
    assert read_result["status"] == "tool_outcome_unknown"
    tx = await MemoryBackend().unit_of_work.begin()
    assert [(a.tool, a.status.value) for a in await runs.actions(tx, result.run_id)] == [
        ("send", "in_doubt")
    ]
