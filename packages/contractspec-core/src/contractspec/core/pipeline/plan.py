"""Stage 1: what is resolved once per operation version, and input/output validation.

A `Plan` is built the first time an operation version runs (and again when the registry changes):
the spec, its handler, the events it may emit and the permissions it requires. Validation turns
pydantic errors into `SpecValidationError` (input) or `HandlerContractError` (output) without the
rejected values of fields marked `pii`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from contractspec.core.context import Resource
from contractspec.core.errors import ConfigurationError, HandlerContractError, SpecValidationError
from contractspec.core.registry import Handler, SpecRegistry
from contractspec.core.specs import EventSpec, OperationSpec, Stability

__all__ = ["Plan", "Plans", "validation_errors"]


def validation_errors(
    role: str, exc: ValidationError, pii: frozenset[str]
) -> tuple[str, list[dict[str, Any]]]:
    """A short message and pydantic's error list, without the values of `pii` fields.

    Args:
        role: `input`, `output` or `payload` (the prefix of the spec's pii paths).
        exc: The pydantic error.
        pii: Dotted paths marked personal in the spec.

    Returns:
        `(message listing at most five errors, error dicts with a dotted `field`)`.
    """
    errors: list[dict[str, Any]] = []
    parts: list[str] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        item: dict[str, Any] = {k: v for k, v in err.items() if k != "input"}
        item["field"] = loc
        if f"{role}.{loc}" not in pii and "input" in err and _jsonable_scalar(err["input"]):
            item["input"] = err["input"]
        item["loc"] = list(err.get("loc", ()))
        if "ctx" in item:
            item["ctx"] = {
                k: (v if _jsonable_scalar(v) else str(v)) for k, v in item["ctx"].items()
            }
        errors.append(item)
        parts.append(f"{loc or '(root)'}: {err.get('msg', 'invalid')}")
    shown = "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "")
    return shown, errors


def _jsonable_scalar(value: Any) -> bool:
    return value is None or (
        isinstance(value, str | int | float | bool)
        and not (isinstance(value, str) and len(value) > 200)
    )


class Plan:
    """Everything resolved once per operation version: spec, handler, declared events."""

    __slots__ = (
        "_resources",
        "audit",
        "auth_kind",
        "events",
        "handler",
        "idempotent",
        "is_command",
        "permissions",
        "resource_type",
        "spec",
    )

    def __init__(self, spec: OperationSpec, handler: Handler, events: dict[str, EventSpec]) -> None:
        self.spec = spec
        self.handler = handler
        self.events = events
        self.is_command = spec.is_command
        self.auth_kind = spec.auth.kind
        self.permissions = spec.auth.permissions
        self.resource_type = spec.auth.resource or spec.name
        self.audit = spec.audit
        self.idempotent = spec.idempotent and spec.is_command
        self._resources: dict[str | None, Resource] = {}

    def resource(self, org_id: str | None) -> Resource:
        """The operation-level `Resource` for an org (cached; resources are immutable)."""
        res = self._resources.get(org_id)
        if res is None:
            if len(self._resources) >= 4096:
                self._resources.clear()
            res = self._resources[org_id] = Resource(self.resource_type, None, org_id)
        return res

    def validate_input(self, raw: Any) -> BaseModel:
        """The input model from a mapping, a model or JSON text.

        Raises:
            SpecValidationError: The input does not match the spec's input model.
        """
        model = self.spec.input
        if type(raw) is model:
            return raw  # type(raw) is the input model
        try:
            if isinstance(raw, str | bytes | bytearray):
                return model.model_validate_json(raw)
            if isinstance(raw, BaseModel):
                raw = raw.model_dump()
            return model.model_validate(raw)
        except ValidationError as exc:
            shown, errors = validation_errors("input", exc, self.spec.pii)
            raise SpecValidationError(
                f"invalid input for {self.spec.ref}: {shown}",
                errors=errors,
                details={"operation": self.spec.ref},
            ) from None

    def check_output(self, out: Any) -> BaseModel:
        """The handler's return value as the output model.

        Raises:
            HandlerContractError: The handler returned something that is not the output model.
        """
        model = self.spec.output
        if type(out) is model:
            return out  # type(out) is the output model
        try:
            if isinstance(out, BaseModel):
                return model.model_validate(out.model_dump())
            if isinstance(out, Mapping):
                return model.model_validate(out)
        except ValidationError as exc:
            shown, errors = validation_errors("output", exc, self.spec.pii)
            raise HandlerContractError(
                f"the handler of {self.spec.ref} returned an invalid output: {shown}",
                details={"operation": self.spec.ref, "errors": errors},
            ) from None
        raise HandlerContractError(
            f"the handler of {self.spec.ref} returned {type(out).__name__}; it must return "
            f"{model.__name__}",
            details={"operation": self.spec.ref},
        )


class Plans:
    """Plans by `(name, version)`, rebuilt when the registry changes (its `generation`)."""

    __slots__ = ("_generation", "_plans", "registry")

    def __init__(self, registry: SpecRegistry) -> None:
        self.registry = registry
        self._plans: dict[tuple[str, int | None], Plan] = {}
        self._generation = -1

    def get(self, name: str, version: int | None) -> Plan:
        """The plan of `name@version` (`None`: the latest released version).

        Raises:
            UnknownOperationError: No such operation or version.
            ConfigurationError: The operation has no handler.
        """
        generation = self.registry.generation
        if generation != self._generation:
            self._plans.clear()
            self._generation = generation
        plan = self._plans.get((name, version))
        if plan is None:
            registry = self.registry
            spec = registry.get(name, version) if version is not None else self.default(name)
            handler = registry.handler_for(spec)
            if handler is None:
                raise ConfigurationError(
                    f"{spec.ref} has no handler; bind one with @registry.handler({spec.name!r})",
                    details={"operation": spec.ref},
                )
            events: dict[str, EventSpec] = {}
            names: dict[str, int] = {}
            for ref in spec.emits:
                event = registry.resolve_event(spec, ref)
                events[event.ref] = event
                names[event.name] = names.get(event.name, 0) + 1
            for event in list(events.values()):
                if names[event.name] == 1:  # a bare name is unambiguous: one version declared
                    events[event.name] = event
            plan = self._plans[(name, version)] = Plan(spec, handler, events)
        return plan

    def default(self, name: str) -> OperationSpec:
        """The latest released version: the highest `stable`/`deprecated` one, else the highest."""
        latest = self.registry.get(name)
        for version in reversed(self.registry.versions(name)):
            spec = self.registry.get(name, version)
            if spec.stability in (Stability.STABLE, Stability.DEPRECATED):
                return spec
        return latest
