"""Content generators: one agent per kind, a structured output, guardrails proven in code.

```text
generate(brief)
  -> AgentRunner.run(agent, brief + feedback)        structured output (BlogPost, ...)
  -> check_guardrails(draft, brief)                   invariants over the draft + evidence
  -> seo_report(draft, brief)                         typed report (a gate with seo_gate=True)
  -> FAIL: audit record (outcome "denied") + content.draft.refused event, in one transaction;
           the agent runs again with the failed proof as feedback (at most max_attempts runs)
  -> PASS: GeneratedDraft (draft, proof, SEO report, run ids)
```

After the last failed attempt `ContentRefusedError` is raised: no violating draft ever leaves
`generate`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from attrs import define, field
from pydantic import ValidationError

from contractspec.agent.content.brief import ContentBrief
from contractspec.agent.content.drafts import DRAFT_MODELS, ContentKind, Draft
from contractspec.agent.content.events import _envelope, content_draft_refused
from contractspec.agent.content.guardrails import GuardrailReport, check_guardrails
from contractspec.agent.content.seo import SeoReport, SeoThresholds, seo_report
from contractspec.agent.errors import InvariantFailedError
from contractspec.agent.runner import AgentRunner
from contractspec.agent.specs import AgentSpec, UsageLimits, define_agent
from contractspec.core import (
    AuditRecord,
    CallContext,
    SpecDefinitionError,
    SpecValidationError,
    canonical_json,
)

__all__ = [
    "ContentGenerator",
    "ContentRefusedError",
    "GeneratedDraft",
    "blog_post_generator",
    "coerce_brief",
    "content_generator",
    "draft_id_for",
    "email_generator",
    "landing_page_generator",
    "social_posts_generator",
]

_TASKS: dict[str, str] = {
    "blog_post": (
        "Write a blog post. body_markdown starts with exactly one '# ' H1, followed by at least "
        "two '## ' H2 sections; slug is lowercase words joined by '-'."
    ),
    "landing_page": (
        "Write a landing page: a headline (the H1), a subheadline, at least two sections (each "
        "an H2 heading and its text) and a short call to action."
    ),
    "email": (
        "Write a marketing email: a subject (under 60 characters), a preheader (40-130 "
        "characters), a Markdown body and a short call to action."
    ),
    "social_posts": (
        "Write one social post per platform named in the brief's channels you are asked for; "
        "keep each post (with its hashtags) within that platform's character limit."
    ),
}


class ContentRefusedError(InvariantFailedError):
    """Every attempt of a generator broke a guardrail (or an SEO rule with `seo_gate`).

    `details`: `field` (`"draft"`), `kind`, `brief_id`, `attempts`, `failed` (the last
    attempt's failed checks), `run_ids`, `proof` (the last attempt's guardrail proof).
    """

    code = "content_refused"


def coerce_brief(brief: ContentBrief | Mapping[str, Any]) -> ContentBrief:
    """`brief` as a `ContentBrief` (a mapping is validated).

    Raises:
        SpecValidationError: The mapping is not a valid brief; `details["field"]` names the
            first bad field (`brief.keywords`).
    """
    if isinstance(brief, ContentBrief):
        return brief
    try:
        return ContentBrief.model_validate(brief)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        where = ".".join(str(p) for p in errors[0]["loc"])
        raise SpecValidationError(
            f"the content brief is not valid: brief.{where}: {errors[0]['msg']}; fix that field "
            "(see ContentBrief)",
            details={"field": f"brief.{where}"},
        ) from None


def draft_id_for(kind: str, brief_id: str, draft: Draft) -> str:
    """SHA-256 hex (first 32 characters) of the kind, brief id and the draft's canonical JSON:
    the same text always has the same id, any edit gives a new one."""
    text = canonical_json(
        {"kind": kind, "brief_id": brief_id, "draft": draft.model_dump(mode="json")}
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@define(frozen=True)
class GeneratedDraft:
    """A draft that passed every guardrail.

    Attributes:
        kind: The `ContentKind`.
        brief: The brief it was written for.
        draft: The structured draft.
        guardrails: Its proof (every invariant PASS).
        seo: Its SEO report (may fail unless the generator has `seo_gate=True`).
        attempts: Runs it took (1 = the first draft passed).
        run_ids: The agent runs, oldest first (refused ones included).
        refused: The reports of the refused attempts, oldest first.
    """

    kind: str
    brief: ContentBrief
    draft: Draft
    guardrails: GuardrailReport
    seo: SeoReport
    attempts: int
    run_ids: tuple[str, ...]
    refused: tuple[GuardrailReport, ...] = ()

    @property
    def draft_id(self) -> str:
        """Content-addressed id (`draft_id_for`)."""
        return draft_id_for(self.kind, self.brief.id, self.draft)


@define(frozen=True)
class ContentGenerator:
    """One kind of content, written by one agent and checked in code.

    Build it with `content_generator` (or `blog_post_generator`, ...).

    Attributes:
        kind: The `ContentKind`.
        agent: The agent (its `output_type` is the kind's draft model).
        max_attempts: Runs before giving up with `ContentRefusedError` (1-10).
        seo_gate: Treat a failed SEO check like a failed guardrail (regenerate, then refuse).
        thresholds: `SeoThresholds` for the report.
    """

    kind: str
    agent: AgentSpec
    max_attempts: int = 3
    seo_gate: bool = False
    thresholds: SeoThresholds = field(factory=SeoThresholds)

    def prompt(self, brief: ContentBrief, feedback: str = "") -> str:
        """The user message of a run: the task, the brief as JSON, and what to fix."""
        text = (
            f"{_TASKS[self.kind]}\n\nBrief (JSON):\n"
            f"{json.dumps(brief.model_dump(mode='json'), indent=1, sort_keys=True)}"
        )
        if feedback:
            text += (
                "\n\nYour previous draft was refused by these checks. Rewrite it so that every "
                f"check passes:\n{feedback}"
            )
        return text

    async def generate(
        self,
        runner: AgentRunner,
        brief: ContentBrief | Mapping[str, Any],
        ctx: CallContext | None = None,
    ) -> GeneratedDraft:
        """Write a draft for `brief` that passes every guardrail.

        Args:
            runner: Runs the agent (its model, stores, audit sink and outbox are used).
            brief: A `ContentBrief` or a mapping validated into one.
            ctx: Who asks, for which org (runs, audit records and events carry it).

        Returns:
            The `GeneratedDraft`.

        Raises:
            SpecValidationError: The brief is not valid (the field is named).
            ContentRefusedError: Every attempt broke a guardrail (each refusal is audited and
                announced as `content.draft.refused`).
            UnexpectedModelBehavior, AgentRunError, UsageLimitExceeded: As `AgentRunner.run`.
        """
        b = coerce_brief(brief)
        call = ctx or CallContext(channel="agent")
        feedback = ""
        run_ids: list[str] = []
        refused: list[GuardrailReport] = []
        for attempt in range(1, self.max_attempts + 1):
            result = await runner.run(self.agent, self.prompt(b, feedback), call)
            run_ids.append(result.run_id)
            draft = result.output
            if not isinstance(draft, DRAFT_MODELS[self.kind]):
                raise ContentRefusedError(
                    f"run {result.run_id} of {self.agent.ref} ended {result.status.value} "
                    "without a draft",
                    reason="no draft",
                    action=f"content.{self.kind}",
                    details={"field": "draft", "run_id": result.run_id},
                )
            report = check_guardrails(draft, b)
            seo = seo_report(draft, b, self.thresholds)
            if report.passed and (seo.passed or not self.seo_gate):
                return GeneratedDraft(
                    self.kind, b, draft, report, seo, attempt, tuple(run_ids), tuple(refused)
                )
            refused.append(report)
            final = attempt == self.max_attempts
            failed = list(report.failed) + (list(seo.failed) if self.seo_gate else [])
            await self._record_refusal(
                runner, call, b, result.run_id, attempt, final, report, seo, failed
            )
            feedback = report.feedback()
            if self.seo_gate and not seo.passed:
                feedback = "\n".join(x for x in (feedback, seo.feedback()) if x)
        raise ContentRefusedError(
            f"{self.agent.ref} broke guardrails in all {self.max_attempts} attempt(s) for brief "
            f"{b.id!r}; last failures: {', '.join(failed)}. Loosen nothing: fix the instructions "
            "or the model, or write this piece by hand",
            reason=f"failed: {', '.join(failed)}",
            action=f"content.{self.kind}",
            details={
                "field": "draft",
                "kind": self.kind,
                "brief_id": b.id,
                "attempts": self.max_attempts,
                "failed": failed,
                "run_ids": run_ids,
                "proof": [r.to_dict() for r in refused[-1].proof],
            },
        )

    async def _record_refusal(
        self,
        runner: AgentRunner,
        call: CallContext,
        brief: ContentBrief,
        run_id: str,
        attempt: int,
        final: bool,
        report: GuardrailReport,
        seo: SeoReport,
        failed: list[str],
    ) -> None:
        """One transaction: the audit record (outcome `denied`) and `content.draft.refused`."""
        record = AuditRecord(
            id=runner.ids.new_id(),
            occurred_at=runner.clock.now(),
            action=f"content.{self.kind}.guardrails",
            outcome="denied",
            org_id=call.org_id,
            actor_id=call.actor.id,
            actor_kind=call.actor.kind.value,
            target_type="agent.run",
            target_id=run_id,
            request_id=call.request_id,
            trace_id=call.trace_id,
            details={
                "brief_id": brief.id,
                "agent": self.agent.ref,
                "attempt": attempt,
                "final": final,
                "failed": failed,
                "guardrails": report.to_dict(),
                "seo": seo.to_dict(),
            },
        )
        event = _envelope(
            content_draft_refused,
            {
                "brief_id": brief.id,
                "kind": self.kind,
                "run_id": run_id,
                "attempt": attempt,
                "failed": failed,
                "final": final,
            },
            clock=runner.clock,
            ids=runner.ids,
            org_id=call.org_id,
            actor=call.actor,
            correlation_id=run_id,
        )
        tx = await runner.unit_of_work.begin()
        try:
            if runner.audit is not None:
                await runner.audit.record(record, tx)
            await runner.events.publish([event], tx)
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise


def _instructions(kind: str) -> str:
    return (
        "You are a careful marketing writer. Follow the brief: its topic, audience, brand voice "
        "and call to action; use its keywords naturally (the first is the primary keyword); "
        "never make any of its banned claims; include every required disclaimer verbatim; keep "
        "within its channel limits and brand-voice limits (exclamation marks, sentence length, "
        "no ALL-CAPS shouting, no forbidden words). " + _TASKS[kind]
    )


def content_generator(
    kind: ContentKind,
    *,
    model: str,
    name: str | None = None,
    instructions: str | None = None,
    max_attempts: int = 3,
    seo_gate: bool = False,
    thresholds: SeoThresholds | None = None,
    limits: UsageLimits | None = None,
    version: int = 1,
    output_retries: int = 1,
    model_settings: dict[str, Any] | None = None,
) -> ContentGenerator:
    """A generator for `kind`.

    Args:
        kind: `blog_post`, `landing_page`, `email` or `social_posts`.
        model: Model name for the runner's client (`"openai/gpt-4o-mini"` with litellm).
        name: Agent name (default `content.<kind>`).
        instructions: System prompt (default: a writer told the guardrails; they are enforced
            in code either way).
        max_attempts: Runs before `ContentRefusedError` (1-10).
        seo_gate: Regenerate (then refuse) on failed SEO checks too.
        thresholds: `SeoThresholds`.
        limits: The agent's `UsageLimits` per run.
        version: Agent version.
        output_retries: Corrections of a draft that does not match the output model, per run.
        model_settings: Extra model settings (`{"temperature": 0.7}`).

    Raises:
        SpecDefinitionError: Unknown kind, `max_attempts` outside 1-10, or a bad agent field.
    """
    if kind not in DRAFT_MODELS:
        raise SpecDefinitionError(
            f"unknown content kind {kind!r}; use one of {', '.join(DRAFT_MODELS)}",
            details={"field": "kind"},
        )
    if (
        isinstance(max_attempts, bool)
        or not isinstance(max_attempts, int)
        or not 1 <= max_attempts <= 10
    ):
        raise SpecDefinitionError(
            f"max_attempts must be an integer from 1 to 10, got {max_attempts!r}",
            details={"field": "max_attempts"},
        )
    agent = define_agent(
        name or f"content.{kind}",
        model=model,
        instructions=instructions or _instructions(kind),
        output_type=DRAFT_MODELS[kind],
        limits=limits,
        version=version,
        output_retries=output_retries,
        model_settings=model_settings,
        description=f"Writes {kind.replace('_', ' ')} drafts from a ContentBrief.",
    )
    return ContentGenerator(kind, agent, max_attempts, seo_gate, thresholds or SeoThresholds())


def blog_post_generator(*, model: str, **options: Any) -> ContentGenerator:
    """`content_generator("blog_post", ...)`."""
    return content_generator("blog_post", model=model, **options)


def landing_page_generator(*, model: str, **options: Any) -> ContentGenerator:
    """`content_generator("landing_page", ...)`."""
    return content_generator("landing_page", model=model, **options)


def email_generator(*, model: str, **options: Any) -> ContentGenerator:
    """`content_generator("email", ...)`."""
    return content_generator("email", model=model, **options)


def social_posts_generator(*, model: str, **options: Any) -> ContentGenerator:
    """`content_generator("social_posts", ...)`."""
    return content_generator("social_posts", model=model, **options)
