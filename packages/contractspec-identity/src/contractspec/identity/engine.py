"""`PolicyEngine`: RBAC with tenants, role hierarchy, groups, hierarchical resources, resource-level
bindings, explicit denies and conditions.

The engine implements core's `PolicyDecider` and `MembershipChecker` ports. It keeps precomputed
indexes in memory, so a decision is a handful of dictionary lookups whatever the number of users,
orgs and memberships:

* `org_id -> user_id -> role` of active memberships (invited and suspended ones are marked);
* `subject kind -> org_id -> subject -> bindings`, denies first (`None` as org: platform-wide);
* `org_id -> user_id -> groups` of group memberships;
* `role -> permission -> Decision`, cached allow and deny decisions (roles are few, so this stays
  small and decisions on the fast path allocate nothing);
* `permission -> access rules` that can apply to it.

Measured in `benchmarks/rbac_vs_casbin.py`: well under a microsecond of CPU per decision at 100
orgs and 1,000 users, about 140-180 times faster than pycasbin's `enforce` with domains and
shared role policies.

Decision procedure (deny-overrides, deny by default):

1. Anonymous actors are denied; so is an action that is not a permission name (`""`, `"*"`,
   `"deal.*"`), and every decision while the engine is failed closed (`fail_closed`).
2. A matching, unexpired **deny** (binding or rule) denies; an indeterminate condition (missing
   attribute) counts as matching for denies (fail closed).
3. Otherwise the user's **active membership role** in the resource's org (with the roles it
   includes), an unexpired **allow binding** of the subject (of its kind: a user's bindings never
   apply to an agent of the same id) or of a **group** the user belongs to, or an **allow rule**
   whose conditions hold, allows. A binding on a resource type or resource also covers the
   resources under it (`ResourceType.parent`).
4. Otherwise deny, with the reason (no membership, membership not active, role lacks it, binding
   expired).

Tenant membership (core's `MembershipChecker` port): `is_member(actor, org_id)` tells the executor
whether the caller belongs to the tenant of a call, so that no operation, not even one left on
`authenticated()`, acts in an org the caller does not belong to. A user belongs to an org when it
holds an active or invited membership there (invited members must reach the org to accept or
decline); any actor belongs when it holds an unexpired allow binding of its kind in that org or
platform-wide (`org_id=None`, staff and service accounts). Suspended members and anonymous callers
belong nowhere.

**Consistency.** The engine is a cache of the identity store. Its data lives in one index object:
`load()` and `reload()` build a new index aside and swap it in with one assignment, so a decision
(in any thread) sees either the old data or the new, never a mix (no deny missing while its role is
active). Single changes (`put_*`, `remove_*`) replace one dictionary entry or one immutable bucket
each. The identity operations apply their changes when their transaction commits, with the store
version the transaction wrote; a reload installs a store snapshot only if it is not older than the
one installed, and re-applies the changes committed while it was reading, so a reload never undoes
a newer revoke. Other processes' writes arrive through `contractspec.identity.sync.PolicySync`
(bounded staleness; see the docs page "Tenancy").
"""

from __future__ import annotations

import operator
import re
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
    SpecValidationError,
    SystemClock,
)
from contractspec.identity.model import (
    AccessModel,
    AccessRule,
    Condition,
    Effect,
    GroupMember,
    MembershipStatus,
    OrgMembership,
    PolicyBinding,
    grants,
)

if TYPE_CHECKING:
    from contractspec.core import UnitOfWork
    from contractspec.identity.stores import IdentitySnapshot, IdentityStore

__all__ = ["PolicyEngine"]

_ANONYMOUS: Final = Decision.deny("anonymous callers hold no permissions; authenticate first")
_CACHE_LIMIT: Final = 65_536
_ACTION: Final = re.compile(r"^[A-Za-z0-9_.:-]+\Z")
_USER: Final = ActorKind.USER
_GROUP: Final = "group"
#: How many per-key versions of local changes are kept between reloads before old ones go.
_KEYS_LIMIT: Final = 4_096

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
        "kind",
        "org_id",
        "permission",
        "resource_id",
        "resource_type",
        "role",
        "subject",
    )

    def __init__(self, binding: PolicyBinding) -> None:
        self.binding = binding
        self.id = binding.id
        self.org_id = binding.org_id
        self.subject = binding.subject
        self.kind = binding.subject_kind
        self.allow = binding.effect is Effect.ALLOW
        self.role = binding.role
        self.permission = binding.permission
        self.resource_type = binding.resource_type
        self.resource_id = binding.resource_id
        self.expires_at = binding.expires_at

    def describe(self) -> str:
        what = f"role {self.role!r}" if self.role is not None else f"{self.permission!r}"
        where = "platform-wide" if self.org_id is None else f"in org {self.org_id!r}"
        if self.resource_type is not None:
            where += f" on {self.resource_type}" + (
                f" {self.resource_id!r}" if self.resource_id is not None else ""
            )
        who = "" if self.kind == "user" else f" to {self.kind} {self.subject!r}"
        return f"binding {self.id!r} ({self.binding.effect.value} {what}{who} {where})"


