"""Oracle: PolicyEngine agrees with pycasbin (RBAC with domains, deny-override) on random worlds.

Mapping (documented in docs/identity/permissions.md):

* active membership (org, user, role)      -> `g, user, role, org`
* role permission pattern in each org       -> `p, role, org, *, pattern, allow`
* binding (org, subject, role|permission,
  effect, resource_type, resource_id)       -> `p, subject, org, obj, pattern, effect` for the
  permission, or for each pattern of the bound role (casbin cannot scope a `g` to a resource, and a
  deny of a role means "deny every permission of the role")
* obj: `*` (any resource), `type:*` (every resource of a type), `type:id` (one resource); a
  request for `Resource(type, id)` is `type:id` (`type:` without an id)
* invited and suspended memberships, and expired bindings, are left out (casbin has no status
  or expiry); conditions and access rules are ABAC features outside this model.

Effect: `some(where (p.eft == allow)) && !some(where (p.eft == deny))`, matcher
`g(r.sub, p.sub, r.dom) && r.dom == p.dom && keyMatch(r.obj, p.obj) && keyMatch(r.act, p.act)`.
`keyMatch` treats `*` as "any suffix", which is the engine's trailing-`*` pattern semantics.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import casbin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contractspec.core import Actor, CallContext, Resource
from contractspec.core.testing import FakeClock
from contractspec.identity import (
    AccessModel,
    Effect,
    GroupMember,
    MembershipStatus,
    OrgMembership,
    Permission,
    PolicyBinding,
    PolicyEngine,
    ResourceType,
    Role,
)

CASBIN_MODEL = """
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, dom, obj, act, eft

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = g(r.sub, p.sub, r.dom) && r.dom == p.dom && keyMatch(r.obj, p.obj) && keyMatch(r.act, p.act)
"""

T0 = datetime(2024, 1, 1, tzinfo=UTC)
MODEL = AccessModel(
    permissions=[Permission(name="deal.read"), Permission(name="deal.write")],
    roles=[Role(name="sales", permissions=("deal.*", "member.view"), rank=20)],
    rules=(),
)
ORGS = ["o0", "o1", "o2"]
USERS = ["u0", "u1", "u2", "u3", "u4"]
ACTIONS = ["deal.read", "deal.write", "member.view", "member.invite", "billing.view", "org.manage"]
PATTERNS = [*ACTIONS, "deal.*", "member.*", "*"]
TYPES = ["deal", "project", "org"]
IDS = [None, "1", "2"]

memberships = st.dictionaries(
    st.tuples(st.sampled_from(ORGS), st.sampled_from(USERS)),
    st.tuples(st.sampled_from(sorted(MODEL.roles)), st.sampled_from(list(MembershipStatus))),
    max_size=12,
)


@st.composite
def bindings(draw: st.DrawFn) -> list[PolicyBinding]:
    out = []
    for n in range(draw(st.integers(0, 8))):
        use_role = draw(st.booleans())
        rtype = draw(st.sampled_from([None, *TYPES]))
        rid = draw(st.sampled_from(IDS)) if rtype is not None else None
        expiry = draw(st.sampled_from([None, T0 - timedelta(hours=1), T0 + timedelta(hours=1)]))
        out.append(
            PolicyBinding(
                id=f"b{n}",
                org_id=draw(st.sampled_from(ORGS)),
                subject=draw(st.sampled_from(USERS)),
                role=draw(st.sampled_from(sorted(MODEL.roles))) if use_role else None,
                permission=None if use_role else draw(st.sampled_from(PATTERNS)),
                effect=draw(st.sampled_from(list(Effect))),
                resource_type=rtype,
                resource_id=rid,
                expires_at=expiry,
                created_at=T0,
            )
        )
    return out


requests = st.lists(
    st.tuples(
        st.sampled_from(USERS),
        st.sampled_from(ORGS),
        st.sampled_from(TYPES),
        st.sampled_from(IDS),
        st.sampled_from(ACTIONS),
    ),
    min_size=1,
    max_size=25,
)


def _obj(binding: PolicyBinding) -> str:
    if binding.resource_type is None:
        return "*"
    return f"{binding.resource_type}:{binding.resource_id or '*'}"


def casbin_enforcer(
    world: dict[tuple[str, str], tuple[str, MembershipStatus]], grants: list[PolicyBinding]
) -> casbin.Enforcer:
    """The equivalent casbin enforcer (see the module docstring for the mapping)."""
    enforcer = casbin.Enforcer(casbin.Enforcer.new_model(text=CASBIN_MODEL))
    policies: list[list[str]] = []
    for org in ORGS:
        for role in MODEL.roles.values():
            policies.extend([role.name, org, "*", pattern, "allow"] for pattern in role.permissions)
    for b in grants:
        if b.expires_at is not None and b.expires_at <= T0:
            continue
        patterns = [b.permission] if b.permission else list(MODEL.roles[str(b.role)].permissions)
        policies.extend(
            [b.subject, str(b.org_id), _obj(b), pattern, b.effect.value] for pattern in patterns
        )
    if policies:
        enforcer.add_policies(policies)
    groups = [
        [user, role, org]
        for (org, user), (role, status) in world.items()
        if status is MembershipStatus.ACTIVE
    ]
    if groups:
        enforcer.add_grouping_policies(groups)
    return enforcer


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=memberships, grants=bindings(), asks=requests)
def test_engine_agrees_with_casbin_rbac_with_domains(
    world: dict[tuple[str, str], tuple[str, MembershipStatus]],
    grants: list[PolicyBinding],
    asks: list[tuple[str, str, str, str | None, str]],
) -> None:
    """Every decision of the engine equals casbin's on the same memberships, grants and denies."""
    engine = PolicyEngine(MODEL, clock=FakeClock(T0))
    engine.load(
        [
            OrgMembership(
                id=f"m-{org}-{user}",
                org_id=org,
                user_id=user,
                role=role,
                status=status,
                created_at=T0,
                updated_at=T0,
            )
            for (org, user), (role, status) in world.items()
        ],
        grants,
    )
    enforcer = casbin_enforcer(world, grants)
    for user, org, rtype, rid, action in asks:
        actor = Actor.user(user)
        ours = engine.decide(
            actor, action, Resource(rtype, rid, org), CallContext(actor=actor, org_id=org)
        )
        theirs = enforcer.enforce(user, org, f"{rtype}:{rid or ''}", action)
        assert ours.allowed is theirs, (user, org, rtype, rid, action, ours.reason)


