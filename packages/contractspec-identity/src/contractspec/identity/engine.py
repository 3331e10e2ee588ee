"""`PolicyEngine`: RBAC with tenants, resource-level bindings, explicit denies and conditions.

The engine implements core's `PolicyDecider` port. It keeps precomputed indexes in memory, so a
decision is a handful of dictionary lookups whatever the number of users, orgs and memberships:

* `org_id -> user_id -> role` of active memberships (invited and suspended ones are marked);
* `org_id -> subject -> bindings`, denies first (`None` as org: platform-wide bindings);
* `role -> permission -> Decision`, cached allow and deny decisions (roles are few, so this stays
  small and decisions on the fast path allocate nothing);
* `permission -> access rules` that can apply to it.

Measured in `benchmarks/rbac_vs_casbin.py`: well under a microsecond of CPU per decision at 100
orgs and 1,000 users, thousands of times faster than pycasbin's `enforce` with domains.

Decision procedure (deny-overrides, deny by default):

1. Anonymous actors are denied.
2. A matching, unexpired **deny** (binding or rule) denies; an indeterminate condition (missing
   attribute) counts as matching for denies (fail closed).
3. Otherwise the subject's **active membership role** in the resource's org, an unexpired **allow
   binding** or an **allow rule** whose conditions hold, allows.
4. Otherwise deny, with the reason (no membership, membership not active, role lacks it, binding
   expired).

Tenant membership (core's `MembershipChecker` port): `is_member(actor, org_id)` tells the executor
whether the caller belongs to the tenant of a call, so that no operation, not even one left on
`authenticated()`, acts in an org the caller does not belong to. An actor belongs to an org when
it holds an active or invited membership there (invited members must reach the org to accept or
decline), or an unexpired allow binding in that org or platform-wide (`org_id=None`, staff and
service accounts). Suspended members and anonymous callers belong nowhere. System and service
actors follow the same rule: they act in an org through a binding, like any other subject.

The engine is a cache of the identity store: the identity operations update it when their
transaction commits, and `reload()` rebuilds it from a store (at start-up, or periodically when
other processes write the same database).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from contractspec.core import (
    Actor,
    ActorKind,
    CallContext,
    Clock,
    Decision,
    Resource,
    SystemClock,
)
from contractspec.identity.model import (
    AccessModel,
    AccessRule,
    Condition,
    Effect,
    MembershipStatus,
    OrgMembership,
    PolicyBinding,
    grants,
)

if TYPE_CHECKING:
    from contractspec.core import UnitOfWork
    from contractspec.identity.stores import IdentityStore

__all__ = ["PolicyEngine"]

_ANONYMOUS: Final = Decision.deny("anonymous callers hold no permissions; authenticate first")
_CACHE_LIMIT: Final = 65_536

# Sentinel for attributes that are absent (an indeterminate condition).
_MISSING: Any = object()

_COMPARE: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}


def _attribute(
    path: str, subject: Actor, resource: Resource, ctx: CallContext, role: str | None
) -> Any:
    root, _, name = path.partition(".")
    if root == "subject":
        if name == "id":
            return subject.id
        if name == "kind":
            return subject.kind.value
        if name == "role":
            return _MISSING if role is None else role
        return subject.attributes.get(name, _MISSING)
    if root == "resource":
        if name == "type":
            return resource.type
        if name == "id":
            return _MISSING if resource.id is None else resource.id
        if name == "org_id":
            return _MISSING if resource.org_id is None else resource.org_id
        return resource.attributes.get(name, _MISSING)
    if name == "channel":
        return ctx.channel
    if name == "org_id":
        return _MISSING if ctx.org_id is None else ctx.org_id
    return ctx.attributes.get(name, _MISSING)


def _evaluate(
    conditions: tuple[Condition, ...],
    subject: Actor,
    resource: Resource,
    ctx: CallContext,
    role: str | None,
) -> bool | None:
    """`True` if all hold, `False` if one fails, `None` if one is indeterminate (and none fails)."""
    indeterminate = False
    for cond in conditions:
        left = _attribute(cond.attribute, subject, resource, ctx, role)
        op = cond.op
        if op == "exists":
            if left is _MISSING or left is None:
                return False
            continue
        if op == "not_exists":
            if not (left is _MISSING or left is None):
                return False
            continue
        if left is _MISSING or left is None:
            indeterminate = True
            continue
        if op in ("in", "not_in"):
            values = cond.value if isinstance(cond.value, tuple) else ()
            found = left in values
            if found != (op == "in"):
                return False
            continue
        right = (
            _attribute(cond.value_from, subject, resource, ctx, role)
            if cond.value_from is not None
            else cond.value
        )
        if right is _MISSING or right is None:
            indeterminate = True
            continue
        try:
            held = _COMPARE[op](left, right)
        except TypeError:
            indeterminate = True
            continue
        if not held:
            return False
    return None if indeterminate else True


def _closed(held: bool | None) -> str:
    if held is None:
        return (
            " (its conditions could not be evaluated: an attribute is missing or incomparable, "
            "and denies fail closed)"
        )
    return ""


class _Binding:
    """A compiled `PolicyBinding`."""

    __slots__ = (
        "allow",
        "binding",
        "expires_at",
        "id",
        "org_id",
        "permission",
        "resource_id",
        "resource_type",
        "role",
    )

    def __init__(self, binding: PolicyBinding) -> None:
        self.binding = binding
        self.id = binding.id
        self.org_id = binding.org_id
        self.allow = binding.effect is Effect.ALLOW
        self.role = binding.role
        self.permission = binding.permission
        self.resource_type = binding.resource_type
        self.resource_id = binding.resource_id
        self.expires_at = binding.expires_at

    def scope_matches(self, resource: Resource) -> bool:
        rtype = self.resource_type
        if rtype is not None and rtype != resource.type:
            return False
        rid = self.resource_id
        return rid is None or rid == resource.id

    def describe(self) -> str:
        what = f"role {self.role!r}" if self.role is not None else f"{self.permission!r}"
        where = "platform-wide" if self.org_id is None else f"in org {self.org_id!r}"
        if self.resource_type is not None:
            where += f" on {self.resource_type}" + (
                f" {self.resource_id!r}" if self.resource_id is not None else ""
            )
        return f"binding {self.id!r} ({self.binding.effect.value} {what} {where})"


def _discard(index: dict[Any, dict[str, Any]], outer: Any, inner: str) -> None:
    """Remove `index[outer][inner]`, and `index[outer]` once empty."""
    bucket = index.get(outer)
    if bucket is not None:
        bucket.pop(inner, None)
        if not bucket:
            del index[outer]


_EMPTY: Final[dict[str, Any]] = {}
#: Marks an invited or suspended membership in the role index (grants nothing).
_INACTIVE: Final = ""


class _Rules:
    """The rules that can apply to one permission, split by effect."""

    __slots__ = ("allows", "denies")

    def __init__(self, allows: tuple[AccessRule, ...], denies: tuple[AccessRule, ...]) -> None:
        self.allows = allows
        self.denies = denies


_NO_RULES: Final = _Rules((), ())


class PolicyEngine:
    """RBAC-with-tenants policy decider (implements `contractspec.core.PolicyDecider` and
    `contractspec.core.MembershipChecker`).

    Args:
        model: The declared permissions, roles and rules (`AccessModel()` by default).
        clock: Time source for binding expiry (`SystemClock()` by default).

    The identity operations keep it in sync (on commit); `reload()` fills it from a store. Every
    data change is a few single dictionary operations, safe under asyncio.

    Example:
        ```python
        engine = PolicyEngine()
        engine.put_membership(membership)  # usually done by the identity operations
        bob = Actor.user("bob")
        decision = engine.decide(bob, "member.invite", Resource("org", org_id="acme"), CallContext())
        decision.allowed, decision.reason, decision.matched_rule
        ```
    """

    __slots__ = (
        "_bindings",
        "_by_id",
        "_clock",
        "_grant_cache",
        "_members",
        "_outsiders",
        "_role_denies",
        "_role_names",
        "_rule_cache",
        "_statuses",
        "model",
    )

    def __init__(self, model: AccessModel | None = None, *, clock: Clock | None = None) -> None:
        self.model = model if model is not None else AccessModel()
        self._clock: Clock = clock or SystemClock()
        # org -> user -> role of an active membership, or "" for an invited or suspended one
        self._members: dict[str, dict[str, str]] = {}
        # org -> user -> membership (any status, for explanations)
        self._statuses: dict[str, dict[str, OrgMembership]] = {}
        # org (None: platform) -> subject -> bindings, denies first
        self._bindings: dict[str | None, dict[str, list[_Binding]]] = {}
        self._by_id: dict[str, _Binding] = {}
        # role -> permission -> allowing decision (None: the role does not grant it)
        self._grant_cache: dict[str, dict[str, Decision | None]] = {}
        self._rule_cache: dict[str, _Rules] = {}
        self._outsiders: dict[str, Decision] = {}
        self._role_denies: dict[str, dict[str, Decision]] = {}
        self._role_names: dict[str, str] = {name: name for name in self.model.roles}

    # -- data -----------------------------------------------------------------------------------

    def put_membership(self, membership: OrgMembership) -> None:
        """Add or replace a membership (only `active` ones grant their role)."""
        org, user = membership.org_id, membership.user_id
        self._statuses.setdefault(org, {})[user] = membership
        if membership.status is MembershipStatus.ACTIVE:
            # one string object per role name keeps the role caches' key comparisons cheap
            role = self._role_names.setdefault(membership.role, membership.role)
        else:
            role = _INACTIVE
        self._members.setdefault(org, {})[user] = role

    def remove_membership(self, org_id: str, user_id: str) -> None:
        """Forget a membership (no-op if unknown)."""
        _discard(self._statuses, org_id, user_id)
        _discard(self._members, org_id, user_id)

    def put_binding(self, binding: PolicyBinding) -> None:
        """Add or replace a binding (by id)."""
        self.remove_binding(binding.id)
        compiled = _Binding(binding)
        self._by_id[binding.id] = compiled
        bucket = self._bindings.setdefault(binding.org_id, {}).setdefault(binding.subject, [])
        bucket.append(compiled)
        # denies first, so the scan finds them before any allow
        bucket.sort(key=lambda b: b.allow)

    def remove_binding(self, binding_id: str) -> None:
        """Forget a binding (no-op if unknown)."""
        compiled = self._by_id.pop(binding_id, None)
        if compiled is None:
            return
        subjects = self._bindings.get(compiled.org_id, {})
        bucket = subjects.get(compiled.binding.subject, [])
        bucket[:] = [b for b in bucket if b.id != binding_id]
        if not bucket:
            _discard(self._bindings, compiled.org_id, compiled.binding.subject)

    def remove_org(self, org_id: str) -> None:
        """Forget every membership and binding of an org."""
        self._statuses.pop(org_id, None)
        self._members.pop(org_id, None)
        for binding_id in [b.id for b in self._by_id.values() if b.org_id == org_id]:
            self.remove_binding(binding_id)

    def load(
        self, memberships: Iterable[OrgMembership], bindings: Iterable[PolicyBinding] = ()
    ) -> None:
        """Replace all data with these memberships and bindings."""
        self._members.clear()
        self._statuses.clear()
        self._bindings.clear()
        self._by_id.clear()
        for membership in memberships:
            self.put_membership(membership)
        for binding in bindings:
            self.put_binding(binding)

    async def reload(self, store: IdentityStore, unit_of_work: UnitOfWork) -> None:
        """Rebuild the indexes from `store`, in one read-only transaction of `unit_of_work`."""
        tx = await unit_of_work.begin(readonly=True)
        try:
            memberships, bindings = await store.snapshot(tx)
        finally:
            await tx.rollback()
        self.load(memberships, bindings)

    def role_of(self, org_id: str, user_id: str) -> str | None:
        """The role of an *active* member, or `None`."""
        return self._members.get(org_id, _EMPTY).get(user_id) or None

    def is_member(self, subject: Actor, org_id: str) -> bool:
        """Whether `subject` belongs to `org_id` (core's `MembershipChecker` port).

        The executor asks before every non-public call in a tenant and denies non-members, so a
        caller never reaches another org's data by naming it. Permissions are still decided by
        `decide` (invited memberships, for instance, belong but grant nothing).

        Args:
            subject: The actor; its `id` is the user (or service) id of memberships and bindings.
            org_id: The tenant of the call.

        Returns:
            `True` for an active or invited membership in `org_id`, or an unexpired allow binding
            in `org_id` or platform-wide (`org_id=None`); `False` otherwise, and always for
            anonymous actors and suspended members (whatever bindings they hold in that org).
        """
        if subject.kind == ActorKind.ANONYMOUS:
            return False
        uid = subject.id
        membership = self._statuses.get(org_id, _EMPTY).get(uid)
        if membership is not None:
            return membership.status is not MembershipStatus.SUSPENDED
        by_subject = self._bindings.get(org_id)
        platform = self._bindings.get(None)
        for bucket in (
            by_subject.get(uid) if by_subject is not None else None,
            platform.get(uid) if platform is not None else None,
        ):
            for binding in bucket or ():
                if binding.allow and (
                    binding.expires_at is None or binding.expires_at > self._clock.now()
                ):
                    return True
        return False

    @property
    def size(self) -> tuple[int, int]:
        """`(memberships, bindings)` currently indexed."""
        return sum(len(users) for users in self._statuses.values()), len(self._by_id)

    # -- decisions --------------------------------------------------------------------------------

    def decide(self, subject: Actor, action: str, resource: Resource, ctx: CallContext) -> Decision:
        """Decide whether `subject` may perform `action` (a permission) on `resource`.

        Args:
            subject: The actor; its `id` is the user id memberships and bindings refer to.
            action: The permission, e.g. `"deal.write"`.
            resource: What is acted on; `resource.org_id` selects the tenant (the executor sets
                it from `CallContext.org_id`), `type`/`id`/`attributes` feed bindings and rules.
            ctx: The call context (its `channel` and `attributes` feed conditions).

        Returns:
            A `Decision` whose `reason` explains it and whose `matched_rule` is
            `role:<role>:<pattern>`, `binding:<id>` or `rule:<name>` (`None` for default denies).
        """
        if subject.kind == ActorKind.ANONYMOUS:
            return _ANONYMOUS
        uid = subject.id
        org = resource.org_id
        members = self._members.get(org) if org is not None else None
        role = members.get(uid) if members is not None else None
        by_subject = self._bindings.get(org) if org is not None else None
        bindings = by_subject.get(uid) if by_subject is not None else None
        platform_bindings = self._bindings.get(None)
        platform = platform_bindings.get(uid) if platform_bindings is not None else None
        rules = self._rule_cache.get(action)
        if rules is None:
            rules = self._rules_for(action)
        if bindings is None and platform is None and rules is _NO_RULES:
            # fast paths: only the membership role can decide
            if role:
                cached = self._grant_cache.get(role, _EMPTY).get(action, _MISSING)
                if cached is _MISSING:
                    cached = self._role_decision(role, action)
                if cached is not None:
                    return cached  # type: ignore[no-any-return]
                denied = self._role_denies.get(role, _EMPTY).get(action)
                if denied is None:
                    denied = self._role_denial(role, action)
                return denied
            if role is None and org is not None:
                outsider = self._outsiders.get(org)
                if outsider is None:
                    outsider = self._outsider(org)
                return outsider
        return self._decide_full(
            subject, action, resource, ctx, role or None, bindings, platform, rules
        )

    def check(
        self,
        user_id: str,
        permission: str,
        *,
        org_id: str | None,
        resource_type: str = "*",
        resource_id: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Decision:
        """Convenience form of `decide` for a user id (e.g. to show or hide buttons in a UI)."""
        return self.decide(
            Actor.user(user_id),
            permission,
            Resource(resource_type, resource_id, org_id, attributes or {}),
            CallContext(actor=Actor.user(user_id), org_id=org_id),
        )

    def _outsider(self, org: str) -> Decision:
        if len(self._outsiders) >= _CACHE_LIMIT:
            self._outsiders.clear()
        decision = self._outsiders[org] = Decision.deny(
            f"not a member of org {org!r} (deny by default)"
        )
        return decision

    def _role_denial(self, role: str, action: str) -> Decision:
        denies_of = self._role_denies.setdefault(role, {})
        if len(denies_of) >= _CACHE_LIMIT:
            denies_of.clear()
        decision = denies_of[action] = Decision.deny(
            f"role {role!r} does not grant {action!r} (deny by default)"
        )
        return decision

    def _role_decision(self, role: str, action: str) -> Decision | None:
        grants_of = self._grant_cache.setdefault(role, {})
        if len(grants_of) >= _CACHE_LIMIT:
            grants_of.clear()
        pattern = self.model.role_grants(role, action)
        decision = (
            None
            if pattern is None
            else Decision.allow(
                f"role {role!r} grants {action!r}"
                + (f" through {pattern!r}" if pattern != action else ""),
                f"role:{role}:{pattern}",
            )
        )
        grants_of[action] = decision
        return decision

    def _rules_for(self, action: str) -> _Rules:
        if len(self._rule_cache) >= _CACHE_LIMIT:
            self._rule_cache.clear()
        matching = [r for r in self.model.rules if any(grants(p, action) for p in r.permissions)]
        rules = (
            _Rules(
                tuple(r for r in matching if r.effect is Effect.ALLOW),
                tuple(r for r in matching if r.effect is Effect.DENY),
            )
            if matching
            else _NO_RULES
        )
        self._rule_cache[action] = rules
        return rules

    def _binding_grants(self, binding: _Binding, action: str) -> bool:
        if binding.permission is not None:
            return grants(binding.permission, action)
        assert binding.role is not None  # a binding grants a role or a permission
        cached = self._grant_cache.get(binding.role, _EMPTY).get(action, _MISSING)
        if cached is _MISSING:
            cached = self._role_decision(binding.role, action)
        return cached is not None

    def _rule_applies(
        self, rule: AccessRule, subject: Actor, resource: Resource, role: str | None
    ) -> bool:
        if rule.actor_kinds and subject.kind.value not in rule.actor_kinds:
            return False
        if rule.resource_type is not None and rule.resource_type != resource.type:
            return False
        if rule.subjects == "members":
            if role is None:
                return False
            if rule.roles and role not in rule.roles:
                return False
        return True

    def _decide_full(
        self,
        subject: Actor,
        action: str,
        resource: Resource,
        ctx: CallContext,
        role: str | None,
        bindings: list[_Binding] | None,
        platform: list[_Binding] | None,
        rules: _Rules,
    ) -> Decision:
        now: datetime | None = None
        expired: _Binding | None = None
        candidates: list[_Binding] = []
        for bucket in (bindings, platform):
            if not bucket:
                continue
            for b in bucket:
                if not b.scope_matches(resource) or not self._binding_grants(b, action):
                    continue
                if b.expires_at is not None:
                    if now is None:
                        now = self._clock.now()
                    if b.expires_at <= now:
                        expired = expired or b
                        continue
                candidates.append(b)
        # 1. explicit denies
        for b in candidates:
            if b.allow:
                continue
            conditions = b.binding.conditions
            held = _evaluate(conditions, subject, resource, ctx, role) if conditions else True
            if held is not False:
                return Decision.deny(
                    f"{b.describe()} denies {action!r}{_closed(held)}; an explicit deny beats any "
                    "allow",
                    f"binding:{b.id}",
                )
        for rule in rules.denies:
            if not self._rule_applies(rule, subject, resource, role):
                continue
            held = _evaluate(rule.when, subject, resource, ctx, role) if rule.when else True
            if held is not False:
                return Decision.deny(
                    f"access rule {rule.name!r} denies {action!r}{_closed(held)}; an explicit deny "
                    "beats any allow",
                    f"rule:{rule.name}",
                )
        # 2. allows
        if role is not None:
            cached = self._grant_cache.get(role, _EMPTY).get(action, _MISSING)
            if cached is _MISSING:
                cached = self._role_decision(role, action)
            if cached is not None:
                return cached  # type: ignore[no-any-return]
        for b in candidates:
            if not b.allow:
                continue
            conditions = b.binding.conditions
            if not conditions or _evaluate(conditions, subject, resource, ctx, role) is True:
                return Decision.allow(f"{b.describe()} grants {action!r}", f"binding:{b.id}")
        for rule in rules.allows:
            if not self._rule_applies(rule, subject, resource, role):
                continue
            if not rule.when or _evaluate(rule.when, subject, resource, ctx, role) is True:
                return Decision.allow(
                    f"access rule {rule.name!r} grants {action!r}", f"rule:{rule.name}"
                )
        # 3. default deny, explained
        conditional = any(b.allow and b.binding.conditions for b in candidates)
        return Decision.deny(
            self._why_not(subject.id, action, resource, role, expired, conditional)
        )

    def _why_not(
        self,
        user_id: str,
        action: str,
        resource: Resource,
        role: str | None,
        expired: _Binding | None,
        had_conditional: bool,
    ) -> str:
        org = resource.org_id
        parts: list[str] = []
        if org is None:
            parts.append(
                f"{action!r} is checked outside any org and no platform grant or rule allows it"
            )
        elif role is not None:
            parts.append(f"role {role!r} does not grant {action!r}")
        else:
            membership = self._statuses.get(org, _EMPTY).get(user_id)
            if membership is None:
                parts.append(f"not a member of org {org!r}")
            else:
                parts.append(
                    f"the membership of {user_id!r} in org {org!r} is {membership.status.value}, "
                    "so it grants nothing"
                )
        if had_conditional:
            parts.append("an allowing binding matched but its conditions did not hold")
        if expired is not None:
            parts.append(f"{expired.describe()} expired at {expired.expires_at.isoformat()}")  # type: ignore[union-attr]
        return "; ".join(parts) + " (deny by default)"
