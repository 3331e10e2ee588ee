"""`ThreadPipe`: apply a blocking function to byte chunks, in order, in a worker thread, while the
event loop goes on producing the next ones (bounded, so memory stays flat).

Uploads use two: one hashes (SHA-256), one writes the file. `hashlib` and file writes release the
GIL, so on two cores hashing and writing overlap instead of adding up. A worker borrows a thread of
the loop's default executor only while chunks are queued and takes every queued chunk in one go, so
a fast producer pays one thread hop per batch rather than per chunk; a slow one (a network upload)
never holds a thread while it waits.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadPipe"]


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ThreadPipe:
    """Call `fn(chunk)` for every fed chunk, in feeding order, one call at a time, in a worker thread.

    `feed` returns once the chunk is queued and at most `max_bytes` are waiting or being processed
    (one chunk always fits); `close` waits for the last chunk and raises the first error of `fn`;
    `abort` drops what is queued and waits for the running call (call it, shielded, on every error
    or cancellation path before releasing what `fn` uses).

    Chunks must not change after `feed` (pass `bytes`; the pipe keeps a reference, not a copy).
    """

    __slots__ = (
        "_active",
        "_error",
        "_fn",
        "_inline_below",
        "_items",
        "_lock",
        "_loop",
        "_max_bytes",
        "_queued",
        "_waiter",
        "_worker",
    )

    def __init__(
        self, fn: Callable[[bytes], Any], *, max_bytes: int, inline_below: int = 0
    ) -> None:
        self._fn = fn
        self._max_bytes = max_bytes
        self._inline_below = inline_below
        self._items: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._queued = 0  # bytes queued or being processed
        self._waiter: asyncio.Future[None] | None = None
        self._worker: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._active = False  # a worker is draining (set and cleared under the lock)

    async def feed(self, chunk: bytes) -> None:
        """Queue `chunk` (waiting while more than `max_bytes` are pending).

        Chunks smaller than `inline_below` are processed right here when nothing is pending (a
        thread hop would cost more than the call).

        Raises:
            BaseException: An earlier call of `fn` failed (the pipe stops at its first error).
        """
        if self._error is not None:
            raise self._error
        size = len(chunk)
        with self._lock:
            inline = not self._active and size < self._inline_below
            start = False
            if not inline:
                self._items.append(chunk)
                self._queued += size
                start = not self._active
                self._active = True
        if inline:
            try:
                self._fn(chunk)
            except BaseException as exc:
                self._error = exc
                raise
            return
        if start:
            self._worker = self._loop.run_in_executor(None, self._drain)
        with self._lock:
            if self._queued <= self._max_bytes or not self._active:
                return
            waiter = self._waiter = self._loop.create_future()
        await waiter
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        """Worker: process queued chunks until none is left (or one fails)."""
        while True:
            with self._lock:
                if not self._items or self._error is not None:
                    self._items.clear()
                    self._queued = 0
                    self._active = False
                    waiter, self._waiter = self._waiter, None
                    break
                chunk = self._items.popleft()
            try:
                self._fn(chunk)
            except BaseException as exc:
                with self._lock:
                    self._error = exc
                continue
            with self._lock:
                self._queued -= len(chunk)
                waiter = None
                if self._waiter is not None and self._queued <= self._max_bytes:
                    waiter, self._waiter = self._waiter, None
            if waiter is not None:
                self._loop.call_soon_threadsafe(_wake, waiter)
        if waiter is not None:
            self._loop.call_soon_threadsafe(_wake, waiter)

    async def close(self) -> None:
        """Wait until every fed chunk is processed.

        Raises:
            BaseException: The first error of `fn`.
        """
        worker = self._worker
        if worker is not None:
            await asyncio.shield(worker)  # a cancelled wait leaves the worker to `abort`
        if self._error is not None:
            raise self._error

    async def abort(self) -> None:
        """Drop the queued chunks and wait for the call in progress, if any (never raises)."""
        with self._lock:
            self._items.clear()
            worker = self._worker
        if worker is not None:
            await asyncio.wait([worker])
