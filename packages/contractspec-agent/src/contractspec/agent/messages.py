"""Messages, tool calls, usage and the `ModelClient` port the runner talks to.

The shapes follow the OpenAI chat-completions format that litellm speaks (system, user,
assistant with `tool_calls`, tool results), so any provider litellm supports fits, and so do the
offline models in `contractspec.agent.testing`. Every message has a JSON form (`to_dict` /
`message_from_dict`) because runs persist their conversation to resume after a restart.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

from attrs import define, field

__all__ = [
    "AssistantMessage",
    "Message",
    "ModelClient",
    "ModelRequest",
    "ModelResponse",
    "StreamingModelClient",
    "SystemMessage",
    "ToolCall",
    "ToolDefinition",
    "ToolMessage",
    "Usage",
    "UserMessage",
    "message_from_dict",
]


@define(frozen=True)
class ToolCall:
    """One tool call the model asked for.

    Attributes:
        id: The model's call id (it changes when a request is retried; the gateway never uses it
            for idempotency).
        name: Tool name.
        arguments: Decoded JSON arguments, or the raw text when the model sent invalid JSON (the
            tool executor then answers with a validation error the model can correct).
    """

    id: str
    name: str
    arguments: Mapping[str, Any] | str = field(factory=dict)

    def arguments_json(self) -> str:
        """The arguments as JSON text (raw text is passed through unchanged)."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"), default=str)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        args = self.arguments if isinstance(self.arguments, str) else dict(self.arguments)
        return {"id": self.id, "name": self.name, "arguments": args}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolCall:
        """Rebuild from `to_dict()`."""
        return cls(data["id"], data["name"], data.get("arguments") or {})


@define(frozen=True)
class SystemMessage:
    """Instructions for the model."""

    content: str
    role: Literal["system"] = "system"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (OpenAI chat format)."""
        return {"role": "system", "content": self.content}


@define(frozen=True)
class UserMessage:
    """What the user (or the calling program) said."""

    content: str
    role: Literal["user"] = "user"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (OpenAI chat format)."""
        return {"role": "user", "content": self.content}


@define(frozen=True)
class AssistantMessage:
    """The model's reply: text, tool calls, or both."""

    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    role: Literal["assistant"] = "assistant"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (OpenAI chat format, arguments kept decoded)."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        return out


@define(frozen=True)
class ToolMessage:
    """A tool's result, answering one `ToolCall` by its id.

    Attributes:
        tool_call_id: The call answered.
        name: Tool name.
        content: JSON text of the result (or of the error).
        is_error: Whether the call failed (validation error, timeout, exception, blocked).
    """

    tool_call_id: str
    name: str
    content: str
    is_error: bool = False
    role: Literal["tool"] = "tool"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (OpenAI chat format plus `is_error`)."""
        return {
            "role": "tool",
            "tool_call_id": self.tool_call_id,
            "name": self.name,
            "content": self.content,
            "is_error": self.is_error,
        }


Message: TypeAlias = SystemMessage | UserMessage | AssistantMessage | ToolMessage


def message_from_dict(data: Mapping[str, Any]) -> Message:
    """Rebuild a message from its `to_dict()` form.

    Raises:
        ValueError: Unknown `role`.
    """
    role = data.get("role")
    if role == "system":
        return SystemMessage(data["content"])
    if role == "user":
        return UserMessage(data["content"])
    if role == "assistant":
        calls = tuple(ToolCall.from_dict(c) for c in data.get("tool_calls") or ())
        return AssistantMessage(data.get("content"), calls)
    if role == "tool":
        return ToolMessage(
            data["tool_call_id"], data["name"], data["content"], bool(data.get("is_error"))
        )
    raise ValueError(f"unknown message role {role!r}: expected system, user, assistant or tool")


@define
class Usage:
    """Resources a run (or one model response) used.

    Attributes:
        requests: Model requests made.
        input_tokens, output_tokens: Tokens reported by the provider (0 when unknown).
        tool_calls: Tool calls executed (successfully or not).
        cost: Cost in US dollars when the provider's price is known, else `None`.
    """

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    cost: float | None = None

    @property
    def total_tokens(self) -> int:
        """`input_tokens + output_tokens`."""
        return self.input_tokens + self.output_tokens

    def add(self, other: Usage) -> None:
        """Add `other` into this usage (cost stays `None` only while every part is unknown)."""
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.tool_calls += other.tool_calls
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "tool_calls": self.tool_calls,
            "cost": self.cost,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Usage:
        """Rebuild from `to_dict()` (missing keys are zero)."""
        data = data or {}
        return cls(
            int(data.get("requests", 0)),
            int(data.get("input_tokens", 0)),
            int(data.get("output_tokens", 0)),
            int(data.get("tool_calls", 0)),
            data.get("cost"),
        )


@define(frozen=True)
class ToolDefinition:
    """A tool as the model sees it: name, description and the JSON Schema of its arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def to_openai(self) -> dict[str, Any]:
        """The `{"type": "function", "function": {...}}` form litellm and OpenAI expect."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@define(frozen=True)
class ModelRequest:
    """Everything one model call needs.

    Attributes:
        model: The model name the agent declared (`"openai/gpt-4o-mini"`, `"scripted"`...).
        messages: The conversation so far, oldest first.
        tools: The tools the model may call.
        output_schema: JSON Schema the final answer must match, when the agent declares a
            structured output (the model answers with JSON text).
        timeout: Seconds the call may take (always set).
        settings: Extra provider settings (`temperature`, ...).
        step: 1-based index of the model step in the run.
    """

    model: str
    messages: Sequence[Message]
    tools: Sequence[ToolDefinition] = ()
    output_schema: Mapping[str, Any] | None = None
    timeout: float = 60.0
    settings: Mapping[str, Any] = field(factory=dict)
    step: int = 1


@define(frozen=True)
class ModelResponse:
    """A model's answer.

    Attributes:
        content: Text (the final answer, or commentary next to tool calls).
        tool_calls: Tool calls to execute (may run in parallel).
        usage: What this response cost (`requests` is 1).
        model_name: The model that answered, as reported by the provider.
        finish_reason: The provider's finish reason, when known.
    """

    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(factory=lambda: Usage(requests=1))
    model_name: str | None = None
    finish_reason: str | None = None

    def message(self) -> AssistantMessage:
        """The assistant message to append to the conversation."""
        return AssistantMessage(self.content, self.tool_calls)


@runtime_checkable
class ModelClient(Protocol):
    """The port the runner calls the model through (litellm adapter, scripted or function model).

    Implementations must honour `request.timeout` and raise `AgentRunError` subclasses (or let
    the runner wrap other exceptions) on failure.
    """

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer `request` with text and/or tool calls."""
        ...


@runtime_checkable
class StreamingModelClient(ModelClient, Protocol):
    """A `ModelClient` that can also stream: the runner uses `stream` when someone listens to
    the run's events (`AgentRunner.run_stream`, `run(on_event=...)`).

    `stream(request)` yields the answer's text as it arrives (`str` deltas, in order), then
    exactly one `ModelResponse`: the complete answer (text, tool calls, usage), as `complete`
    would have returned it.
    """

    def stream(self, request: ModelRequest) -> AsyncIterator[str | ModelResponse]:
        """Text deltas, then the complete `ModelResponse`."""
        ...
