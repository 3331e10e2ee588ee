"""The `SpecRegistry`: every spec of an app, versioned, with the handlers bound to operations."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload, runtime_checkable

from pydantic import BaseModel

from contractspec.core.errors import SpecDefinitionError, UnknownOperationError
from contractspec.core.specs import EntitySpec, EventRef, EventSpec, OperationSpec, parse_key

if TYPE_CHECKING:
    from contractspec.core.handler import HandlerCtx

__all__ = ["Handler", "SpecLike", "SpecRegistry"]

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)

#: `async def handler(input: In, ctx: HandlerCtx) -> Out`
Handler = Callable[[Any, "HandlerCtx"], Awaitable[BaseModel]]
H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


@runtime_checkable
class SpecLike(Protocol):
    """What any spec registered in a registry provides (other packages add job, agent, flag specs)."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...


def _is_async_callable(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _check_handler(spec: OperationSpec, handler: object) -> None:
    """Check that `handler` is `async def (input, ctx) -> output` compatible with `spec`."""
    where = f"handler {getattr(handler, '__qualname__', repr(handler))} for {spec.ref}"
    if not callable(handler) or not _is_async_callable(handler):
        raise SpecDefinitionError(
            f"{where} must be an async function: async def handler(input, ctx) -> "
            f"{spec.output.__name__}",
            details={"operation": spec.ref},
        )
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # builtins and some callables have none: accept them
        return
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    has_varargs = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    required_extra = [
        p
        for p in signature.parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    ]
    if (
        (len(positional) < 2 and not has_varargs)
        or any(p.default is p.empty for p in positional[2:])
        or required_extra
    ):
        raise SpecDefinitionError(
            f"{where} must take exactly two arguments (input, ctx), got {signature}",
            details={"operation": spec.ref},
        )
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # unresolved forward references: nothing to check against
        return
    if positional:
        ann = hints.get(positional[0].name)
        if isinstance(ann, type) and issubclass(ann, BaseModel) and not issubclass(spec.input, ann):
            raise SpecDefinitionError(
                f"{where}: its input is annotated {ann.__name__} but the operation's input model is "
                f"{spec.input.__name__}",
                details={"operation": spec.ref},
            )
    ret = hints.get("return")
    if (
        isinstance(ret, type)
        and issubclass(ret, BaseModel)
        and not (issubclass(ret, spec.output) or issubclass(spec.output, ret))
    ):
        raise SpecDefinitionError(
            f"{where}: it is annotated to return {ret.__name__} but the operation's output model is "
            f"{spec.output.__name__}",
            details={"operation": spec.ref},
        )


class SpecRegistry:
    """Holds versioned specs (`name@version`) and the handlers bound to operations.

    Specs of any kind (`operation`, `event`, `entity`, and kinds other packages add, such as
    `job`) live in one registry; names are unique per kind and version.

    Example:
        ```python
        registry = SpecRegistry()
        registry.register(deal_created, create_deal)

        @registry.handler(create_deal)
        async def create(inp: CreateDeal, ctx: HandlerCtx) -> DealOut:
            ...
        ```
    """

    def __init__(self, *specs: SpecLike) -> None:
        self._specs: dict[str, dict[str, dict[int, Any]]] = {}
        self._handlers: dict[tuple[str, int], Handler] = {}
        self._validated = False
        #: Incremented on every change, so executors know when to drop cached plans.
        self.generation = 0
        if specs:
            self.register(*specs)

    # -- registration -------------------------------------------------------------------------

    def register(self, *specs: SpecLike) -> None:
        """Register specs. Events named by operations' `emits` (as objects) are registered too.

        Raises:
            SpecDefinitionError: A spec with the same kind, name and version exists (unless it is
                the very same object), or the object is not a spec.
        """
        for spec in specs:
            if isinstance(spec, OperationSpec):
                for ref in spec.emits:
                    if isinstance(ref, EventSpec):
                        self._add(ref)
            elif getattr(spec, "kind", None) == "workflow" and spec.version not in (
                self._specs.get("workflow", {}).get(spec.name, {})
            ):
                # A workflow derives entities, events and operations with built-in handlers.
                spec.install(self)  # type: ignore[attr-defined]  # WorkflowSpec.install
            self._add(spec)
            if isinstance(spec, EntitySpec):
                for bound in spec.attachments:  # declared with the entity (attachment slots)
                    self._add(bound)

    def _add(self, spec: SpecLike) -> None:
        kind = getattr(spec, "kind", None)
        name = getattr(spec, "name", None)
        version = getattr(spec, "version", None)
        if isinstance(spec, OperationSpec):
            kind = "operation"
        if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(version, int):
            raise SpecDefinitionError(
                f"{spec!r} is not a spec: register objects made by define_command, define_query, "
                "define_event, define_entity (or another package's define_*)"
            )
        by_name = self._specs.setdefault(kind, {}).setdefault(name, {})
        existing = by_name.get(version)
        if existing is not None:
            if existing is spec or existing == spec:
                return
            raise SpecDefinitionError(
                f"{kind} {name}@{version} is already registered; bump the version for a new "
                "definition or register it in another registry",
                details={"kind": kind, "name": name, "version": version},
            )
        if kind in ("operation", "event"):
            other = "event" if kind == "operation" else "operation"
            if name in self._specs.get(other, {}):
                raise SpecDefinitionError(
                    f"{name!r} is already the name of an {other}; operations and events need "
                    "distinct names (e.g. crm.deal.create vs crm.deal.created)"
                )
        by_name[version] = spec
        self._validated = False
        self.generation += 1

    def bind(
        self, spec: OperationSpec | str, handler: Handler, *, version: int | None = None
    ) -> None:
        """Bind `handler` to an operation (a spec object, `"name"` or `"name@version"`).

        Raises:
            SpecDefinitionError: The handler's signature does not fit the operation, or the
                operation already has a different handler.
            UnknownOperationError: No such operation is registered.
        """
        if isinstance(spec, OperationSpec):
            self.register(spec)
            op = spec
        else:
            name, ref_version = parse_key(spec)
            op = self.get(name, version if version is not None else ref_version)
        _check_handler(op, handler)
        key = (op.name, op.version)
        current = self._handlers.get(key)
        if current is not None and current is not handler:
            raise SpecDefinitionError(
                f"{op.ref} already has a handler ({getattr(current, '__qualname__', current)!r}); "
                "bind one handler per operation version",
                details={"operation": op.ref},
            )
        self._handlers[key] = handler
        self.generation += 1

    def handler(self, spec: OperationSpec | str, *, version: int | None = None) -> Callable[[H], H]:
        """Decorator form of `bind`: `@registry.handler(create_deal)`."""

        def decorate(fn: H) -> H:
            self.bind(spec, fn, version=version)
            return fn

        return decorate

    # -- lookup -------------------------------------------------------------------------------

    def get(self, name: str, version: int | None = None) -> OperationSpec:
        """The operation `name` at `version` (latest when `None`).

        Raises:
            UnknownOperationError: No such operation or version; the message lists what exists.
        """
        versions = self._specs.get("operation", {}).get(name)
        if not versions:
            known = sorted(self._specs.get("operation", {}))
            hint = _closest(name, known)
            raise UnknownOperationError(
                f"unknown operation {name!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + (" (no operations are registered)" if not known else ""),
                details={"operation": name},
            )
        if version is None:
            return typing.cast(OperationSpec, versions[max(versions)])
        spec = versions.get(version)
        if spec is None:
            raise UnknownOperationError(
                f"operation {name!r} has no version {version}; registered versions: "
                f"{', '.join(str(v) for v in sorted(versions))}",
                details={"operation": name, "version": version},
            )
        return typing.cast(OperationSpec, spec)

    def get_event(self, name: str, version: int | None = None) -> EventSpec:
        """The event `name` at `version` (latest when `None`).

        Raises:
            SpecDefinitionError: No such event or version.
        """
        spec = self._lookup("event", name, version)
        return typing.cast(EventSpec, spec)

    def get_entity(self, name: str, version: int | None = None) -> EntitySpec[Any]:
        """The entity `name` at `version` (latest when `None`).

        Raises:
            SpecDefinitionError: No such entity or version.
        """
        return typing.cast(EntitySpec[Any], self._lookup("entity", name, version))

    def get_spec(self, kind: str, name: str, version: int | None = None) -> Any:
        """Any registered spec by kind (`operation`, `event`, `entity`, `job`, ...).

        Raises:
            SpecDefinitionError: No such spec.
        """
        if kind == "operation":
            return self.get(name, version)
        return self._lookup(kind, name, version)

    def _lookup(self, kind: str, name: str, version: int | None) -> Any:
        versions = self._specs.get(kind, {}).get(name)
        if not versions or (version is not None and version not in versions):
            known = sorted(self._specs.get(kind, {}))
            raise SpecDefinitionError(
                f"unknown {kind} {name!r}"
                + (f"@{version}" if version else "")
                + f"; registered {kind} specs: {', '.join(known) or 'none'}",
                details={"kind": kind, "name": name},
            )
        return versions[max(versions) if version is None else version]

    def handler_for(self, spec: OperationSpec) -> Handler | None:
        """The handler bound to `spec`, or `None`."""
        return self._handlers.get((spec.name, spec.version))

    def versions(self, name: str, kind: str = "operation") -> list[int]:
        """Registered versions of `name`, ascending."""
        return sorted(self._specs.get(kind, {}).get(name, {}))

    @overload
    def specs(self, kind: typing.Literal["operation"]) -> list[OperationSpec]: ...
    @overload
    def specs(self, kind: typing.Literal["event"]) -> list[EventSpec]: ...
    @overload
    def specs(self, kind: typing.Literal["entity"]) -> list[EntitySpec[Any]]: ...
    @overload
    def specs(self, kind: str) -> list[Any]: ...
    def specs(self, kind: str) -> list[Any]:
        """Every spec of one kind, sorted by name then version."""
        by_name = self._specs.get(kind, {})
        return [by_name[n][v] for n in sorted(by_name) for v in sorted(by_name[n])]

    def operations(self) -> list[OperationSpec]:
        """Every operation (all versions), sorted by name then version."""
        return self.specs("operation")

    def events(self) -> list[EventSpec]:
        """Every event (all versions), sorted by name then version."""
        return self.specs("event")

    def entities(self) -> list[EntitySpec[Any]]:
        """Every entity, sorted by name then version."""
        return self.specs("entity")

    def kinds(self) -> list[str]:
        """Spec kinds present, sorted."""
        return sorted(k for k, v in self._specs.items() if v)

    def __iter__(self) -> Iterator[Any]:
        for kind in self.kinds():
            yield from self.specs(kind)

    def __len__(self) -> int:
        return sum(
            len(versions) for by_name in self._specs.values() for versions in by_name.values()
        )

    def __contains__(self, ref: object) -> bool:
        if not isinstance(ref, str):
            return any(s is ref for s in self)
        name, version = parse_key(ref)
        for by_name in self._specs.values():
            versions = by_name.get(name)
            if versions and (version is None or version in versions):
                return True
        return False

    # -- validation ---------------------------------------------------------------------------

    def resolve_event(self, op: OperationSpec, ref: EventSpec | EventRef) -> EventSpec:
        """The registered event an `emits` entry refers to.

        Raises:
            SpecDefinitionError: The event (or that version of it) is not registered.
        """
        if isinstance(ref, EventSpec):
            return ref
        versions = self._specs.get("event", {}).get(ref.name)
        if not versions or (ref.version is not None and ref.version not in versions):
            raise SpecDefinitionError(
                f"{op.ref} emits {ref.ref!r}, which is not a registered event; register it with "
                "registry.register(define_event(...)) or fix the name",
                details={"operation": op.ref, "event": ref.ref},
            )
        return typing.cast(
            EventSpec, versions[max(versions) if ref.version is None else ref.version]
        )

    def to_ir(self) -> dict[str, Any]:
        """The canonical IR of every spec (see `contractspec.core.ir.to_ir`)."""
        from contractspec.core.ir import to_ir

        return to_ir(self)

    def validate(self, *, require_handlers: bool = False) -> None:
        """Check cross-references: every `emits` entry names a registered event and, with
        `require_handlers=True`, every operation has a handler.

        Raises:
            SpecDefinitionError: The first problem found, with the fix.
        """
        for op in self.operations():
            for ref in op.emits:
                self.resolve_event(op, ref)
            if require_handlers and (op.name, op.version) not in self._handlers:
                raise SpecDefinitionError(
                    f"{op.ref} has no handler; bind one with @registry.handler({op.name!r})",
                    details={"operation": op.ref},
                )
        self._validated = True


def _closest(name: str, known: list[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return matches[0] if matches else None
