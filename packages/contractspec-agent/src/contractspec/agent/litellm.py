"""The litellm adapter: any provider litellm supports, as a `ModelClient`.

Install with `pip install 'contractspec-agent[litellm]'`. This module is imported only when used
(`AgentRunner` without a `model=` imports it on the first run), never by `contractspec.agent`.

* calls `litellm.acompletion` with the tools in OpenAI format and a timeout on every request;
* retries transient errors (timeouts, connection errors, rate limits, 5xx) with exponential
  backoff and jitter (tenacity's `wait_exponential_jitter`), then raises `AgentRunError`;
* reports tokens and, where litellm knows the price, the cost in US dollars;
* sends the agent's `output_type` schema as `response_format` (`json_schema`) when litellm says
  the model supports structured outputs (`litellm.supports_response_schema`); other models get
  the schema in the instructions only (the runner validates the answer either way);
* streams (`stream`): text deltas as they arrive, then the whole response assembled with
  `litellm.stream_chunk_builder` (tool calls included). The runner streams when someone
  listens to the run's events (`AgentRunner.run_stream`, `run(on_event=...)`). A transient
  error is retried only before the first chunk arrived;
* honours the offline switch: with real model requests blocked it raises
  `ModelRequestsForbiddenError`, unless the request is a litellm `mock_response` (offline).

The price map is read from the copy shipped with litellm (`LITELLM_LOCAL_MODEL_COST_MAP=True`
is set unless you set it), so importing this module makes no network call.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

try:
    import litellm
    from tenacity import (
        AsyncRetrying,
        retry_if_exception_type,
        stop_after_attempt,
        wait_exponential_jitter,
    )
except ImportError as exc:  # pragma: no cover - exercised by a test that hides litellm
    raise ImportError(
        "contractspec.agent.litellm needs litellm: pip install 'contractspec-agent[litellm]'"
    ) from exc

from contractspec.agent._switch import check_model_requests_allowed
from contractspec.agent.errors import AgentRunError
from contractspec.agent.messages import (
    AssistantMessage,
    Message,
    ModelRequest,
    ModelResponse,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)

__all__ = ["TRANSIENT_ERRORS", "LiteLLMModel", "to_openai_messages"]

litellm.suppress_debug_info = True

#: litellm exceptions worth retrying: the request may succeed a moment later.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    litellm.exceptions.Timeout,
    litellm.exceptions.APIConnectionError,
    litellm.exceptions.RateLimitError,
    litellm.exceptions.ServiceUnavailableError,
    litellm.exceptions.InternalServerError,
)


def to_openai_messages(messages: list[Message] | tuple[Message, ...]) -> list[dict[str, Any]]:
    """The conversation in OpenAI chat format (tool-call arguments as JSON text)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage | UserMessage):
            out.append({"role": m.role, "content": m.content})
        elif isinstance(m, AssistantMessage):
            item: dict[str, Any] = {"role": "assistant", "content": m.content}
            if m.tool_calls:
                item["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments_json()},
                    }
                    for c in m.tool_calls
                ]
            out.append(item)
        elif isinstance(m, ToolMessage):
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
    return out


def _arguments(raw: Any) -> Mapping[str, Any] | str:
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        decoded = json.loads(raw)
    except json.JSONDecodeError:
        return raw  # the tool executor answers with a validation error the model can fix
    return decoded if isinstance(decoded, dict) else raw


