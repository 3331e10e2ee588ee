"""Agent runner overhead vs pydantic-ai, and approval persist + resume on SQLite.

Run: `uv run --all-packages --all-extras --group bench python benchmarks/agent_overhead.py`

What is measured (both sides in one process, same machine, same moment):

* A 10-step tool-calling run: the model (no network) asks for one tool call per step for 10 steps,
  then answers. That is 11 model requests and 10 tool executions per run. The tool is a trivial
  typed function declared **L1** (operational, side-effecting), so the time is the framework's:
  schema validation, message handling, the tool gateway (validate, invariants, risk, packet,
  events), the idempotency ledger write around every call, the run's lease and run persistence
  after every step.
  - ours: `AgentRunner` + `FunctionModel`, in-memory stores (and, for reference, SQLite stores);
  - peer: pydantic-ai `Agent` + its `FunctionModel` (and its `TestModel`, which calls every tool
    once and answers).
  Reported: median runs/s over repeated batches, the ratio ours/peer, and our overhead per step.
* Approval persist + resume on a SQLite file: a run reaches an L2 tool call and is suspended
  (run, step, approval request, audit and events written), a lead approves, and a fresh runner
  resumes it (claim, execute once through the ledger, final answer). Median milliseconds of the
  suspend phase and of the resume phase (goal: < 20 ms each).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from contractspec.agent import (
    AgentRunner,
    ApprovalWorkflow,
    MemoryRunStore,
    ModelRequest,
    RiskLevel,
    ToolMessage,
    UsageLimits,
    define_agent,
    tool,
)
from contractspec.agent.sql import SqlApprovalStore, SqlRunStore, create_all
from contractspec.agent.testing import FunctionModel as OurFunctionModel
from contractspec.agent.testing import ScriptedModel, block_model_requests, call
from contractspec.core import Actor, CallContext, MemoryBackend, RolePermissions
from contractspec.core.sql import SqlBackend, sqlite_engine

STEPS = 10
BATCH = 20
REPEATS = 7
CTX = CallContext(actor=Actor.user("u-bench", roles="ops"), org_id="org-bench")


# -- ours -----------------------------------------------------------------------------------------


@tool(risk=RiskLevel.L1)  # side-effecting: every call goes through the idempotency ledger
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


ours_agent = define_agent(
    "bench.adder", model="function", instructions="Add numbers.", tools=[add],
    limits=UsageLimits(max_steps=20),
)  # fmt: skip


async def our_model(request: ModelRequest) -> Any:
    done = sum(1 for m in request.messages if isinstance(m, ToolMessage))
    if done < STEPS:
        return call("add", a=done, b=1)
    return f"done after {done} tool calls"


async def ours_batch(runner: AgentRunner) -> None:
    for _ in range(BATCH):
        result = await runner.run(ours_agent, "add things", CTX)
        assert result.usage.tool_calls == STEPS, result


# -- pydantic-ai ----------------------------------------------------------------------------------


async def peer_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    done = sum(
        1 for m in messages for part in getattr(m, "parts", ()) if isinstance(part, ToolReturnPart)
    )
    if done < STEPS:
        return ModelResponse(parts=[ToolCallPart("add", {"a": done, "b": 1})])
    return ModelResponse(parts=[TextPart(f"done after {done} tool calls")])


def make_peer(model: Any) -> Agent[None, str]:
    agent: Agent[None, str] = Agent(model, instructions="Add numbers.")

    @agent.tool_plain
    async def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return agent


async def peer_batch(agent: Agent[None, str], tool_calls: int) -> None:
    for _ in range(BATCH):
        result = await agent.run("add things")
        calls = sum(
            1 for m in result.all_messages() for p in m.parts if isinstance(p, ToolReturnPart)
        )
        assert calls == tool_calls, calls


# -- timing ---------------------------------------------------------------------------------------


async def runs_per_second(batch: Callable[[], Awaitable[None]]) -> float:
    await batch()  # warm up
    rates = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        await batch()
        rates.append(BATCH / (time.perf_counter() - started))
    return statistics.median(rates)


async def approval_timing(directory: Path) -> tuple[float, float]:
    engine = sqlite_engine(directory / "approvals.db")
    policy = RolePermissions({"lead": ["approval.decide"]})
    lead = Actor.user("u-lead", roles="lead")

    @tool(risk=RiskLevel.L2)
    def wire(amount: int) -> str:
        """Wire money."""
        return f"wired {amount}"

    agent = define_agent("bench.wire", model="m", instructions="Pay.", tools=[wire])
    suspend_ms: list[float] = []
    resume_ms: list[float] = []
    try:
        from contractspec.core import SpecRegistry

        backend = SqlBackend(engine, SpecRegistry())
        await backend.create_all()
        await create_all(engine)
        approvals = ApprovalWorkflow(SqlApprovalStore(), backend=backend, policy=policy)
        for i in range(25):
            first = AgentRunner(
                model=ScriptedModel([call("wire", amount=i)]), backend=backend,
                runs=SqlRunStore(), approvals=approvals, policy=policy,
            )  # fmt: skip
            started = time.perf_counter()
            waiting = await first.run(agent, "pay", CTX)
            suspend_ms.append((time.perf_counter() - started) * 1000)
            await approvals.approve(waiting.pending_approvals[0], lead)
            fresh = AgentRunner(
                [agent], model=ScriptedModel(["paid"]), backend=backend, runs=SqlRunStore(),
                approvals=approvals, policy=policy,
            )  # fmt: skip
            started = time.perf_counter()
            done = await fresh.resume(waiting.run_id)
            resume_ms.append((time.perf_counter() - started) * 1000)
            assert done.output == "paid"
    finally:
        await engine.dispose()
    return statistics.median(suspend_ms[3:]), statistics.median(resume_ms[3:])


async def main() -> None:
    block_model_requests()
    memory_runner = AgentRunner(
        model=OurFunctionModel(our_model), backend=MemoryBackend(), runs=MemoryRunStore()
    )
    ours = await runs_per_second(lambda: ours_batch(memory_runner))
    with tempfile.TemporaryDirectory() as tmp:
        engine = sqlite_engine(Path(tmp) / "bench.db")
        try:
            from contractspec.core import SpecRegistry

            backend = SqlBackend(engine, SpecRegistry())
            await backend.create_all()
            await create_all(engine)
            sql_runner = AgentRunner(
                model=OurFunctionModel(our_model), backend=backend, runs=SqlRunStore()
            )
            ours_sql = await runs_per_second(lambda: ours_batch(sql_runner))
        finally:
            await engine.dispose()
        suspend, resume = await approval_timing(Path(tmp))
    peer_fn_agent = make_peer(FunctionModel(peer_model))
    peer_test_agent = make_peer(TestModel())
    peer_fn = await runs_per_second(lambda: peer_batch(peer_fn_agent, STEPS))
    peer_test = await runs_per_second(lambda: peer_batch(peer_test_agent, 1))

    requests = STEPS + 1
    load = os.getloadavg()
    print(
        f"settings: {STEPS} steps/run, {BATCH} runs/batch, median of {REPEATS} batches; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"10-step tool-calling run ({requests} model requests, {STEPS} tool calls per run)")
    print(f"{'runner':<46}{'runs/s':>10}{'ms/run':>10}{'ms/step':>10}")
    rows = [
        ("contractspec AgentRunner, memory stores", ours, requests),
        ("contractspec AgentRunner, SQLite stores", ours_sql, requests),
        ("pydantic-ai Agent + FunctionModel", peer_fn, requests),
        ("pydantic-ai Agent + TestModel (1 tool call)", peer_test, 2),
    ]
    for name, rate, steps in rows:
        print(f"{name:<46}{rate:>10.1f}{1000 / rate:>10.3f}{1000 / rate / steps:>10.3f}")
    print(f"ratio ours(memory)/pydantic-ai(FunctionModel) runs/s: {ours / peer_fn:.2f}x")
    print(
        f"our overhead per step (memory): {1000 / ours / requests:.3f} ms (goal < 2 ms); "
        f"with durable SQLite stores: {1000 / ours_sql / requests:.3f} ms"
    )
    print(
        f"approval on SQLite: suspend (persist run + request) {suspend:.2f} ms, "
        f"resume after approval {resume:.2f} ms (goal < 20 ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