# -- role hierarchy, groups and hierarchical resources ---------------------------------------------
#
# Mapping, on top of the one above:
#
# * `Role(includes=...)`                       -> `g, role, included, org` in each org (casbin's
#   role inheritance is transitive, like the engine's)
# * group member (org, group, user), while the user's membership of the org is active
#                                             -> `g, user, group:<id>, org`
# * a binding of a group                      -> `p, group:<id>, org, obj, pattern, effect`
# * a role binding                            -> one `p` per pattern the role grants, included
#   roles' too (`AccessModel.effective_permissions`)
# * `ResourceType("deal", parent="project")`  -> the request carries the deal's project as a
#   second object (`r.pobj`, `project:<project_id>`) and the matcher accepts a policy on either
#   object: `(keyMatch(r.obj, p.obj) || keyMatch(r.pobj, p.obj))`

CASBIN_HIERARCHY_MODEL = """
[request_definition]
r = sub, dom, obj, pobj, act

[policy_definition]
p = sub, dom, obj, act, eft

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = g(r.sub, p.sub, r.dom) && r.dom == p.dom && (keyMatch(r.obj, p.obj) || keyMatch(r.pobj, p.obj)) && keyMatch(r.act, p.act)
"""

HMODEL = AccessModel(
    permissions=[
        Permission(name="deal.read"),
        Permission(name="deal.write"),
        Permission(name="deal.delete"),
    ],
    roles=[
        Role(name="viewer", permissions=("deal.read",), rank=5),
        Role(
            name="sales", permissions=("deal.write", "member.view"), includes=("viewer",), rank=20
        ),
        Role(
            name="lead",
            title="Sales Lead",
            permissions=("deal.delete",),
            includes=("sales",),
            rank=30,
        ),
    ],
    resource_types=[ResourceType(name="deal", parent="project")],
    rules=(),
)
GROUPS = ["g0", "g1"]
H_ACTIONS = ["deal.read", "deal.write", "deal.delete", "member.view", "member.invite"]
H_PATTERNS = [*H_ACTIONS, "deal.*", "*"]
H_TYPES = ["deal", "project"]
H_IDS = [None, "1", "2"]

h_memberships = st.dictionaries(
    st.tuples(st.sampled_from(ORGS), st.sampled_from(USERS)),
    st.tuples(st.sampled_from(sorted(HMODEL.roles)), st.sampled_from(list(MembershipStatus))),
    max_size=12,
)
group_members = st.lists(
    st.tuples(st.sampled_from(ORGS), st.sampled_from(GROUPS), st.sampled_from(USERS)),
    max_size=8,
    unique=True,
)


