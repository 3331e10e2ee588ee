"""PolicyEngine semantics: deny by default, deny beats allow, expiry, scopes, conditions, rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contractspec.core import (
    ANONYMOUS,
    Actor,
    ActorKind,
    CallContext,
    Decision,
    MembershipChecker,
    Resource,
)
from contractspec.core.testing import FakeClock
from contractspec.identity import (
    AccessModel,
    AccessRule,
    Condition,
    Effect,
    MembershipStatus,
    OrgMembership,
    Permission,
    PolicyBinding,
    PolicyEngine,
    Role,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
DEAL_MODEL = AccessModel(
    permissions=[
        Permission(name="deal.read"),
        Permission(name="deal.write"),
        Permission(name="deal.delete"),
        Permission(name="support.read"),
        Permission(name="x.y"),
    ],
    roles=[Role(name="sales", permissions=("deal.read", "deal.write"), rank=20)],
    rules=[
        AccessRule(
            name="members-write-own-deals",
            permissions=("deal.write",),
            roles=("member",),
            resource_type="deal",
            when=(Condition(attribute="resource.owner_id", value_from="subject.id"),),
        ),
        AccessRule(
            name="closed-deals-are-frozen",
            effect=Effect.DENY,
            permissions=("deal.*",),
            resource_type="deal",
            when=(Condition(attribute="resource.stage", value="closed"),),
        ),
        AccessRule(
            name="users-create-orgs",
            permissions=("org.create",),
            subjects="authenticated",
            actor_kinds=("user",),
        ),
    ],
)


def member(
    org: str, user: str, role: str, status: MembershipStatus = MembershipStatus.ACTIVE
) -> OrgMembership:
    return OrgMembership(
        id=f"m-{org}-{user}",
        org_id=org,
        user_id=user,
        role=role,
        status=status,
        created_at=T0,
        updated_at=T0,
    )


def bind(id: str, org: str | None, subject: str, **kw: Any) -> PolicyBinding:
    return PolicyBinding(id=id, org_id=org, subject=subject, created_at=T0, **kw)


def decide(
    engine: PolicyEngine,
    user: str,
    action: str,
    org: str | None = "o1",
    type: str = "crm.deals",
    id: str | None = None,
    actor: Actor | None = None,
    **attrs: Any,
) -> Decision:
    subject = actor or Actor.user(user)
    return engine.decide(
        subject, action, Resource(type, id, org, attrs), CallContext(actor=subject, org_id=org)
    )


@pytest.fixture
def clock() -> FakeClock:
    """Time stands at 2024-01-01T00:00Z."""
    return FakeClock(T0)


@pytest.fixture
def engine(clock: FakeClock) -> PolicyEngine:
    """An engine with owner u1, sales u2, member u3, invited u4 and suspended u5 in org o1."""
    e = PolicyEngine(DEAL_MODEL, clock=clock)
    e.load(
        [
            member("o1", "u1", "owner"),
            member("o1", "u2", "sales"),
            member("o1", "u3", "member"),
            member("o1", "u4", "admin", MembershipStatus.INVITED),
            member("o1", "u5", "admin", MembershipStatus.SUSPENDED),
            member("o2", "u9", "owner"),
        ]
    )
    return e


def test_non_members_are_denied_by_default(engine: PolicyEngine) -> None:
    """Someone without a membership gets a default deny explaining why."""
    d = decide(engine, "u9", "deal.read")
    assert d == Decision(False, "not a member of org 'o1' (deny by default)", None)


def test_role_grants_exactly_and_through_patterns(engine: PolicyEngine) -> None:
    """Roles allow their exact permissions and the ones their patterns cover, naming the grant."""
    assert decide(engine, "u2", "deal.write") == Decision(
        True, "role 'sales' grants 'deal.write'", "role:sales:deal.write"
    )
    assert decide(engine, "u1", "deal.delete") == Decision(
        True, "role 'owner' grants 'deal.delete' through '*'", "role:owner:*"
    )


def test_role_without_the_permission_is_denied(engine: PolicyEngine) -> None:
    """A member whose role lacks the permission is denied with the role named."""
    d = decide(engine, "u2", "deal.delete")
    assert d == Decision(False, "role 'sales' does not grant 'deal.delete' (deny by default)", None)


def test_invited_and_suspended_memberships_grant_nothing(engine: PolicyEngine) -> None:
    """Only active memberships grant their role."""
    assert decide(engine, "u4", "member.view").reason == (
        "the membership of 'u4' in org 'o1' is invited, so it grants nothing (deny by default)"
    )
    assert decide(engine, "u5", "member.view").allowed is False


def test_anonymous_actors_are_denied(engine: PolicyEngine) -> None:
    """The anonymous actor holds nothing."""
    d = engine.decide(ANONYMOUS, "deal.read", Resource("deal", org_id="o1"), CallContext())
    assert d.allowed is False
    assert d.reason == "anonymous callers hold no permissions; authenticate first"


def test_roles_do_not_cross_orgs(engine: PolicyEngine) -> None:
    """Being owner of o2 grants nothing in o1, and owner of o1 nothing in o2."""
    assert decide(engine, "u9", "deal.read", org="o1").allowed is False
    assert decide(engine, "u1", "deal.read", org="o2").allowed is False
    assert decide(engine, "u9", "deal.read", org="o2").allowed is True


def test_explicit_deny_beats_the_owner_role(engine: PolicyEngine) -> None:
    """A matching deny binding wins over any allow."""
    engine.put_binding(bind("b1", "o1", "u1", permission="deal.delete", effect=Effect.DENY))
    d = decide(engine, "u1", "deal.delete")
    assert d == Decision(
        False,
        "binding 'b1' (deny 'deal.delete' in org 'o1') denies 'deal.delete'; an explicit deny beats any allow",
        "binding:b1",
    )
    assert decide(engine, "u1", "deal.read").allowed is True


def test_deny_of_a_role_denies_every_permission_of_the_role(engine: PolicyEngine) -> None:
    """A deny binding naming a role denies each permission that role grants."""
    engine.put_binding(bind("b1", "o1", "u2", role="member", effect=Effect.DENY))
    assert decide(engine, "u2", "project.view").matched_rule == "binding:b1"
    assert decide(engine, "u2", "deal.read").allowed is True


def test_resource_level_binding_grants_one_resource(engine: PolicyEngine) -> None:
    """A binding on one resource id allows that resource only; a type-wide one allows all of the type."""
    engine.put_binding(
        bind("b1", "o1", "u3", permission="deal.write", resource_type="deal", resource_id="d1")
    )
    engine.put_binding(bind("b2", "o1", "u3", permission="deal.read", resource_type="deal"))
    open_deal = {"type": "deal", "stage": "open"}
    assert decide(engine, "u3", "deal.write", id="d1", **open_deal).matched_rule == "binding:b1"
    assert decide(engine, "u3", "deal.write", id="d2", **open_deal).allowed is False
    assert decide(engine, "u3", "deal.read", id="d2", **open_deal).matched_rule == "binding:b2"
    assert decide(engine, "u3", "deal.read", type="invoice", id="d2").allowed is False


def test_expired_bindings_grant_and_deny_nothing(engine: PolicyEngine, clock: FakeClock) -> None:
    """Bindings stop applying at `expires_at`; the deny reason names the expired binding."""
    until = T0 + timedelta(hours=1)
    engine.put_binding(bind("b1", "o1", "u9", permission="deal.read", expires_at=until))
    engine.put_binding(
        bind("b2", "o1", "u1", permission="deal.read", effect=Effect.DENY, expires_at=until)
    )
    assert decide(engine, "u9", "deal.read").allowed is True
    assert decide(engine, "u1", "deal.read").allowed is False
    clock.advance(timedelta(hours=1))
    after = decide(engine, "u9", "deal.read")
    assert after.allowed is False
    assert after.reason == (
        "not a member of org 'o1'; binding 'b1' (allow 'deal.read' in org 'o1') expired at "
        "2024-01-01T01:00:00+00:00 (deny by default)"
    )
    assert decide(engine, "u1", "deal.read").allowed is True


def test_platform_bindings_apply_in_every_org_and_outside_orgs(engine: PolicyEngine) -> None:
    """A binding with org_id=None applies everywhere, including org-less checks."""
    engine.put_binding(bind("staff", None, "u7", permission="support.*"))
    assert decide(engine, "u7", "support.read", org="o1").matched_rule == "binding:staff"
    assert decide(engine, "u7", "support.read", org="o2").allowed is True
    assert decide(engine, "u7", "support.read", org=None).allowed is True
    assert decide(engine, "u7", "deal.read", org="o1").allowed is False


def test_org_bindings_do_not_leak_to_other_orgs(engine: PolicyEngine) -> None:
    """A binding of o1 grants nothing in o2."""
    engine.put_binding(bind("b1", "o1", "u9", role="owner"))
    assert decide(engine, "u1", "deal.read", org="o1").allowed is True
    assert decide(engine, "u9", "deal.read", org="o1").matched_rule == "binding:b1"
    engine.remove_membership("o2", "u9")
    assert decide(engine, "u9", "deal.read", org="o2").allowed is False


def test_conditional_allow_needs_every_condition_to_hold(engine: PolicyEngine) -> None:
    """Allow bindings with conditions apply only when all hold; missing attributes do not allow."""
    engine.put_binding(
        bind(
            "b1",
            "o1",
            "u3",
            permission="deal.delete",
            conditions=(Condition(attribute="resource.amount", op="lt", value=100),),
        )
    )
    assert decide(engine, "u3", "deal.delete", amount=50).allowed is True
    assert decide(engine, "u3", "deal.delete", amount=100).reason == (
        "role 'member' does not grant 'deal.delete'; an allowing binding matched but its "
        "conditions did not hold (deny by default)"
    )
    assert decide(engine, "u3", "deal.delete").allowed is False
    assert decide(engine, "u3", "deal.delete", amount="lots").allowed is False


def test_conditional_deny_fails_closed_on_missing_attributes(engine: PolicyEngine) -> None:
    """A deny whose condition cannot be evaluated still denies (fail closed)."""
    engine.put_binding(
        bind(
            "b1",
            "o1",
            "u2",
            permission="deal.write",
            effect=Effect.DENY,
            conditions=(Condition(attribute="resource.region", value="eu"),),
        )
    )
    assert decide(engine, "u2", "deal.write", region="us").allowed is True
    assert decide(engine, "u2", "deal.write", region="eu").matched_rule == "binding:b1"
    assert decide(engine, "u2", "deal.write").matched_rule == "binding:b1"


def test_access_rules_owner_condition_and_frozen_deals(engine: PolicyEngine) -> None:
    """Spec rules: members write their own deals; closed deals are denied to everyone."""
    own = decide(engine, "u3", "deal.write", type="deal", owner_id="u3", stage="open")
    assert own.matched_rule == "rule:members-write-own-deals"
    assert (
        decide(engine, "u3", "deal.write", type="deal", owner_id="u2", stage="open").allowed
        is False
    )
    assert decide(engine, "u3", "deal.write", type="invoice", owner_id="u3").allowed is False
    closed = decide(engine, "u1", "deal.read", type="deal", stage="closed")
    assert closed == Decision(
        False,
        "access rule 'closed-deals-are-frozen' denies 'deal.read'; an explicit deny beats any allow",
        "rule:closed-deals-are-frozen",
    )
    assert decide(engine, "u1", "deal.read", type="deal", stage="open").allowed is True
    # a deny rule whose attribute is missing fails closed, on its resource type only
    assert decide(engine, "u1", "deal.read", type="deal").reason == (
        "access rule 'closed-deals-are-frozen' denies 'deal.read' (its conditions could not be "
        "evaluated: an attribute is missing or incomparable, and denies fail closed); an explicit "
        "deny beats any allow"
    )
    assert decide(engine, "u1", "deal.read").allowed is True


def test_authenticated_rules_cover_org_less_permissions(engine: PolicyEngine) -> None:
    """`subjects='authenticated'` rules allow non-members, filtered by actor kind."""
    assert decide(engine, "u42", "org.create", org=None).matched_rule == "rule:users-create-orgs"
    assert decide(engine, "s1", "org.create", org=None, actor=Actor.system("s1")).allowed is False
    assert decide(engine, "u42", "org.create", org=None).allowed is True


@pytest.mark.parametrize(
    ("condition", "attrs", "expected"),
    [
        (Condition(attribute="resource.n", op="eq", value=3), {"n": 3}, True),
        (Condition(attribute="resource.n", op="ne", value=3), {"n": 3}, False),
        (Condition(attribute="resource.n", op="lt", value=3), {"n": 2}, True),
        (Condition(attribute="resource.n", op="le", value=3), {"n": 3}, True),
        (Condition(attribute="resource.n", op="gt", value=3), {"n": 3}, False),
        (Condition(attribute="resource.n", op="ge", value=3), {"n": 3}, True),
        (Condition(attribute="resource.tier", op="in", value=("a", "b")), {"tier": "b"}, True),
        (Condition(attribute="resource.tier", op="not_in", value=("a", "b")), {"tier": "b"}, False),
        (Condition(attribute="resource.tier", op="exists"), {"tier": "x"}, True),
        (Condition(attribute="resource.tier", op="exists"), {}, False),
        (Condition(attribute="resource.tier", op="not_exists"), {}, True),
        (
            Condition(attribute="subject.id", value_from="resource.owner_id"),
            {"owner_id": "u9"},
            True,
        ),
        (Condition(attribute="subject.role", value="owner"), {}, False),
        (Condition(attribute="ctx.channel", value="api"), {}, True),
        (Condition(attribute="resource.type", value="crm.deals"), {}, True),
        (Condition(attribute="resource.org_id", value="o1"), {}, True),
        (Condition(attribute="resource.n", op="lt", value=3), {"n": "x"}, False),
    ],
)
def test_condition_operators(condition: Condition, attrs: dict[str, Any], expected: bool) -> None:
    """Each operator and attribute path evaluates as documented (incomparable values never allow)."""
    engine = PolicyEngine(DEAL_MODEL)
    engine.put_binding(bind("b", "o1", "u9", permission="x.y", conditions=(condition,)))
    assert decide(engine, "u9", "x.y", **attrs).allowed is expected


def test_data_changes_show_in_the_next_decision(engine: PolicyEngine) -> None:
    """put/remove of memberships and bindings update decisions at once."""
    engine.put_membership(member("o1", "u3", "sales"))
    assert decide(engine, "u3", "deal.write").allowed is True
    engine.put_membership(member("o1", "u3", "sales", MembershipStatus.SUSPENDED))
    assert decide(engine, "u3", "deal.write").allowed is False
    engine.put_binding(bind("b1", "o1", "u3", permission="deal.read"))
    assert decide(engine, "u3", "deal.read").allowed is True
    engine.remove_binding("b1")
    assert decide(engine, "u3", "deal.read").allowed is False
    engine.remove_org("o1")
    assert engine.size == (1, 0)
    assert engine.role_of("o2", "u9") == "owner"


def test_check_is_a_shortcut_for_user_ids(engine: PolicyEngine) -> None:
    """`check()` decides for a user id in an org."""
    assert engine.check("u2", "deal.read", org_id="o1").allowed is True
    assert engine.check("u2", "deal.read", org_id="o2").allowed is False


def test_is_member_follows_memberships(engine: PolicyEngine) -> None:
    """Active and invited members belong; suspended ones, outsiders and anonymous actors do not."""
    assert isinstance(engine, MembershipChecker)
    belongs = {
        user: engine.is_member(Actor.user(user), "o1") for user in ("u1", "u2", "u4", "u5", "u9")
    }
    assert belongs == {"u1": True, "u2": True, "u4": True, "u5": False, "u9": False}
    assert engine.is_member(Actor.user("u9"), "o2") is True
    assert engine.is_member(Actor.user("u1"), "o2") is False
    assert engine.is_member(ANONYMOUS, "o1") is False
    assert engine.is_member(Actor("u1", ActorKind.ANONYMOUS), "o1") is False


def test_is_member_through_bindings(engine: PolicyEngine, clock: FakeClock) -> None:
    """Unexpired allow bindings (in the org or platform-wide) make members; denies and expiry don't."""
    engine.put_binding(bind("b-guest", "o1", "guest", permission="deal.read"))
    engine.put_binding(
        bind("b-temp", "o1", "temp", role="sales", expires_at=T0 + timedelta(minutes=30))
    )
    engine.put_binding(bind("b-deny", "o1", "blocked", permission="deal.*", effect=Effect.DENY))
    engine.put_binding(bind("b-staff", None, "support-svc", role="sales", subject_kind="service"))
    engine.put_binding(bind("b-import", "o1", "importer", role="sales", subject_kind="system"))
    engine.put_binding(bind("b-u5", "o1", "u5", permission="deal.read"))
    service = Actor("support-svc", ActorKind.SERVICE)
    assert engine.is_member(Actor.user("guest"), "o1") is True
    assert engine.is_member(Actor.user("guest"), "o2") is False
    assert engine.is_member(Actor.user("temp"), "o1") is True
    assert engine.is_member(Actor.user("blocked"), "o1") is False
    assert (engine.is_member(service, "o1"), engine.is_member(service, "o7")) == (True, True)
    assert engine.is_member(Actor.system("importer"), "o1") is True
    assert engine.is_member(Actor.system("importer"), "o2") is False
    # bindings apply to actors of their subject kind only
    assert engine.is_member(Actor.system("support-svc"), "o7") is False
    assert engine.is_member(Actor.user("support-svc"), "o7") is False
    assert engine.is_member(Actor.agent("guest"), "o1") is False
    assert engine.is_member(Actor.user("u5"), "o1") is False
    clock.advance(timedelta(hours=1))
    assert engine.is_member(Actor.user("temp"), "o1") is False


def test_is_member_follows_membership_changes(engine: PolicyEngine) -> None:
    """Suspending, reactivating and removing a membership change the answer at once."""
    engine.put_membership(member("o1", "u3", "member", MembershipStatus.SUSPENDED))
    assert engine.is_member(Actor.user("u3"), "o1") is False
    engine.put_membership(member("o1", "u3", "member"))
    assert engine.is_member(Actor.user("u3"), "o1") is True
    engine.remove_membership("o1", "u3")
    assert engine.is_member(Actor.user("u3"), "o1") is False
    engine.remove_org("o2")
    assert engine.is_member(Actor.user("u9"), "o2") is False
