"""Optional dense embeddings for the knowledge base: the `Embedder` protocol and a litellm adapter.

`KnowledgeBase(embedder=...)` fuses BM25 with embedding similarity by reciprocal rank fusion.
`LiteLLMEmbedder` calls `litellm.aembedding` (install `contractspec-agent[litellm]`) and honours
the offline switch (`contractspec.agent.testing.block_model_requests()`): with real model
requests blocked it raises `ModelRequestsForbiddenError` before any network call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from contractspec.agent._switch import check_model_requests_allowed
from contractspec.agent.errors import AgentRunError
from contractspec.core import ConfigurationError

__all__ = ["Embedder", "LiteLLMEmbedder"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors (one list of floats per text, all of the same length)."""

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed `texts`, in order."""
        ...


class LiteLLMEmbedder:
    """Embeddings from any provider litellm supports (`litellm.aembedding`).

    Args:
        model: litellm model name, e.g. `"openai/text-embedding-3-small"`.
        batch_size: Texts per request (default 64).
        **settings: Passed to `litellm.aembedding` (`dimensions`, `api_base`, ...).

    Raises:
        ConfigurationError: An empty model name or a batch size below 1.
    """

    def __init__(self, model: str, *, batch_size: int = 64, **settings: Any) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigurationError(
                "LiteLLMEmbedder: model must be a litellm model name such as "
                "'openai/text-embedding-3-small'",
                details={"field": "model"},
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(
                f"LiteLLMEmbedder: batch_size must be a positive integer, got {batch_size!r}",
                details={"field": "batch_size"},
            )
        self.model = model
        self.batch_size = batch_size
        self.settings = settings

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed `texts` in batches.

        Raises:
            ModelRequestsForbiddenError: Real model requests are switched off.
            AgentRunError: The provider failed.
            ImportError: litellm is not installed (the message has the install command).
        """
        check_model_requests_allowed(self.model)
        try:
            import litellm
        except ImportError as exc:  # pragma: no cover - litellm is a dev dependency here
            raise ImportError(
                "LiteLLMEmbedder needs litellm: pip install 'contractspec-agent[litellm]'"
            ) from exc
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            try:
                response = await litellm.aembedding(model=self.model, input=batch, **self.settings)
            except Exception as exc:
                raise AgentRunError(
                    f"embedding request to {self.model!r} failed: {exc}",
                    details={"model": self.model},
                ) from exc
            rows = sorted(response.data, key=lambda row: _get(row, "index"))
            vectors.extend([float(x) for x in _get(row, "embedding")] for row in rows)
        return vectors


def _get(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, dict) else getattr(row, name)
