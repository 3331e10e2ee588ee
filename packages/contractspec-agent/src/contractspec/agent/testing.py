"""Offline testing for agents, shipped to users: scripted and function models, and a switch that
makes real model calls raise.

```python
from contractspec.agent.testing import ScriptedModel, block_model_requests, call

block_model_requests()                      # in conftest.py: no real model call can slip through
model = ScriptedModel([
    call("search_kb", query="refund policy"),   # step 1: one tool call
    [call("lookup", id=1), call("lookup", id=2)],  # step 2: two parallel calls
    "Refunds take 5 days.",                     # step 3: the final answer
])
result = await AgentRunner(model=model).run(agent, "How long do refunds take?")
model.assert_consumed()
```

Both models also stream (`stream`): the reply's text word by word (whitespace kept, so the
deltas join to the text), then the whole `ModelResponse`, as a streaming provider would.

Token counts of offline replies are deterministic: one token per whitespace-separated word of the
request's messages (input) and of the reply (output), plus 5 output tokens per tool call.
"""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

from contractspec.agent._switch import allow_model_requests, model_requests_allowed
from contractspec.agent.errors import UnexpectedModelBehavior
from contractspec.agent.messages import (
    AssistantMessage,
    ModelRequest,
    ModelResponse,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)

__all__ = [
    "FunctionModel",
    "Reply",
    "ScriptExhaustedError",
    "ScriptedModel",
    "block_model_requests",
    "call",
    "model_requests_blocked",
]

#: One scripted reply: text (final answer), a `ToolCall`, a list of them (parallel calls), a
#: full `ModelResponse`, or an exception instance to raise.
Reply: TypeAlias = str | ToolCall | Sequence[ToolCall] | ModelResponse | BaseException

_ids = itertools.count(1)
_WORDS = re.compile(r"\s*\S+\s*|\s+")


async def _stream(response: ModelResponse) -> AsyncIterator[str | ModelResponse]:
    for piece in _WORDS.findall(response.content or ""):
        yield piece
    yield response


def call(name: str, /, arguments: Any = None, *, id: str | None = None, **kwargs: Any) -> ToolCall:
    """A tool call for scripts: `call("refund", order_id="o1", amount=20)`.

    Args:
        name: Tool name.
        arguments: A mapping, or raw text (to test invalid JSON); merged with `kwargs`.
        id: The model's call id (default: a fresh `call-<n>`).
        **kwargs: Arguments.
    """
    if isinstance(arguments, str):
        args: Any = arguments
    else:
        args = {**dict(arguments or {}), **kwargs}
    return ToolCall(id or f"call-{next(_ids)}", name, args)


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def _input_tokens(request: ModelRequest) -> int:
    total = 0
    for m in request.messages:
        if isinstance(m, SystemMessage | UserMessage | ToolMessage):
            total += _words(m.content)
        elif isinstance(m, AssistantMessage):
            total += _words(m.content) + 5 * len(m.tool_calls)
    return total


def _response(reply: Any, request: ModelRequest, model_name: str) -> ModelResponse:
    if isinstance(reply, BaseException):
        raise reply
    if isinstance(reply, ModelResponse):
        return reply
    if isinstance(reply, str):
        content: str | None = reply
        calls: tuple[ToolCall, ...] = ()
    elif isinstance(reply, ToolCall):
        content, calls = None, (reply,)
    elif isinstance(reply, Sequence) and all(isinstance(c, ToolCall) for c in reply):
        content, calls = None, tuple(reply)
    else:
        raise TypeError(
            f"a scripted reply must be text, a ToolCall, a list of ToolCalls, a ModelResponse or "
            f"an exception, got {reply!r}"
        )
    usage = Usage(
        requests=1,
        input_tokens=_input_tokens(request),
        output_tokens=_words(content) + 5 * len(calls),
    )
    return ModelResponse(content, calls, usage, model_name, "tool_calls" if calls else "stop")


class ScriptExhaustedError(UnexpectedModelBehavior):
    """The scripted model was asked for more replies than its script holds."""

    code = "script_exhausted"


class ScriptedModel:
    """A `ModelClient` that answers with a fixed sequence of replies.

    Args:
        replies: The script (see `Reply`), consumed one reply per model request.
        model_name: Reported as the model that answered.

    Attributes:
        requests: Every `ModelRequest` received, for assertions.
    """

    def __init__(self, replies: Iterable[Reply], *, model_name: str = "scripted") -> None:
        self._replies: list[Reply] = list(replies)
        self._next = 0
        self.model_name = model_name
        self.requests: list[ModelRequest] = []

    @property
    def remaining(self) -> int:
        """Replies not used yet."""
        return len(self._replies) - self._next

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """The next scripted reply.

        Raises:
            ScriptExhaustedError: The script is used up.
        """
        self.requests.append(request)
        if self._next >= len(self._replies):
            raise ScriptExhaustedError(
                f"the scripted model has no reply left for request {len(self.requests)} (script "
                f"of {len(self._replies)}); add replies or check why the agent asked again"
            )
        reply = self._replies[self._next]
        self._next += 1
        return _response(reply, request, self.model_name)

    async def stream(self, request: ModelRequest) -> AsyncIterator[str | ModelResponse]:
        """The next scripted reply, streamed: its text word by word, then the response."""
        async for item in _stream(await self.complete(request)):
            yield item

    def assert_consumed(self) -> None:
        """Fail unless every reply was used.

        Raises:
            AssertionError: Replies are left, with the first one unused.
        """
        if self._next != len(self._replies):
            raise AssertionError(
                f"the scripted model used {self._next} of {len(self._replies)} replies; next "
                f"unused: {self._replies[self._next]!r}"
            )

    def reset(self) -> None:
        """Start the script again (and forget recorded requests)."""
        self._next = 0
        self.requests.clear()


ModelFunction = Callable[[ModelRequest], Reply | Awaitable[Reply]]


class FunctionModel:
    """A `ModelClient` whose replies come from your function (sync or async).

    Args:
        function: `(request) -> Reply`; it sees the whole conversation and the tools.
        model_name: Reported as the model that answered.

    Attributes:
        requests: Every `ModelRequest` received.

    Example:
        ```python
        def model(request: ModelRequest) -> Reply:
            if not any(isinstance(m, ToolMessage) for m in request.messages):
                return call("search_kb", query=request.messages[-1].content)
            return "Here is what I found."
        ```
    """

    def __init__(self, function: ModelFunction, *, model_name: str = "function") -> None:
        self.function = function
        self.model_name = model_name
        self.requests: list[ModelRequest] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Call the function and turn its reply into a `ModelResponse`."""
        self.requests.append(request)
        reply = self.function(request)
        if inspect.isawaitable(reply):
            reply = await reply
        return _response(reply, request, self.model_name)

    async def stream(self, request: ModelRequest) -> AsyncIterator[str | ModelResponse]:
        """The function's reply, streamed: its text word by word, then the response."""
        async for item in _stream(await self.complete(request)):
            yield item


def block_model_requests(blocked: bool = True) -> None:
    """Make every real model request raise `ModelRequestsForbiddenError` (process-wide).

    Call it in `conftest.py`; `block_model_requests(False)` allows them again. Setting the
    environment variable `CONTRACTSPEC_ALLOW_MODEL_REQUESTS=0` does the same at import.
    """
    allow_model_requests(not blocked)


@contextmanager
def model_requests_blocked() -> Iterator[None]:
    """Block real model requests inside the block, restoring the previous setting after."""
    before = model_requests_allowed()
    allow_model_requests(False)
    try:
        yield
    finally:
        allow_model_requests(before)
