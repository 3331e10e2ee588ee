"""Who is calling, for which tenant, and under which request: the execution context.

`CallContext` is what a caller (an HTTP adapter, a job, a script) hands to the executor.
`Actor` says who acts; `Principal` is what an authenticator establishes about a request (the actor
and its tenant); `Resource` names what an authorization decision is about.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from attrs import define, evolve, field
from attrs.validators import instance_of

__all__ = [
    "ANONYMOUS",
    "Actor",
    "ActorKind",
    "CallContext",
    "Principal",
    "Resource",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class ActorKind(enum.StrEnum):
    """Kinds of actors recorded in audit trails and checked by policies."""

    USER = "user"
    AGENT = "agent"
    SYSTEM = "system"
    SERVICE = "service"
    ANONYMOUS = "anonymous"


def _frozen_roles(roles: Any) -> frozenset[str]:
    if isinstance(roles, str):
        return frozenset((roles,))
    return frozenset(roles)


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not value:
        return _EMPTY
    return MappingProxyType(dict(value))


@define(frozen=True)
class Actor:
    """Who performs a call.

    Attributes:
        id: Stable identifier of the user, agent, system or service.
        kind: One of `ActorKind`.
        roles: Role names the actor holds in the current org (used by simple deciders; the identity
            package resolves roles from memberships instead).
        attributes: Extra attributes policies may test (plan, department, ...).
    """

    id: str
    kind: ActorKind = ActorKind.USER
    roles: frozenset[str] = field(default=frozenset(), converter=_frozen_roles)
    attributes: Mapping[str, Any] = field(default=_EMPTY, converter=_frozen_mapping)

    @classmethod
    def user(cls, id: str, *, roles: Any = (), **attributes: Any) -> Actor:
        """A human user with optional roles and attributes."""
        return cls(id, ActorKind.USER, roles, attributes)

    @classmethod
    def system(cls, id: str = "system", *, roles: Any = ()) -> Actor:
        """A background process acting on its own behalf (importers, schedulers)."""
        return cls(id, ActorKind.SYSTEM, roles)

    @classmethod
    def agent(cls, id: str, *, roles: Any = (), **attributes: Any) -> Actor:
        """An AI agent acting through tools."""
        return cls(id, ActorKind.AGENT, roles, attributes)

    @property
    def is_anonymous(self) -> bool:
        """True for the anonymous actor."""
        return self.kind is ActorKind.ANONYMOUS


#: The actor of calls that carry no identity.
ANONYMOUS = Actor("anonymous", ActorKind.ANONYMOUS)


def _optional_org(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"Principal.org_id must be a non-empty string or None, got {value!r}")


@define(frozen=True)
class Principal:
    """Who calls and in which tenant, as established by the app's authenticator.

    An adapter's authenticator (e.g. `authenticate=` of `contractspec.core.http.create_app`)
    returns it after checking a credential (a session, a JWT, an API key): both the actor and the
    tenant then come from what the server verified, never from what the client claims.

    Attributes:
        actor: The authenticated actor.
        org_id: The tenant (organization) the request acts in, or `None` for calls outside any
            tenant. Derive it from the credential (a token claim, the session's selected org, the
            API key's org), or check that the actor belongs to an org the request asks for.

    Raises:
        TypeError: `actor` is not an `Actor`, or `org_id` is neither `None` nor a non-empty string.

    Example:
        ```python
        Principal(Actor.user("u1", roles="sales"), org_id="acme")
        ```
    """

    actor: Actor = field(validator=instance_of(Actor))
    org_id: str | None = field(default=None, validator=_optional_org)


@define(frozen=True)
class Resource:
    """What an authorization decision is about.

    Attributes:
        type: Resource type (`deal`, `operation`, `org`, ...).
        id: Identifier of the instance, or `None` for the type as a whole.
        org_id: Tenant the resource belongs to.
        attributes: Attributes conditions may test (owner_id, amount, ...).
    """

    type: str
    id: str | None = None
    org_id: str | None = None
    attributes: Mapping[str, Any] = field(default=_EMPTY, converter=_frozen_mapping)


@define(frozen=True)
class CallContext:
    """The caller's side of one execution: identity, tenant, tracing and idempotency.

    Attributes:
        actor: Who calls (`ANONYMOUS` when unknown).
        org_id: Tenant (organization) the call acts in; tenant-scoped data is filtered by it.
        request_id: Identifier of the inbound request, echoed in logs and audit records.
        trace_id: Distributed-trace identifier; sampling decisions are derived from it.
        correlation_id: Identifier shared by everything caused by one user intent.
        causation_id: Identifier of the message (event, job) that caused this call.
        idempotency_key: Makes a call to an idempotent command safe to repeat.
        channel: Where the call came from (`api`, `http`, `job`, `agent`, `script`, ...).
        attributes: Free-form extra data for middleware.
    """

    actor: Actor = ANONYMOUS
    org_id: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    idempotency_key: str | None = None
    channel: str = "api"
    attributes: Mapping[str, Any] = field(default=_EMPTY, converter=_frozen_mapping)

    def replace(self, **changes: Any) -> CallContext:
        """Return a copy with `changes` applied (`ctx.replace(idempotency_key="k1")`)."""
        return evolve(self, **changes)