_Bucket = tuple[_Binding, ...]
_EMPTY: Final[dict[Any, Any]] = {}
#: Marks an invited or suspended membership in the role index (grants nothing).
_INACTIVE: Final = ""


class _Index:
    """Everything the engine knows about memberships, bindings and groups.

    `load` and `reload` build a new one aside and swap it in with one assignment; single changes
    replace one dictionary entry or one (immutable) bucket each, so a reader never sees a
    half-made change.
    """

    __slots__ = ("bindings", "by_id", "groups", "members", "statuses")

    def __init__(self) -> None:
        # org -> user -> role of an active membership, or "" for an invited or suspended one
        self.members: dict[str, dict[str, str]] = {}
        # org -> user -> membership (any status, for explanations and is_member)
        self.statuses: dict[str, dict[str, OrgMembership]] = {}
        # subject kind -> org (None: platform) -> subject -> bindings, denies first
        self.bindings: dict[str, dict[str | None, dict[str, _Bucket]]] = {}
        self.by_id: dict[str, _Binding] = {}
        # org -> user -> ids of the groups the user belongs to
        self.groups: dict[str, dict[str, frozenset[str]]] = {}

    # Every mutation below is also used to build a new index before it is swapped in.

    def put_membership(self, membership: OrgMembership, role: str) -> None:
        org, user = membership.org_id, membership.user_id
        statuses = self.statuses.get(org)
        if statuses is None:
            self.statuses[org] = {user: membership}
        else:
            statuses[user] = membership
        members = self.members.get(org)
        if members is None:
            self.members[org] = {user: role}
        else:
            members[user] = role

    def remove_membership(self, org: str, user: str) -> None:
        members = self.members.get(org)
        if members is not None:
            members.pop(user, None)
            if not members:
                self.members.pop(org, None)
        statuses = self.statuses.get(org)
        if statuses is not None:
            statuses.pop(user, None)
            if not statuses:
                self.statuses.pop(org, None)

    def put_binding(self, compiled: _Binding) -> None:
        previous = self.by_id.get(compiled.id)
        by_org = self.bindings.get(compiled.kind)
        if by_org is None:
            by_org = self.bindings[compiled.kind] = {}
        subjects = by_org.get(compiled.org_id)
        if subjects is None:
            subjects = by_org[compiled.org_id] = {}
        old = subjects.get(compiled.subject, ())
        # denies first, so the scan finds them before any allow; one assignment publishes it
        subjects[compiled.subject] = tuple(
            sorted([*(b for b in old if b.id != compiled.id), compiled], key=lambda b: b.allow)
        )
        self.by_id[compiled.id] = compiled
        if previous is not None and (
            previous.kind,
            previous.org_id,
            previous.subject,
        ) != (compiled.kind, compiled.org_id, compiled.subject):
            self._drop(previous)

    def remove_binding(self, binding_id: str) -> None:
        compiled = self.by_id.pop(binding_id, None)
        if compiled is not None:
            self._drop(compiled)

    def _drop(self, compiled: _Binding) -> None:
        by_org = self.bindings.get(compiled.kind, _EMPTY)
        subjects = by_org.get(compiled.org_id)
        if subjects is None:
            return
        rest = tuple(b for b in subjects.get(compiled.subject, ()) if b is not compiled)
        if rest:
            subjects[compiled.subject] = rest
        else:
            subjects.pop(compiled.subject, None)

    def put_group_member(self, org: str, group: str, user: str) -> None:
        users = self.groups.get(org)
        if users is None:
            self.groups[org] = {user: frozenset((group,))}
        else:
            users[user] = users.get(user, frozenset()) | {group}

    def remove_group_member(self, org: str, group: str, user: str) -> None:
        users = self.groups.get(org)
        if users is None or user not in users:
            return
        rest = users[user] - {group}
        if rest:
            users[user] = rest
        else:
            users.pop(user, None)

    def remove_org(self, org: str) -> None:
        self.statuses.pop(org, None)
        self.members.pop(org, None)
        self.groups.pop(org, None)
        for binding_id in [b.id for b in self.by_id.values() if b.org_id == org]:
            self.remove_binding(binding_id)

    def bindings_of(self, kind: str, org: str | None, subject: str) -> _Bucket:
        subjects = self.bindings.get(kind, _EMPTY).get(org)
        return subjects.get(subject, ()) if subjects is not None else ()


