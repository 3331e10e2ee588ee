"""External MCP servers' tools as agent tools, behind the gateway (extra `contractspec-agent[mcp]`).

```python
from mcp import StdioServerParameters

from contractspec.agent import RiskLevel, refund_limit
from contractspec.agent.mcp import mcp_tools

async with await mcp_tools(
    StdioServerParameters(command="billing-mcp"),
    risk={"search_invoices": RiskLevel.L0, "refund": RiskLevel.L2},
    invariants={"refund": [refund_limit(500)]},
) as billing:
    agent = define_agent("support", model="...", instructions="...", tools=[*billing])
```

Each tool the server lists becomes a `Tool` the gateway treats exactly like a native one:

* **arguments** are validated against the server's `inputSchema` (JSON Schema, with the
  `jsonschema` library) before anything is sent; errors go back to the model field by field;
* **risk** is declared per tool (`risk={"name": RiskLevel.L1}`) or by a rule
  (`risk=lambda tool: ...`); a tool neither names gets `default_risk` (L2: a person approves
  each call). The server's annotations (`readOnlyHint`, `destructiveHint`, ...) are *hints* from
  a party the agent does not control: they are recorded in `MCPToolset.info` and never lower
  the risk;
* **invariants, evidence, approvers, shadow mode, idempotency ids, the ledger and audit** work as
  for `tool()`: a call blocked by an invariant, shadowed or waiting for approval never reaches
  the server;
* **errors**: a tool error result or a JSON-RPC error from the server is an `MCPToolError` (the
  server answered: the outcome is known); a connection that drops, or an answer that does not
  come back, after the request went out raises `ToolOutcomeUnknownError`, which the gateway
  records as `in_doubt` for a side-effecting tool: it is never re-sent silently.
  A server that cannot be reached when connecting raises `MCPConnectionError`.
* **definitions are pinned**: each tool's description, input schema and annotations are
  fingerprinted when `mcp_tools` builds the toolset. When the server announces a change
  (`notifications/tools/list_changed`, or a `tools_list_changed` event on a 2026-07-28
  `subscriptions/listen` stream) the toolset lists the tools again before the next call; a
  tool the server removed or redefined is refused with `MCPToolChangedError` and never sent
  (a server must not change what the agent was built to call behind its back: the "rug pull"
  of the MCP security best practices). Build a new toolset with `mcp_tools` to adopt the new
  definitions; `MCPToolset.changes` says what changed. With a borrowed session the toolset does
  not see notifications: call `await toolset.refresh()` from your own message handler.

The `mcp` SDK is imported only when this module is used; without it `mcp_tools` raises
`ConfigurationError` naming the extra.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self, overload

from attrs import define, field
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from contractspec.agent.errors import ToolOutcomeUnknownError
from contractspec.agent.invariants import Invariant, RiskRule
from contractspec.agent.tools import (
    Evidence,
    Reconcile,
    RiskLevel,
    Tool,
    ToolContext,
    _check_common,
)
from contractspec.core import ConfigurationError, ContractSpecError, SpecDefinitionError

if TYPE_CHECKING:
    import mcp.types

__all__ = [
    "MCPConnectionError",
    "MCPToolChangedError",
    "MCPToolError",
    "MCPToolInfo",
    "MCPToolset",
    "MCPToolsetChanges",
    "RiskSpec",
    "mcp_tools",
]

#: `{server tool name: RiskLevel}` or `(mcp.types.Tool) -> RiskLevel | None` (`None`: the default).
RiskSpec = Mapping[str, RiskLevel | int] | Callable[["mcp.types.Tool"], "RiskLevel | int | None"]

_NAME_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]")
#: JSON-RPC codes the SDK raises for transport failures, not for answers of the server.
_CONNECTION_CLOSED: Final = -32000
_REQUEST_TIMEOUT: Final = -32001


class MCPToolError(ContractSpecError, RuntimeError):
    """An MCP server answered a tool call with an error (a tool error result or a JSON-RPC
    error): the call reached the server and failed there.

    `details` holds `server`, `tool` (the server's name for it) and, for a JSON-RPC error, its
    `mcp_code`. Inside an agent run the gateway turns it into a failed tool result the model
    sees (status `error`, code `mcp_tool_error`).
    """

    code = "mcp_tool_error"


class MCPConnectionError(MCPToolError):
    """The MCP server could not be reached (the command did not start, the process exited during
    the handshake, the URL refused the connection). Nothing was called.

    `details["server"]` describes the target; the message lists the underlying causes.
    """

    code = "mcp_connection_failed"


class MCPToolChangedError(MCPToolError):
    """The server removed or redefined a tool after the toolset was built; nothing was sent.

    `details` holds `server`, `tool` (the server's name), `change` (`"removed"` or
    `"redefined"`) and `sent` (`False`). Build a new toolset with `mcp_tools` to adopt the
    server's new definitions (and review their risk).
    """

    code = "mcp_tool_changed"


@define(frozen=True)
class MCPToolsetChanges:
    """How the server's listing differs from the definitions the toolset pinned.

    Attributes:
        added: Server tool names listed now and not when the toolset was built (not callable
            through this toolset).
        removed: Pinned tools the server no longer lists.
        redefined: Pinned tools whose description, input schema or annotations changed.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    redefined: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.redefined)


