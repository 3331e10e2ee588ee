"""AI agents, tools, approvals and a policy-safe tool gateway for ContractSpec.

```python
from contractspec.agent import (
    AgentRunner, ApprovalWorkflow, RiskLevel, define_agent, operation_tool, tool,
)
```

Tools are core operations or typed functions; every call goes through the `ToolGateway`
(validate → invariants → risk → approval → idempotency → execute/shadow → audit); runs are
durable and resume after approvals, in any process. Offline testing lives in
`contractspec.agent.testing`, SQL stores in `contractspec.agent.sql`, the litellm model client in
`contractspec.agent.litellm` (extra `contractspec-agent[litellm]`), external MCP servers' tools in
`contractspec.agent.mcp` (extra `contractspec-agent[mcp]`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from contractspec.agent._switch import allow_model_requests, model_requests_allowed
from contractspec.agent.approvals import ApprovalWorkflow, arguments_hash, is_refusal_denial
from contractspec.agent.budgets import (
    Budget,
    BudgetHold,
    BudgetReservation,
    BudgetStore,
    BudgetUsage,
    MemoryBudgetStore,
)
from contractspec.agent.errors import (
    AgentRunError,
    ApprovalDecisionError,
    ApprovalExpiredError,
    ApprovalMismatchError,
    ApprovalRequiredError,
    ApprovalUnavailableError,
    InvariantFailedError,
    LeaseLostError,
    ModelRequestsForbiddenError,
    ToolOutcomeUnknownError,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
)
from contractspec.agent.events import AGENT_EVENTS, APPROVAL_EVENTS
from contractspec.agent.gateway import (
    ActionPacket,
    RunScope,
    ShadowReport,
    ToolExecutor,
    ToolGateway,
    ToolOutcome,
    action_id_for,
    shadow_report,
)
from contractspec.agent.invariants import (
    Invariant,
    InvariantResult,
    RiskRule,
    budget_cap,
    margin_floor,
    parse_expression,
    refund_limit,
)
from contractspec.agent.memory import AgentMemory, InMemoryAgentMemory
from contractspec.agent.messages import (
    AssistantMessage,
    Message,
    ModelClient,
    ModelRequest,
    ModelResponse,
    StreamingModelClient,
    SystemMessage,
    ToolCall,
    ToolDefinition,
    ToolMessage,
    Usage,
    UserMessage,
)
from contractspec.agent.runner import AgentRunner, RunResult
from contractspec.agent.specs import (
    AgentPolicy,
    AgentRegistry,
    AgentSpec,
    UsageLimits,
    define_agent,
)
from contractspec.agent.stores import (
    ActionRecord,
    ActionStatus,
    ApprovalDecision,
    ApprovalRequest,
    ApprovalStatus,
    ApprovalStore,
    MemoryApprovalStore,
    MemoryRunStore,
    Run,
    RunLog,
    RunStatus,
    RunStep,
    RunStore,
)
from contractspec.agent.streaming import (
    RunFinished,
    StreamEvent,
    TextDelta,
    ToolCallFinished,
    ToolCallRequested,
)
from contractspec.agent.tools import (
    Reconciled,
    RiskLevel,
    Tool,
    ToolContext,
    operation_tool,
    tool,
)

try:
    __version__ = version("contractspec-agent")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "AGENT_EVENTS",
    "APPROVAL_EVENTS",
    "ActionPacket",
    "ActionRecord",
    "ActionStatus",
    "AgentMemory",
    "AgentPolicy",
    "AgentRegistry",
    "AgentRunError",
    "AgentRunner",
    "AgentSpec",
    "ApprovalDecision",
    "ApprovalDecisionError",
    "ApprovalExpiredError",
    "ApprovalMismatchError",
    "ApprovalRequest",
    "ApprovalRequiredError",
    "ApprovalStatus",
    "ApprovalStore",
    "ApprovalUnavailableError",
    "ApprovalWorkflow",
    "AssistantMessage",
    "Budget",
    "BudgetHold",
    "BudgetReservation",
    "BudgetStore",
    "BudgetUsage",
    "InMemoryAgentMemory",
    "Invariant",
    "InvariantFailedError",
    "InvariantResult",
    "LeaseLostError",
    "MemoryApprovalStore",
    "MemoryBudgetStore",
    "MemoryRunStore",
    "Message",
    "ModelClient",
    "ModelRequest",
    "ModelRequestsForbiddenError",
    "ModelResponse",
    "Reconciled",
    "RiskLevel",
    "RiskRule",
    "Run",
    "RunFinished",
    "RunLog",
    "RunResult",
    "RunScope",
    "RunStatus",
    "RunStep",
    "RunStore",
    "ShadowReport",
    "StreamEvent",
    "StreamingModelClient",
    "SystemMessage",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallFinished",
    "ToolCallRequested",
    "ToolContext",
    "ToolDefinition",
    "ToolExecutor",
    "ToolGateway",
    "ToolMessage",
    "ToolOutcome",
    "ToolOutcomeUnknownError",
    "UnexpectedModelBehavior",
    "Usage",
    "UsageLimitExceeded",
    "UsageLimits",
    "UserMessage",
    "__version__",
    "action_id_for",
    "allow_model_requests",
    "arguments_hash",
    "budget_cap",
    "define_agent",
    "is_refusal_denial",
    "margin_floor",
    "model_requests_allowed",
    "operation_tool",
    "parse_expression",
    "refund_limit",
    "shadow_report",
    "tool",
]
