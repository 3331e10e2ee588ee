"""Group commit: `Executor.batch()` runs many calls in one transaction, each in a savepoint.

What a batch promises (on memory, SQLite and PostgreSQL):

* every call is reported exactly as it ended: a call that returned was validated, authorized and
  its writes reached the database inside the batch's transaction (a unique or version conflict
  fails that call, at that call); a call that raised left nothing;
* a failed call never disturbs its neighbours: its savepoint is rolled back, the batch goes on;
* calls that returned are durable once the batch commits (every `commit_every` calls and when the
  block ends). If a commit itself fails (the database went away), the block raises
  `BatchCommitError` saying how many returned calls were not stored.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

from contractspec.core.errors import ConfigurationError, ContractSpecError

if TYPE_CHECKING:
    from contractspec.core.executor import Executor
    from contractspec.core.transactions import Savepoint, Transaction

__all__ = ["BATCH", "Batch", "BatchCommitError"]


class BatchCommitError(ContractSpecError):
    """A batch could not commit: the calls since its last commit, though they returned, are lost.

    Attributes:
        lost: How many calls that returned were not stored.
    """

    code = "batch_commit_failed"

    def __init__(self, message: str, *, lost: int) -> None:
        self.lost = lost
        super().__init__(message, details={"lost_calls": lost})


class Batch:
    """Group commit: many calls share one transaction, each in its own savepoint.

    Made by `Executor.batch()`. Calls inside a batch must run one after the other: a call started
    while another call of the batch runs raises `ConfigurationError`.

    Attributes:
        calls: Successful calls so far.
        pending: Successful calls not committed yet.
        commits: Commits done so far.
        commit_every: Calls per group commit.
    """

    __slots__ = (
        "_broken",
        "_busy",
        "_executor",
        "_tx",
        "calls",
        "commit_every",
        "commits",
        "pending",
    )

    def __init__(self, executor: Executor, commit_every: int) -> None:
        self._executor = executor
        self._busy = False
        self._tx: Transaction | None = None
        self._broken: BaseException | None = None
        self.commit_every = commit_every
        self.calls = 0
        self.pending = 0
        self.commits = 0

    def _enter(self, what: str) -> None:
        """Mark the batch busy with one call; refuse a second one running concurrently."""
        if self._busy:
            raise ConfigurationError(
                f"{what} was called while another call of the same executor.batch() was running; "
                "await the calls of a batch one after the other (or open a batch per task)"
            )
        self._busy = True

    async def _transaction(self) -> Transaction:
        if self._broken is not None:
            raise BatchCommitError(
                f"this batch can take no more calls: its transaction failed "
                f"({type(self._broken).__name__}); open a new batch",
                lost=0,
            ) from self._broken
        if self._tx is None:
            self._tx = await self._executor.unit_of_work.begin()
        return self._tx

    async def _succeeded(self) -> None:
        self.calls += 1
        self.pending += 1
        if self.pending >= self.commit_every:
            await self.commit()

    async def _rolled_back(self, savepoint: Savepoint) -> None:
        """Undo one failed call; if even that fails, the batch's transaction is lost."""
        try:
            await savepoint.rollback()
        except BaseException as exc:
            self._broken = exc
            lost = self.pending
            await self.rollback()
            raise BatchCommitError(
                f"the batch's transaction failed while undoing a call ({type(exc).__name__}); "
                f"{lost} call(s) that returned since the last commit were not stored",
                lost=lost,
            ) from exc

    async def commit(self) -> None:
        """Commit what the batch holds now; the batch goes on with a new transaction.

        Raises:
            BatchCommitError: The commit failed; the calls since the last commit are lost.
        """
        tx, self._tx = self._tx, None
        if tx is None:
            return
        lost, self.pending = self.pending, 0
        try:
            await tx.commit()
        except ContractSpecError as exc:
            raise BatchCommitError(
                f"the batch could not commit ({exc.code}: {exc.message}); {lost} call(s) that "
                "returned since the last commit were not stored",
                lost=lost,
            ) from exc
        except Exception as exc:
            raise BatchCommitError(
                f"the batch could not commit ({type(exc).__name__}); {lost} call(s) that "
                "returned since the last commit were not stored",
                lost=lost,
            ) from exc
        self.commits += 1

    async def rollback(self) -> None:
        """Roll back the calls since the last commit."""
        tx, self._tx = self._tx, None
        self.pending = 0
        if tx is not None:
            await tx.rollback()


BATCH: contextvars.ContextVar[Batch | None] = contextvars.ContextVar(
    "contractspec_batch", default=None
)