def _fingerprint(spec: Any) -> str:
    """SHA-256 of what an agent relies on in a listed tool: description, schemas, annotations."""
    schema = spec.input_schema if hasattr(spec, "input_schema") else spec.inputSchema
    output = getattr(spec, "output_schema", None) or getattr(spec, "outputSchema", None)
    annotations = spec.annotations
    document = {
        "description": spec.description,
        "input_schema": schema,
        "output_schema": output,
        "annotations": (
            annotations.model_dump(mode="json", by_alias=True, exclude_none=True)
            if annotations is not None
            else None
        ),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _target(source: Any) -> str:
    command = getattr(source, "command", None)
    if command is not None:
        return " ".join([str(command), *map(str, getattr(source, "args", []))])
    return str(source)


@define(frozen=True)
class MCPToolInfo:
    """How one server tool became an agent tool.

    Attributes:
        server: The server's name (from its `serverInfo`, else `"mcp"`).
        remote_name: The tool's name on the server.
        name: The agent tool's name (`prefix` + the remote name with characters providers
            reject replaced by `_`).
        risk: The risk level the gateway applies.
        risk_source: `"declared"` (the `risk` mapping), `"rule"` (the `risk` callable) or
            `"default"` (`default_risk`).
        annotations: The server's annotations (`readOnlyHint`, `destructiveHint`, ...), as hints
            only: they never changed `risk`.
    """

    server: str
    remote_name: str
    name: str
    risk: RiskLevel
    risk_source: str
    annotations: Mapping[str, Any] = field(factory=dict)


class _MCPArguments(BaseModel):
    """Arguments of an MCP tool: validated against the server's JSON Schema."""

    model_config = ConfigDict(extra="allow", frozen=True)
    json_schema_validator: ClassVar[Any] = None

    @model_validator(mode="wrap")
    @classmethod
    def _against_schema(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise PydanticCustomError(
                "model_type",
                "the arguments must be a JSON object, got {kind}",
                {"kind": type(data).__name__},
            )
        validator = cls.json_schema_validator
        errors = sorted(
            validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]
        )
        if errors:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "json_schema", "{message}", {"message": e.message, "rule": e.validator}
                        ),
                        loc=tuple(e.absolute_path),
                        input=e.instance,
                    )
                    for e in errors
                ],
            )
        return handler(data)


def _arguments_model(class_name: str, schema: Mapping[str, Any], tool_name: str) -> type[BaseModel]:
    # jsonschema (a dependency of the mcp SDK) ships no type information
    from jsonschema import SchemaError  # type: ignore[import-untyped]
    from jsonschema.validators import validator_for  # type: ignore[import-untyped]

    schema = dict(schema)
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise SpecDefinitionError(
            f"MCP tool {tool_name!r}: its inputSchema is not a valid JSON Schema ({exc.message})",
            details={"field": "inputSchema", "tool": tool_name},
        ) from None
    if schema.get("type", "object") != "object":
        raise SpecDefinitionError(
            f"MCP tool {tool_name!r}: its inputSchema must describe an object (type: object), got "
            f"type {schema.get('type')!r}",
            details={"field": "inputSchema", "tool": tool_name},
        )
    model: type[_MCPArguments] = type(class_name, (_MCPArguments,), {"__module__": __name__})
    model.json_schema_validator = cls(schema)  # a ClassVar of _MCPArguments
    return model


