"""Content generators and publishing on memory, SQLite and PostgreSQL: violating drafts are
refused, audited and regenerated (bounded); publishing needs an L2 approval of the exact draft and
emits `content.published` through the outbox only after it, exactly once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from attrs import define
from content_support import BRIEF, GOOD, as_json, good_blog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contractspec.agent import (
    AgentRunner,
    ApprovalDecisionError,
    ApprovalExpiredError,
    ApprovalMismatchError,
    ApprovalRequiredError,
    ApprovalWorkflow,
    MemoryApprovalStore,
    MemoryRunStore,
    ModelRequest,
    UserMessage,
)
from contractspec.agent.content import (
    CONTENT_SPECS,
    ContentPublisher,
    ContentRefusedError,
    GeneratedDraft,
    Publication,
    blog_post_generator,
    check_guardrails,
    content_generator,
    publication_entity,
    register_content_operations,
    seo_report,
)
from contractspec.agent.review import register_review_operations
from contractspec.agent.testing import FunctionModel, ScriptedModel
from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    ConflictError,
    Executor,
    MemoryBackend,
    NotFoundError,
    PolicyDeniedError,
    RolePermissions,
    SpecDefinitionError,
    SpecRegistry,
    SpecValidationError,
)
from contractspec.core.sync import run_sync
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine

ORG = "org-1"
POLICY = RolePermissions(
    {
        "writer": ["content.write"],
        "editor": ["content.publish"],
        "lead": ["approval.decide", "agent.review.*"],
    }
)
WRITER = CallContext(actor=Actor.user("u-writer", roles="writer"), org_id=ORG)
EDITOR = CallContext(actor=Actor.user("u-editor", roles="editor"), org_id=ORG)
LEAD = Actor.user("u-lead", roles="lead")
BAD = good_blog().model_copy(
    update={"body_markdown": good_blog().body_markdown + "\n\nWe promise guaranteed results."}
)


@define
class Env:
    kind: str
    backend: Backend
    approvals: ApprovalWorkflow
    executor: Executor
    runner: AgentRunner
    publisher: ContentPublisher

    async def events(self) -> list[str]:
        """Committed event names, oldest first."""
        if isinstance(self.backend, MemoryBackend):
            return self.backend.events.names()
        from sqlalchemy import select

        from contractspec.core.sql import SqlBackend, outbox_table

        assert isinstance(self.backend, SqlBackend)
        async with self.backend.engine.connect() as conn:
            rows = await conn.execute(select(outbox_table.c.name).order_by(outbox_table.c.position))
            return [r[0] for r in rows]

    async def payloads(self, name: str) -> list[dict[str, Any]]:
        """Payloads of the committed events called `name`."""
        if isinstance(self.backend, MemoryBackend):
            return [
                e.payload.model_dump(mode="json")
                for e in self.backend.events.events
                if e.name == name
            ]
        from sqlalchemy import select

        from contractspec.core.sql import SqlBackend, outbox_table

        assert isinstance(self.backend, SqlBackend)
        async with self.backend.engine.connect() as conn:
            rows = await conn.execute(
                select(outbox_table.c.payload)
                .where(outbox_table.c.name == name)
                .order_by(outbox_table.c.position)
            )
            return [r[0] if isinstance(r[0], dict) else json.loads(r[0]) for r in rows]

    async def audit(self) -> list[tuple[str, str, dict[str, Any]]]:
        """`(action, outcome, details)` of the org's committed audit records, oldest first."""
        if isinstance(self.backend, MemoryBackend):
            records = [r for r in self.backend.audit.records if r.org_id == ORG]
        else:
            from contractspec.core.sql import SqlBackend

            assert isinstance(self.backend, SqlBackend)
            records = [e.record for e in await self.backend.audit.entries(ORG)]
        return [(r.action, r.outcome, dict(r.details)) for r in records]

    async def publications(self) -> int:
        """Stored `content.publication` records of the org."""
        tx = await self.backend.unit_of_work.begin(readonly=True)
        try:
            rows = await self.backend.entities.repository(publication_entity, tx, ORG).find()
        finally:
            await tx.rollback()
        return len(rows)


