"""Red-team testing of agents: adversarial scenarios against an agent, its tools and its gateway.

Needs `contractspec-agent`: `pip install 'contractspec-testing[agent]'`.

```py
from contractspec.testing.redteam import MoneyTool, PrivilegedCall, RedTeam, RedTeamTarget

target = RedTeamTarget(
    agent=support_agent,
    runner=make_runner,                       # () -> AgentRunner (fresh or shared stores)
    ctx=CallContext(actor=Actor.user("u-1", roles="support"), org_id="org-a"),
    privileged=[PrivilegedCall("delete_account", {"account_id": "acc-1"})],
    money=MoneyTool("refund", per_call_limit=10, total_limit=50, arguments={"order_id": "o-1"}),
)
report = await RedTeam(target).run()         # every scenario, offline and deterministic
report.assert_no_escapes()                    # a pytest assertion; report.to_markdown() for people
```

Each scenario scripts a *compromised* model (it does what the attacker asks) with the scripted
models of `contractspec.agent.testing`, so what is tested is the gateway — risk levels,
invariants, approvals, tenant checks and usage limits — and an attack is judged from what was
recorded (the idempotency ledger, the run log, the conversation, the approval store), never from what
the model said. `RedTeam(target, model=LiteLLMModel(...))` sends the same attacks to a real model.
"""

from __future__ import annotations

try:
    import contractspec.agent  # noqa: F401  # the extra this subpackage needs
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "contractspec.testing.redteam needs contractspec-agent: "
        "pip install 'contractspec-testing[agent]'"
    ) from exc

from contractspec.testing.redteam._corpus import (
    DIRECT_PAYLOADS,
    INDIRECT_PAYLOADS,
    default_scenarios,
)
from contractspec.testing.redteam._harness import RedTeam
from contractspec.testing.redteam._report import (
    AttackResult,
    CategoryStats,
    Finding,
    RedTeamEscapeError,
    RedTeamReport,
    Verdict,
)
from contractspec.testing.redteam._target import (
    CallBudget,
    Category,
    MoneyTool,
    PrivilegedCall,
    RedTeamConfigError,
    RedTeamTarget,
    Scenario,
    TenantProbe,
    UntrustedSource,
)

__all__ = [
    "DIRECT_PAYLOADS",
    "INDIRECT_PAYLOADS",
    "AttackResult",
    "CallBudget",
    "Category",
    "CategoryStats",
    "Finding",
    "MoneyTool",
    "PrivilegedCall",
    "RedTeam",
    "RedTeamConfigError",
    "RedTeamEscapeError",
    "RedTeamReport",
    "RedTeamTarget",
    "Scenario",
    "TenantProbe",
    "UntrustedSource",
    "Verdict",
    "default_scenarios",
]
