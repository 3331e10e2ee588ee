"""RBAC with tenants: contractspec-identity's PolicyEngine vs pycasbin's `enforce`, side by side.

World: 100 orgs with the built-in roles owner/admin/member, 1,000 users who each belong to one to
three orgs (every org has an owner), then the same with 10,000 users. One random stream of
requests `(user, org, permission)` — half in orgs the user belongs to, half anywhere — goes through
`PolicyEngine.decide` and through casbin's `enforce` with the RBAC-with-domains model in the form
casbin recommends for roles shared by every tenant: one policy per role permission with the
domain pattern `*` (`p, owner, *, org, *`), memberships as per-domain role links
(`g, user, role, org`), and `keyMatch` on actions for the owner's `*`. The role policies are *not*
copied into each of the 100 orgs (an earlier version of this script did, which made casbin scan
100x more policies and inflated the ratio from hundreds to thousands). Both must give the same
answer on every request; the script checks that before timing.

Prints the settings of both sides, then per size: median (and best) time per decision — 15 rounds
of the 20,000-request stream for ours, 5 rounds of its first 2,000 requests for casbin; rounds of both sizes are interleaved so machine load hits both alike — decisions per
second, and the ratio. Times are this process's CPU time (`time.process_time`), so other
processes on a shared machine do not inflate them; "best" is the least disturbed round.

A decision is a constant number of dictionary lookups whatever the number of users; with 10x
users the per-decision time still rises somewhat because the indexes no longer fit in the CPU
caches.

Run: `uv run --all-packages --group bench python benchmarks/rbac_vs_casbin.py`
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version

import casbin

from contractspec.core import Actor, CallContext, Resource
from contractspec.identity import AccessModel, MembershipStatus, OrgMembership, PolicyEngine
from contractspec.identity import __version__ as identity_version

CASBIN_MODEL = """
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, dom, obj, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub, r.dom) && (p.dom == "*" || r.dom == p.dom) && r.obj == p.obj && keyMatch(r.act, p.act)
"""

T0 = datetime(2024, 1, 1, tzinfo=UTC)
ORGS = 100
ROLES = ("owner", "admin", "member")
ACTIONS = (
    "org.manage",
    "org.transfer",
    "member.view",
    "member.invite",
    "member.manage",
    "access.manage",
    "billing.view",
    "billing.manage",
    "project.view",
    "project.manage",
)


def world(users: int, seed: int) -> list[tuple[str, str, str]]:
    """Memberships `(org, user, role)`: an owner per org, then 1-3 random orgs per user."""
    rng = random.Random(seed)
    seen: dict[tuple[str, str], str] = {}
    for o in range(ORGS):
        seen[(f"o{o}", f"u{o % users}")] = "owner"
    for u in range(users):
        for o in rng.sample(range(ORGS), rng.randint(1, 3)):
            seen.setdefault((f"o{o}", f"u{u}"), rng.choice(ROLES))
    return [(org, user, role) for (org, user), role in seen.items()]


def stream(
    members: list[tuple[str, str, str]], users: int, n: int, seed: int
) -> list[tuple[str, str, str]]:
    """`n` requests `(user, org, action)`, half of them in one of the user's own orgs."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            org, user, _role = rng.choice(members)
        else:
            org, user = f"o{rng.randrange(ORGS)}", f"u{rng.randrange(users)}"
        out.append((user, org, rng.choice(ACTIONS)))
    return out


def build_engine(members: list[tuple[str, str, str]]) -> PolicyEngine:
    engine = PolicyEngine(AccessModel(rules=()))
    engine.load(
        OrgMembership(
            id=f"m-{org}-{user}",
            org_id=org,
            user_id=user,
            role=role,
            status=MembershipStatus.ACTIVE,
            created_at=T0,
            updated_at=T0,
        )
        for org, user, role in members
    )
    return engine


