"""Review sections of the console: workflow boards and the review queues of the other packages.

Each section runs the review operations its package registers (`register_review_operations`)
through the console's executor; a section whose package is not installed raises a
`ConfigurationError` naming it when constructed, so this module imports without them.

```py
from contractspec.console import Console
from contractspec.console.reviews import AgentRuns, ApprovalsQueue, DeadJobs, WorkflowBoard

console = Console(
    executor,
    authenticate=authenticate,
    secret_key=SECRET,
    sections=[ApprovalsQueue(), AgentRuns(), DeadJobs(), WorkflowBoard(deal_flow, registry)],
)
```
"""

from contractspec.console.reviews._common import FormField, QueueAction, QueueSection
from contractspec.console.reviews.agent import AgentRuns, ApprovalsQueue, ShadowReports
from contractspec.console.reviews.audit import AuditLog
from contractspec.console.reviews.evolution import Suggestions
from contractspec.console.reviews.experiments import Experiments
from contractspec.console.reviews.queues import DeadJobs, DeadLetters
from contractspec.console.reviews.workflows import WorkflowBoard

__all__ = (
    "AgentRuns",
    "ApprovalsQueue",
    "AuditLog",
    "DeadJobs",
    "DeadLetters",
    "Experiments",
    "FormField",
    "QueueAction",
    "QueueSection",
    "ShadowReports",
    "Suggestions",
    "WorkflowBoard",
)
