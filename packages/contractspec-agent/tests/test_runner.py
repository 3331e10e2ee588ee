"""The agent loop: tools, validation feedback, timeouts, parallel calls, limits, output, events."""

from __future__ import annotations

import asyncio
import json

import pytest
from agent_support import OWNER, AgentEnv, event_names, issue_refund
from pydantic import BaseModel, Field

from contractspec.agent import (
    AgentPolicy,
    AgentRegistry,
    AgentRunError,
    AgentRunner,
    InMemoryAgentMemory,
    ModelRequestsForbiddenError,
    RiskLevel,
    RunStatus,
    ToolContext,
    ToolMessage,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
    UsageLimits,
    UserMessage,
    define_agent,
    operation_tool,
    refund_limit,
    tool,
)
from contractspec.agent.testing import FunctionModel, ScriptedModel, call
from contractspec.core import (
    Actor,
    CallContext,
    MemoryTelemetrySink,
    PolicyDeniedError,
    SpecDefinitionError,
    SpecRegistry,
)


@tool
async def lookup_order(order_id: str) -> dict[str, object]:
    """Look up an order by id."""
    return {"order_id": order_id, "status": "delivered", "total_cents": 4000}


refund = operation_tool(issue_refund, invariants=[refund_limit(5000, field="amount_cents")])
helper = define_agent(
    "shop.helper",
    model="scripted",
    instructions="You help shop customers.",
    tools=[lookup_order, refund],
)


async def test_scripted_run_calls_a_tool_then_answers(env: AgentEnv) -> None:
    """A two-step run executes the tool, feeds its result back and completes with events and logs."""
    model = ScriptedModel([call("lookup_order", order_id="o-1"), "Your order o-1 was delivered."])
    runner = env.runner(model)
    result = await runner.run(helper, "Where is order o-1?", OWNER)
    model.assert_consumed()
    assert result.status is RunStatus.COMPLETED
    assert result.output == "Your order o-1 was delivered."
    assert (result.steps, result.usage.requests, result.usage.tool_calls) == (2, 2, 1)
    tool_message = model.requests[1].messages[-1]
    assert isinstance(tool_message, ToolMessage)
    assert json.loads(tool_message.content) == {
        "order_id": "o-1",
        "status": "delivered",
        "total_cents": 4000,
    }
    assert [d.name for d in model.requests[0].tools] == ["lookup_order", "shop_refund_issue"]
    assert model.requests[0].timeout == 60.0
    assert await event_names(env) == [
        "agent.run.started",
        "agent.tool.called",
        "agent.run.completed",
    ]
    logs = await runner.logs(result.run_id)
    assert [line.event for line in logs] == ["run.started", "tool.ok", "run.completed"]
    stored = await runner.get(result.run_id)
    assert (stored.status, stored.output, stored.steps) == (RunStatus.COMPLETED, result.output, 2)
    steps = await runner.steps(result.run_id)
    assert [s.index for s in steps] == [1, 2]
    assert steps[0].tool_results[0]["status"] == "ok"


async def test_invalid_arguments_go_back_to_the_model_which_corrects_them(env: AgentEnv) -> None:
    """Schema errors become a tool result naming the fields; the corrected call executes once."""
    model = ScriptedModel(
        [
            call("shop_refund_issue", order_id="o-1", amount_cents=-5),
            call("shop_refund_issue", order_id="o-1", amount_cents=1500),
            "Refunded 15.00.",
        ]
    )
    result = await env.runner(model).run(helper, "Refund 15 on o-1", OWNER)
    feedback = model.requests[1].messages[-1]
    assert isinstance(feedback, ToolMessage)
    assert feedback.is_error
    body = json.loads(feedback.content)
    assert body["status"] == "invalid"
    assert [(e["field"], e["type"]) for e in body["errors"]] == [("amount_cents", "greater_than")]
    assert result.status is RunStatus.COMPLETED
    refunds = await env.refunds()
    assert (refunds.total, refunds.amount_cents) == (1, 1500)
    assert [p.decision for p in result.packets] == ["execute"]


async def test_invalid_json_arguments_are_reported_not_crashed() -> None:
    """Raw text that is not JSON comes back as an invalid-arguments tool result."""
    model = ScriptedModel([call("lookup_order", "{not json"), "sorry"])
    result = await AgentRunner(model=model).run(helper, "x", OWNER)
    feedback = model.requests[1].messages[-1]
    assert isinstance(feedback, ToolMessage)
    assert json.loads(feedback.content)["status"] == "invalid"
    assert "not valid JSON" in json.loads(feedback.content)["error"]
    assert result.output == "sorry"


