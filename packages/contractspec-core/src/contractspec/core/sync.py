"""Run coroutines from synchronous code: scripts, REPLs and Jupyter notebooks alike.

`SyncRunner` owns one event loop running in a daemon thread. Every `*_sync` convenience of the
SDK (`Executor.execute_sync`, `BanditService.choose_sync`, `AgentRunner.run_sync`, ...) hands its
coroutine to its object's runner and blocks until the result is back, so:

* it works the same whether or not the calling thread already runs an event loop (a Jupyter
  kernel does: `asyncio.run()` and `loop.run_until_complete()` refuse to run there);
* all sync calls of one object run on one loop, so pooled SQL connections, which belong to the
  loop that opened them, stay valid from call to call;
* an interrupt (Ctrl-C, a notebook's "interrupt kernel") cancels the coroutine before it
  propagates.

Do not mix `await obj.method()` in your own loop and `obj.method_sync()` on one object backed by a
PostgreSQL pool: the two loops would share pooled connections. Pick one style per object.

`run_sync(main())` is `asyncio.run(main())` that also works where a loop already runs: the docs'
examples use it so that every page runs unchanged as a script and in a notebook.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from contractspec.core.errors import ConfigurationError

__all__ = ["SyncRunner", "run_sync"]

T = TypeVar("T")


class SyncRunner:
    """One event loop in a daemon thread, started on first use; `run(coro)` blocks for its result.

    Thread-safe: callers from several threads share the loop (their coroutines interleave on it).
    `close()` stops the loop; a later `run` starts a new one.
    """

    __slots__ = ("__weakref__", "_lock", "_loop", "_thread")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=serve, name="contractspec-sync", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], *, what: str = "this *_sync call") -> T:
        """Run `coro` on the runner's loop and return its result (or raise its exception).

        Raises:
            ConfigurationError: Called from a coroutine running on this runner's own loop (it would
                wait for itself): `await` the async method there instead.
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise ConfigurationError(
                f"{what} was called from a coroutine on its own sync loop and would wait for "
                "itself; await the async method instead"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self._started())
        try:
            return future.result()
        except BaseException:
            future.cancel()  # an interrupt while waiting: do not leave the call running
            raise

    def close(self) -> None:
        """Stop the loop and its thread (idempotent)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a new event loop and return its result: `asyncio.run`,
    also from a thread whose event loop is already running (a Jupyter kernel, an IPython cell).

    Without a running loop this is exactly `asyncio.run(coro)`. With one, `asyncio.run` refuses
    to start ("cannot be called from a running event loop"), so the coroutine runs under
    `asyncio.run` in a new thread, with a copy of the caller's context variables, while the
    caller blocks; an interrupt (Ctrl-C, "interrupt kernel") cancels the coroutine and waits for
    its clean-up before propagating. Either way the loop is new and is closed afterwards, as with
    `asyncio.run`: create engines and pools inside the coroutine (or dispose of them there).

    Args:
        coro: The coroutine to run, e.g. `main()`.

    Returns:
        What the coroutine returns.

    Raises:
        Exception: Whatever the coroutine raises.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    outcome: dict[str, Any] = {}
    lock = threading.Lock()
    finished = threading.Event()

    async def main() -> T:
        task = asyncio.current_task()
        with lock:
            outcome["loop"], outcome["task"] = asyncio.get_running_loop(), task
            if outcome.get("interrupted") and task is not None:
                task.cancel()  # interrupted before the coroutine started: it stops at its first await
        return await coro

    def serve() -> None:
        with lock:
            outcome["entered"] = True
        try:
            outcome["result"] = asyncio.run(main())
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc
        finally:
            finished.set()

    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(serve,), name="contractspec-run-sync", daemon=True
    )
    try:
        thread.start()
        finished.wait()  # not thread.join(): an interrupted join marks a live thread as stopped
    except BaseException:  # an interrupt: cancel the coroutine, let it clean up, then propagate
        with lock:
            outcome["interrupted"] = True
            entered = outcome.get("entered", False)
            loop, task = outcome.get("loop"), outcome.get("task")
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to cancel
                loop.call_soon_threadsafe(task.cancel)
        if entered:  # otherwise the thread, once it runs, sees the interrupt and cancels itself
            finished.wait()
        raise
    thread.join()
    if "error" in outcome:
        error: BaseException = outcome["error"]
        raise error
    result: T = outcome["result"]
    return result