@st.composite
def h_bindings(draw: st.DrawFn) -> list[PolicyBinding]:
    out = []
    for n in range(draw(st.integers(0, 8))):
        use_role = draw(st.booleans())
        rtype = draw(st.sampled_from([None, *H_TYPES]))
        to_group = draw(st.booleans())
        out.append(
            PolicyBinding(
                id=f"b{n}",
                org_id=draw(st.sampled_from(ORGS)),
                subject=draw(st.sampled_from(GROUPS if to_group else USERS)),
                subject_kind="group" if to_group else "user",
                role=draw(st.sampled_from(sorted(HMODEL.roles))) if use_role else None,
                permission=None if use_role else draw(st.sampled_from(H_PATTERNS)),
                effect=draw(st.sampled_from(list(Effect))),
                resource_type=rtype,
                resource_id=draw(st.sampled_from(H_IDS)) if rtype is not None else None,
                created_at=T0,
            )
        )
    return out


h_requests = st.lists(
    st.tuples(
        st.sampled_from(USERS),
        st.sampled_from(ORGS),
        st.sampled_from(H_TYPES),
        st.sampled_from(H_IDS),
        st.sampled_from(H_IDS),  # the deal's project_id
        st.sampled_from(H_ACTIONS),
    ),
    min_size=1,
    max_size=20,
)


def casbin_hierarchy_enforcer(
    world: dict[tuple[str, str], tuple[str, MembershipStatus]],
    grouped: list[tuple[str, str, str]],
    grants: list[PolicyBinding],
) -> casbin.Enforcer:
    """The casbin equivalent with role inheritance, groups and a parent object."""
    enforcer = casbin.Enforcer(casbin.Enforcer.new_model(text=CASBIN_HIERARCHY_MODEL))
    policies: list[list[str]] = []
    links: list[list[str]] = []
    for org in ORGS:
        for role in HMODEL.roles.values():
            policies.extend([role.name, org, "*", pattern, "allow"] for pattern in role.permissions)
            links.extend([role.name, included, org] for included in role.includes)
    for b in grants:
        subject = f"group:{b.subject}" if b.subject_kind == "group" else b.subject
        patterns = (
            [b.permission] if b.permission else list(HMODEL.effective_permissions(str(b.role)))
        )
        policies.extend(
            [subject, str(b.org_id), _obj(b), pattern, b.effect.value] for pattern in patterns
        )
    active = {key for key, (_, status) in world.items() if status is MembershipStatus.ACTIVE}
    links.extend(
        [user, role, org] for (org, user), (role, _) in world.items() if (org, user) in active
    )
    links.extend(
        [user, f"group:{group}", org] for org, group, user in grouped if (org, user) in active
    )
    if policies:
        enforcer.add_policies(policies)
    if links:
        enforcer.add_grouping_policies(links)
    return enforcer


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=h_memberships, grouped=group_members, grants=h_bindings(), asks=h_requests)
def test_engine_agrees_with_casbin_on_role_hierarchy_groups_and_parents(
    world: dict[tuple[str, str], tuple[str, MembershipStatus]],
    grouped: list[tuple[str, str, str]],
    grants: list[PolicyBinding],
    asks: list[tuple[str, str, str, str | None, str | None, str]],
) -> None:
    """Decisions, "what can this user do" and "who can do X on this resource" all equal
    casbin's, with roles including roles, group bindings and grants on a deal's project."""
    engine = PolicyEngine(HMODEL, clock=FakeClock(T0))
    engine.load(
        [
            OrgMembership(
                id=f"m-{org}-{user}",
                org_id=org,
                user_id=user,
                role=role,
                status=status,
                created_at=T0,
                updated_at=T0,
            )
            for (org, user), (role, status) in world.items()
        ],
        grants,
        [
            GroupMember(id=f"gm{n}", org_id=org, group_id=group, user_id=user, created_at=T0)
            for n, (org, group, user) in enumerate(grouped)
        ],
    )
    enforcer = casbin_hierarchy_enforcer(world, grouped, grants)
    for user, org, rtype, rid, project, action in asks:
        attrs = {"project_id": project} if rtype == "deal" and project else {}
        resource = Resource(rtype, rid, org, attrs)
        pobj = f"project:{project}" if attrs else "none:"
        obj = f"{rtype}:{rid or ''}"
        actor = Actor.user(user)
        ours = engine.decide(actor, action, resource, CallContext(actor=actor, org_id=org))
        theirs = enforcer.enforce(user, org, obj, pobj, action)
        assert ours.allowed is theirs, (user, org, rtype, rid, project, action, ours.reason)
        can = [p for p in sorted(HMODEL.permissions) if enforcer.enforce(user, org, obj, pobj, p)]
        assert engine.list_permissions(user, resource=resource) == can
        who = [u for u in sorted(USERS) if enforcer.enforce(u, org, obj, pobj, action)]
        assert [a.id for a in engine.list_subjects(action, resource)] == who