async def test_timeout_really_cancels_the_tool_and_the_run_goes_on() -> None:
    """A tool over its timeout is cancelled (its finally block runs) and reported as a timeout."""
    state: dict[str, bool] = {"cancelled": False, "finished": False}

    @tool(timeout=0.05)
    async def slow() -> str:
        """Take too long."""
        try:
            await asyncio.sleep(30)
            state["finished"] = True
            return "done"
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    agent = define_agent("shop.slow", model="m", instructions="i", tools=[slow])
    model = ScriptedModel([call("slow"), "gave up"])
    result = await AgentRunner(model=model).run(agent, "go", OWNER)
    assert state == {"cancelled": True, "finished": False}
    feedback = model.requests[1].messages[-1]
    assert isinstance(feedback, ToolMessage)
    assert json.loads(feedback.content) == {
        "status": "timeout",
        "error": "slow took longer than 0.05 s and was cancelled",
    }
    assert result.status is RunStatus.COMPLETED


async def test_a_raising_tool_becomes_a_failed_result() -> None:
    """An exception inside a tool is a failed tool result; the run completes."""

    @tool(side_effects=True)
    def explode(n: int) -> int:
        """Always fails."""
        raise ValueError(f"bad n {n}")

    agent = define_agent("shop.boom", model="m", instructions="i", tools=[explode])
    model = ScriptedModel([call("explode", n=3), "it failed"])
    result = await AgentRunner(model=model).run(agent, "go", OWNER)
    feedback = model.requests[1].messages[-1]
    assert isinstance(feedback, ToolMessage)
    assert feedback.is_error
    assert json.loads(feedback.content)["error"] == "explode failed: ValueError: bad n 3"
    assert result.status is RunStatus.COMPLETED


async def test_parallel_calls_run_concurrently_and_independently() -> None:
    """Two calls of one step run at the same time (each waits for the other) plus an unknown tool."""
    ready = {"a": asyncio.Event(), "b": asyncio.Event()}

    @tool(timeout=2)
    async def meet(me: str, other: str, ctx: ToolContext) -> str:
        """Wait for the other call."""
        ready[me].set()
        await ready[other].wait()
        return f"{me} met {other} in step {ctx.step}"

    agent = define_agent("shop.pair", model="m", instructions="i", tools=[meet])
    model = ScriptedModel(
        [[call("meet", me="a", other="b"), call("meet", me="b", other="a"), call("nope")], "ok"]
    )
    result = await AgentRunner(model=model).run(agent, "go", OWNER)
    results = [m for m in model.requests[1].messages if isinstance(m, ToolMessage)]
    assert [json.loads(m.content) for m in results[:2]] == [
        "a met b in step 1",
        "b met a in step 1",
    ]
    assert json.loads(results[2].content) == {
        "status": "unknown_tool",
        "error": "'nope' is not one of this agent's tools; allowed: meet",
    }
    assert result.usage.tool_calls == 2


async def test_max_steps_fails_the_run_with_usage_limit_exceeded(env: AgentEnv) -> None:
    """A run that keeps calling tools stops at max_steps, is marked failed and announced."""
    agent = define_agent(
        "shop.loop",
        model="m",
        instructions="i",
        tools=[lookup_order],
        limits=UsageLimits(max_steps=2),
    )
    model = ScriptedModel(
        [call("lookup_order", order_id="1"), call("lookup_order", order_id="2"), "never"]
    )
    runner = env.runner(model)
    with pytest.raises(UsageLimitExceeded) as info:
        await runner.run(agent, "go", OWNER)
    assert info.value.details["limit"] == "max_steps"
    assert model.remaining == 1
    runs = await runner.history(org_id="org-1")
    assert [(r.status, r.error) for r in runs] == [
        (RunStatus.FAILED, {"code": "usage_limit_exceeded", "message": info.value.message})
    ]
    assert (await event_names(env))[-1] == "agent.run.failed"