class _Connection:
    """The MCP session the tools call: borrowed from the caller, or opened (and owned) here.

    An owned `mcp.Client` lives in its own task (anyio context managers must be left in the task
    that entered them), so the toolset can be closed from any task.
    """

    def __init__(self, source: Any, read_timeout_s: float | None) -> None:
        self.source = source
        self.read_timeout_s = read_timeout_s
        self.session: Any = None
        self.owned = False
        self.closed = False
        self.failure: BaseException | None = None
        #: Set when the server announced that its tool list changed: list again before a call.
        self.stale = False
        #: `{server tool name: fingerprint}` pinned when the toolset was built.
        self.pinned: dict[str, str] = {}
        #: The server's listing at the last refresh: `{server tool name: fingerprint}`.
        self.listed: dict[str, str] = {}
        self.refresh_lock = asyncio.Lock()
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def on_message(self, message: Any) -> None:
        """The owned client's message handler: note a `notifications/tools/list_changed`."""
        from mcp.types import ToolListChangedNotification

        if isinstance(message, ToolListChangedNotification):
            self.stale = True

    async def refresh(self) -> MCPToolsetChanges:
        """List the server's tools again and compare them with the pinned definitions."""
        async with self.refresh_lock:
            self.stale = False
            listed = {spec.name: _fingerprint(spec) for spec in await _list_all(self.session)}
            self.listed = listed
        return self.changes()

    def changes(self) -> MCPToolsetChanges:
        return MCPToolsetChanges(
            added=tuple(sorted(set(self.listed) - set(self.pinned))),
            removed=tuple(sorted(set(self.pinned) - set(self.listed))),
            redefined=tuple(
                sorted(
                    name
                    for name, print_ in self.pinned.items()
                    if name in self.listed and self.listed[name] != print_
                )
            ),
        )

    async def open(self) -> None:
        from mcp import Client, ClientSession, StdioServerParameters
        from mcp.server.lowlevel import Server
        from mcp.server.mcpserver import MCPServer

        if isinstance(self.source, Client | ClientSession):  # entered by the caller: borrowed
            self.session = self.source
            return
        self.owned = True

        connectable = (str, StdioServerParameters, Server, MCPServer)
        if not isinstance(self.source, connectable) and not hasattr(self.source, "__aenter__"):
            raise SpecDefinitionError(
                "mcp_tools(server=...) takes an entered mcp.Client or ClientSession, "
                "StdioServerParameters, a streamable HTTP URL, an mcp Transport or an "
                f"MCPServer; got {self.source!r}",
                details={"field": "server"},
            )
        client = Client(
            self.source, read_timeout_seconds=self.read_timeout_s, message_handler=self.on_message
        )
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._hold(client, ready, self._stop))
        try:
            self.session = await ready
        except asyncio.CancelledError:  # the caller gave up: do not leave the server running
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            raise
        except Exception as exc:
            causes = "; ".join(f"{type(leaf).__name__}: {_describe(leaf)}" for leaf in _leaves(exc))
            raise MCPConnectionError(
                f"could not connect to MCP server {_target(self.source)!r}: {causes}",
                details={"server": _target(self.source)},
            ) from exc

    async def _hold(self, client: Any, ready: asyncio.Future[Any], stop: asyncio.Event) -> None:
        try:
            async with client:
                ready.set_result(client)
                async with asyncio.TaskGroup() as group:
                    listener = group.create_task(self._listen(client))
                    await stop.wait()
                    listener.cancel()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                self.failure = exc
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
            raise
        finally:
            self.closed = True

    async def _listen(self, client: Any) -> None:
        """On 2026-07-28 connections, follow `tools_list_changed` events (older ones get the
        `notifications/tools/list_changed` message instead, see `on_message`)."""
        from mcp.client.subscriptions import ListenNotSupportedError

        try:
            async with client.listen(tools_list_changed=True) as subscription:
                async for _event in subscription:
                    self.stale = True
        except ListenNotSupportedError:
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # the stream dropped (e.g. the server died): the calls report that
            return

    async def close(self) -> None:
        self.closed = True
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        await asyncio.shield(self._task)


