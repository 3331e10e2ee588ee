"""Transactions: what makes a call's writes, events and audit record commit together or not at all.

A [`Transaction`][contractspec.core.transactions.Transaction] collects three things while a call
runs: *undo* actions (memory stores register compensations), *on-commit* callbacks (memory
publishers deliver only once committed) and the *entity changes* that feed the audit record. A
[`Savepoint`][contractspec.core.transactions.Savepoint] marks a point inside it so one call of a
batch can be undone without touching the calls before it. The SQL unit of work subclasses it and
adds a write buffer and database savepoints.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from contractspec.core._log import get_logger
from contractspec.core.errors import ConfigurationError, ConflictError, HandlerContractError

if TYPE_CHECKING:
    from contractspec.core.records import EntityChange

__all__ = ["MemoryTransaction", "MemoryUnitOfWork", "Savepoint", "Transaction"]

_log = get_logger(__name__)
_ABSENT: Any = object()


class Transaction:
    """Base transaction shared by the memory and SQL units of work.

    Attributes:
        readonly: True for query transactions; repositories refuse writes in them.
        info: Free-form per-transaction storage for adapters (keyed by adapter name).
    """

    __slots__ = (
        "_changes",
        "_ended",
        "_on_commit",
        "_on_end",
        "_savepoint",
        "_state",
        "_undo",
        "_waiting_for",
        "info",
        "readonly",
    )

    def __init__(self, *, readonly: bool = False) -> None:
        self.readonly = readonly
        self.info: dict[str, Any] = {}
        self._on_commit: list[Callable[[], None]] = []
        self._undo: list[Callable[[], None]] = []
        self._changes: list[EntityChange] = []
        self._savepoint: Savepoint | None = None
        self._state = "active"
        self._on_end: list[Callable[[], None]] | None = None
        self._ended: asyncio.Event | None = None
        self._waiting_for: Transaction | None = None

    # -- collected during a call ---------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True until `commit()` or `rollback()`."""
        return self._state == "active"

    @property
    def changes(self) -> list[EntityChange]:
        """Entity changes recorded so far, oldest first (read it, do not mutate it)."""
        return self._changes

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback()` after a successful commit (never after a rollback).

        Callbacks run in registration order; one that raises is logged and skipped, because the
        data is already committed.
        """
        self._check_active()
        self._on_commit.append(callback)

    def add_undo(self, callback: Callable[[], None]) -> None:
        """Register a compensation run (newest first) if the transaction or savepoint rolls back."""
        self._check_active()
        self._undo.append(callback)

    def undo_item(self, mapping: MutableMapping[Any, Any], key: Any) -> None:
        """Register an undo restoring `mapping[key]` to its current value (or removing it).

        Call it right before writing `mapping[key]`: the typical building block of an in-memory
        store whose writes must vanish when the transaction (or savepoint) rolls back.
        """
        previous = mapping.get(key, _ABSENT)

        def undo() -> None:
            if previous is _ABSENT:
                mapping.pop(key, None)
            else:
                mapping[key] = previous

        self.add_undo(undo)

    def on_end(self, callback: Callable[[], None]) -> None:
        """Run `callback()` once the transaction is over, committed or rolled back.

        The building block of in-memory locks: release what the transaction claimed.
        """
        if self._on_end is None:
            self._on_end = []
        self._on_end.append(callback)

    async def wait_for(self, other: Transaction, what: str, limit_s: float) -> None:
        """Wait until `other` has ended (in-memory stores waiting on a claimed row or key).

        Detects a wait cycle (this transaction waits for one that waits for this one) and gives
        up after `limit_s` seconds, like a database's deadlock detector and lock timeout.

        Raises:
            ConflictError: A deadlock, or `other` did not end in time.
        """
        if other._state != "active":
            return
        seen: Transaction | None = other
        while seen is not None:
            if seen is self:
                raise ConflictError(
                    f"deadlock: two transactions wait for each other on {what}; retry the call",
                    details={"reason": "deadlock"},
                )
            seen = seen._waiting_for
        if other._ended is None:
            other._ended = asyncio.Event()
        self._waiting_for = other
        try:
            await asyncio.wait_for(other._ended.wait(), limit_s)
        except TimeoutError:
            raise ConflictError(
                f"gave up after {limit_s:g} s waiting for a concurrent transaction holding {what}; "
                "retry the call",
                details={"reason": "lock_timeout"},
            ) from None
        finally:
            self._waiting_for = None

    def _end(self) -> None:
        callbacks, self._on_end = self._on_end, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                _log.exception("contractspec.on_end_callback_failed", callback=repr(callback))
        if self._ended is not None:
            self._ended.set()

    def record_change(self, change: EntityChange) -> None:
        """Record an entity write for the audit trail."""
        self._changes.append(change)

    def check_writable(self, what: str) -> None:
        """Raise `HandlerContractError` when writing in a read-only (query) transaction."""
        if self.readonly:
            raise HandlerContractError(
                f"{what}: queries run in read-only transactions; declare the operation with "
                "define_command() if it must write"
            )

    # -- lifecycle ----------------------------------------------------------------------------

    async def savepoint(self) -> Savepoint:
        """Mark the current point; `Savepoint.rollback()` undoes everything after it.

        One savepoint may be open at a time (the executor opens one per call of a batch).

        Raises:
            ConfigurationError: A savepoint is already open, or the transaction is closed.
        """
        self._check_active()
        if self._savepoint is not None:
            raise ConfigurationError(
                "a savepoint is already open in this transaction: calls inside one batch must run "
                "one after the other, not concurrently"
            )
        sp = Savepoint(self, len(self._on_commit), len(self._undo), len(self._changes))
        self._savepoint = sp
        await self._begin_savepoint()
        return sp

    async def commit(self) -> None:
        """Commit the backend, then run the on-commit callbacks.

        Raises:
            ConfigurationError: The transaction is already closed or a savepoint is still open.
        """
        self._check_active()
        if self._savepoint is not None:
            raise ConfigurationError("release or roll back the open savepoint before committing")
        try:
            await self._commit_backend()
        except BaseException:
            await self.rollback()
            raise
        self._state = "committed"
        callbacks, self._on_commit = self._on_commit, []
        self._undo.clear()
        if self._on_end is not None or self._ended is not None:
            self._end()
        for callback in callbacks:
            try:
                callback()
            except Exception:  # committed already: report, never fail the caller
                _log.exception("contractspec.on_commit_callback_failed", callback=repr(callback))

    async def rollback(self) -> None:
        """Undo everything: run compensations newest first and roll the backend back. Idempotent."""
        if self._state != "active":
            return
        self._state = "rolled_back"
        self._savepoint = None
        self._run_undo(0)
        self._on_commit.clear()
        self._changes.clear()
        try:
            await self._rollback_backend()
        finally:
            if self._on_end is not None or self._ended is not None:
                self._end()

    def _run_undo(self, mark: int) -> None:
        while len(self._undo) > mark:
            undo = self._undo.pop()
            undo()

    def _check_active(self) -> None:
        if self._state != "active":
            raise ConfigurationError(f"the transaction is already {self._state.replace('_', ' ')}")

    # -- backend hooks (SQL overrides these) -------------------------------------------------------

    async def _commit_backend(self) -> None:
        return None

    async def _rollback_backend(self) -> None:
        return None

    async def _begin_savepoint(self) -> None:
        return None

    async def _release_savepoint(self) -> None:
        return None

    async def _rollback_savepoint(self) -> None:
        return None


class Savepoint:
    """A point inside a transaction that one call of a batch can roll back to.

    Attributes:
        changes: Entity changes recorded since the savepoint was opened.
    """

    __slots__ = ("_changes_mark", "_commit_mark", "_tx", "_undo_mark")

    def __init__(
        self, tx: Transaction, commit_mark: int, undo_mark: int, changes_mark: int
    ) -> None:
        self._tx = tx
        self._commit_mark = commit_mark
        self._undo_mark = undo_mark
        self._changes_mark = changes_mark

    @property
    def changes(self) -> list[EntityChange]:
        """Entity changes recorded since this savepoint."""
        return self._tx._changes[self._changes_mark :]

    async def release(self) -> None:
        """Keep everything done since the savepoint as part of the transaction.

        The SQL unit of work first writes the call's buffered writes: if that fails (a unique or
        version conflict) the savepoint stays open, so `rollback()` can still undo the call.

        Raises:
            ConflictError: The call's writes conflict with stored data.
        """
        tx = self._tx
        if tx._savepoint is not self:
            return
        await tx._release_savepoint()
        tx._savepoint = None

    async def rollback(self) -> None:
        """Undo everything done since the savepoint; the transaction stays usable."""
        tx = self._tx
        if tx._savepoint is not self:
            return
        tx._savepoint = None
        tx._run_undo(self._undo_mark)
        del tx._on_commit[self._commit_mark :]
        del tx._changes[self._changes_mark :]
        await tx._rollback_savepoint()


class MemoryTransaction(Transaction):
    """A transaction with no backend: atomicity comes from undo callbacks and on-commit hooks."""

    __slots__ = ()


class MemoryUnitOfWork:
    """The default unit of work: in-process transactions for memory stores and tests."""

    __slots__ = ()

    async def begin(self, *, readonly: bool = False) -> Transaction:
        """Begin a `MemoryTransaction`."""
        return MemoryTransaction(readonly=readonly)
