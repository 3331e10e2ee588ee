"""Notification center: events → recipients → channels → sandboxed templates → delivery log.

```python
deal_won = define_notification(
    "crm.deal_won",
    event=deal_moved,
    when={"payload.to_stage": "won"},
    recipients=[to_role("sales_manager"), to_field("payload.owner_id")],
    channels=["email", "in_app"],
    templates={
        "en": Template(subject="Deal {{ deal_id }} won", body="{{ recipient.name }}, well done."),
        "fr": Template(subject="Affaire {{ deal_id }} gagnée", body="Bravo {{ recipient.name }}."),
    },
)
center = NotificationCenter([deal_won], channels=[InAppChannel(inbox)], directory=directory,
                            delivery_log=MemoryDeliveryLog())
center.subscribe(bus)
```

Templates are compiled in Jinja2's `ImmutableSandboxedEnvironment` with `StrictUndefined` and no
globals, and checked **at definition time** against the event's payload model: an unknown
variable or field, a private attribute (`__class__`), `str.format`, `include`/`import`/`extends`
or a syntax error raises `SpecDefinitionError` when `define_notification` runs, not when a message
is sent. Payload values are data, never templates.

Rendering is bounded: templates that could take unbounded time or memory are refused at
definition (nested or recursive loops, macros, `**`, a constant size argument such as
`|center(1000000000)` or `"x" * 10**9` above the output limit), and at render time every part is
limited to `max_render_chars` characters of output (default 100,000) and `render_timeout`
seconds (default 1 s; checked at each attribute access, call, filter, operator and output chunk).
Every render failure, `RecursionError` and `MemoryError` included, is one
`NotificationRenderError`.
"""

from __future__ import annotations

import contextvars
import inspect
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar, Protocol, get_args, get_origin, runtime_checkable

import jinja2
from attrs import define, field
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel

from contractspec.bus._retry import RetryPolicy
from contractspec.bus.bus import _MISSING, EventBus, Subscription, _lookup, where_filter
from contractspec.bus.stores import (
    DeliveryLogStore,
    DeliveryRecord,
    InAppNotification,
    InAppStore,
    PreferenceStore,
    resolve_preference,
)
from contractspec.core import (
    Clock,
    ConfigurationError,
    ConflictError,
    ContractSpecError,
    EventEnvelope,
    EventSpec,
    IdGenerator,
    SpecDefinitionError,
    SpecRegistry,
    SystemClock,
    UuidGenerator,
)
from contractspec.core._log import get_logger

__all__ = [
    "Channel",
    "InAppChannel",
    "MemoryDirectory",
    "NotificationCenter",
    "NotificationRenderError",
    "NotificationSpec",
    "OutgoingMessage",
    "Recipient",
    "RecipientDirectory",
    "RecipientRule",
    "Template",
    "define_notification",
    "to_field",
    "to_resolver",
    "to_role",
    "to_user",
]

_log = get_logger(__name__)
_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z")
_CHANNEL = re.compile(r"^[a-z][a-z0-9_]*\Z")
_LOCALE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})*\Z")
#: Method names that escape the sandbox's formatting rules or call into it.
_FORBIDDEN_ATTRS = frozenset({"format", "format_map", "mro"})
_FORBIDDEN_NAMES = frozenset({"self", "varargs", "kwargs", "caller"})


class NotificationRenderError(ContractSpecError, RuntimeError):
    """A template failed while rendering.

    Raised for every failure inside `NotificationSpec.render`: a missing value where an
    attribute was read, a sandbox violation, output past `max_render_chars`, a render past
    `render_timeout`, `RecursionError`, `MemoryError` or any other exception of a filter.
    `details`: `notification`, `channel`, `locale`, and `limit` (`"chars"` or `"time"`) when a
    bound was hit.
    """

    code = "notification_render_error"


# --------------------------------------------------------------------------------------------
# Recipients
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class Recipient:
    """Someone a notification is delivered to.

    Attributes:
        id: User id (the idempotency and preference key).
        email: Address for the email channel.
        name: Display name (templates use `recipient.name`).
        locale: Template locale, e.g. `en`, `fr`, `pt-BR`.
        webhook_url: Endpoint for the webhook channel (else the channel's default URL).
    """

    id: str
    email: str | None = None
    name: str | None = None
    locale: str = "en"
    webhook_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "locale": self.locale,
            "webhook_url": self.webhook_url,
        }


@runtime_checkable
class RecipientDirectory(Protocol):
    """Looks recipients up by id and by org role (the identity package can implement it)."""

    async def get_user(self, org_id: str | None, user_id: str) -> Recipient | None:
        """The user in this org, or `None`."""
        ...

    async def users_with_role(self, org_id: str | None, role: str) -> list[Recipient]:
        """Users holding `role` in this org."""
        ...


class MemoryDirectory:
    """A `RecipientDirectory` in memory: `directory.add("org-1", Recipient(...), roles=["admin"])`."""

    def __init__(self) -> None:
        self._users: dict[tuple[str | None, str], tuple[Recipient, frozenset[str]]] = {}

    def add(self, org_id: str | None, recipient: Recipient, *, roles: Iterable[str] = ()) -> None:
        """Add (or replace) a user of an org with roles."""
        self._users[(org_id, recipient.id)] = (recipient, frozenset(roles))

    async def get_user(self, org_id: str | None, user_id: str) -> Recipient | None:
        """The user, or `None`."""
        found = self._users.get((org_id, user_id))
        return None if found is None else found[0]

    async def users_with_role(self, org_id: str | None, role: str) -> list[Recipient]:
        """Users of the org holding `role`, in insertion order."""
        return [
            r for (org, _), (r, roles) in self._users.items() if org == org_id and role in roles
        ]