class MCPToolset(Sequence[Tool]):
    """The agent tools of one MCP server (a sequence of `Tool`), and its connection.

    Built by `mcp_tools`. When it opened the connection itself (from server parameters or a
    URL), close it with `await toolset.aclose()` or use it as `async with toolset:`; a borrowed
    session is left to its owner.

    Attributes:
        server: The server's name.
        info: `MCPToolInfo` per agent tool name (remote name, risk and where it came from, the
            server's annotations).
    """

    def __init__(
        self, server: str, tools: Sequence[Tool], info: Mapping[str, MCPToolInfo], conn: _Connection
    ) -> None:
        self.server = server
        self._tools = tuple(tools)
        self.info = dict(info)
        self._conn = conn

    @overload
    def __getitem__(self, index: int) -> Tool: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Tool]: ...
    def __getitem__(self, index: int | slice) -> Tool | Sequence[Tool]:
        return self._tools[index]

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools)

    def get(self, name: str) -> Tool:
        """The agent tool named `name` (the agent-side name, see `info`).

        Raises:
            KeyError: No such tool.
        """
        for item in self._tools:
            if item.name == name:
                return item
        raise KeyError(f"{name!r} is not a tool of MCP server {self.server!r}: {list(self.info)}")

    @property
    def refresh_pending(self) -> bool:
        """True when the server announced a tool-list change the toolset has not listed yet
        (the next call lists the tools again first)."""
        return self._conn.stale

    @property
    def changes(self) -> MCPToolsetChanges:
        """What differs between the server's listing at the last refresh and the pinned tools."""
        return self._conn.changes()

    async def refresh(self) -> MCPToolsetChanges:
        """List the server's tools again now (calls do this by themselves after the server
        announced a change on a connection this toolset owns).

        Returns:
            The differences from the pinned definitions; calls to `removed` or `redefined`
            tools raise `MCPToolChangedError` until the definition is back as pinned.

        Raises:
            MCPToolError: Listing the tools failed on the server.
        """
        return await self._conn.refresh()

    async def aclose(self) -> None:
        """Close the connection if this toolset opened it (idempotent)."""
        await self._conn.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _per_tool(
    option: str, mapping: Mapping[str, Any] | None, names: Iterable[str]
) -> Mapping[str, Any]:
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise SpecDefinitionError(
            f"mcp_tools({option}=...) must map the server's tool names to values, got {mapping!r}",
            details={"field": option},
        )
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise SpecDefinitionError(
            f"mcp_tools({option}=...) names tools the server does not list: {unknown}; it lists "
            f"{sorted(names)}",
            details={"field": option, "unknown": unknown},
        )
    return mapping


def _result(result: Any, server: str, remote: str) -> Any:
    blocks = list(getattr(result, "content", None) or [])
    texts = [getattr(b, "text", None) for b in blocks]
    if getattr(result, "is_error", getattr(result, "isError", False)):
        message = "\n".join(t for t in texts if t) or "(no message)"
        raise MCPToolError(
            f"MCP tool {remote!r} on server {server!r} failed: {message}",
            details={"server": server, "tool": remote},
        )
    structured = getattr(result, "structured_content", getattr(result, "structuredContent", None))
    if structured is not None:
        return structured
    if blocks and all(t is not None for t in texts):
        return "\n".join(str(t) for t in texts)
    return [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in blocks]


def _describe(exc: BaseException) -> str:
    return str(getattr(exc, "message", "") or exc) or type(exc).__name__