class LiteLLMModel:
    """`ModelClient` over `litellm.acompletion`.

    Args:
        retries: Extra attempts after a transient error (default 2).
        backoff_initial_s: First backoff in seconds (doubles each retry, with jitter).
        backoff_max_s: Longest backoff in seconds.
        **defaults: Passed to every `acompletion` call (`api_key`, `api_base`, `temperature`,
            `mock_response` for offline tests, ...). The request's settings win.

    Raises:
        ValueError: Negative retries or non-positive backoff.
    """

    def __init__(
        self,
        *,
        retries: int = 2,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8.0,
        **defaults: Any,
    ) -> None:
        if retries < 0 or backoff_initial_s <= 0 or backoff_max_s <= 0:
            raise ValueError("retries must be >= 0 and backoff times positive (seconds)")
        self.retries = retries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.defaults = defaults

    def _kwargs(self, request: ModelRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {**self.defaults, **dict(request.settings)}
        offline = "mock_response" in kwargs or "mock_tool_calls" in kwargs
        if not offline:
            check_model_requests_allowed(request.model)
        kwargs.update(
            model=request.model,
            messages=to_openai_messages(tuple(request.messages)),
            timeout=request.timeout,
        )
        if request.tools:
            kwargs["tools"] = [t.to_openai() for t in request.tools]
        if request.output_schema is not None and "response_format" not in kwargs:
            response_format = self.response_format(request.model, request.output_schema)
            if response_format is not None:
                kwargs["response_format"] = response_format
        return kwargs

    @staticmethod
    def response_format(model: str, schema: Mapping[str, Any]) -> dict[str, Any] | None:
        """The `response_format` for `schema` (OpenAI `json_schema` form), or `None` when litellm
        does not list `model` as supporting structured outputs."""
        try:
            supported = bool(litellm.supports_response_schema(model=model))
        except Exception:  # an unknown model or provider: not supported as far as we know
            supported = False
        if not supported:
            return None
        name = str(schema.get("title") or "output")
        return {
            "type": "json_schema",
            "json_schema": {"name": name[:64], "schema": dict(schema), "strict": False},
        }

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """One chat completion with tools, retried on transient errors.

        Raises:
            ModelRequestsForbiddenError: Real requests are switched off (and this is no mock).
            AgentRunError: The provider failed (after the retries for transient errors).
        """
        response = await self._acompletion(request, self._kwargs(request))
        return self._convert(response, request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[str | ModelResponse]:
        """Stream one chat completion: text deltas as they arrive, then the `ModelResponse`
        (assembled from the chunks with `litellm.stream_chunk_builder`).

        Raises:
            ModelRequestsForbiddenError: Real requests are switched off (and this is no mock).
            AgentRunError: The provider failed (before the first chunk, after the retries).
        """
        kwargs = self._kwargs(request)
        kwargs.update(stream=True, stream_options={"include_usage": True})
        chunks: list[Any] = []
        stream = await self._acompletion(request, kwargs)
        try:
            async for chunk in stream:
                chunks.append(chunk)
                choices = getattr(chunk, "choices", None) or ()
                delta = getattr(choices[0], "delta", None) if choices else None
                text = getattr(delta, "content", None)
                if isinstance(text, str) and text:
                    yield text
        except litellm.exceptions.OpenAIError as exc:
            raise AgentRunError(
                f"{request.model} failed while streaming ({type(exc).__name__})",
                details={"model": request.model, "exception": type(exc).__name__},
            ) from exc
        built = litellm.stream_chunk_builder(chunks, messages=kwargs["messages"])
        if built is None:
            raise AgentRunError(
                f"{request.model} streamed no chunks", details={"model": request.model}
            )
        yield self._convert(built, request)

    async def _acompletion(self, request: ModelRequest, kwargs: dict[str, Any]) -> Any:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(TRANSIENT_ERRORS),
                wait=wait_exponential_jitter(
                    multiplier=self.backoff_initial_s,
                    max=self.backoff_max_s,
                    jitter=self.backoff_initial_s,
                ),
                stop=stop_after_attempt(self.retries + 1),
                reraise=True,
            ):
                with attempt:
                    return await litellm.acompletion(**kwargs)
        except TRANSIENT_ERRORS as exc:
            raise AgentRunError(
                f"{request.model} kept failing after {self.retries + 1} attempt(s) "
                f"({type(exc).__name__}); check the provider status or raise retries",
                details={"model": request.model, "exception": type(exc).__name__},
            ) from exc
        except litellm.exceptions.APIError as exc:
            raise AgentRunError(
                f"{request.model} rejected the request ({type(exc).__name__}: "
                f"{getattr(exc, 'message', exc)})",
                details={"model": request.model, "exception": type(exc).__name__},
            ) from exc
        except litellm.exceptions.OpenAIError as exc:  # auth, bad request, ...
            raise AgentRunError(
                f"{request.model} rejected the request ({type(exc).__name__})",
                details={"model": request.model, "exception": type(exc).__name__},
            ) from exc
        raise AssertionError("unreachable: AsyncRetrying returns or raises")  # pragma: no cover

    def _convert(self, response: Any, request: ModelRequest) -> ModelResponse:
        choice = response.choices[0]
        message = choice.message
        calls = tuple(
            ToolCall(
                str(c.id),
                str(c.function.name),
                _arguments(c.function.arguments),
            )
            for c in (getattr(message, "tool_calls", None) or ())
        )
        raw_usage = getattr(response, "usage", None)
        cost = None
        hidden = getattr(response, "_hidden_params", None) or {}
        if isinstance(hidden, Mapping) and isinstance(hidden.get("response_cost"), int | float):
            cost = float(hidden["response_cost"])
        elif isinstance(raw_cost := getattr(raw_usage, "cost", None), int | float):
            cost = float(raw_cost)  # a streamed response carries it on its usage
        usage = Usage(
            requests=1,
            input_tokens=int(getattr(raw_usage, "prompt_tokens", 0) or 0),
            output_tokens=int(getattr(raw_usage, "completion_tokens", 0) or 0),
            cost=cost,
        )
        content = getattr(message, "content", None)
        return ModelResponse(
            content=content if isinstance(content, str) else None,
            tool_calls=calls,
            usage=usage,
            model_name=getattr(response, "model", None) or request.model,
            finish_reason=getattr(choice, "finish_reason", None),
        )
