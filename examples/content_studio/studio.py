"""The content studio: brief → drafts → guardrails → approval → publish event.

```text
ContentBrief ──> content.blog_post / content.email / content.social_posts agents (structured output)
             ──> guardrail invariants (banned claims, disclaimers, brand voice, channel limits)
                   FAIL: audited + content.draft.refused, regenerated (at most 3 runs)
             ──> SEO report (title/meta length, headings, keyword density, readability)
             ──> L2 approval request of the exact draft (a lead approves or rejects)
             ──> content.publish (executor) ──> content.published (outbox)
```

Offline by default: `offline_model()` writes the drafts from the brief with templates (its first
blog draft makes a banned claim, so the guardrails have something to refuse). Set
`CONTENT_STUDIO_MODEL` (e.g. `openai/gpt-4o-mini`) to write with a real model through litellm.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import Any

from attrs import define
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.agent import (
    AgentRunner,
    ApprovalRequest,
    ApprovalWorkflow,
    MemoryApprovalStore,
    MemoryRunStore,
    ModelClient,
    ModelRequest,
    UserMessage,
)
from contractspec.agent.content import (
    CONTENT_SPECS,
    BrandVoice,
    ChannelConstraints,
    ContentBrief,
    ContentGenerator,
    ContentKind,
    ContentPublisher,
    GeneratedDraft,
    Publication,
    content_generator,
    register_content_operations,
)
from contractspec.agent.testing import FunctionModel
from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    Clock,
    Executor,
    MemoryBackend,
    RolePermissions,
    SpecRegistry,
)

__all__ = [
    "BRIEF",
    "EDITOR",
    "KINDS",
    "LEAD",
    "ORG",
    "POLICY",
    "WRITER",
    "ContentStudio",
    "build_studio",
    "configured_model",
    "offline_model",
]

#: The one tenant of the demo.
ORG = "acme"
#: Who may do what: writers draft, leads approve, editors publish.
POLICY = RolePermissions({"lead": ["approval.decide"], "editor": ["content.publish"]})
WRITER = CallContext(actor=Actor.user("maya", roles="writer"), org_id=ORG, channel="agent")
LEAD = Actor.user("lee", roles="lead")
EDITOR = CallContext(actor=Actor.user("eli", roles="editor"), org_id=ORG)
#: The kinds the studio writes for a brief.
KINDS: tuple[ContentKind, ...] = ("blog_post", "email", "social_posts")

#: The demo brief.
BRIEF = ContentBrief(
    id="spring-launch",
    topic="Invoice software for freelancers",
    audience="freelance designers and developers",
    brand_voice=BrandVoice(
        description="plain, warm, confident; no hype",
        forbidden_words=["synergy", "cheap", "revolutionary"],
        max_exclamations=1,
        max_sentence_words=25,
        allowed_caps=["GDPR"],
    ),
    keywords=["invoice software", "get paid"],
    banned_claims=["guaranteed results", "risk-free", "#1", "never be late again"],
    required_disclaimers=["Results vary by client."],
    channels=ChannelConstraints(blog_min_words=60, blog_max_words=800),
    call_to_action="Start a free trial",
)


def _brief_of(request: ModelRequest) -> tuple[ContentBrief, bool]:
    text = next(m.content for m in request.messages if isinstance(m, UserMessage))
    data = re.search(r"Brief \(JSON\):\n(\{.*?\n\})", text, re.S)
    assert data is not None, "the generator's prompt carries the brief as JSON"
    return ContentBrief.model_validate(json.loads(data.group(1))), "was refused" in text


def _writer(request: ModelRequest) -> str:
    """Template drafts from the brief; the first blog draft oversells (a banned claim)."""
    brief, corrected = _brief_of(request)
    schema = request.output_schema or {}
    kind = schema.get("title", "")
    kw, second = brief.keywords[0], brief.keywords[-1]
    disclaimer = " ".join(brief.required_disclaimers)
    cta = brief.call_to_action or "Learn more"
    draft: dict[str, Any]
    if kind == "BlogPost":
        claim = "" if corrected else " With us you get guaranteed results."
        draft = {
            "title": f"{kw.capitalize()} for freelancers: {second} on time",
            "meta_description": (
                f"How freelancers use {kw} to send clear invoices and {second} sooner, in three "
                "simple steps."
            ),
            "slug": re.sub(r"[^a-z0-9]+", "-", f"{kw} for freelancers".lower()).strip("-"),
            "body_markdown": (
                f"# {kw.capitalize()} that helps freelancers {second}\n\n"
                "Freelance work is fun until the bills are late. A clear invoice is the first "
                f"step to being paid on time.{claim}\n\n"
                "## Why clear invoices matter\n\n"
                "Clients pay faster when an invoice is easy to read. Each line should say what "
                "you did, when, and for how much. Dates and totals must be plain to see.\n\n"
                "## How to start in a day\n\n"
                f"Pick {kw} that fits the way you work. Add your clients and your rates. Send "
                "your first invoice, then set a reminder for the due date. Keep a copy of each "
                "one for your records and your tax return."
            ),
            "disclaimer": disclaimer,
        }
    elif kind == "EmailMessage":
        draft = {
            "subject": f"{second.capitalize()} sooner with clear invoices",
            "preheader": f"Three small habits that help freelancers {second} on time.",
            "body_markdown": (
                "Hi there,\n\nLate payments hurt a small business. Clear invoices help you "
                f"{second} sooner. Send each invoice the day the work is done. Add the due date "
                "in bold. Follow up kindly a day after it passes."
            ),
            "call_to_action": cta,
            "disclaimer": disclaimer,
        }
    else:
        draft = {
            "posts": [
                {
                    "platform": "x",
                    "text": f"Clear invoices help freelancers {second} sooner. {disclaimer}",
                    "hashtags": ["freelance", "invoicing"],
                },
                {
                    "platform": "linkedin",
                    "text": (
                        "Freelancers: send each invoice the day the work is done, with the due "
                        f"date in plain sight. Good {kw} makes that a habit. {disclaimer}"
                    ),
                    "hashtags": [],
                },
            ]
        }
    return json.dumps(draft)


def offline_model() -> FunctionModel:
    """The offline writer used when no real model is configured."""
    return FunctionModel(_writer, model_name="offline-writer")


def configured_model() -> ModelClient:
    """A litellm model when `CONTENT_STUDIO_MODEL` is set, else the offline writer."""
    if os.environ.get("CONTENT_STUDIO_MODEL"):
        from contractspec.agent.litellm import LiteLLMModel

        return LiteLLMModel()
    return offline_model()


@define
class ContentStudio:
    """The wired studio.

    Attributes:
        backend: Memory or SQL backend (publications, audit trail, outbox).
        approvals: The approval workflow (publish requests).
        executor: Runs `content.publish`.
        runner: Runs the writer agents.
        publisher: Requests approvals and publishes.
        generators: One generator per kind in `KINDS`.
    """

    backend: Backend
    approvals: ApprovalWorkflow
    executor: Executor
    runner: AgentRunner
    publisher: ContentPublisher
    generators: dict[ContentKind, ContentGenerator]

    async def draft(
        self, brief: ContentBrief, ctx: CallContext = WRITER, kinds: Iterable[ContentKind] = KINDS
    ) -> dict[ContentKind, GeneratedDraft]:
        """Write one checked draft per kind (raises `ContentRefusedError` if one never passes)."""
        return {k: await self.generators[k].generate(self.runner, brief, ctx) for k in kinds}

    async def submit(
        self, drafts: dict[ContentKind, GeneratedDraft], ctx: CallContext = WRITER
    ) -> dict[ContentKind, ApprovalRequest]:
        """Ask for the L2 approval of each draft."""
        return {k: await self.publisher.request_approval(d, ctx) for k, d in drafts.items()}

    async def publish(self, approval_id: str, ctx: CallContext = EDITOR) -> Publication:
        """Publish an approved draft (`content.published` goes out through the outbox)."""
        return await self.publisher.publish(approval_id, ctx)


async def build_studio(
    engine: AsyncEngine | None = None,
    *,
    model: ModelClient | None = None,
    clock: Clock | None = None,
) -> ContentStudio:
    """Wire the studio on memory (`engine=None`) or on a SQLite/PostgreSQL engine (tables are
    created; the engine is not disposed).

    Args:
        engine: `contractspec.core.sql.sqlite_engine(path)`, a PostgreSQL engine, or `None`.
        model: The writers' model (default `configured_model()`).
        clock: Time source (a `FakeClock` in tests).
    """
    registry = SpecRegistry(*CONTENT_SPECS)
    backend: Backend
    if engine is None:
        backend = MemoryBackend()
        runs: Any = MemoryRunStore()
        store: Any = MemoryApprovalStore()
    else:
        from contractspec.agent.sql import SqlApprovalStore, SqlRunStore, create_all
        from contractspec.core.sql import SqlBackend

        sql = SqlBackend(engine, registry)
        await sql.create_all()
        await create_all(engine)
        backend, runs, store = sql, SqlRunStore(), SqlApprovalStore()
    approvals = ApprovalWorkflow(store, backend=backend, policy=POLICY, clock=clock)
    register_content_operations(registry, approvals)
    executor = Executor(registry, backend=backend, policy=POLICY, clock=clock)
    runner = AgentRunner(
        model=model or configured_model(),
        backend=backend,
        runs=runs,
        approvals=approvals,
        executor=executor,
        policy=POLICY,
        clock=clock,
    )
    model_name = os.environ.get("CONTENT_STUDIO_MODEL", "offline-writer")
    generators = {k: content_generator(k, model=model_name) for k in KINDS}
    return ContentStudio(
        backend, approvals, executor, runner, ContentPublisher(executor, approvals), generators
    )