class _Rules:
    """The rules that can apply to one permission, split by effect."""

    __slots__ = ("allows", "denies")

    def __init__(self, allows: tuple[AccessRule, ...], denies: tuple[AccessRule, ...]) -> None:
        self.allows = allows
        self.denies = denies


_NO_RULES: Final = _Rules((), ())
#: Marks an action that is not a permission name (`""`, `"*"`, `"deal.*"`): always denied.
_INVALID: Final = _Rules((), ())


class _Compiled:
    """Caches derived from one `AccessModel`; replaced as a whole when the model changes."""

    __slots__ = ("grant_cache", "model", "outsiders", "role_denies", "rule_cache")

    def __init__(self, model: AccessModel) -> None:
        self.model = model
        # role -> permission -> allowing decision (None: the role does not grant it)
        self.grant_cache: dict[str, dict[str, Decision | None]] = {}
        self.rule_cache: dict[str, _Rules] = {}
        self.outsiders: dict[str, Decision] = {}
        self.role_denies: dict[str, dict[str, Decision]] = {}

    def outsider(self, org: str) -> Decision:
        if len(self.outsiders) >= _CACHE_LIMIT:
            self.outsiders.clear()
        decision = self.outsiders[org] = Decision.deny(
            f"not a member of org {org!r} (deny by default)"
        )
        return decision

    def role_denial(self, role: str, action: str) -> Decision:
        denies_of = self.role_denies.setdefault(role, {})
        if len(denies_of) >= _CACHE_LIMIT:
            denies_of.clear()
        decision = denies_of[action] = Decision.deny(
            f"role {role!r} does not grant {action!r} (deny by default)"
        )
        return decision

    def role_decision(self, role: str, action: str) -> Decision | None:
        grants_of = self.grant_cache.setdefault(role, {})
        if len(grants_of) >= _CACHE_LIMIT:
            grants_of.clear()
        found = self.model.role_grant(role, action)
        decision = None
        if found is not None:
            pattern, holder = found
            decision = Decision.allow(
                f"role {role!r} grants {action!r}"
                + (f" through {pattern!r}" if pattern != action else "")
                + (f" (included role {holder!r})" if holder != role else ""),
                f"role:{role}:{pattern}",
            )
        grants_of[action] = decision
        return decision

    def role_allows(self, role: str, action: str) -> Decision | None:
        cached = self.grant_cache.get(role, _EMPTY).get(action, _MISSING)
        if cached is _MISSING:
            return self.role_decision(role, action)
        return cached  # type: ignore[no-any-return]

    def rules_for(self, action: str) -> _Rules:
        if len(self.rule_cache) >= _CACHE_LIMIT:
            self.rule_cache.clear()
        if not isinstance(action, str) or not _ACTION.fullmatch(action):
            self.rule_cache[action] = _INVALID
            return _INVALID
        rules = self.model.rules
        matching = [r for r in rules if any(grants(p, action) for p in r.permissions)]
        found = (
            _Rules(
                tuple(r for r in matching if r.effect is Effect.ALLOW),
                tuple(r for r in matching if r.effect is Effect.DENY),
            )
            if matching
            else _NO_RULES
        )
        self.rule_cache[action] = found
        return found

    def binding_grants(self, binding: _Binding, action: str) -> bool:
        if binding.permission is not None:
            return grants(binding.permission, action)
        assert binding.role is not None  # a binding grants a role or a permission
        return self.role_allows(binding.role, action) is not None

    def chain(self, resource: Resource) -> tuple[tuple[str, str], ...]:
        """The resource's parents `(type, id)`, nearest first (`ResourceType.parent`)."""
        out: list[tuple[str, str]] = []
        current = resource.type
        attributes = resource.attributes
        model = self.model
        while True:
            parent = model.parent_of(current)
            if parent is None:
                break
            ptype, attribute = parent
            pid = attributes.get(attribute)
            if pid is None or pid == "":
                break
            out.append((ptype, str(pid)))
            current = ptype
        return tuple(out)


