"""Conversation memory for agents: the `AgentMemory` protocol and its in-memory adapter.

Memory is keyed by `(org_id, session_id)`: runs that pass the same `session_id` see the messages
earlier runs left (the user input and the final answer of each run). Both adapters (this one and
`contractspec.agent.sql.SqlAgentMemory`) apply the same rules, checked by one conformance suite:

* `ttl_s`: entries older than this many seconds are forgotten;
* `max_entries`: at most this many entries are kept per session; the oldest overflow is either
  dropped or, with a `summarize` hook, replaced by one summary entry (a system message).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from attrs import define

from contractspec.agent.messages import Message, SystemMessage
from contractspec.core import Clock, ConfigurationError, SystemClock

__all__ = ["AgentMemory", "InMemoryAgentMemory", "MemoryEntry", "Summarizer"]

#: `(messages) -> summary text`, sync or async: condenses the oldest entries into one.
Summarizer = Callable[[Sequence[Message]], Awaitable[str] | str]


@runtime_checkable
class AgentMemory(Protocol):
    """Conversation memory shared by the runs of one session."""

    async def load(self, session_id: str, *, org_id: str | None = None) -> list[Message]:
        """The session's live messages, oldest first (expired ones are left out)."""
        ...

    async def append(
        self, session_id: str, messages: Sequence[Message], *, org_id: str | None = None
    ) -> None:
        """Add messages at the end, then enforce `max_entries` (summarising if configured)."""
        ...

    async def clear(self, session_id: str, *, org_id: str | None = None) -> None:
        """Forget the session."""
        ...


@define(frozen=True)
class MemoryEntry:
    """One remembered message with the UTC time it was stored."""

    message: Message
    created_at: datetime


def check_memory_options(ttl_s: float | None, max_entries: int | None) -> None:
    """Validate the shared options.

    Raises:
        ConfigurationError: `ttl_s` or `max_entries` is not positive.
    """
    if ttl_s is not None and (isinstance(ttl_s, bool) or ttl_s <= 0):
        raise ConfigurationError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
    if max_entries is not None and (
        isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 2
    ):
        raise ConfigurationError(
            f"max_entries must be an integer of at least 2 (one summary + one message), got "
            f"{max_entries!r}"
        )


async def compact(
    entries: list[MemoryEntry],
    max_entries: int | None,
    summarize: Summarizer | None,
    now: datetime,
) -> list[MemoryEntry]:
    """Apply `max_entries` to `entries` (oldest first): drop or summarise the oldest overflow."""
    if max_entries is None or len(entries) <= max_entries:
        return entries
    if summarize is None:
        return entries[len(entries) - max_entries :]
    cut = len(entries) - max_entries + 1
    old = [e.message for e in entries[:cut]]
    text = summarize(old)
    if inspect.isawaitable(text):
        text = await text
    summary = MemoryEntry(SystemMessage(str(text)), entries[cut - 1].created_at or now)
    return [summary, *entries[cut:]]


class InMemoryAgentMemory:
    """`AgentMemory` in a dictionary, with TTL, a size cap and a summarisation hook.

    Args:
        ttl_s: Forget entries older than this many seconds (`None`: never).
        max_entries: Keep at most this many entries per session (`None`: no cap).
        summarize: Condense the overflow into one entry instead of dropping it.
        clock: Time source (a `FakeClock` in tests).

    Raises:
        ConfigurationError: Non-positive `ttl_s`, or `max_entries` below 2.
    """

    def __init__(
        self,
        *,
        ttl_s: float | None = None,
        max_entries: int | None = None,
        summarize: Summarizer | None = None,
        clock: Clock | None = None,
    ) -> None:
        check_memory_options(ttl_s, max_entries)
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.summarize = summarize
        self.clock: Clock = clock or SystemClock()
        self._sessions: dict[tuple[str | None, str], list[MemoryEntry]] = {}

    def _live(self, key: tuple[str | None, str]) -> list[MemoryEntry]:
        entries = self._sessions.get(key, [])
        if self.ttl_s is not None and entries:
            cutoff = self.clock.now() - timedelta(seconds=self.ttl_s)
            entries = [e for e in entries if e.created_at > cutoff]
            self._sessions[key] = entries
        return entries

    async def load(self, session_id: str, *, org_id: str | None = None) -> list[Message]:
        """The session's live messages, oldest first."""
        return [e.message for e in self._live((org_id, session_id))]

    async def append(
        self, session_id: str, messages: Sequence[Message], *, org_id: str | None = None
    ) -> None:
        """Add messages, then enforce `max_entries`."""
        key = (org_id, session_id)
        now = self.clock.now()
        entries = self._live(key) + [MemoryEntry(m, now) for m in messages]
        self._sessions[key] = await compact(entries, self.max_entries, self.summarize, now)

    async def clear(self, session_id: str, *, org_id: str | None = None) -> None:
        """Forget the session."""
        self._sessions.pop((org_id, session_id), None)
