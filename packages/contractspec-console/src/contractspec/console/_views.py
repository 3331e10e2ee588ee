"""The generated views: index, entity list and detail, operation forms."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contractspec.core.context import CallContext, Resource
from contractspec.core.specs import EntitySpec, OperationSpec

if TYPE_CHECKING:
    from contractspec.console.app import Console

__all__ = ["entity_label", "may_read", "operation_label", "routes"]


def entity_label(entity: EntitySpec[Any]) -> str:
    """`crm.deal` -> `Crm deal`... the last name segment, readable (`deal` -> `Deal`)."""
    return entity.name.rsplit(".", 1)[-1].replace("_", " ").capitalize()


def operation_label(op: OperationSpec) -> str:
    """`crm.deal.create` -> `Deal create`: the name without its domain, readable."""
    parts = op.name.split(".")
    tail = parts[1:] if len(parts) > 1 else parts
    return " ".join(tail).replace("_", " ").capitalize()


async def may_read(console: Console, call: CallContext, entity: EntitySpec[Any]) -> bool:
    """Whether the executor's policy lets `call` read `entity` (permission `<entity>.read`)."""
    if call.actor.is_anonymous:
        return False
    policy = console.executor.policy
    if policy is None:
        return False
    decision: Any = policy.decide(
        call.actor, f"{entity.name}.read", Resource(entity.name, None, call.org_id), call
    )
    if not isinstance(decision, type(None)) and hasattr(decision, "__await__"):
        decision = await decision
    return bool(decision.allowed)


def routes(console: Console) -> list[BaseRoute]:
    """The console's own routes."""

    async def home(request: Request) -> Response:
        await console.call_context(request)
        return console.render(request, "console/index.html", {})

    return [Route("/", home, methods=["GET"], name="index")]