def _caller(conn: _Connection, server: str, remote: str) -> Callable[..., Any]:
    from mcp.shared.exceptions import MCPError

    async def call_mcp_tool(args: BaseModel, ctx: ToolContext) -> Any:
        if conn.closed:  # nothing was sent: a known failure, safe to try again later
            cause = f" ({_describe(conn.failure)})" if conn.failure is not None else ""
            raise MCPToolError(
                f"the connection to MCP server {server!r} is closed{cause}; {remote!r} was not "
                "called",
                details={"server": server, "tool": remote, "sent": False},
            )
        if conn.stale:
            await conn.refresh()
        if conn.listed.get(remote) != conn.pinned[remote]:
            change = "removed" if remote not in conn.listed else "redefined"
            raise MCPToolChangedError(
                f"MCP server {server!r} {change} tool {remote!r} after this toolset was built; "
                "it was not called. Build a new toolset with mcp_tools() to adopt (and review) "
                "the server's current definitions",
                details={"server": server, "tool": remote, "change": change, "sent": False},
            )
        arguments = args.model_dump(mode="json")
        try:
            result = await conn.session.call_tool(remote, arguments)
        except MCPError as exc:
            if exc.code == _CONNECTION_CLOSED:  # dead for good: later calls are not sent
                conn.closed = True
                conn.failure = conn.failure or exc
            if exc.code in (_CONNECTION_CLOSED, _REQUEST_TIMEOUT):
                raise ToolOutcomeUnknownError(
                    f"the call to MCP tool {remote!r} on server {server!r} was sent but no answer "
                    f"came back ({exc.message})",
                    details={"server": server, "tool": remote, "mcp_code": exc.code},
                ) from exc
            raise MCPToolError(
                f"MCP server {server!r} refused the call to {remote!r}: {exc.message} "
                f"(JSON-RPC error {exc.code})",
                details={"server": server, "tool": remote, "mcp_code": exc.code},
            ) from exc
        except (ContractSpecError, asyncio.CancelledError):
            raise
        except Exception as exc:  # transport failure, malformed answer: the effect is unknown
            raise ToolOutcomeUnknownError(
                f"the call to MCP tool {remote!r} on server {server!r} was sent but its answer "
                f"was lost ({type(exc).__name__}: {exc})",
                details={"server": server, "tool": remote},
            ) from exc
        return _result(result, server, remote)

    return call_mcp_tool


def _risk_of(
    spec: Any, risk: RiskSpec | None, default_risk: RiskLevel | int
) -> tuple[RiskLevel | int, str]:
    if risk is None:
        return default_risk, "default"
    if isinstance(risk, Mapping):
        if spec.name in risk:
            return risk[spec.name], "declared"
        return default_risk, "default"
    decided = risk(spec)
    return (default_risk, "default") if decided is None else (decided, "rule")