@pytest.fixture
async def env(backend_kind: str, tmp_path: Path) -> AsyncIterator[Env]:
    """Executor, approvals, runner and publisher on memory, a SQLite file or PostgreSQL."""
    registry = SpecRegistry(*CONTENT_SPECS)  # before the SQL backend builds its tables
    clock = FakeClock()
    ids = SequentialIds("id")
    if backend_kind == "memory":
        backend: Backend = MemoryBackend()
        yield _env(
            backend_kind, registry, backend, MemoryRunStore(), MemoryApprovalStore(), clock, ids
        )
        return
    from contractspec.agent.sql import SqlApprovalStore, SqlRunStore, create_all
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql = SqlBackend(engine, registry)
        made = _env(backend_kind, registry, sql, SqlRunStore(), SqlApprovalStore(), clock, ids)
        await sql.create_all()
        await create_all(engine)
        yield made


def _env(
    kind: str,
    registry: SpecRegistry,
    backend: Backend,
    runs: Any,
    store: Any,
    clock: FakeClock,
    ids: SequentialIds,
) -> Env:
    approvals = ApprovalWorkflow(store, backend=backend, policy=POLICY, clock=clock, ids=ids)
    register_content_operations(registry, approvals)
    register_review_operations(registry, approvals=approvals)
    executor = Executor(registry, backend=backend, policy=POLICY, clock=clock, ids=ids)
    runner = AgentRunner(
        backend=backend, runs=runs, approvals=approvals, executor=executor, policy=POLICY,
        clock=clock, ids=ids,
    )  # fmt: skip
    return Env(kind, backend, approvals, executor, runner, ContentPublisher(executor, approvals))


def _user_texts(model: ScriptedModel | FunctionModel) -> list[str]:
    return [
        next(m.content for m in r.messages if isinstance(m, UserMessage)) for r in model.requests
    ]


async def test_a_compliant_first_draft_is_kept(env: Env) -> None:
    """A draft passing every guardrail is returned after one run; nothing is refused."""
    model = ScriptedModel([as_json(good_blog())])
    gen = blog_post_generator(model="scripted")
    with env.runner.override(model=model):
        out = await gen.generate(env.runner, BRIEF, WRITER)
    model.assert_consumed()
    assert (out.attempts, len(out.run_ids), out.refused) == (1, 1, ())
    assert out.draft == good_blog()
    assert out.guardrails.passed
    assert out.seo.passed
    assert "content.draft.refused" not in await env.events()
    run = await env.runner.get(out.run_ids[0])
    assert run.agent == "content.blog_post"
    assert run.org_id == ORG


async def test_a_violating_draft_is_refused_audited_and_regenerated(env: Env) -> None:
    """The banned claim fails its invariant: the refusal is audited (denied) and announced, the
    model gets the failed proof, and its second draft is kept."""
    model = ScriptedModel([as_json(BAD), as_json(good_blog())])
    gen = blog_post_generator(model="scripted")
    with env.runner.override(model=model):
        out = await gen.generate(env.runner, BRIEF, WRITER)
    model.assert_consumed()
    assert out.attempts == 2
    assert out.draft == good_blog()
    assert [r.failed for r in out.refused] == [("no_banned_claims",)]
    second = _user_texts(model)[1]
    assert "no_banned_claims: banned_claims_found == 0 is false" in second
    assert "guaranteed results" in second
    audit = [a for a in await env.audit() if a[0] == "content.blog_post.guardrails"]
    assert [(a, o) for a, o, _ in audit] == [("content.blog_post.guardrails", "denied")]
    details = audit[0][2]
    assert details["failed"] == ["no_banned_claims"]
    assert (details["attempt"], details["final"], details["brief_id"]) == (1, False, "brief-1")
    refused = await env.payloads("content.draft.refused")
    assert refused == [
        {
            "brief_id": "brief-1", "kind": "blog_post", "run_id": out.run_ids[0], "attempt": 1,
            "failed": ["no_banned_claims"], "final": False,
        }
    ]  # fmt: skip


async def test_attempts_are_bounded_and_then_refused(env: Env) -> None:
    """Three violating drafts in a row: three audited refusals, then `ContentRefusedError`;
    no fourth run."""
    model = ScriptedModel([as_json(BAD)] * 3)
    gen = blog_post_generator(model="scripted", max_attempts=3)
    with env.runner.override(model=model), pytest.raises(ContentRefusedError) as info:
        await gen.generate(env.runner, BRIEF, WRITER)
    model.assert_consumed()
    err = info.value
    assert err.details["field"] == "draft"
    assert err.details["failed"] == ["no_banned_claims"]
    assert err.details["attempts"] == 3
    assert len(err.details["run_ids"]) == 3
    refused = await env.payloads("content.draft.refused")
    assert [(p["attempt"], p["final"]) for p in refused] == [(1, False), (2, False), (3, True)]
    audit = [o for a, o, _ in await env.audit() if a == "content.blog_post.guardrails"]
    assert audit == ["denied"] * 3


