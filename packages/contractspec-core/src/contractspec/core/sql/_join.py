"""Joining the caller's transaction: what waits for the caller's COMMIT or ROLLBACK.

A call that joins the caller's transaction (`Executor.execute(..., connection=...)`) runs in a
SAVEPOINT of it; its rows, events, audit record and idempotency record become durable only when
the caller commits. Two things must therefore wait for the caller's transaction to end:

* *after-commit callbacks* (`Transaction.on_commit`: in-process deliveries, cache updates) run
  only once the caller's COMMIT succeeded, and are dropped when it rolls back or the COMMIT fails;
* *denial records* are written on their own (in a transaction of the backend's engine) once the
  caller's transaction is over, committed or not, so a denial is recorded exactly once and never
  waits on a lock the caller's open transaction holds (on SQLite the caller holds the database's
  write lock; on PostgreSQL it may hold the head row of the same audit chain).

The end of the caller's transaction is observed with SQLAlchemy's `commit` and `rollback`
connection events, listened to once per engine (they fire just before the COMMIT or ROLLBACK is
sent); a task then waits for the COMMIT to finish and checks whether it succeeded: a COMMIT that
raised is seen by the engine's `handle_error` event, and SQLAlchemy keeps such a transaction
current on the connection until it is rolled back.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext

from contractspec.core._log import get_logger

__all__ = ["CallerTransaction", "caller_transaction", "pending_tasks"]

_log = get_logger(__name__)

AfterEnd = Callable[[], Awaitable[None]]


class CallerTransaction:
    """What waits for the end of one caller transaction (one root transaction of a connection)."""

    __slots__ = ("after_end", "connection", "failed", "on_commit", "root")

    def __init__(self, connection: Connection, root: Any) -> None:
        self.connection = connection
        self.root = root
        self.on_commit: list[Callable[[], None]] = []
        self.after_end: list[AfterEnd] = []
        #: The COMMIT failed (the transaction was rolled back after it was sent).
        self.failed = False


_callers: weakref.WeakKeyDictionary[Connection, CallerTransaction] = weakref.WeakKeyDictionary()
#: Caller transactions whose COMMIT was sent and is being settled.
_committing: weakref.WeakKeyDictionary[Connection, CallerTransaction] = weakref.WeakKeyDictionary()
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
#: Tasks settling ended caller transactions (strong references until they finish).
_tasks: set[asyncio.Task[None]] = set()


def caller_transaction(connection: Connection) -> CallerTransaction:
    """The state of `connection`'s current root transaction (created on first use).

    Raises:
        RuntimeError: The connection has no transaction (the caller did not begin one).
    """
    root = connection.get_transaction()
    if root is None:
        raise RuntimeError("the connection has no transaction to join")
    state = _callers.get(connection)
    if state is None or state.root is not root:
        state = _callers[connection] = CallerTransaction(connection, root)
    engine = connection.engine
    if engine not in _engines:  # once per engine: each event costs its connections a dict lookup
        event.listen(engine, "commit", _on_commit)
        event.listen(engine, "rollback", _on_rollback)
        event.listen(engine, "handle_error", _on_error)
        _engines.add(engine)
    return state


def pending_tasks() -> set[asyncio.Task[None]]:
    """The tasks of the running event loop still settling ended caller transactions."""
    loop = asyncio.get_running_loop()
    return {task for task in _tasks if not task.done() and task.get_loop() is loop}


def _take(connection: Connection) -> CallerTransaction | None:
    if not _callers:
        return None
    state = _callers.get(connection)
    if state is None or state.root is not connection.get_transaction():
        return None
    del _callers[connection]
    if not state.on_commit and not state.after_end:
        return None
    return state


def _spawn(state: CallerTransaction, *, committing: bool) -> None:
    task = asyncio.get_running_loop().create_task(_settle(state, committing=committing))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _on_commit(connection: Connection) -> None:
    state = _take(connection)
    if state is not None:
        _committing[connection] = state
        _spawn(state, committing=True)


def _on_error(context: ExceptionContext) -> None:
    """A statement or the COMMIT failed: if it was a caller's COMMIT, it did not commit."""
    connection = context.connection
    sent = _committing.get(connection) if connection is not None and _committing else None
    if sent is not None and connection is not None and sent.root is connection.get_transaction():
        sent.failed = True


def _on_rollback(connection: Connection) -> None:
    sent = _committing.get(connection) if _committing else None
    if sent is not None and sent.root is connection.get_transaction():
        sent.failed = True  # the ROLLBACK of a transaction whose COMMIT failed
    state = _take(connection)
    if state is not None:
        _spawn(state, committing=False)


async def _settle(state: CallerTransaction, *, committing: bool) -> None:
    """Wait for the caller's COMMIT to finish; run the callbacks if it succeeded; then the
    after-end work (denial records) in any case."""
    root = state.root
    if committing:
        delay = 0.0
        while root.is_active:  # the COMMIT is still in flight
            await asyncio.sleep(delay)
            delay = min(delay * 2 or 0.0005, 0.02)
        if _committing.get(state.connection) is state:
            del _committing[state.connection]
        # A failed COMMIT leaves the transaction current on the connection until rolled back.
        committed = not state.failed and state.connection.get_transaction() is not root
        if committed:
            for callback in state.on_commit:
                try:
                    callback()
                except Exception:  # committed already: report, never fail
                    _log.exception(
                        "contractspec.on_commit_callback_failed", callback=repr(callback)
                    )
    for work in state.after_end:
        try:
            await work()
        except Exception:
            _log.exception("contractspec.after_caller_transaction_failed", work=repr(work))
