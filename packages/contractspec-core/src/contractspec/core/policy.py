"""Small `PolicyDecider`s for apps that do not need the identity package's policy engine.

`RolePermissions` maps the roles carried by `Actor.roles` to permission patterns. `AllowAll` is
for prototypes and tests only. `contractspec-identity` provides the full engine (memberships,
bindings, explicit denies, conditions, expiry).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from contractspec.core.context import Actor, CallContext, Resource
from contractspec.core.records import Decision

__all__ = ["AllowAll", "DenyAll", "RolePermissions"]


class AllowAll:
    """Allows every action. For prototypes and tests: never use it in production."""

    __slots__ = ()

    def decide(self, subject: Actor, action: str, resource: Resource, ctx: CallContext) -> Decision:
        """Always allow."""
        return Decision.allow("AllowAll allows every action", "allow_all")


class DenyAll:
    """Denies every action (the default behaviour, made explicit)."""

    __slots__ = ()

    def decide(self, subject: Actor, action: str, resource: Resource, ctx: CallContext) -> Decision:
        """Always deny."""
        return Decision.deny("DenyAll denies every action", "deny_all")


class RolePermissions:
    """Grant permissions to the roles an actor carries (`Actor.roles`).

    Patterns use shell-style wildcards on the permission string: `"deal.*"` grants `deal.write`
    and `deal.read`; `"*"` grants everything. Anything not granted is denied.

    Args:
        grants: `{"sales": ["deal.*", "contact.read"], "admin": ["*"]}`.

    Example:
        ```python
        policy = RolePermissions({"sales": ["crm.*"]})
        policy.decide(Actor.user("u1", roles="sales"), "crm.deal.create", Resource("deal"), CallContext())
        ```
    """

    __slots__ = ("_cache", "_exact", "_patterns")

    def __init__(self, grants: Mapping[str, Iterable[str]]) -> None:
        self._cache: dict[tuple[frozenset[str], str], Decision] = {}
        self._exact: dict[str, dict[str, str]] = {}
        self._patterns: dict[str, list[str]] = {}
        for role, perms in grants.items():
            for perm in [perms] if isinstance(perms, str) else perms:
                if any(ch in perm for ch in "*?["):
                    self._patterns.setdefault(role, []).append(perm)
                else:
                    self._exact.setdefault(role, {})[perm] = perm

    def decide(self, subject: Actor, action: str, resource: Resource, ctx: CallContext) -> Decision:
        """Allow when one of the subject's roles grants `action` (exactly or by pattern)."""
        key = (subject.roles, action)
        decision = self._cache.get(key)
        if decision is None:
            if len(self._cache) >= 65536:
                self._cache.clear()
            decision = self._cache[key] = self._decide(subject.roles, action)
        return decision

    def _decide(self, roles: frozenset[str], action: str) -> Decision:
        for role in sorted(roles):
            if action in self._exact.get(role, ()):
                return Decision.allow(f"role {role!r} grants {action!r}", f"role:{role}:{action}")
            for pattern in self._patterns.get(role, ()):
                if fnmatchcase(action, pattern):
                    return Decision.allow(
                        f"role {role!r} grants {pattern!r}", f"role:{role}:{pattern}"
                    )
        held = ", ".join(sorted(roles)) or "no roles"
        return Decision.deny(f"none of the actor's roles ({held}) grants {action!r}")