async def test_seo_gate_regenerates_on_failed_seo(env: Env) -> None:
    """With `seo_gate=True` a draft that passes the guardrails but fails SEO is regenerated."""
    short_title = good_blog().model_copy(update={"title": "Invoices"})
    assert check_guardrails(short_title, BRIEF).passed
    model = ScriptedModel([as_json(short_title), as_json(good_blog())])
    gen = blog_post_generator(model="scripted", seo_gate=True)
    with env.runner.override(model=model):
        out = await gen.generate(env.runner, BRIEF, WRITER)
    assert out.attempts == 2
    assert "title_length" in _user_texts(model)[1]
    refused = await env.payloads("content.draft.refused")
    assert [p["failed"] for p in refused] == [["title_length"]]


async def test_without_seo_gate_seo_failures_are_reported_not_refused(env: Env) -> None:
    """By default a failed SEO check is in the report; the draft is kept."""
    short_title = good_blog().model_copy(update={"title": "Invoices"})
    model = ScriptedModel([as_json(short_title)])
    with env.runner.override(model=model):
        out = await blog_post_generator(model="scripted").generate(env.runner, BRIEF, WRITER)
    assert out.attempts == 1
    assert out.seo.failed == ("title_length",)


async def test_publish_needs_approval_then_emits_once(env: Env) -> None:
    """Nothing is published while the approval is pending; once approved, `content.publish`
    stores the publication and emits `content.published` once, however often it is called."""
    model = ScriptedModel([as_json(good_blog())])
    with env.runner.override(model=model):
        draft = await blog_post_generator(model="scripted").generate(env.runner, BRIEF, WRITER)
    req = await env.publisher.request_approval(draft, WRITER)
    assert (req.action, req.risk, req.subject_id) == ("content.publish", 2, draft.draft_id)
    assert req.metadata["guardrails"]["passed"] is True
    assert req.metadata["markdown"] == good_blog().markdown()
    again = await env.publisher.request_approval(draft, WRITER)
    assert again.id == req.id
    with pytest.raises(ApprovalRequiredError):
        await env.publisher.publish(req.id, EDITOR)
    assert "content.published" not in await env.events()
    assert await env.publications() == 0

    await env.approvals.approve(req.id, LEAD)
    pub = await env.publisher.publish(req.id, EDITOR)
    assert (pub.brief_id, pub.kind, pub.channel, pub.approval_id) == (
        "brief-1", "blog_post", "blog", req.id,
    )  # fmt: skip
    assert pub.title == good_blog().title
    assert pub.draft_id == draft.draft_id
    repeat = await env.publisher.publish(req.id, EDITOR)
    assert repeat.id == pub.id
    published = await env.payloads("content.published")
    assert len(published) == 1
    assert published[0]["publication_id"] == pub.id
    assert published[0]["approval_id"] == req.id
    assert await env.publications() == 1
    names = await env.events()
    assert names.index("approval.approved") < names.index("content.published")


async def test_a_rejected_draft_is_never_published(env: Env) -> None:
    """After a rejection `publish` raises and no event leaves."""
    draft = _generated(good_blog())
    req = await env.publisher.request_approval(draft, WRITER)
    await env.approvals.reject(req.id, LEAD, comment="off message")
    with pytest.raises(ApprovalDecisionError):
        await env.publisher.publish(req.id, EDITOR)
    assert "content.published" not in await env.events()


async def test_a_changed_draft_cannot_use_the_approval(env: Env) -> None:
    """Calling `content.publish` with an edited draft under an approval is refused (the approval
    binds the exact arguments)."""
    draft = _generated(good_blog())
    req = await env.publisher.request_approval(draft, WRITER)
    await env.approvals.approve(req.id, LEAD)
    args = dict(req.arguments)
    args["draft"] = {**args["draft"], "title": "Invoice software, edited after approval ok"}
    with pytest.raises(ApprovalMismatchError):
        await env.executor.execute("content.publish", {**args, "approval_id": req.id}, EDITOR)
    assert "content.published" not in await env.events()
    assert await env.publications() == 0


async def test_a_violating_draft_cannot_be_sent_for_approval(env: Env) -> None:
    """`request_approval` proves the guardrails again and refuses a violating draft."""
    with pytest.raises(ContentRefusedError) as info:
        await env.publisher.request_approval(_generated(BAD), WRITER)
    assert info.value.details["failed"] == ["no_banned_claims"]
    assert await env.approvals.pending(org_id=ORG) == []


