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
    MembershipStatus,
    OrgMembership,
    Permission,
    PolicyBinding,
    PolicyEngine,
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