ResolverFn = Callable[
    [EventEnvelope, RecipientDirectory], Awaitable[Iterable[Recipient]] | Iterable[Recipient]
]


@define(frozen=True)
class RecipientRule:
    """Who receives a notification: a user, an org role, a payload field or a resolver.

    Build with `to_user`, `to_role`, `to_field` or `to_resolver`.
    """

    kind: str
    value: Any
    description: str

    async def resolve(self, event: EventEnvelope, directory: RecipientDirectory) -> list[Recipient]:
        """The recipients for `event`."""
        if self.kind == "user":
            found = await directory.get_user(event.org_id, self.value)
            return [] if found is None else [found]
        if self.kind == "role":
            return list(await directory.users_with_role(event.org_id, self.value))
        if self.kind == "field":
            raw = _lookup(event, self.value)
            if raw is _MISSING or raw is None:
                return []
            ids = raw if isinstance(raw, list | tuple | set | frozenset) else [raw]
            out = []
            for uid in ids:
                found = await directory.get_user(event.org_id, str(uid))
                if found is not None:
                    out.append(found)
            return out
        result = self.value(event, directory)
        if inspect.isawaitable(result):
            result = await result
        return list(result)


def to_user(user_id: str) -> RecipientRule:
    """A fixed user (looked up in the event's org)."""
    if not isinstance(user_id, str) or not user_id:
        raise SpecDefinitionError(
            "to_user() needs a non-empty user id", details={"field": "recipients"}
        )
    return RecipientRule("user", user_id, f"user {user_id}")


def to_role(role: str) -> RecipientRule:
    """Every user holding `role` in the event's org."""
    if not isinstance(role, str) or not role:
        raise SpecDefinitionError(
            "to_role() needs a non-empty role", details={"field": "recipients"}
        )
    return RecipientRule("role", role, f"role {role}")


def to_field(path: str) -> RecipientRule:
    """The user (or users, for a list) whose id is at a dotted envelope path (`payload.owner_id`)."""
    if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
        raise SpecDefinitionError(
            f"to_field() needs a dotted path such as 'payload.owner_id', got {path!r}",
            details={"field": "recipients"},
        )
    return RecipientRule("field", path, f"field {path}")


def to_resolver(fn: ResolverFn, description: str = "") -> RecipientRule:
    """Recipients computed by `fn(event, directory)` (sync or async)."""
    if not callable(fn):
        raise SpecDefinitionError("to_resolver() needs a callable", details={"field": "recipients"})
    return RecipientRule("resolver", fn, description or getattr(fn, "__qualname__", "resolver"))


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


#: Default bound on the characters one rendered part (subject, body, html) may have.
MAX_RENDER_CHARS = 100_000
#: Default bound on the seconds one `render` may take.
RENDER_TIMEOUT = 1.0


class _RenderLimit(Exception):
    """A render bound was hit (turned into `NotificationRenderError`)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


@define
class _Budget:
    deadline: float
    max_chars: int

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _RenderLimit("time", "render took longer than its timeout")

    def size(self, n: int) -> None:
        if n > self.max_chars:
            raise _RenderLimit(
                "chars", f"a value of {n} characters exceeds max_render_chars ({self.max_chars})"
            )


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "contractspec_bus_render_budget", default=None
)


def _budget() -> _Budget | None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick()
    return budget


def _sized(value: Any) -> int:
    try:
        return len(value) if isinstance(value, str | bytes | list | tuple) else 0
    except Exception:  # pragma: no cover - defensive
        return 0


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, checking the render budget at every attribute access, call,
    filter and `*`/`%` operation, and refusing results larger than the output bound."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if budget is not None:
            if operator == "**":
                raise _RenderLimit("chars", "the ** operator is not allowed in templates")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int):
                        budget.size(len(seq) * max(int(n), 0))
            if operator == "%" and isinstance(left, str):
                for width in re.findall(r"%[-+ #0]*(\d+|\*)", left):
                    if width == "*" or int(width) > budget.max_chars:
                        raise _RenderLimit("chars", f"format width {width} is not allowed")
        result = super().call_binop(context, operator, left, right)
        if budget is not None:
            budget.size(_sized(result))
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        _budget()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _budget()
        return super().getitem(obj, argument)

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        if budget is not None:  # e.g. "x".ljust(10**9) would allocate before any size check
            for arg in (*args, *kwargs.values()):
                if _too_big(arg, budget.max_chars):
                    raise _RenderLimit("chars", f"call argument {arg!r} exceeds max_render_chars")
        result = super().call(__context, __obj, *args, **kwargs)
        if budget is not None:
            budget.size(_sized(result))
        return result


#: Built-in filters whose numeric arguments set the size of their output.
_SIZING_FILTERS = frozenset({"center", "indent", "wordwrap", "format", "truncate"})


def _bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a built-in filter: budget checked before (numeric arguments) and after (size)."""

    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        if budget is not None and name in _SIZING_FILTERS:
            for arg in (*args[1:], *kwargs.values()):
                if _too_big(arg, budget.max_chars):
                    raise _RenderLimit(
                        "chars", f"|{name} argument {arg!r} exceeds max_render_chars"
                    )
            if name == "format" and args and isinstance(args[0], str):
                for width in re.findall(r"%[-+ #0]*(\d+|\*)", args[0]):
                    if width == "*" or int(width) > budget.max_chars:
                        raise _RenderLimit("chars", f"format width {width} is not allowed")
        result = fn(*args, **kwargs)
        if budget is not None:
            budget.size(_sized(result))
        return result

    for attr in ("jinja_pass_arg",):  # keep Jinja's pass_context/pass_environment markers
        if hasattr(fn, attr):
            setattr(bounded, attr, getattr(fn, attr))
    bounded.__name__ = getattr(fn, "__name__", name)
    return bounded


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = _BoundedSandbox(
        undefined=jinja2.StrictUndefined, autoescape=autoescape, keep_trailing_newline=False
    )
    env.globals.clear()
    env.filters = {name: _bounded_filter(name, fn) for name, fn in env.filters.items()}
    return env


