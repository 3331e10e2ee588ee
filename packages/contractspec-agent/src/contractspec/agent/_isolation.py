"""Process isolation for sync function tools: one child process per call, killed when the call
times out or its run is cancelled (a thread cannot be stopped; a process can)."""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["IsolatedToolError", "run_in_process"]


class IsolatedToolError(Exception):
    """The isolated function raised, or its process died before answering."""


_CONTEXT: Any = None


def _context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _CONTEXT = multiprocessing.get_context("forkserver")
            # the fork server imports the package once; each call's child is forked from it and
            # only imports the tool's own module
            _CONTEXT.set_forkserver_preload(["contractspec.agent", "pydantic_core"])
        else:  # pragma: no cover - Windows and macOS spawn
            _CONTEXT = multiprocessing.get_context("spawn")
    return _CONTEXT


def _resolve(module: str, qualname: str) -> Callable[..., Any]:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    function = getattr(target, "function", None)  # `@tool` replaced the name with a Tool
    return function if callable(function) else target  # type: ignore[no-any-return]


def _child(
    conn: Connection,
    module: str,
    qualname: str,
    kwargs: dict[str, Any],
    context: tuple[str, Mapping[str, Any]] | None,
) -> None:  # pragma: no cover - runs in the child process (covered by the isolation tests)
    try:
        function = _resolve(module, qualname)
        if context is not None:
            from contractspec.agent.tools import ToolContext
            from contractspec.core import Actor, ActorKind, CallContext

            param, data = context
            call = CallContext(
                actor=Actor(data["actor_id"], ActorKind(data["actor_kind"]), data["roles"]),
                org_id=data["org_id"],
                request_id=data["request_id"],
                correlation_id=data["correlation_id"],
                causation_id=data["action_id"],
                channel="agent",
            )
            kwargs[param] = ToolContext(
                data["run_id"], data["agent"], data["step"], data["action_id"], call
            )
        result = function(**kwargs)
        from pydantic_core import to_jsonable_python

        conn.send(("ok", to_jsonable_python(result)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _readable(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()
    try:
        loop.add_reader(fd, _wake, ready)
    except NotImplementedError:  # pragma: no cover - Windows proactor loop: poll in a thread
        while not await asyncio.to_thread(conn.poll, 0.1):
            pass
        return
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def run_in_process(
    function: Callable[..., Any],
    kwargs: dict[str, Any],
    context: tuple[str, Mapping[str, Any]] | None = None,
) -> Any:
    """Call `function(**kwargs)` in a child process and return its (JSON-form) result.

    The child imports `function` by module and qualified name. Cancelling the awaiting task
    (a timeout, a cancelled run) kills the child, so nothing it would have done afterwards
    happens.

    Raises:
        IsolatedToolError: The function raised (message `Type: text`) or the process died.
    """
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_child,
        args=(sender, function.__module__, function.__qualname__, kwargs, context),
        daemon=True,
    )
    try:
        process.start()
        sender.close()
        await _readable(receiver)
        try:
            message = receiver.recv()
        except EOFError:
            await asyncio.to_thread(process.join)
            raise IsolatedToolError(
                f"the tool's process exited with code {process.exitcode} before answering"
            ) from None
    finally:
        if process.is_alive():
            process.kill()
        if process.pid is not None:
            await asyncio.shield(asyncio.to_thread(process.join))
        receiver.close()
        sender.close()
        if process.exitcode is not None:
            process.close()
    if message[0] == "ok":
        return message[1]
    raise IsolatedToolError(str(message[1]))