async def mcp_tools(
    server: Any,
    *,
    risk: RiskSpec | None = None,
    default_risk: RiskLevel | int = RiskLevel.L2,
    invariants: Mapping[str, Iterable[Invariant]] | None = None,
    risk_rules: Mapping[str, Iterable[RiskRule]] | None = None,
    evidence: Mapping[str, Evidence] | None = None,
    approvers: Mapping[str, Iterable[str]] | None = None,
    quorum: Mapping[str, int] | None = None,
    reconcile: Mapping[str, Reconcile] | None = None,
    include: Iterable[str] | None = None,
    prefix: str = "",
    timeout: float | Mapping[str, float] | None = None,  # noqa: ASYNC109  # per call, by the gateway
    shadow: bool = False,
    read_timeout_s: float | None = None,
) -> MCPToolset:
    """Turn the tools an MCP server lists into agent tools behind the gateway.

    Per-tool options are keyed by the **server's** tool names; naming a tool the server does
    not list is an error (a typo would otherwise leave a tool at the default risk silently).

    Args:
        server: An entered `mcp.Client` or `mcp.ClientSession` (borrowed: you close it), or
            what `mcp.Client` connects to: `StdioServerParameters` (the server runs as a child
            process), a streamable HTTP URL, an mcp `Transport`, or an `MCPServer` object
            (in-process, for tests); the toolset owns that connection: close it with `aclose()`
            (from any task) or `async with`.
        risk: `{tool name: RiskLevel}`, or a rule `(mcp.types.Tool) -> RiskLevel | None` that
            sees the tool as listed (name, description, schema, annotations); `None` from the
            rule means `default_risk`.
        default_risk: Risk of a tool `risk` does not decide (default `L2`: each call waits for
            a person's approval).
        invariants: `{tool name: [Invariant, ...]}` (e.g. `budget_cap()` with `evidence`
            returning `budget_spent` for budgets).
        risk_rules: `{tool name: [RiskRule, ...]}` raising risk from the arguments.
        evidence: `{tool name: (args, ctx) -> facts}` for invariants.
        approvers: `{tool name: [actor ids]}` (required for L3 tools).
        quorum: `{tool name: distinct approvals needed}`.
        reconcile: `{tool name: (args, ctx) -> Reconciled | None}`: how to find out whether an
            in-doubt call took effect (see the gateway).
        include: Only these server tools (default: all it lists).
        prefix: Prepended to every agent tool name (e.g. `"billing_"`), to keep two servers'
            tools apart.
        timeout: Seconds a call may take, for every tool or as `{tool name: seconds}` (default:
            the agent's `tool_timeout_s`); the call is cancelled, and a side-effecting call over
            it is `in_doubt` (the server may still complete it).
        shadow: Shadow mode for these tools: side-effecting calls are logged, never sent.
        read_timeout_s: The MCP client's read timeout when this function opens the connection.

    Returns:
        An `MCPToolset`: a sequence of `Tool` (pass `tools=[*toolset]` to `define_agent`) with
        `info` per tool.

    Raises:
        ConfigurationError: The `mcp` SDK is not installed (`pip install
            'contractspec-agent[mcp]'`).
        SpecDefinitionError: A per-tool option names a tool the server does not list, a risk
            level or option is invalid, two server tools map to one agent name, or a tool's
            `inputSchema` is not a valid JSON Schema of an object.
        MCPConnectionError: The server could not be reached (only when this function connects).
        MCPToolError: Listing the tools failed on the server.
    """
    try:
        import mcp.types  # noqa: F401  # the SDK is needed from here on
    except ImportError:
        raise ConfigurationError(
            "contractspec.agent.mcp needs the MCP Python SDK: pip install 'contractspec-agent[mcp]'",
            details={"extra": "contractspec-agent[mcp]"},
        ) from None
    conn = _Connection(server, read_timeout_s)
    await conn.open()
    try:
        return await _build(
            conn,
            risk=risk,
            default_risk=default_risk,
            invariants=invariants,
            risk_rules=risk_rules,
            evidence=evidence,
            approvers=approvers,
            quorum=quorum,
            reconcile=reconcile,
            include=include,
            prefix=prefix,
            timeout=timeout,
            shadow=shadow,
        )
    except BaseException:
        await conn.close()
        raise


async def _list_all(session: Any) -> list[Any]:
    from mcp import Client
    from mcp.shared.exceptions import MCPError
    from mcp.types import PaginatedRequestParams

    listed: list[Any] = []
    cursor: str | None = None
    while True:
        try:
            if cursor is None:
                page = await session.list_tools()
            elif isinstance(session, Client):
                page = await session.list_tools(cursor=cursor)
            else:  # ClientSession
                page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor))
        except MCPError as exc:
            raise MCPToolError(
                f"listing the MCP server's tools failed: {exc.message} (JSON-RPC error {exc.code})",
                details={"mcp_code": exc.code},
            ) from exc
        listed.extend(page.tools)
        cursor = getattr(page, "next_cursor", None) or getattr(page, "nextCursor", None)
        if not cursor:
            return listed


def _server_name(session: Any) -> str:
    info = getattr(session, "server_info", None)
    if info is None:
        result = getattr(session, "initialize_result", None)
        info = getattr(result, "server_info", None) or getattr(result, "serverInfo", None)
    name = getattr(info, "name", None)
    return str(name) if name else "mcp"


