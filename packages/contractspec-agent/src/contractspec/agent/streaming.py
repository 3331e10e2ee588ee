"""Events a run streams while it works: text deltas, tool calls and results, the final result.

```python
async for event in runner.run_stream(agent, "Where is my order o-1?", ctx):
    if isinstance(event, TextDelta):
        print(event.text, end="")
    elif isinstance(event, RunFinished):
        result = event.result
```

Text arrives in deltas when the model client streams (`LiteLLMModel`, and the offline
`ScriptedModel` / `FunctionModel`, which stream word by word); a client without `stream` sends
its whole text as one delta. These events are for the caller watching a run; the durable record
is the run store and the `agent.*` events of the outbox.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from attrs import define

from contractspec.agent.gateway import ToolOutcome
from contractspec.agent.messages import ToolCall

if TYPE_CHECKING:
    from contractspec.agent.runner import RunResult

__all__ = ["RunFinished", "StreamEvent", "TextDelta", "ToolCallFinished", "ToolCallRequested"]


@define(frozen=True)
class TextDelta:
    """A piece of the model's text for step `step` (the final answer, or commentary next to
    tool calls), in order."""

    run_id: str
    step: int
    text: str


@define(frozen=True)
class ToolCallRequested:
    """The model of step `step` asked for `call`; the gateway decides it next."""

    run_id: str
    step: int
    call: ToolCall


@define(frozen=True)
class ToolCallFinished:
    """The gateway's outcome for one call (executed, replayed, blocked, waiting, in doubt...)."""

    run_id: str
    step: int
    outcome: ToolOutcome


@define(frozen=True)
class RunFinished:
    """The run returned: completed, escalated or waiting for an approval (always last)."""

    result: RunResult


StreamEvent: TypeAlias = TextDelta | ToolCallRequested | ToolCallFinished | RunFinished