async def test_token_and_tool_call_limits() -> None:
    """max_tokens stops before the next request; max_tool_calls counts executed calls."""
    tokens = define_agent(
        "shop.tokens",
        model="m",
        instructions="one two three four",
        limits=UsageLimits(max_tokens=5),
        tools=[lookup_order],
    )
    with pytest.raises(UsageLimitExceeded) as info:
        await AgentRunner(model=ScriptedModel([call("lookup_order", order_id="1"), "x"])).run(
            tokens, "five six", OWNER
        )
    assert (info.value.details["limit"], info.value.details["value"]) == ("max_tokens", 11)
    calls = define_agent(
        "shop.calls",
        model="m",
        instructions="i",
        limits=UsageLimits(max_tool_calls=1),
        tools=[lookup_order],
    )
    model = ScriptedModel(
        [[call("lookup_order", order_id="1"), call("lookup_order", order_id="2")], "x"]
    )
    with pytest.raises(UsageLimitExceeded) as info:
        await AgentRunner(model=model).run(calls, "go", OWNER)
    assert (info.value.details["limit"], info.value.details["value"]) == ("max_tool_calls", 2)


class Triage(BaseModel):
    category: str
    confidence: float = Field(ge=0, le=1)


async def test_structured_output_is_validated_and_corrected(env: AgentEnv) -> None:
    """An answer that fails the output model is sent back once; the corrected one is returned."""
    agent = define_agent("shop.triage", model="m", instructions="Classify.", output_type=Triage)
    model = ScriptedModel(
        [
            '{"category": "billing", "confidence": 7}',
            '```json\n{"category": "billing", "confidence": 0.9}\n```',
        ]
    )
    result = await env.runner(model).run(agent, "I was charged twice", OWNER)
    assert result.output == Triage(category="billing", confidence=0.9)
    assert result.confidence == 0.9
    assert result.status is RunStatus.COMPLETED
    correction = model.requests[1].messages[-1]
    assert isinstance(correction, UserMessage)
    assert '"field": "confidence"' in correction.content
    assert "JSON Schema" in model.requests[0].messages[0].content  # type: ignore[union-attr]
    assert [s.index for s in await env.runner().steps(result.run_id)] == [1, 2]


async def test_output_that_stays_invalid_fails_the_run() -> None:
    """After output_retries corrections an invalid answer raises UnexpectedModelBehavior."""
    agent = define_agent(
        "shop.triage", model="m", instructions="Classify.", output_type=Triage, output_retries=0
    )
    with pytest.raises(UnexpectedModelBehavior):
        await AgentRunner(model=ScriptedModel(["not json"])).run(agent, "x", OWNER)


async def test_low_confidence_escalates(env: AgentEnv) -> None:
    """Confidence below the agent's threshold marks the run escalated and emits agent.escalated."""
    agent = define_agent(
        "shop.triage", model="m", instructions="Classify.", output_type=Triage,
        policy=AgentPolicy(confidence_threshold=0.7),
    )  # fmt: skip
    runner = env.runner(ScriptedModel(['{"category": "other", "confidence": 0.4}']))
    result = await runner.run(agent, "???", OWNER)
    assert (result.status, result.escalated, result.confidence) == (RunStatus.ESCALATED, True, 0.4)
    assert await event_names(env) == ["agent.run.started", "agent.escalated", "agent.run.completed"]
    assert [line.event for line in await runner.logs(result.run_id)][-2:] == [
        "run.escalated",
        "run.completed",
    ]


async def test_run_permission_is_checked_through_the_policy() -> None:
    """An agent with run_permission denies actors the PolicyDecider does not allow."""
    from agent_support import POLICY

    agent = define_agent(
        "shop.guarded", model="m", instructions="i", policy=AgentPolicy(run_permission="agent.run")
    )
    runner = AgentRunner(model=ScriptedModel(["hi"]), policy=POLICY)
    with pytest.raises(PolicyDeniedError) as info:
        await runner.run(
            agent, "x", CallContext(actor=Actor.user("u-x", roles="auditor"), org_id="org-1")
        )
    assert info.value.action == "agent.run"
    assert "grants 'agent.run'" in info.value.reason
    result = await runner.run(agent, "x", OWNER)
    assert result.output == "hi"
    with pytest.raises(PolicyDeniedError):
        await AgentRunner(model=ScriptedModel(["hi"])).run(agent, "x", OWNER)


async def test_memory_carries_a_session_across_runs() -> None:
    """With memory, a second run of the same session sees the first run's input and answer."""
    memory = InMemoryAgentMemory()
    agent = define_agent("shop.chat", model="m", instructions="i", memory=memory)
    model = ScriptedModel(["Hello Ada", "You are Ada"])
    runner = AgentRunner(model=model)
    await runner.run(agent, "I am Ada", OWNER, session_id="s-1")
    await runner.run(agent, "Who am I?", OWNER, session_id="s-1")
    second = model.requests[1].messages
    assert [(m.role, getattr(m, "content", None)) for m in second[1:]] == [
        ("user", "I am Ada"), ("assistant", "Hello Ada"), ("user", "Who am I?"),
    ]  # fmt: skip


