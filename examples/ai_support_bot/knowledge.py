"""The help-centre articles, loaded into the toolkit's `KnowledgeBase` (BM25, per tenant).

Titles are written the way customers ask ("Charged twice"), since a title's words count twice.
"""

from __future__ import annotations

from contractspec.agent.support import Document, KnowledgeBase

__all__ = ["ARTICLES", "ORG", "build_knowledge"]

#: The help desk's tenant.
ORG = "helpdesk"

ARTICLES: tuple[Document, ...] = (
    Document(id="kb-101", title="Refund timelines", category="billing",
             text="Refunds are issued to the original payment method within 5 business days of approval."),
    Document(id="kb-102", title="Charged twice (double charges)", category="billing",
             text="A double charge is usually a pending authorisation that disappears within 3 days. "
                  "If both charges settle, we refund the duplicate."),
    Document(id="kb-201", title="Shipping times", category="shipping",
             text="Standard shipping takes 3 to 5 business days; express shipping takes 1 to 2."),
    Document(id="kb-202", title="Lost parcels", category="shipping",
             text="If tracking shows no movement for 7 days, we open an investigation and reship "
                  "or refund the order."),
    Document(id="kb-301", title="Reset your password", category="account",
             text="Use 'Forgot password' on the sign-in page; the reset link is valid for 1 hour."),
    Document(id="kb-302", title="Close your account", category="account",
             text="Accounts can be closed from Settings > Privacy; closure is final after 30 days."),
)  # fmt: skip


async def build_knowledge(knowledge: KnowledgeBase | None = None) -> KnowledgeBase:
    """A knowledge base holding `ARTICLES` in the `ORG` tenant."""
    kb = knowledge or KnowledgeBase()
    await kb.add(ARTICLES, org_id=ORG)
    return kb