def build_casbin(members: list[tuple[str, str, str]], model: AccessModel) -> casbin.Enforcer:
    enforcer = casbin.Enforcer(casbin.Enforcer.new_model(text=CASBIN_MODEL))
    # one policy per role permission, shared by every org through the domain pattern "*"
    enforcer.add_policies(
        [[role, "*", "org", perm] for role in ROLES for perm in model.roles[role].permissions]
    )
    enforcer.add_grouping_policies([[user, role, org] for org, user, role in members])
    return enforcer


class Size:
    """One world size: the engine, the casbin enforcer and the request stream."""

    def __init__(self, users: int) -> None:
        self.users = users
        self.members = world(users, seed=users)
        self.requests = stream(self.members, users, 20_000, seed=7)
        self.engine = build_engine(self.members)
        self.enforcer = build_casbin(self.members, self.engine.model)
        self.prepared = [
            (Actor.user(u), a, Resource("org", None, o), CallContext(org_id=o))
            for u, o, a in self.requests
        ]
        self.subset = self.requests[:2_000]
        self.ours: list[float] = []
        self.theirs: list[float] = []

    def time_ours(self) -> None:
        decide = self.engine.decide
        prepared = self.prepared
        started = time.process_time()
        for args in prepared:
            decide(*args)
        self.ours.append((time.process_time() - started) / len(prepared))

    def time_casbin(self) -> list[bool]:
        enforce = self.enforcer.enforce
        started = time.process_time()
        answers = [enforce(user, org, "org", action) for user, org, action in self.subset]
        self.theirs.append((time.process_time() - started) / len(self.subset))
        return answers

    def check(self, answers: list[bool]) -> int:
        """Exit on any disagreement; return how many of the subset were allowed."""
        allowed = 0
        for (user, org, action), args, theirs in zip(
            self.subset, self.prepared, answers, strict=False
        ):
            ours = self.engine.decide(*args).allowed
            if ours is not theirs:
                sys.exit(f"disagreement on {(user, org, action)}: ours={ours} casbin={theirs}")
            allowed += ours
        return allowed


def main() -> None:
    print(
        f"RBAC with domains: {ORGS} orgs x {'/'.join(ROLES)}; PolicyEngine.decide vs casbin enforce"
    )
    sizes = [Size(1_000), Size(10_000)]
    policies = len(sizes[0].enforcer.get_policy())
    print(
        f"settings: Python {sys.version.split()[0]}; ours: contractspec-identity "
        f"{identity_version}, built-in roles, no access rules, decide() per request; casbin: "
        f"pycasbin {version('pycasbin')}, {policies} role policies with domain pattern '*', "
        "one g link per membership, enforce() per request; CPU time per decision"
    )
    allowed = {s.users: s.check(s.time_casbin()) for s in sizes}
    for _ in range(4):  # casbin: 5 rounds in all, interleaved across sizes
        for size in sizes:
            size.time_casbin()
    for _ in range(15):  # ours: 15 rounds of the whole stream, interleaved across sizes
        for size in sizes:
            size.time_ours()
    for s in sizes:
        ours, theirs = statistics.median(s.ours), statistics.median(s.theirs)
        print(
            f"{s.users:>6} users, {len(s.members):>6} memberships | casbin agrees on "
            f"{len(s.subset)} checks ({allowed[s.users]} allowed)\n"
            f"    ours   median {ours * 1e6:8.2f} us/decision ({1 / ours:>10,.0f}/s), best "
            f"{min(s.ours) * 1e6:.2f} us, over {len(s.prepared)} requests x {len(s.ours)} rounds\n"
            f"    casbin median {theirs * 1e6:8.1f} us/decision ({1 / theirs:>10,.0f}/s), best "
            f"{min(s.theirs) * 1e6:.1f} us, over {len(s.subset)} requests x {len(s.theirs)} rounds\n"
            f"    ratio (casbin / ours, medians): {theirs / ours:,.0f}x"
        )
    small, large = sizes
    print(
        "10x users -> per-decision time: ours x"
        f"{statistics.median(large.ours) / statistics.median(small.ours):.2f} (median), x"
        f"{min(large.ours) / min(small.ours):.2f} (best); casbin x"
        f"{statistics.median(large.theirs) / statistics.median(small.theirs):.2f} (median)"
    )


if __name__ == "__main__":
    main()
