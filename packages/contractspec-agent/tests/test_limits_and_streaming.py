"""Issue 15: tool-call limits are checked before executing; text deltas, tool calls and the
result stream through the runner's events (offline models and litellm's mock responses)."""

from __future__ import annotations

from typing import Any

import pytest
from agent_support import ORG, OWNER, AgentEnv
from pydantic import BaseModel

from contractspec.agent import (
    AgentRunner,
    RiskLevel,
    RunFinished,
    RunStatus,
    StreamEvent,
    TextDelta,
    ToolCallFinished,
    ToolCallRequested,
    UsageLimitExceeded,
    UsageLimits,
    define_agent,
    tool,
)
from contractspec.agent.testing import ScriptedModel, call


async def test_max_tool_calls_is_checked_before_any_call_executes(env: AgentEnv) -> None:
    """`max_tool_calls=1` and a response asking for three calls: none of them executes, the run
    fails with `UsageLimitExceeded`."""
    effects: list[int] = []

    @tool(risk=RiskLevel.L1)
    def ship(box: int) -> str:
        """Ship a box."""
        effects.append(box)
        return "shipped"

    shipping = define_agent(
        "shop.limited", model="m", instructions="i", tools=[ship],
        limits=UsageLimits(max_tool_calls=1),
    )  # fmt: skip
    runner = env.runner(
        ScriptedModel([[call("ship", box=1), call("ship", box=2), call("ship", box=3)]])
    )
    with pytest.raises(UsageLimitExceeded) as info:
        await runner.run(shipping, "ship three", OWNER)
    assert info.value.details["limit"] == "max_tool_calls"
    assert effects == []
    (run,) = await runner.history(org_id=ORG)
    assert run.status is RunStatus.FAILED


async def test_a_call_within_the_limit_runs(env: AgentEnv) -> None:
    """Reaching the limit exactly is fine: one call with `max_tool_calls=1` executes."""
    effects: list[int] = []

    @tool(risk=RiskLevel.L1)
    def ship(box: int) -> str:
        """Ship a box."""
        effects.append(box)
        return "shipped"

    shipping = define_agent(
        "shop.limited1", model="m", instructions="i", tools=[ship],
        limits=UsageLimits(max_tool_calls=1),
    )  # fmt: skip
    result = await env.runner(ScriptedModel([call("ship", box=1), "done"])).run(
        shipping, "ship one", OWNER
    )
    assert (result.output, effects) == ("done", [1])


@tool
def lookup(order_id: str) -> dict[str, str]:
    """Look an order up."""
    return {"order_id": order_id, "status": "shipped"}


support = define_agent("shop.stream", model="m", instructions="i", tools=[lookup])


async def test_run_stream_yields_text_deltas_tool_calls_and_the_result() -> None:
    """`run_stream`: the tool call and its outcome, the answer's text in word deltas that join
    to the final output, and `RunFinished` last."""
    runner = AgentRunner(
        model=ScriptedModel([call("lookup", order_id="o-1"), "Your order o-1 has shipped."])
    )
    events: list[StreamEvent] = [e async for e in runner.run_stream(support, "o-1?", OWNER)]
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["ToolCallRequested", "ToolCallFinished"]
    requested, finished = events[0], events[1]
    assert isinstance(requested, ToolCallRequested)
    assert requested.call.name == "lookup"
    assert isinstance(finished, ToolCallFinished)
    assert finished.outcome.status == "ok"
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 5
    assert "".join(d.text for d in deltas) == "Your order o-1 has shipped."
    assert {d.step for d in deltas} == {2}
    last = events[-1]
    assert isinstance(last, RunFinished)
    assert last.result.output == "Your order o-1 has shipped."


async def test_on_event_sees_the_same_events_and_errors_reach_the_stream() -> None:
    """`run(on_event=...)` receives the events; a failing run raises out of `run_stream`."""
    seen: list[StreamEvent] = []
    runner = AgentRunner(model=ScriptedModel(["Hello there."]))
    result = await runner.run(support, "hi", OWNER, on_event=seen.append)
    assert [type(e).__name__ for e in seen] == ["TextDelta", "TextDelta", "RunFinished"]
    assert result.output == "Hello there."
    broken = AgentRunner(model=ScriptedModel([]))
    with pytest.raises(Exception, match="no reply left"):
        async for _ in broken.run_stream(support, "hi", OWNER):
            pass


# -- litellm ---------------------------------------------------------------------------------

pytestmark = pytest.mark.filterwarnings("ignore:Item .* `ReadOnly` qualifier:UserWarning")


class Answer(BaseModel):
    answer: str
    confidence: float


def spy_on_litellm(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    adapter = pytest.importorskip("contractspec.agent.litellm")
    seen: list[dict[str, Any]] = []
    original = adapter.litellm.acompletion

    async def acompletion(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return await original(**kwargs)

    monkeypatch.setattr(adapter.litellm, "acompletion", acompletion)
    return seen


async def test_litellm_sends_the_output_schema_as_response_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model litellm lists as supporting structured outputs gets `response_format` with the
    output type's JSON Schema; a model it does not list gets none."""
    from contractspec.agent.litellm import LiteLLMModel

    seen = spy_on_litellm(monkeypatch)
    reply = '{"answer": "ok", "confidence": 0.9}'
    for model_name in ("gpt-4o-mini", "gpt-3.5-turbo"):
        agent = define_agent("shop.typed", model=model_name, instructions="i", output_type=Answer)
        runner = AgentRunner(model=LiteLLMModel(mock_response=reply))
        result = await runner.run(agent, "q", OWNER)
        assert result.output == Answer(answer="ok", confidence=0.9)
    with_schema, without = seen
    assert with_schema["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Answer", "schema": Answer.model_json_schema(), "strict": False},
    }
    assert "response_format" not in without


async def test_litellm_streams_text_deltas_through_the_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With someone listening, the litellm adapter streams (litellm's mock streaming, offline):
    several deltas that join to the answer, tokens reported."""
    from contractspec.agent.litellm import LiteLLMModel

    seen = spy_on_litellm(monkeypatch)
    agent = define_agent("shop.llmstream", model="gpt-4o-mini", instructions="Be brief.")
    runner = AgentRunner(model=LiteLLMModel(mock_response="Hello there from a stream"))
    events = [e async for e in runner.run_stream(agent, "hi", OWNER)]
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 1
    assert "".join(deltas) == "Hello there from a stream"
    last = events[-1]
    assert isinstance(last, RunFinished)
    assert last.result.output == "Hello there from a stream"
    assert last.result.usage.output_tokens > 0
    assert seen[0]["stream"] is True