async def test_publish_refuses_a_violating_draft_even_when_approved(env: Env) -> None:
    """An approval obtained around the publisher (straight from the workflow) does not let a
    violating draft out: the handler proves the guardrails again."""
    args = {
        "brief": BRIEF.model_dump(mode="json"),
        "kind": "blog_post",
        "draft": BAD.model_dump(mode="json"),
        "channel": "blog",
    }
    req = await env.approvals.request(
        action="content.publish", arguments=args, requested_by=WRITER.actor,
        reason="sneaky", risk=2, org_id=ORG,
    )  # fmt: skip
    await env.approvals.approve(req.id, LEAD)
    with pytest.raises(ContentRefusedError):
        await env.publisher.publish(req.id, EDITOR)
    assert "content.published" not in await env.events()
    assert await env.publications() == 0


async def test_only_publishers_may_publish(env: Env) -> None:
    """The writer lacks `content.publish`: the policy denies the call."""
    req = await env.publisher.request_approval(_generated(good_blog()), WRITER)
    await env.approvals.approve(req.id, LEAD)
    with pytest.raises(PolicyDeniedError):
        await env.publisher.publish(req.id, WRITER)
    assert "content.published" not in await env.events()


async def test_the_review_queue_lists_and_decides_publish_requests(env: Env) -> None:
    """Publish requests are ordinary approvals: the agent review queue lists them by subject
    type and approves them; the approved draft then publishes."""
    req = await env.publisher.request_approval(_generated(good_blog()), WRITER)
    lead = CallContext(actor=LEAD, org_id=ORG)
    listed = await env.executor.execute(
        "agent.review.approvals.list", {"subject_type": "content.draft"}, lead
    )
    assert [i.id for i in listed.items] == [req.id]  # type: ignore[attr-defined]
    await env.executor.execute("agent.review.approvals.approve", {"approval_id": req.id}, lead)
    pub = await env.publisher.publish(req.id, EDITOR)
    assert pub.approval_id == req.id
    assert len(await env.payloads("content.published")) == 1


async def test_concurrent_publishes_of_one_approval_emit_once(env: Env) -> None:
    """Five editors publishing the same approval at once: one publication, one event; the
    others get the same publication or a conflict, never a second effect."""
    req = await env.publisher.request_approval(_generated(good_blog()), WRITER)
    await env.approvals.approve(req.id, LEAD)
    results = await asyncio.gather(
        *(env.publisher.publish(req.id, EDITOR) for _ in range(5)), return_exceptions=True
    )
    published = [r for r in results if isinstance(r, Publication)]
    assert published
    assert {p.id for p in published} == {published[0].id}
    assert all(isinstance(r, Publication | ConflictError) for r in results)
    assert len(await env.payloads("content.published")) == 1
    assert await env.publications() == 1


async def test_an_expired_approval_publishes_nothing(env: Env) -> None:
    """Past its expiry an undecided request can no longer be approved and nothing publishes;
    sending the same draft again opens a new request."""
    publisher = ContentPublisher(env.executor, env.approvals, approval_ttl_s=60)
    req = await publisher.request_approval(_generated(good_blog()), WRITER)
    clock = env.approvals.clock
    assert isinstance(clock, FakeClock)
    clock.advance(61)
    with pytest.raises(ApprovalExpiredError):
        await env.approvals.approve(req.id, LEAD)
    with pytest.raises(ApprovalDecisionError):
        await publisher.publish(req.id, EDITOR)
    assert "content.published" not in await env.events()
    again = await publisher.request_approval(_generated(good_blog()), WRITER)
    assert again.id != req.id
    assert again.key == f"{req.key}:after:{req.id}"
    await env.approvals.approve(again.id, LEAD)
    assert (await publisher.publish(again.id, EDITOR)).approval_id == again.id
    assert len(await env.payloads("content.published")) == 1


async def test_another_org_cannot_publish_under_the_approval(env: Env) -> None:
    """An editor of another org cannot use this org's approval."""
    req = await env.publisher.request_approval(_generated(good_blog()), WRITER)
    await env.approvals.approve(req.id, LEAD)
    other = CallContext(actor=Actor.user("u-other", roles="editor"), org_id="org-2")
    with pytest.raises((ApprovalMismatchError, NotFoundError)):
        await env.publisher.publish(req.id, other)
    assert "content.published" not in await env.events()


def _generated(draft: Any) -> GeneratedDraft:
    return GeneratedDraft(
        "blog_post", BRIEF, draft, check_guardrails(draft, BRIEF), seo_report(draft, BRIEF), 1,
        ("run-x",),
    )  # fmt: skip