async def test_function_model_sees_the_conversation_and_telemetry_is_recorded() -> None:
    """A FunctionModel decides from the request; the run reports one telemetry sample."""

    def model(request: object) -> object:
        messages = request.messages  # type: ignore[attr-defined]
        if not any(isinstance(m, ToolMessage) for m in messages):
            return call("lookup_order", order_id="o-9")
        return "status: " + json.loads(messages[-1].content)["status"]

    telemetry = MemoryTelemetrySink()
    result = await AgentRunner(model=FunctionModel(model), telemetry=telemetry).run(
        helper, "o-9?", OWNER
    )
    assert result.output == "status: delivered"
    assert [(s.operation, s.success, s.channel) for s in telemetry.samples] == [
        ("agent.shop.helper", True, "agent")
    ]


def test_run_sync_outside_and_inside_a_running_loop() -> None:
    """run_sync works from plain code and inside a running loop (a Jupyter cell), on one loop."""
    runner = AgentRunner(model=ScriptedModel(["hi", "again"]))
    try:
        assert runner.run_sync(helper, "x", OWNER).output == "hi"

        async def in_a_cell() -> str:
            return str(runner.run_sync(helper, "x", OWNER).output)

        assert asyncio.run(in_a_cell()) == "again"
    finally:
        runner.close()


async def test_real_model_requests_are_blocked_in_tests() -> None:
    """Without a scripted model the litellm client refuses to call out while blocked."""
    runner = AgentRunner()
    with pytest.raises(ModelRequestsForbiddenError):
        await runner.run(helper, "x", OWNER)
    runs = await runner.history(org_id="org-1")
    assert runs[0].error is not None
    assert runs[0].error["code"] == "model_requests_forbidden"


async def test_override_swaps_the_model_and_model_errors_fail_the_run() -> None:
    """override(model=) wins inside the block; a model exception becomes AgentRunError."""
    runner = AgentRunner(model=ScriptedModel([RuntimeError("provider down")]))
    with runner.override(model=ScriptedModel(["from override"])):
        assert (await runner.run(helper, "x", OWNER)).output == "from override"
    with pytest.raises(AgentRunError) as info:
        await runner.run(helper, "x", OWNER)
    assert "provider down" in info.value.message


def test_agent_registry_versions_and_duplicates() -> None:
    """The latest version is the default; a different agent under a taken name@version is refused."""
    specs = SpecRegistry()
    registry = AgentRegistry(specs)
    v1 = define_agent("shop.helper", model="m", instructions="v1")
    v2 = define_agent("shop.helper", model="m", instructions="v2", version=2)
    registry.register(v1, v2, v1)
    assert registry.get("shop.helper") is v2
    assert registry.get("shop.helper", 1) is v1
    assert specs.get_spec("agent", "shop.helper") is v2
    assert [a.ref for a in registry] == ["shop.helper@1", "shop.helper@2"]
    with pytest.raises(SpecDefinitionError, match="already registered"):
        registry.register(define_agent("shop.helper", model="m", instructions="other"))
    with pytest.raises(SpecDefinitionError, match=r"unknown agent 'shop\.nope'"):
        registry.get("shop.nope")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"version": 0}, "version"),
        ({"model": ""}, "model"),
        ({"tools": [lookup_order, lookup_order]}, "tools"),
        ({"output_type": dict}, "output_type"),
        ({"policy": AgentPolicy(confidence_threshold=1.5)}, "policy.confidence_threshold"),
        ({"limits": UsageLimits(max_steps=0)}, "limits.max_steps"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"output_retries": -1}, "output_retries"),
    ],
)
def test_define_agent_rejects_bad_definitions(kwargs: dict[str, object], field: str) -> None:
    """Each bad option raises SpecDefinitionError naming the field."""
    args: dict[str, object] = {"name": "shop.x", "model": "m", "instructions": "i", **kwargs}
    name = args.pop("name")
    with pytest.raises(SpecDefinitionError) as info:
        define_agent(name, **args)  # type: ignore[arg-type]
    assert info.value.details["field"] == field


def test_l3_tools_need_named_approvers() -> None:
    """An irreversible tool without approvers is a definition error."""
    with pytest.raises(SpecDefinitionError, match="name its approvers"):
        operation_tool(issue_refund, risk=RiskLevel.L3)