_TEXT_ENV = _environment(autoescape=False)
_HTML_ENV = _environment(autoescape=True)


@define(frozen=True)
class Template:
    """The text of one notification for a channel and locale.

    Attributes:
        body: Jinja2 source of the body (plain text).
        subject: Jinja2 source of the subject (email) or title (in-app).
        html: Optional Jinja2 source of an HTML body (email), autoescaped.

    Variables: the payload's fields by name (`{{ deal_id }}`), `payload`, `event` (`id`, `name`,
    `version`, `occurred_at`, `org_id`, `actor_id`, ...) and `recipient` (`id`, `name`, `email`,
    `locale`).
    """

    body: str
    subject: str = ""
    html: str | None = None


_EVENT_ATTRS = frozenset(
    {
        "id",
        "name",
        "version",
        "occurred_at",
        "org_id",
        "actor_id",
        "actor_kind",
        "trace_id",
        "correlation_id",
        "causation_id",
        "request_id",
        "key",
        "operation",
        "payload",
    }
)
_RECIPIENT_ATTRS = frozenset({"id", "email", "name", "locale", "webhook_url"})


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def _is_container(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (list, tuple, set, frozenset, dict) or origin is Sequence or origin is Mapping:
        return True
    return any(_is_container(a) for a in get_args(annotation))


class _Checker:
    """Walks a template AST and checks names and attribute chains against the payload model."""

    def __init__(
        self, payload: type[BaseModel], where: str, max_chars: int = MAX_RENDER_CHARS
    ) -> None:
        self.payload = payload
        self.where = where
        self.max_chars = max_chars

    def fail(self, message: str, node: nodes.Node | None = None) -> SpecDefinitionError:
        line = (
            f" (line {node.lineno})" if node is not None and getattr(node, "lineno", None) else ""
        )
        return SpecDefinitionError(f"{self.where}{line}: {message}", details={"field": "templates"})

    def check(self, ast: nodes.Template, allowed: set[str]) -> None:
        for node in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
            raise self.fail(
                f"{type(node).__name__.lower()} is not allowed in notification templates", node
            )
        for getattr_node in ast.find_all(nodes.Getattr):
            attr = getattr_node.attr
            if attr.startswith("_"):
                raise self.fail(f"private attribute {attr!r} is not allowed", getattr_node)
            if attr in _FORBIDDEN_ATTRS:
                raise self.fail(
                    f"{attr!r} is not allowed; use the |format filter or string concatenation (~)",
                    getattr_node,
                )
        for flt in ast.find_all(nodes.Filter):
            if flt.name == "attr":
                raise self.fail("the attr filter is not allowed; use dotted access", flt)
        self._check_bounds(ast)
        for getitem in ast.find_all(nodes.Getitem):
            arg = getitem.arg
            if (
                isinstance(arg, nodes.Const)
                and isinstance(arg.value, str)
                and arg.value.startswith("_")
            ):
                raise self.fail(f"private item {arg.value!r} is not allowed", getitem)
        for name in ast.find_all(nodes.Name):
            if name.name in _FORBIDDEN_NAMES:
                raise self.fail(f"{name.name!r} is not available in notification templates", name)
        undeclared = _undeclared(ast)
        unknown = sorted(undeclared - allowed)
        if unknown:
            fields = ", ".join(sorted(self.payload.model_fields)) or "none"
            raise self.fail(
                f"unknown variable(s) {', '.join(unknown)}; the payload "
                f"{self.payload.__name__} has: {fields} (plus event, payload, recipient)"
            )
        for top in ast.find_all(nodes.Getattr):
            chain = _chain(top)
            if chain is not None:
                self._check_chain(chain, top)

    def _check_bounds(self, ast: nodes.Template) -> None:
        """Refuse what could make a render take unbounded time or memory."""
        for loop in ast.find_all(nodes.For):
            if loop.recursive:
                raise self.fail("recursive loops are not allowed in notification templates", loop)
            for part in (*loop.body, *loop.else_):
                inner = part if isinstance(part, nodes.For) else part.find(nodes.For)
                if inner is not None:
                    raise self.fail(
                        "nested loops are not allowed in notification templates (render time "
                        "grows with the product of the lengths); prepare the data in the payload",
                        inner,
                    )
        for node in ast.find_all((nodes.Macro, nodes.CallBlock)):
            raise self.fail(
                f"{'macros' if isinstance(node, nodes.Macro) else 'call blocks'} are not allowed "
                "in notification templates",
                node,
            )
        for power in ast.find_all(nodes.Pow):
            raise self.fail("the ** operator is not allowed in notification templates", power)
        for mul in ast.find_all(nodes.Mul):
            for side in (mul.left, mul.right):
                if isinstance(side, nodes.Const) and _too_big(side.value, self.max_chars):
                    raise self.fail(
                        f"multiplying by {side.value!r} exceeds max_render_chars "
                        f"({self.max_chars})",
                        mul,
                    )
        calls: list[nodes.Filter | nodes.Call] = [
            *ast.find_all(nodes.Filter),
            *ast.find_all(nodes.Call),
        ]
        for call in calls:
            if isinstance(call, nodes.Filter) and call.name not in _SIZING_FILTERS:
                continue
            args = [*call.args, *(kw.value for kw in call.kwargs)]
            for arg in args:
                if isinstance(arg, nodes.Const) and _too_big(arg.value, self.max_chars):
                    what = f"|{call.name}" if isinstance(call, nodes.Filter) else "a call"
                    raise self.fail(
                        f"{what} argument {arg.value!r} exceeds max_render_chars "
                        f"({self.max_chars}); such a render would not fit",
                        call,
                    )

    def _check_chain(self, chain: list[str], node: nodes.Node) -> None:
        root, *attrs = chain
        if not attrs:
            return
        if root == "recipient":
            if attrs[0] not in _RECIPIENT_ATTRS:
                raise self.fail(
                    f"recipient has no attribute {attrs[0]!r} (use {', '.join(sorted(_RECIPIENT_ATTRS))})",
                    node,
                )
            return
        if root == "event":
            if attrs[0] not in _EVENT_ATTRS:
                raise self.fail(
                    f"event has no attribute {attrs[0]!r} (use {', '.join(sorted(_EVENT_ATTRS))})",
                    node,
                )
            if attrs[0] != "payload":
                return
            attrs = attrs[1:]
            model_attrs = attrs
        elif root == "payload":
            model_attrs = attrs
        else:
            info = self.payload.model_fields.get(root)
            if info is None:
                return  # a loop or set variable: not checkable statically
            model_attrs = [root, *attrs]
        self._walk(self.payload, model_attrs, node, ".".join(chain))

    def _walk(
        self, model: type[BaseModel], attrs: list[str], node: nodes.Node, written: str
    ) -> None:
        current = [model]
        path: list[str] = []
        for attr in attrs:
            path.append(attr)
            matches = [m for m in current if attr in m.model_fields]
            if not matches:
                known = sorted({f for m in current for f in m.model_fields})
                raise self.fail(
                    f"{written}: {'.'.join(path)} is not a field of {model.__name__}; "
                    f"known fields here: {', '.join(known) or 'none'}",
                    node,
                )
            annotations = [m.model_fields[attr].annotation for m in matches]
            if any(_is_container(a) for a in annotations):
                return  # items of lists/dicts are not checked further
            current = [n for a in annotations for n in _models(a)]
            if not current:
                return


def _too_big(value: Any, limit: int) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not abs(value) <= limit  # NaN and inf included
    )