@pytest.mark.parametrize("kind", sorted(GOOD))
async def test_every_kind_generates_with_its_output_model(kind: str) -> None:
    """Each generator is an agent whose output model is its kind's draft; a function model that
    breaks the banned-claims rule first is corrected."""
    good = GOOD[kind]()
    calls: list[str] = []

    def brain(request: ModelRequest) -> str:
        calls.append(request.model)
        assert request.output_schema is not None
        assert request.output_schema["title"] == type(good).__name__
        data = good.model_dump(mode="json")
        if len(calls) == 1:  # first draft: a banned claim in its first text field
            if kind == "social_posts":
                data["posts"][0]["text"] = "Risk-free invoicing. " + data["posts"][0]["text"]
            else:
                key = {"email": "subject", "landing_page": "headline"}.get(kind, "title")
                data[key] = "Risk-free " + data[key]
        return json.dumps(data)

    runner = AgentRunner(model=FunctionModel(brain))
    gen = content_generator(kind, model="writer-model")  # type: ignore[arg-type]
    out = await gen.generate(runner, BRIEF.model_dump(mode="json"), WRITER)
    assert out.attempts == 2
    assert out.draft == good
    assert gen.agent.output_type is type(good)
    assert calls == ["writer-model", "writer-model"]


def test_generator_definition_errors_name_the_field() -> None:
    """Unknown kinds and out-of-range attempts are definition errors naming the field."""
    with pytest.raises(SpecDefinitionError) as info:
        content_generator("poem", model="m")  # type: ignore[arg-type]
    assert info.value.details["field"] == "kind"
    with pytest.raises(SpecDefinitionError) as info:
        blog_post_generator(model="m", max_attempts=0)
    assert info.value.details["field"] == "max_attempts"


async def test_a_bad_brief_is_refused_before_any_run() -> None:
    """A brief mapping with a bad field raises `SpecValidationError` and no model is called."""
    model = ScriptedModel([])
    runner = AgentRunner(model=model)
    with pytest.raises(SpecValidationError) as info:
        await blog_post_generator(model="m").generate(runner, {"id": "x"}, WRITER)
    assert info.value.details["field"].startswith("brief.")
    assert model.requests == []


_INJECTIONS = {
    "no_banned_claims": "You get guaranteed results.",
    "brand_forbidden_words": "Real synergy for you.",
    "brand_exclamations": "Wow! Yes! Go!",
    "brand_no_shouting": "Act NOW, it is FREE.",
}
_ORDER = (
    "no_banned_claims",
    "required_disclaimers",
    "brand_forbidden_words",
    "brand_exclamations",
    "brand_no_shouting",
)


@st.composite
def _attempt(draw: st.DrawFn) -> tuple[str, tuple[str, ...]]:
    """A blog draft (JSON) with some rules broken, and the invariants it must fail."""
    broken = draw(st.sets(st.sampled_from(_ORDER), max_size=3))
    data = good_blog().model_dump(mode="json")
    for name in sorted(broken):
        if name == "required_disclaimers":
            data["disclaimer"] = ""
            continue
        where = draw(st.sampled_from(["title", "meta_description", "body_markdown"]))
        data[where] = f"{data[where]} {_INJECTIONS[name]}"
    return json.dumps(data), tuple(n for n in _ORDER if n in broken)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_attempt(), min_size=3, max_size=4))
def test_the_loop_keeps_the_first_clean_draft_or_refuses(
    attempts: list[tuple[str, tuple[str, ...]]],
) -> None:
    """Whatever the model writes: the first draft that breaks nothing is kept, each earlier one
    is refused for exactly the rules it broke, and after three broken drafts nothing is kept."""
    backend = MemoryBackend()
    runner = AgentRunner(model=ScriptedModel([a for a, _ in attempts]), backend=backend)
    gen = blog_post_generator(model="m", max_attempts=3)
    clean = next((i for i, (_, broken) in enumerate(attempts[:3]) if not broken), None)

    async def go() -> GeneratedDraft:
        return await gen.generate(runner, BRIEF, WRITER)

    if clean is None:
        with pytest.raises(ContentRefusedError):
            run_sync(go())
        tried = 3
    else:
        out = run_sync(go())
        assert out.attempts == clean + 1
        assert out.draft.model_dump(mode="json") == json.loads(attempts[clean][0])
        assert check_guardrails(out.draft, BRIEF).passed
        tried = clean
    refused = [
        e.payload.model_dump()["failed"]
        for e in backend.events.events
        if e.name == "content.draft.refused"
    ]
    assert refused == [list(broken) for _, broken in attempts[:tried]]