async def _build(
    conn: _Connection,
    *,
    risk: RiskSpec | None,
    default_risk: RiskLevel | int,
    invariants: Mapping[str, Iterable[Invariant]] | None,
    risk_rules: Mapping[str, Iterable[RiskRule]] | None,
    evidence: Mapping[str, Evidence] | None,
    approvers: Mapping[str, Iterable[str]] | None,
    quorum: Mapping[str, int] | None,
    reconcile: Mapping[str, Reconcile] | None,
    include: Iterable[str] | None,
    prefix: str,
    timeout: float | Mapping[str, float] | None,  # noqa: ASYNC109  # per call, by the gateway
    shadow: bool,
) -> MCPToolset:
    if risk is not None and not isinstance(risk, Mapping) and not callable(risk):
        raise SpecDefinitionError(
            f"mcp_tools(risk=...) must be a mapping of tool names to RiskLevel or a callable "
            f"rule, got {risk!r}",
            details={"field": "risk"},
        )
    if isinstance(include, str):
        raise SpecDefinitionError(
            f"mcp_tools(include=...) takes a list of tool names, got the string {include!r}; "
            f"write include=[{include!r}]",
            details={"field": "include"},
        )
    listed = await _list_all(conn.session)
    conn.listed = {spec.name: _fingerprint(spec) for spec in listed}
    server = _server_name(conn.session)
    names = [spec.name for spec in listed]
    wanted = set(names) if include is None else set(include)
    _per_tool("include", dict.fromkeys(wanted), names)
    if isinstance(risk, Mapping):
        _per_tool("risk", risk, names)
    options = {
        key: _per_tool(key, value, names)
        for key, value in (
            ("invariants", invariants),
            ("risk_rules", risk_rules),
            ("evidence", evidence),
            ("approvers", approvers),
            ("quorum", quorum),
            ("reconcile", reconcile),
            ("timeout", timeout if isinstance(timeout, Mapping) else None),
        )
    }
    tools: list[Tool] = []
    info: dict[str, MCPToolInfo] = {}
    for spec in listed:
        if spec.name not in wanted:
            continue
        name = (prefix + _NAME_CHARS.sub("_", spec.name))[:64]
        if name in info:
            raise SpecDefinitionError(
                f"MCP tools {info[name].remote_name!r} and {spec.name!r} both become agent tool "
                f"{name!r}; pick a different prefix or include only one",
                details={"field": "prefix"},
            )
        conn.pinned[spec.name] = conn.listed[spec.name]
        level, source = _risk_of(spec, risk, default_risk)
        limit = options["timeout"].get(spec.name) if isinstance(timeout, Mapping) else timeout
        checked, names_, invs, rules = _check_common(
            name,
            level,
            limit,
            options["approvers"].get(spec.name, ()),
            options["quorum"].get(spec.name, 1),
            options["invariants"].get(spec.name, ()),
            options["risk_rules"].get(spec.name, ()),
        )
        schema = dict(spec.input_schema if hasattr(spec, "input_schema") else spec.inputSchema)
        class_name = "".join(p.title() for p in re.split(r"[_-]", name) if p) + "Args"
        annotations = spec.annotations
        tools.append(
            Tool(
                name=name,
                description=spec.description or f"Call {spec.name} on MCP server {server}.",
                input=_arguments_model(class_name, schema, spec.name),
                parameters=schema,
                kind="function",
                risk=checked,
                side_effects=checked >= RiskLevel.L1,
                timeout=limit,
                invariants=invs,
                risk_rules=rules,
                evidence=options["evidence"].get(spec.name),
                approvers=names_,
                quorum=options["quorum"].get(spec.name, 1),
                shadow=shadow,
                reconcile=options["reconcile"].get(spec.name),
                function=_caller(conn, server, spec.name),
                context_param="ctx",
                positional=True,
            )
        )
        info[name] = MCPToolInfo(
            server=server,
            remote_name=spec.name,
            name=name,
            risk=checked,
            risk_source=source,
            annotations=(
                annotations.model_dump(mode="json", by_alias=True, exclude_none=True)
                if annotations is not None
                else {}
            ),
        )
    return MCPToolset(server, tools, info, conn)