def _chain(node: nodes.Getattr) -> list[str] | None:
    """`a.b.c` → `["a", "b", "c"]` for the outermost Getattr of a Name; else `None`."""
    attrs: list[str] = []
    current: nodes.Node = node
    while isinstance(current, nodes.Getattr):
        attrs.append(current.attr)
        current = current.node
    if not isinstance(current, nodes.Name):
        return None
    return [current.name, *reversed(attrs)]


def _undeclared(ast: nodes.Template) -> set[str]:
    from jinja2 import meta

    return set(meta.find_undeclared_variables(ast))


@define(frozen=True)
class _Compiled:
    subject: jinja2.Template
    body: jinja2.Template
    html: jinja2.Template | None


def _compile(
    template: Template, payload: type[BaseModel], where: str, max_chars: int = MAX_RENDER_CHARS
) -> _Compiled:
    if not isinstance(template, Template):
        raise SpecDefinitionError(
            f"{where}: expected Template(body=..., subject=...), got {type(template).__name__}",
            details={"field": "templates"},
        )
    allowed = set(payload.model_fields) | {"event", "payload", "recipient"}
    compiled: dict[str, jinja2.Template | None] = {}
    for part, source, env in (
        ("subject", template.subject, _TEXT_ENV),
        ("body", template.body, _TEXT_ENV),
        ("html", template.html, _HTML_ENV),
    ):
        if source is None:
            compiled[part] = None
            continue
        if not isinstance(source, str):
            raise SpecDefinitionError(
                f"{where}: {part} must be a string", details={"field": "templates"}
            )
        try:
            ast = env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise SpecDefinitionError(
                f"{where} {part} (line {exc.lineno}): template syntax error: {exc.message}",
                details={"field": "templates"},
            ) from None
        _Checker(payload, f"{where} {part}", max_chars).check(ast, allowed)
        compiled[part] = env.from_string(source)
    subject, body = compiled["subject"], compiled["body"]
    assert subject is not None
    assert body is not None
    return _Compiled(subject, body, compiled["html"])


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class NotificationSpec:
    """A notification: which event triggers it, for whom, on which channels, with which text.

    Made by `define_notification`; register it in a `SpecRegistry` next to the event (kind
    `notification`).

    Attributes:
        name: Dotted name (`crm.deal_won`), the notification type users set preferences for.
        version: Positive integer.
        event: The triggering event spec.
        recipients: Recipient rules (their union, without duplicates).
        channels: Channel names, in delivery order.
        templates: `{(channel or "*", locale): Template}`.
        default_locale: Used when a recipient's locale has no template.
        critical: Critical notifications ignore opt-outs.
        when: Extra condition on the event, or `None`.
        description: Docs.
        render_timeout: Seconds one `render` may take.
        max_render_chars: Characters one rendered part (subject, body, html) may have.
    """

    kind: ClassVar[str] = "notification"

    name: str
    version: int
    event: EventSpec
    recipients: tuple[RecipientRule, ...]
    channels: tuple[str, ...]
    templates: Mapping[tuple[str, str], Template]
    default_locale: str = "en"
    critical: bool = False
    when: Callable[[EventEnvelope], bool] | None = None
    description: str = ""
    render_timeout: float = RENDER_TIMEOUT
    max_render_chars: int = MAX_RENDER_CHARS
    _compiled: Mapping[tuple[str, str], _Compiled] = field(factory=dict, repr=False)

    @property
    def ref(self) -> str:
        """`name@version`."""
        return f"{self.name}@{self.version}"

    def template_for(self, channel: str, locale: str) -> tuple[tuple[str, str], _Compiled]:
        """The compiled template for a channel and locale, with fallbacks.

        Order: `(channel, locale)`, `(channel, language)`, `(*, locale)`, `(*, language)`, then
        the same with `default_locale`.
        """
        for loc in _locale_chain(locale) + _locale_chain(self.default_locale):
            for ch in (channel, "*"):
                found = self._compiled.get((ch, loc))
                if found is not None:
                    return (ch, loc), found
        raise ConfigurationError(  # pragma: no cover - define_notification guarantees a default
            f"{self.ref} has no template for {channel}/{locale}"
        )

    def render(self, channel: str, event: EventEnvelope, recipient: Recipient) -> dict[str, Any]:
        """Render `subject`, `body` (and `html`) for one recipient.

        Each part may produce at most `max_render_chars` characters and the whole render may
        take at most `render_timeout` seconds (checked at every attribute access, call, filter,
        operator and output chunk: a single built-in operation between checks is bounded by the
        size checks).

        Raises:
            NotificationRenderError: Any failure at render time (a sandbox violation, a missing
                value, a bound hit, `RecursionError`, `MemoryError`, a filter's exception); the
                message says which notification, channel and locale.
        """
        key, compiled = self.template_for(channel, recipient.locale)
        payload = event.payload
        context: dict[str, Any] = {
            name: getattr(payload, name, None) for name in type(payload).model_fields
        }
        context.update(payload=payload, event=event, recipient=recipient)
        budget = _Budget(time.monotonic() + self.render_timeout, self.max_render_chars)
        token = _BUDGET.set(budget)
        try:
            return {
                "subject": _render(compiled.subject, context, budget).strip(),
                "body": _render(compiled.body, context, budget),
                "html": _render(compiled.html, context, budget)
                if compiled.html is not None
                else None,
                "locale": key[1],
            }
        except Exception as exc:  # every failure is one documented error
            details: dict[str, Any] = {
                "notification": self.ref,
                "channel": channel,
                "locale": key[1],
            }
            if isinstance(exc, _RenderLimit):
                details["limit"] = exc.limit
                reason = str(exc)
                if exc.limit == "time":
                    reason = f"render took longer than render_timeout ({self.render_timeout:g} s)"
            else:
                reason = f"{type(exc).__name__}: {str(exc)[:500]}"
            raise NotificationRenderError(
                f"{self.ref} template {key[0]}/{key[1]} failed to render: {reason}",
                details=details,
            ) from None
        finally:
            _BUDGET.reset(token)


