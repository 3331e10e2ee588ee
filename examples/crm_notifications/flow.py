"""A short sales story through the CRM's public operations."""

from __future__ import annotations

from contractspec.core import Actor, CallContext, Executor
from crm_notifications.app import ORG_ID

__all__ = ["ANN", "MARC", "run_pipeline"]

ANN = CallContext(actor=Actor.user("ann", roles="sales"), org_id=ORG_ID, request_id="req-ann")
MARC = CallContext(actor=Actor.user("marc", roles="sales"), org_id=ORG_ID, request_id="req-marc")


async def run_pipeline(executor: Executor, deal_id: str = "deal-1") -> str:
    """Company, contact (with a personal email), deal, two moves, a task done; return the deal id.

    Emits `deal.created`, `deal.moved` (qualified), `deal.moved` (won) and `task.completed`.
    """
    await executor.execute("crm.company.create", {"id": "globex", "name": "Globex"}, ANN)
    await executor.execute(
        "crm.contact.create",
        {"id": "hank", "name": "Hank Scorpio", "email": "hank@globex.test", "company_id": "globex"},
        ANN,
    )
    await executor.execute(
        "crm.deal.create",
        {"id": deal_id, "contact_id": "hank", "title": "Globex renewal", "amount": "12500.00"},
        ANN,
    )
    await executor.execute("crm.deal.move", {"deal_id": deal_id, "to_stage": "qualified"}, ANN)
    task = await executor.execute(
        "crm.task.create", {"deal_id": deal_id, "title": "Send the contract"}, ANN
    )
    await executor.execute("crm.task.complete", {"task_id": task.model_dump()["id"]}, MARC)
    await executor.execute("crm.deal.move", {"deal_id": deal_id, "to_stage": "won"}, ANN)
    return deal_id
