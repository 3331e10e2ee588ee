"""`run_sync`: `asyncio.run` that also works where an event loop already runs (Jupyter)."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import threading

import pytest

from contractspec.core.sync import run_sync

REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="-")


async def answer(value: int) -> tuple[int, str, str]:
    """The value, the thread that ran the coroutine, and the context variable it saw."""
    await asyncio.sleep(0)
    return value, threading.current_thread().name, REQUEST.get()


async def fail() -> None:
    raise ValueError("bad input")


def test_without_a_running_loop_it_is_asyncio_run() -> None:
    """From plain code the coroutine runs in the calling thread, like `asyncio.run`."""
    assert run_sync(answer(7)) == (7, threading.current_thread().name, "-")


async def test_inside_a_running_loop_it_runs_on_a_new_loop_in_another_thread() -> None:
    """Where `asyncio.run` raises (a notebook cell), `run_sync` returns the coroutine's result."""
    coro = answer(1)
    with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
        asyncio.run(coro)
    coro.close()
    REQUEST.set("req-42")
    value, thread, request = run_sync(answer(2))
    assert (value, request) == (2, "req-42")  # the caller's context variables are visible
    assert thread == "contractspec-run-sync"


async def test_exceptions_propagate_to_the_caller() -> None:
    """The coroutine's exception is raised in the calling thread, with its own type."""
    with pytest.raises(ValueError, match="bad input"):
        run_sync(fail())


async def test_every_call_gets_a_fresh_loop_that_is_closed_afterwards() -> None:
    """Like `asyncio.run`, each call has its own loop, closed when the call returns."""
    loops = [run_sync(_loop()) for _ in range(2)]
    assert loops[0] is not loops[1]
    assert all(loop.is_closed() for loop in loops)
    assert asyncio.get_running_loop() not in loops


async def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def test_an_interrupt_cancels_the_coroutine_and_waits_for_its_clean_up() -> None:
    """Ctrl-C ("interrupt kernel") while waiting cancels the coroutine, whose `finally` runs first."""
    started = threading.Event()
    events: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            await asyncio.sleep(0)  # clean-up that itself awaits
            events.append("cleaned up")

    def interrupt() -> None:
        started.wait()
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C / Jupyter's "interrupt kernel" does

    # an IPython kernel turns SIGINT into KeyboardInterrupt (asyncio.Runner would cancel its task)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt).start()
        with pytest.raises(KeyboardInterrupt):
            run_sync(forever())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert events == ["cancelled", "cleaned up"]