def _render(template: jinja2.Template, context: Mapping[str, Any], budget: _Budget) -> str:
    """Stream `template`, checking the budget at every chunk."""
    parts: list[str] = []
    total = 0
    for chunk in template.generate(context):
        total += len(chunk)
        budget.size(total)
        budget.tick()
        parts.append(chunk)
    return "".join(parts)


def _locale_chain(locale: str) -> list[str]:
    norm = locale.replace("_", "-")
    lang = norm.split("-", 1)[0].lower()
    return [norm] if norm == lang else [norm, lang]


def _template_key(key: Any, where: str) -> tuple[str, str]:
    if isinstance(key, tuple) and len(key) == 2:
        channel, locale = key
    elif isinstance(key, str) and ":" in key:
        channel, locale = key.split(":", 1)
    elif isinstance(key, str):
        channel, locale = "*", key
    else:
        raise SpecDefinitionError(
            f"{where}: template key {key!r} must be a locale ('en'), 'channel:locale' or "
            "(channel, locale)",
            details={"field": "templates"},
        )
    if channel != "*" and not _CHANNEL.match(str(channel)):
        raise SpecDefinitionError(f"{where}: channel {channel!r} in a template key is not valid")
    if not isinstance(locale, str) or not _LOCALE.match(locale):
        raise SpecDefinitionError(
            f"{where}: locale {locale!r} is not valid (e.g. 'en', 'fr', 'pt-BR')",
            details={"field": "templates"},
        )
    return str(channel), locale.replace("_", "-")


