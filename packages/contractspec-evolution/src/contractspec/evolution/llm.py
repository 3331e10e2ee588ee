"""LLM-assisted suggestions: a model writes the rationale, the library keeps the facts.

`LLMRationaleWriter` asks a model (any contractspec-agent `ModelClient`: the litellm adapter from
`contractspec-agent[litellm]`, or `ScriptedModel`/`FunctionModel` offline) to explain a
suggestion for its reviewers. The patch, the diff, the breaking flag, the evidence and the
confidence stay computed by `SpecGenerator`: only the prose is the model's, marked in the evidence
(`rationale_by`), and any failure, empty, over-long or refused answer keeps the computed rationale.
The model sees the suggestion's kind, operation, title, computed rationale, evidence and diff (no
request data: evidence holds statistics only).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from contractspec.agent import ModelClient, ModelRequest, SystemMessage, UserMessage
from contractspec.core import ConfigurationError
from contractspec.core._log import get_logger
from contractspec.evolution.suggestions import SpecSuggestion

__all__ = ["SYSTEM_PROMPT", "LLMRationaleWriter"]

_log = get_logger(__name__)

#: Instructions given to the model.
SYSTEM_PROMPT = (
    "You review proposed changes to an API specification. Explain the proposed change to the "
    "engineers who must approve it: what was observed, why the change helps, what it costs, and "
    "whether it breaks existing callers (use the given diff, never contradict it). Plain text, at "
    "most five sentences, no markdown headings."
)


class LLMRationaleWriter:
    """Rewrites suggestion rationales with a model, falling back to the computed text.

    Args:
        model: The `ModelClient` to call.
        model_name: Model identifier passed in the request (e.g. `"openai/gpt-4o-mini"`).
        max_chars: Longest rationale accepted (longer answers are refused).
        timeout_s: Seconds one call may take.

    Raises:
        ConfigurationError: `max_chars` or `timeout_s` not positive.
    """

    def __init__(
        self,
        model: ModelClient,
        *,
        model_name: str = "default",
        max_chars: int = 1500,
        timeout_s: float = 30.0,
    ) -> None:
        if max_chars < 1 or timeout_s <= 0:
            raise ConfigurationError("max_chars and timeout_s must be positive")
        self.model = model
        self.model_name = model_name
        self.max_chars = max_chars
        self.timeout_s = timeout_s

    def request(self, suggestion: SpecSuggestion) -> ModelRequest:
        """The model request for one suggestion."""
        facts: dict[str, Any] = {
            "kind": suggestion.kind.value,
            "operation": suggestion.operation,
            "title": suggestion.title,
            "computed_rationale": suggestion.rationale,
            "breaking": suggestion.breaking,
            "diff": [dict(c) for c in suggestion.diff],
            "evidence": dict(suggestion.evidence),
            "confidence": suggestion.confidence,
        }
        return ModelRequest(
            model=self.model_name,
            messages=[
                SystemMessage(SYSTEM_PROMPT),
                UserMessage(json.dumps(facts, sort_keys=True, default=str)),
            ],
            timeout=self.timeout_s,
            settings={"temperature": 0},
        )

    async def rewrite(self, suggestion: SpecSuggestion) -> SpecSuggestion:
        """The suggestion with the model's rationale, or unchanged when the model fails."""
        try:
            response = await self.model.complete(self.request(suggestion))
        except Exception as exc:  # the model is optional: keep the computed rationale
            _log.warning(
                "evolution.llm_rationale_failed",
                suggestion_id=suggestion.id,
                error=type(exc).__name__,
            )
            return suggestion
        text = (response.content or "").strip()
        if not text or len(text) > self.max_chars or response.tool_calls:
            _log.warning(
                "evolution.llm_rationale_refused", suggestion_id=suggestion.id, chars=len(text)
            )
            return suggestion
        evidence = {
            **dict(suggestion.evidence),
            "rationale_by": response.model_name or self.model_name,
            "computed_rationale": suggestion.rationale,
        }
        return suggestion.evolve(rationale=text, evidence=evidence)

    async def rewrite_all(self, suggestions: Iterable[SpecSuggestion]) -> list[SpecSuggestion]:
        """`rewrite` each suggestion, in order."""
        return [await self.rewrite(s) for s in suggestions]