def _invalid_action(action: object) -> Decision:
    return Decision.deny(
        f"{action!r} is not a permission: actions are permission names (letters, digits and "
        "'_.:-', no wildcard, e.g. 'deal.write'); patterns such as '*' only appear in grants"
    )


def _scope_matches(
    b: _Binding, resource: Resource, chain: tuple[tuple[str, str], ...] | None
) -> bool | None:
    """Whether the binding's scope covers the resource; `None` when the parent chain is needed."""
    rtype = b.resource_type
    if rtype is None:
        return True
    rid = b.resource_id
    if rtype == resource.type and (rid is None or rid == resource.id):
        return True
    if chain is None:
        return None
    return any(ptype == rtype and (rid is None or rid == pid) for ptype, pid in chain)


_Op = tuple[tuple[Any, ...], Callable[["_Index"], None]]


class PolicyEngine:
    """RBAC-with-tenants policy decider (implements `contractspec.core.PolicyDecider` and
    `contractspec.core.MembershipChecker`).

    Args:
        model: The declared permissions, roles, rules and resource types (`AccessModel()` by
            default). Assigning `engine.model` later checks the current data against the new
            model and replaces every cached decision.
        clock: Time source for binding expiry (`SystemClock()` by default).

    The identity operations keep it in sync (on commit); `reload()` fills it from a store and
    `contractspec.identity.sync.PolicySync` keeps it fresh when other processes write the same
    database. Data changes and reloads are safe to run while other threads decide (see the module
    docs, "Consistency").

    Raises:
        SpecValidationError: From `put_*`, `load` and `reload`: a membership or binding that
            names an undeclared role or permission (or a pattern covering none), and from `load`:
            two memberships of one user in one org, or two bindings with one id.

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
        "_ahead",
        "_clock",
        "_compiled",
        "_index",
        "_keys",
        "_latest",
        "_log",
        "_reloading",
        "_role_names",
        "_snapshot_version",
        "_stale",
        "_version",
    )

    def __init__(self, model: AccessModel | None = None, *, clock: Clock | None = None) -> None:
        self._compiled = _Compiled(model if model is not None else AccessModel())
        self._clock: Clock = clock or SystemClock()
        self._index = _Index()
        # one string object per role name keeps the role caches' key comparisons cheap
        self._role_names: dict[str, str] = {}
        self._stale: Decision | None = None
        # store versions: see _apply and _install
        self._version: int | None = None
        self._snapshot_version: int | None = None
        self._latest = 0
        self._ahead: set[int] = set()
        self._log: list[tuple[int, int, _Op]] = []
        self._keys: dict[tuple[Any, ...], int] = {}
        self._reloading = 0

    # -- model ------------------------------------------------------------------------------------

    @property
    def model(self) -> AccessModel:
        """The access model decisions are made with."""
        return self._compiled.model

    @model.setter
    def model(self, model: AccessModel) -> None:
        """Switch to another model: the data is checked against it, then every cache is new.

        Raises:
            SpecValidationError: A membership or binding names a role or permission the new
                model does not declare (the engine keeps the old model).
        """
        index = self._index
        for users in index.statuses.values():
            for membership in users.values():
                model.check_membership(membership)
        for compiled in index.by_id.values():
            model.check_binding(compiled.binding)
        self._compiled = _Compiled(model)

    # -- data -------------------------------------------------------------------------------------

    def _role(self, membership: OrgMembership) -> str:
        if membership.status is not MembershipStatus.ACTIVE:
            return _INACTIVE
        name = membership.role
        return self._role_names.setdefault(name, name)

    def put_membership(self, membership: OrgMembership, *, version: int | None = None) -> None:
        """Add or replace a membership (only `active` ones grant their role).

        Args:
            membership: The membership.
            version: The store version of the transaction that wrote it (the identity operations
                pass it); a change older than the data already installed is ignored.

        Raises:
            SpecValidationError: The role is not declared in the model.
        """
        self.model.check_membership(membership)
        role = self._role(membership)
        org, user = membership.org_id, membership.user_id
        self._apply(("m", org, user), lambda index: index.put_membership(membership, role), version)

    def remove_membership(self, org_id: str, user_id: str, *, version: int | None = None) -> None:
        """Forget a membership (no-op if unknown)."""
        self._apply(
            ("m", org_id, user_id),
            lambda index: index.remove_membership(org_id, user_id),
            version,
        )

    def put_binding(self, binding: PolicyBinding, *, version: int | None = None) -> None:
        """Add or replace a binding (by id).

        Raises:
            SpecValidationError: Its role or permission is not declared (or its pattern covers no
                declared permission): such a binding would grant or deny nothing.
        """
        self.model.check_binding(binding)
        compiled = _Binding(binding)
        self._apply(("b", binding.id), lambda index: index.put_binding(compiled), version)

    def remove_binding(self, binding_id: str, *, version: int | None = None) -> None:
        """Forget a binding (no-op if unknown)."""
        self._apply(("b", binding_id), lambda index: index.remove_binding(binding_id), version)

    def put_group_member(self, member: GroupMember, *, version: int | None = None) -> None:
        """Add a user to a group: the group's bindings apply to them while their membership of
        the org is active."""
        org, group, user = member.org_id, member.group_id, member.user_id
        self._apply(
            ("g", org, group, user), lambda index: index.put_group_member(org, group, user), version
        )

    def remove_group_member(
        self, org_id: str, group_id: str, user_id: str, *, version: int | None = None
    ) -> None:
        """Take a user out of a group (no-op if not in it)."""
        self._apply(
            ("g", org_id, group_id, user_id),
            lambda index: index.remove_group_member(org_id, group_id, user_id),
            version,
        )

    def remove_org(self, org_id: str) -> None:
        """Forget every membership, group membership and binding of an org."""
        self._index.remove_org(org_id)

    def load(
        self,
        memberships: Iterable[OrgMembership],
        bindings: Iterable[PolicyBinding] = (),
        group_members: Iterable[GroupMember] = (),
    ) -> None:
        """Replace all data with these memberships, bindings and group memberships.

        The new indexes are built aside and swapped in with one assignment: a decision running
        meanwhile (in another thread) sees the old data or the new, never a mix. The engine
        forgets any store version (use `reload` to load from a store).

        Raises:
            SpecValidationError: Two memberships of one user in one org, two bindings with one
                id, or a record naming an undeclared role or permission.
        """
        index = self._build(memberships, bindings, group_members)
        self._index = index
        self._version = self._snapshot_version = None
        self._ahead = set()
        self._keys = {}
        self._log = []

    def _build(
        self,
        memberships: Iterable[OrgMembership],
        bindings: Iterable[PolicyBinding],
        group_members: Iterable[GroupMember],
    ) -> _Index:
        model = self.model
        index = _Index()
        for membership in memberships:
            model.check_membership(membership)
            if membership.user_id in index.statuses.get(membership.org_id, _EMPTY):
                raise SpecValidationError(
                    f"two memberships of user {membership.user_id!r} in org "
                    f"{membership.org_id!r}; a user holds one membership per org (keep one)",
                    details={"field": "memberships", "org_id": membership.org_id},
                )
            index.put_membership(membership, self._role(membership))
        for binding in bindings:
            model.check_binding(binding)
            if binding.id in index.by_id:
                raise SpecValidationError(
                    f"two policy bindings with id {binding.id!r}; binding ids are unique",
                    details={"field": "bindings", "binding_id": binding.id},
                )
            index.put_binding(_Binding(binding))
        for member in group_members:
            index.put_group_member(member.org_id, member.group_id, member.user_id)
        return index

    # -- versions (see the module docs, "Consistency") ----------------------------------------------

    @property
    def version(self) -> int | None:
        """The store version the engine reflects completely (every change up to it is in), or
        `None` before the first `reload` (and after `load`)."""
        return self._version

    def _apply(
        self, key: tuple[Any, ...], change: Callable[[_Index], None], version: int | None
    ) -> None:
        if version is None:
            change(self._index)
            return
        snapshot = self._snapshot_version
        if snapshot is not None and version <= snapshot:
            return  # the installed snapshot already holds it (and maybe newer changes)
        keys = self._keys
        newer = keys.get(key)
        if newer is not None and newer > version:
            return  # a later transaction's change of the same record is already applied
        keys[key] = version
        if self._reloading:
            self._log.append((version, len(self._log), (key, change)))
        change(self._index)
        self._advance(version)
        if version > self._latest:
            self._latest = version
        if len(keys) > _KEYS_LIMIT:  # keep the recent ones: only they can arrive out of order
            floor = self._latest - _KEYS_LIMIT // 16
            self._keys = {k: v for k, v in keys.items() if v > floor}

    def _advance(self, version: int) -> None:
        current = self._version
        if current is None or version <= current:
            return
        if version == current + 1:
            ahead = self._ahead
            while version + 1 in ahead:
                ahead.discard(version + 1)
                version += 1
            self._version = version
        else:
            self._ahead.add(version)  # another process wrote the versions in between

    def _install(self, snapshot: IdentitySnapshot) -> bool:
        if self._snapshot_version is not None and snapshot.version < self._snapshot_version:
            return False  # an older snapshot never replaces newer data
        index = self._build(snapshot.memberships, snapshot.bindings, snapshot.group_members)
        later = sorted(
            (entry for entry in self._log if entry[0] > snapshot.version),
            key=lambda entry: (entry[0], entry[1]),
        )
        keys: dict[tuple[Any, ...], int] = {}
        for version, _, (key, change) in later:
            if keys.get(key, -1) > version:
                continue
            keys[key] = version
            change(index)
        self._index = index  # the swap: one assignment
        self._snapshot_version = snapshot.version
        self._version = snapshot.version
        self._latest = max(self._latest, snapshot.version)
        self._ahead = set()
        self._keys = keys
        self._log = later
        for version, _, _ in later:
            self._advance(version)
        return True

    async def reload(self, store: IdentityStore, unit_of_work: UnitOfWork) -> bool:
        """Rebuild the indexes from one consistent snapshot of `store` (a read-only transaction
        of `unit_of_work`) and swap them in.

        Changes this process commits while the snapshot is read are re-applied on top of it, and
        a snapshot older than the one installed is dropped, so a reload never undoes a newer
        change (a revoke stays revoked).

        Returns:
            Whether the snapshot was installed (`False`: a newer one already was).

        Raises:
            SpecValidationError: The store holds a record the model does not accept (e.g. a
                membership of a role removed from the model); the engine keeps its data.
        """
        self._reloading += 1
        try:
            tx = await unit_of_work.begin(readonly=True)
            try:
                snapshot = await store.snapshot(tx)
            finally:
                await tx.rollback()
            return self._install(snapshot)
        finally:
            self._reloading -= 1
            if not self._reloading:
                self._log = []

    # -- failing closed -------------------------------------------------------------------------

    def fail_closed(self, reason: str | None) -> None:
        """Deny every decision (and every membership check) with `reason`, until called with `None`.

        `PolicySync` calls it when it could not confirm the engine is fresh within its
        `max_staleness_s`; call it yourself for maintenance windows.
        """
        self._stale = (
            None
            if reason is None
            else Decision.deny(f"the policy engine fails closed: {reason}; every decision denies")
        )

    @property
    def failed_closed(self) -> str | None:
        """The reason every decision denies, or `None` when the engine decides normally."""
        stale = self._stale
        return None if stale is None else stale.reason

    # -- queries ----------------------------------------------------------------------------------

    def role_of(self, org_id: str, user_id: str) -> str | None:
        """The role of an *active* member, or `None`."""
        return self._index.members.get(org_id, _EMPTY).get(user_id) or None

    def groups_of(self, org_id: str, user_id: str) -> frozenset[str]:
        """The ids of the groups `user_id` belongs to in `org_id`."""
        found: frozenset[str] = self._index.groups.get(org_id, _EMPTY).get(user_id, frozenset())
        return found

    def is_member(self, subject: Actor, org_id: str) -> bool:
        """Whether `subject` belongs to `org_id` (core's `MembershipChecker` port).

        The executor asks before every non-public call in a tenant and denies non-members, so a
        caller never reaches another org's data by naming it. Permissions are still decided by
        `decide` (invited memberships, for instance, belong but grant nothing).

        Args:
            subject: The actor; memberships are looked up for users only, bindings for the
                actor's kind.
            org_id: The tenant of the call.

        Returns:
            `True` for a user's active or invited membership in `org_id`, or an unexpired allow
            binding of the actor's kind in `org_id` or platform-wide (`org_id=None`); `False`
            otherwise, always for anonymous actors and suspended members (whatever bindings they
            hold in that org), and while the engine fails closed.
        """
        kind = subject.kind
        if kind == ActorKind.ANONYMOUS or self._stale is not None:
            return False
        index = self._index
        uid = subject.id
        if kind == _USER:
            membership = index.statuses.get(org_id, _EMPTY).get(uid)
            if membership is not None:
                return membership.status is not MembershipStatus.SUSPENDED
        now: datetime | None = None
        for bucket in (
            index.bindings_of(kind, org_id, uid),
            index.bindings_of(kind, None, uid),
        ):
            for binding in bucket:
                if not binding.allow:
                    continue
                if binding.expires_at is None:
                    return True
                if now is None:
                    now = self._clock.now()
                if binding.expires_at > now:
                    return True
        return False

    def list_permissions(
        self,
        subject: Actor | str,
        org_id: str | None = None,
        *,
        resource: Resource | None = None,
        ctx: CallContext | None = None,
    ) -> list[str]:
        """What may this subject do? The declared permissions `decide` allows it, sorted.

        casbin calls this `get_implicit_permissions_for_user`; OpenFGA answers it with one check
        per relation. Every permission is decided exactly as `decide` would (memberships, role
        hierarchy, groups, bindings, rules, parents), so the answer never disagrees with a check.

        Args:
            subject: An actor, or a user id.
            org_id: The org (for org-level permissions: `Resource("org", org_id=org_id)`).
            resource: A specific resource instead (its `org_id` is the org); resource-level
                bindings and conditions then count.
            ctx: The call context conditions see (default: the subject acting in the org).

        Returns:
            Declared permission names (a pattern grant such as `deal.*` is listed as the declared
            permissions it covers).

        Raises:
            ValueError: `org_id` and `resource.org_id` disagree.
        """
        actor = subject if isinstance(subject, Actor) else Actor.user(subject)
        if resource is None:
            resource = Resource("org", None, org_id)
        elif org_id is not None and resource.org_id != org_id:
            raise ValueError(
                f"org_id {org_id!r} differs from resource.org_id {resource.org_id!r}; pass one"
            )
        call = ctx or CallContext(actor=actor, org_id=resource.org_id)
        decide = self.decide
        return [
            name
            for name in sorted(self.model.permissions)
            if decide(actor, name, resource, call).allowed
        ]

    def list_subjects(
        self, action: str, resource: Resource, *, ctx: CallContext | None = None
    ) -> list[Actor]:
        """Who may do `action` on `resource`? The subjects the engine knows that `decide` allows.

        casbin calls this `get_implicit_users_for_permission`; OpenFGA's `ListUsers`. Candidates
        are the org's members (any status), the subjects of its bindings and of platform-wide
        bindings, and the members of groups bound in the org; each is decided exactly as
        `decide` would. Access rules that allow *any* authenticated actor (`org.create`) are not
        expanded into a list of everyone.

        Args:
            action: A permission name.
            resource: The resource; its `org_id` is the org.
            ctx: The call context conditions see (default: each candidate acting in the org).

        Returns:
            Actors (users, agents, system and service actors), sorted by kind then id.
        """
        index = self._index
        org = resource.org_id
        candidates: set[tuple[str, str]] = set()
        if org is not None:
            candidates.update(("user", uid) for uid in index.statuses.get(org, _EMPTY))
        for kind, by_org in index.bindings.items():
            for scope in (org, None):
                for subject in by_org.get(scope, _EMPTY):
                    if kind == _GROUP:
                        candidates.update(
                            ("user", uid)
                            for uid, groups in index.groups.get(org or "", _EMPTY).items()
                            if subject in groups
                        )
                    else:
                        candidates.add((kind, subject))
        allowed: list[Actor] = []
        for kind, sid in sorted(candidates):
            actor = Actor(sid, ActorKind(kind))
            call = ctx or CallContext(actor=actor, org_id=org)
            if self.decide(actor, action, resource, call).allowed:
                allowed.append(actor)
        return allowed

    @property
    def size(self) -> tuple[int, int]:
        """`(memberships, bindings)` currently indexed."""
        index = self._index
        return sum(len(users) for users in index.statuses.values()), len(index.by_id)

    # -- decisions --------------------------------------------------------------------------------

    def decide(self, subject: Actor, action: str, resource: Resource, ctx: CallContext) -> Decision:
        """Decide whether `subject` may perform `action` (a permission) on `resource`.

        Args:
            subject: The actor. A user's memberships and groups count, and the bindings of the
                actor's kind with its `id` (a user's never apply to an agent of the same id).
            action: The permission, e.g. `"deal.write"`; anything else (`""`, `"*"`) is denied.
            resource: What is acted on; `resource.org_id` selects the tenant (the executor sets
                it from `CallContext.org_id`), `type`/`id`/`attributes` feed bindings, parents
                and rules.
            ctx: The call context (its `channel` and `attributes` feed conditions).

        Returns:
            A `Decision` whose `reason` explains it and whose `matched_rule` is
            `role:<role>:<pattern>`, `binding:<id>` or `rule:<name>` (`None` for default denies).
        """
        stale = self._stale
        if stale is not None:
            return stale
        kind = subject.kind
        if kind == ActorKind.ANONYMOUS:
            return _ANONYMOUS
        compiled = self._compiled
        rules = compiled.rule_cache.get(action)
        if rules is None:
            rules = compiled.rules_for(action)
        if rules is _INVALID:
            return _invalid_action(action)
        index = self._index
        uid = subject.id
        org = resource.org_id
        role: str | None = None
        groups: frozenset[str] | None = None
        if kind == _USER and org is not None:
            members = index.members.get(org)
            if members is not None:
                role = members.get(uid)
                if role:
                    by_user = index.groups.get(org)
                    if by_user is not None:
                        groups = by_user.get(uid)
        by_org = index.bindings.get(kind)
        bindings: _Bucket | None = None
        platform: _Bucket | None = None
        if by_org is not None:
            if org is not None:
                subjects = by_org.get(org)
                if subjects is not None:
                    bindings = subjects.get(uid)
            subjects = by_org.get(None)
            if subjects is not None:
                platform = subjects.get(uid)
        if bindings is None and platform is None and groups is None and rules is _NO_RULES:
            # fast paths: only the membership role can decide
            if role:
                cached = compiled.grant_cache.get(role, _EMPTY).get(action, _MISSING)
                if cached is _MISSING:
                    cached = compiled.role_decision(role, action)
                if cached is not None:
                    return cached  # type: ignore[no-any-return]
                denied = compiled.role_denies.get(role, _EMPTY).get(action)
                if denied is None:
                    denied = compiled.role_denial(role, action)
                return denied
            if role is None and org is not None and kind == _USER:
                outsider = compiled.outsiders.get(org)
                if outsider is None:
                    outsider = compiled.outsider(org)
                return outsider
        buckets: list[_Bucket] = []
        if bindings:
            buckets.append(bindings)
        if platform:
            buckets.append(platform)
        if groups and org is not None:
            by_group = index.bindings.get(_GROUP, _EMPTY).get(org)
            if by_group is not None:
                for group in sorted(groups):
                    bucket = by_group.get(group)
                    if bucket:
                        buckets.append(bucket)
        return self._decide_full(
            subject, action, resource, ctx, role or None, buckets, rules, compiled, index
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
            if rule.roles and not any(r in rule.roles for r in self.model.includes(role)):
                return False
        return True

    def _decide_full(
        self,
        subject: Actor,
        action: str,
        resource: Resource,
        ctx: CallContext,
        role: str | None,
        buckets: list[_Bucket],
        rules: _Rules,
        compiled: _Compiled,
        index: _Index,
    ) -> Decision:
        now: datetime | None = None
        expired: _Binding | None = None
        candidates: list[_Binding] = []
        chain: tuple[tuple[str, str], ...] | None = None
        for bucket in buckets:
            for b in bucket:
                matched = _scope_matches(b, resource, chain)
                if matched is None:
                    chain = compiled.chain(resource)
                    matched = _scope_matches(b, resource, chain)
                if not matched or not compiled.binding_grants(b, action):
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
            cached = compiled.role_allows(role, action)
            if cached is not None:
                return cached
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
            self._why_not(subject, action, resource, role, expired, conditional, index)
        )

    def _why_not(
        self,
        subject: Actor,
        action: str,
        resource: Resource,
        role: str | None,
        expired: _Binding | None,
        had_conditional: bool,
        index: _Index,
    ) -> str:
        org = resource.org_id
        parts: list[str] = []
        if org is None:
            parts.append(
                f"{action!r} is checked outside any org and no platform grant or rule allows it"
            )
        elif role is not None:
            parts.append(f"role {role!r} does not grant {action!r}")
        elif subject.kind != _USER:
            parts.append(
                f"{subject.kind.value} actors hold no memberships and no binding of "
                f"{subject.kind.value} {subject.id!r} grants {action!r} in org {org!r}"
            )
        else:
            membership = index.statuses.get(org, _EMPTY).get(subject.id)
            if membership is None:
                parts.append(f"not a member of org {org!r}")
            else:
                parts.append(
                    f"the membership of {subject.id!r} in org {org!r} is "
                    f"{membership.status.value}, so it grants nothing"
                )
        if had_conditional:
            parts.append("an allowing binding matched but its conditions did not hold")
        if expired is not None:
            parts.append(f"{expired.describe()} expired at {expired.expires_at.isoformat()}")  # type: ignore[union-attr]
        return "; ".join(parts) + " (deny by default)"
