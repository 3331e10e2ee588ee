"""The litellm adapter, offline: litellm's own mock responses, retries, the switch, the extra."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import pytest
from agent_support import OWNER

from contractspec.agent import (
    AgentRunError,
    AgentRunner,
    AssistantMessage,
    ModelRequest,
    ModelRequestsForbiddenError,
    SystemMessage,
    ToolCall,
    ToolDefinition,
    ToolMessage,
    UserMessage,
    define_agent,
)

# litellm builds pydantic models over TypedDicts with ReadOnly items; pydantic warns about it
# inside litellm (a third-party warning, not ours), which filterwarnings=error would turn into a
# failed request.
pytestmark = pytest.mark.filterwarnings("ignore:Item .* `ReadOnly` qualifier:UserWarning")

litellm_adapter = pytest.importorskip("contractspec.agent.litellm")
LiteLLMModel = litellm_adapter.LiteLLMModel
agent = define_agent("shop.llm", model="gpt-4o-mini", instructions="Be brief.")


async def test_mock_response_runs_offline_with_tokens_and_cost() -> None:
    """litellm's mock_response answers; tokens and the known price of the model are reported."""
    runner = AgentRunner(model=LiteLLMModel(mock_response="Hello from litellm"))
    result = await runner.run(agent, "hi", OWNER)
    assert result.output == "Hello from litellm"
    assert (result.usage.requests, result.usage.input_tokens, result.usage.output_tokens) == (
        1,
        10,
        20,
    )
    assert result.usage.cost == pytest.approx(10 * 0.15e-6 + 20 * 0.6e-6)


async def test_tool_calls_are_decoded_and_sent_in_openai_format() -> None:
    """Mocked tool calls come back with decoded arguments; invalid JSON is kept as text."""
    model = LiteLLMModel(
        mock_tool_calls=[
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"order_id": "o-1"}'},
            },
            {"id": "c2", "type": "function", "function": {"name": "lookup", "arguments": "{oops"}},
        ]
    )
    request = ModelRequest(
        model="gpt-4o-mini",
        messages=(SystemMessage("s"), UserMessage("where is o-1?")),
        tools=(
            ToolDefinition(
                "lookup",
                "Look up",
                {"type": "object", "properties": {"order_id": {"type": "string"}}},
            ),
        ),
        timeout=5,
    )
    response = await model.complete(request)
    assert response.tool_calls == (
        ToolCall("c1", "lookup", {"order_id": "o-1"}),
        ToolCall("c2", "lookup", "{oops"),
    )
    assert response.usage.requests == 1


def test_messages_are_converted_to_the_openai_chat_format() -> None:
    """Assistant tool calls carry JSON text arguments; tool results answer by id."""
    messages = (
        UserMessage("u"),
        AssistantMessage(None, (ToolCall("c1", "t", {"a": 1}),)),
        ToolMessage("c1", "t", '{"ok":true}', False),
    )
    assert litellm_adapter.to_openai_messages(messages) == [
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "t", "arguments": '{"a":1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"ok":true}'},
    ]  # fmt: skip


async def test_transient_errors_are_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rate-limit errors then a success: three attempts, each with the timeout set."""
    import litellm

    real = litellm.acompletion
    seen: list[dict[str, Any]] = []

    async def flaky(**kwargs: Any) -> Any:
        seen.append(kwargs)
        if len(seen) < 3:
            kwargs["mock_response"] = litellm.RateLimitError(
                "slow down", llm_provider="openai", model="gpt-4o-mini"
            )
        return await real(**kwargs)

    monkeypatch.setattr(litellm, "acompletion", flaky)
    model = LiteLLMModel(mock_response="finally", backoff_initial_s=0.01, backoff_max_s=0.02)
    result = await AgentRunner(model=model).run(agent, "hi", OWNER)
    assert result.output == "finally"
    assert [k["timeout"] for k in seen] == [60.0, 60.0, 60.0]
    exhausted = LiteLLMModel(
        mock_response="x", retries=1, backoff_initial_s=0.01, backoff_max_s=0.01
    )
    seen.clear()
    monkeypatch.setattr(
        litellm,
        "acompletion",
        lambda **kw: flaky(**kw) if False else _always_limited(real, seen, **kw),
    )
    with pytest.raises(AgentRunError, match="kept failing after 2 attempt"):
        await AgentRunner(model=exhausted).run(agent, "hi", OWNER)
    assert len(seen) == 2


async def _always_limited(real: Any, seen: list[dict[str, Any]], **kwargs: Any) -> Any:
    import litellm

    seen.append(kwargs)
    kwargs["mock_response"] = litellm.RateLimitError(
        "slow", llm_provider="openai", model="gpt-4o-mini"
    )
    return await real(**kwargs)


async def test_real_requests_are_refused_while_blocked() -> None:
    """Without a mock, the blocked switch stops the request before litellm is called."""
    with pytest.raises(ModelRequestsForbiddenError, match="real model requests are switched off"):
        await LiteLLMModel().complete(
            ModelRequest(model="gpt-4o-mini", messages=(UserMessage("hi"),))
        )


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the adapter without litellm raises ImportError with the pip command."""
    monkeypatch.setitem(sys.modules, "litellm", None)
    monkeypatch.delitem(sys.modules, "contractspec.agent.litellm")
    with pytest.raises(ImportError, match=r"pip install 'contractspec-agent\[litellm\]'"):
        importlib.import_module("contractspec.agent.litellm")


def test_package_import_does_not_import_litellm() -> None:
    """`import contractspec.agent` never imports litellm (checked in a clean interpreter)."""
    import subprocess

    code = "import sys, contractspec.agent, contractspec.agent.testing; print(json.dumps('litellm' in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert json.loads(out) is False