def define_notification(
    name: str,
    *,
    event: EventSpec,
    recipients: Sequence[RecipientRule],
    channels: Sequence[str],
    templates: Mapping[Any, Template],
    when: Mapping[str, Any] | Callable[[EventEnvelope], bool] | None = None,
    critical: bool = False,
    default_locale: str = "en",
    version: int = 1,
    description: str = "",
    render_timeout: float = RENDER_TIMEOUT,
    max_render_chars: int = MAX_RENDER_CHARS,
) -> NotificationSpec:
    """Declare a notification and check its templates against the event's payload now.

    Args:
        name: Dotted name, e.g. `crm.deal_won` (the type users opt in or out of).
        event: The triggering `EventSpec`.
        recipients: Rules from `to_user`, `to_role`, `to_field`, `to_resolver`.
        channels: Channel names (`email`, `in_app`, `webhook`, or your own).
        templates: `{"en": Template(...), "email:fr": Template(...), ("in_app", "de"): ...}`; a
            bare locale applies to every channel. A template for `default_locale` must exist
            for every channel (directly or through a bare locale).
        when: Only notify for events matching this `where` mapping or predicate.
        critical: Deliver even to recipients who opted out (security, billing, legal notices).
        default_locale: Fallback locale.
        version: Positive integer.
        description: Docs.
        render_timeout: Seconds one render may take (default 1 s).
        max_render_chars: Characters one rendered part may have (default 100,000).

    Returns:
        A frozen `NotificationSpec`.

    Raises:
        SpecDefinitionError: Invalid name, version, channel, locale, recipients, bounds, or a
            template that does not compile, references a variable or field the payload does not
            have, or could render unboundedly (nested or recursive loops, macros, `**`, a
            constant size argument above `max_render_chars`).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecDefinitionError(
            f"notification name {name!r} is not valid: use dotted lowercase segments, e.g. "
            "'crm.deal_won'",
            details={"field": "name"},
        )
    ref = f"{name}@{version}"
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecDefinitionError(
            f"{ref}: version must be a positive integer", details={"field": "version"}
        )
    if not isinstance(event, EventSpec):
        raise SpecDefinitionError(
            f"{ref}: event must be an EventSpec from define_event(), got {type(event).__name__}",
            details={"field": "event"},
        )
    rules = tuple(recipients)
    if not rules or not all(isinstance(r, RecipientRule) for r in rules):
        raise SpecDefinitionError(
            f"{ref}: recipients must be a non-empty list of to_user()/to_role()/to_field()/"
            "to_resolver() rules",
            details={"field": "recipients"},
        )
    chans = tuple(dict.fromkeys(channels))
    if not chans or not all(isinstance(c, str) and _CHANNEL.match(c) for c in chans):
        raise SpecDefinitionError(
            f"{ref}: channels must be a non-empty list of channel names such as 'email', 'in_app'",
            details={"field": "channels"},
        )
    if not isinstance(default_locale, str) or not _LOCALE.match(default_locale):
        raise SpecDefinitionError(f"{ref}: default_locale {default_locale!r} is not valid")
    if (
        isinstance(render_timeout, bool)
        or not isinstance(render_timeout, int | float)
        or not 0 < render_timeout < 3600
    ):
        raise SpecDefinitionError(
            f"{ref}: render_timeout must be a number of seconds in (0, 3600), got "
            f"{render_timeout!r}",
            details={"field": "render_timeout"},
        )
    if (
        isinstance(max_render_chars, bool)
        or not isinstance(max_render_chars, int)
        or max_render_chars < 1
    ):
        raise SpecDefinitionError(
            f"{ref}: max_render_chars must be a positive integer, got {max_render_chars!r}",
            details={"field": "max_render_chars"},
        )
    if not templates:
        raise SpecDefinitionError(
            f"{ref}: templates must not be empty; give at least {{'{default_locale}': Template(...)}}",
            details={"field": "templates"},
        )
    normalized: dict[tuple[str, str], Template] = {}
    compiled: dict[tuple[str, str], _Compiled] = {}
    for raw_key, template in templates.items():
        key = _template_key(raw_key, ref)
        if key[0] != "*" and key[0] not in chans:
            raise SpecDefinitionError(
                f"{ref}: template for channel {key[0]!r}, which is not in channels "
                f"({', '.join(chans)})",
                details={"field": "templates"},
            )
        normalized[key] = template
        compiled[key] = _compile(
            template, event.payload, f"{ref} template {key[0]}/{key[1]}", max_render_chars
        )
    default = default_locale.replace("_", "-")
    for ch in chans:
        if (ch, default) not in compiled and ("*", default) not in compiled:
            raise SpecDefinitionError(
                f"{ref}: channel {ch!r} has no template for the default locale {default!r}",
                details={"field": "templates"},
            )
    predicate: Callable[[EventEnvelope], bool] | None
    if when is None:
        predicate = None
    elif isinstance(when, Mapping):
        predicate = where_filter(when)
    elif callable(when):
        predicate = when
    else:
        raise SpecDefinitionError(
            f"{ref}: when must be a mapping or a predicate", details={"field": "when"}
        )
    return NotificationSpec(
        name=name,
        version=version,
        event=event,
        recipients=rules,
        channels=chans,
        templates=normalized,
        default_locale=default,
        critical=bool(critical),
        when=predicate,
        description=description,
        render_timeout=float(render_timeout),
        max_render_chars=max_render_chars,
        compiled=compiled,
    )


# --------------------------------------------------------------------------------------------
# Channels
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class OutgoingMessage:
    """A rendered message handed to a channel.

    Attributes:
        delivery_id: Id of the delivery-log record (use it as an idempotency key downstream).
        notification: Notification type.
        channel: Channel name.
        org_id: Tenant.
        event_id, event_name: The triggering event.
        recipient: The recipient.
        subject, body, html: Rendered text.
        locale: Locale of the template used.
        event: The event in JSON form (webhooks send it).
    """

    delivery_id: str
    notification: str
    channel: str
    org_id: str | None
    event_id: str
    event_name: str
    recipient: Recipient
    subject: str
    body: str
    html: str | None
    locale: str
    event: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in the delivery log."""
        return {
            "delivery_id": self.delivery_id,
            "notification": self.notification,
            "channel": self.channel,
            "org_id": self.org_id,
            "event_id": self.event_id,
            "event_name": self.event_name,
            "recipient": self.recipient.to_dict(),
            "subject": self.subject,
            "body": self.body,
            "html": self.html,
            "locale": self.locale,
            "event": dict(self.event),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutgoingMessage:
        """Rebuild from `to_dict()`."""
        return cls(
            delivery_id=data["delivery_id"],
            notification=data["notification"],
            channel=data["channel"],
            org_id=data.get("org_id"),
            event_id=data["event_id"],
            event_name=data["event_name"],
            recipient=Recipient(**data["recipient"]),
            subject=data["subject"],
            body=data["body"],
            html=data.get("html"),
            locale=data["locale"],
            event=data.get("event") or {},
        )


@runtime_checkable
class Channel(Protocol):
    """A delivery channel. `send` raises on failure (the center retries with backoff)."""

    name: str

    async def send(self, message: OutgoingMessage) -> None:
        """Deliver one message."""
        ...


class InAppChannel:
    """Stores notifications in an `InAppStore` (read/unread), keyed by the delivery id.

    Args:
        store: `MemoryInAppStore` or `SqlInAppStore`.
        clock: Time source for `created_at`.
        name: Channel name (default `in_app`).
    """

    def __init__(
        self, store: InAppStore, *, clock: Clock | None = None, name: str = "in_app"
    ) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.name = name

    async def send(self, message: OutgoingMessage) -> None:
        """Add the notification (a repeat of the same delivery is ignored)."""
        try:
            await self.store.add(
                InAppNotification(
                    id=message.delivery_id,
                    org_id=message.org_id,
                    user_id=message.recipient.id,
                    notification=message.notification,
                    title=message.subject,
                    body=message.body,
                    event_id=message.event_id,
                    created_at=self.clock.now(),
                    data={"event_name": message.event_name},
                )
            )
        except ConflictError:
            return


# --------------------------------------------------------------------------------------------
# The center
# --------------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class NotificationCenter:
    """Turns events into deliveries: rules, preferences, templates, channels, delivery log.

    For each event it finds the notifications triggered by it (by event name, then `when`),
    resolves recipients, skips channels a recipient opted out of (unless the notification is
    critical), renders the template for the recipient's locale, records a `queued` delivery
    (idempotent per notification, event, recipient and channel: a redelivered event sends nothing
    twice) and sends it. A failed send is retried by `retry_due()` with exponential backoff and
    jitter until the policy gives up, then marked `failed`.

    Args:
        notifications: Notification specs, or a `SpecRegistry` holding them (kind `notification`).
        channels: Channel adapters (`InAppChannel`, `EmailChannel`, `WebhookChannel`, yours).
        directory: Resolves users and roles to `Recipient`s.
        delivery_log: `MemoryDeliveryLog` or `SqlDeliveryLog`.
        preferences: Opt-ins/outs; `None` means everyone receives everything.
        retry: Backoff for failed sends (default 5 attempts, 30 s base, 1 h cap, full jitter).
        send_timeout: A `queued` record is not retried by `retry_due` before this much time, so a
            send in progress is not duplicated; a crash mid-send is retried after it.
        clock: Time, ids and jitter source.
        ids: Time, ids and jitter source.
        rng: Time, ids and jitter source.

    Raises:
        ConfigurationError: A notification uses a channel with no adapter, or two adapters share
            a name.
    """

    def __init__(
        self,
        notifications: Iterable[NotificationSpec] | SpecRegistry,
        *,
        channels: Sequence[Channel],
        directory: RecipientDirectory,
        delivery_log: DeliveryLogStore,
        preferences: PreferenceStore | None = None,
        retry: RetryPolicy | None = None,
        send_timeout: timedelta = timedelta(minutes=5),
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
        rng: random.Random | None = None,
    ) -> None:
        specs = (
            list(notifications.specs("notification"))
            if isinstance(notifications, SpecRegistry)
            else list(notifications)
        )
        self.channels: dict[str, Channel] = {}
        for ch in channels:
            if ch.name in self.channels:
                raise ConfigurationError(
                    f"two channel adapters are named {ch.name!r}; give one another name=",
                    details={"field": "channels"},
                )
            self.channels[ch.name] = ch
        self._by_event: dict[str, list[NotificationSpec]] = {}
        for spec in specs:
            if not isinstance(spec, NotificationSpec):
                raise ConfigurationError(
                    f"NotificationCenter takes NotificationSpecs, got {type(spec).__name__}",
                    details={"field": "notifications"},
                )
            missing = [c for c in spec.channels if c not in self.channels]
            if missing:
                raise ConfigurationError(
                    f"{spec.ref} uses channel(s) {', '.join(missing)} but no adapter has that "
                    f"name (configured: {', '.join(self.channels) or 'none'})",
                    details={"field": "channels"},
                )
            self._by_event.setdefault(spec.event.name, []).append(spec)
        self.specs = specs
        self.directory = directory
        self.delivery_log = delivery_log
        self.preferences = preferences
        self.retry = retry or RetryPolicy(max_attempts=5, base_delay=30.0, max_delay=3600.0)
        self.send_timeout = send_timeout
        self.clock: Clock = clock or SystemClock()
        self.ids: IdGenerator = ids or UuidGenerator()
        self._rng = rng or random.Random()

    @property
    def event_names(self) -> list[str]:
        """Names of the events some notification listens to."""
        return sorted(self._by_event)

    def subscribe(
        self, bus: EventBus, *, name: str = "contractspec.notifications"
    ) -> list[Subscription]:
        """Subscribe `handle` to every triggering event on `bus` (one subscription per event)."""
        return [
            bus.subscribe(event_name, self.handle, name=f"{name}:{event_name}")
            for event_name in self.event_names
        ]

    async def handle(self, event: EventEnvelope) -> list[DeliveryRecord]:
        """Create and send the deliveries `event` triggers; return the records created now.

        Raises:
            NotificationRenderError: A template failed to render (the event is retried by the bus).
        """
        created: list[DeliveryRecord] = []
        for spec in self._by_event.get(event.name, ()):
            if spec.when is not None and not spec.when(event):
                continue
            recipients: dict[str, Recipient] = {}
            for rule in spec.recipients:
                for r in await rule.resolve(event, self.directory):
                    recipients.setdefault(r.id, r)
            for recipient in recipients.values():
                allowed = await self._allowed_channels(spec, event.org_id, recipient)
                for channel in allowed:
                    record = await self._queue(spec, channel, event, recipient)
                    if record is not None:
                        created.append(await self._attempt(record))
        return created

    async def _allowed_channels(
        self, spec: NotificationSpec, org_id: str | None, recipient: Recipient
    ) -> list[str]:
        if spec.critical or self.preferences is None:
            return list(spec.channels)
        prefs = await self.preferences.for_user(org_id, recipient.id)
        out = []
        for channel in spec.channels:
            if resolve_preference(prefs, recipient.id, spec.name, channel) is False:
                _log.info(
                    "contractspec.notifications.opted_out",
                    notification=spec.name,
                    recipient=recipient.id,
                    channel=channel,
                )
                continue
            out.append(channel)
        return out

    async def _queue(
        self, spec: NotificationSpec, channel: str, event: EventEnvelope, recipient: Recipient
    ) -> DeliveryRecord | None:
        existing = await self.delivery_log.find(spec.name, event.id, recipient.id, channel)
        if existing is not None:
            return None
        rendered = spec.render(channel, event, recipient)
        now = self.clock.now()
        delivery_id = self.ids.new_id()
        message = OutgoingMessage(
            delivery_id=delivery_id,
            notification=spec.name,
            channel=channel,
            org_id=event.org_id,
            event_id=event.id,
            event_name=event.name,
            recipient=recipient,
            subject=rendered["subject"],
            body=rendered["body"],
            html=rendered["html"],
            locale=rendered["locale"],
            event=event.to_dict(),
        )
        record = DeliveryRecord(
            id=delivery_id,
            org_id=event.org_id,
            notification=spec.name,
            event_id=event.id,
            recipient_id=recipient.id,
            channel=channel,
            status="queued",
            attempts=0,
            message=message.to_dict(),
            created_at=now,
            next_attempt_at=now + self.send_timeout,
        )
        return await self.delivery_log.create(record)

    async def _attempt(self, record: DeliveryRecord) -> DeliveryRecord:
        channel = self.channels[record.channel]
        attempts = record.attempts + 1
        try:
            await channel.send(OutgoingMessage.from_dict(record.message))
        except Exception as exc:
            error = _describe(exc)
            retry_at = (
                None
                if self.retry.gives_up_after(attempts)
                else self.clock.now() + self.retry.backoff(attempts, self._rng)
            )
            _log.warning(
                "contractspec.notifications.send_failed",
                notification=record.notification,
                channel=record.channel,
                recipient=record.recipient_id,
                attempts=attempts,
                gave_up=retry_at is None,
                error=error,
            )
            await self.delivery_log.mark_failed(record.id, error, attempts, retry_at)
        else:
            await self.delivery_log.mark_sent(record.id, self.clock.now(), attempts)
        updated = await self.delivery_log.get(record.id)
        assert updated is not None  # it was just written
        return updated

    async def retry_due(self, *, limit: int = 100) -> list[DeliveryRecord]:
        """Send again every queued delivery whose backoff has passed; return the updated records."""
        due = await self.delivery_log.due(self.clock.now(), limit)
        return [await self._attempt(record) for record in due if record.channel in self.channels]
