"""A brief and one passing draft of each kind (test support for the content tests)."""

from __future__ import annotations

from typing import Any

from contractspec.agent.content import (
    BlogPost,
    BrandVoice,
    ChannelConstraints,
    ContentBrief,
    EmailMessage,
    LandingPage,
    LandingSection,
    SocialPost,
    SocialPosts,
)

BRIEF = ContentBrief(
    id="brief-1",
    topic="Invoice software for freelancers",
    audience="freelance designers and developers",
    brand_voice=BrandVoice(
        description="plain, warm, confident",
        forbidden_words=["synergy", "cheap"],
        max_exclamations=1,
        max_sentence_words=25,
        allowed_caps=["GDPR"],
    ),
    keywords=["invoice software", "get paid"],
    banned_claims=["guaranteed results", "risk-free", "#1"],
    required_disclaimers=["Results vary by client."],
    channels=ChannelConstraints(blog_min_words=60, blog_max_words=400),
    call_to_action="Start a free trial",
)

BLOG_BODY = """# Invoice software that helps freelancers get paid

Freelance work is fun until the bills are late. A clear invoice is the first step to being paid on time.

## Why clear invoices matter

Clients pay faster when an invoice is easy to read. Each line should say what you did, when, and for how much. Dates and totals must be plain to see.

## How to start in a day

Pick invoice software that fits the way you work. Add your clients and your rates. Send your first invoice, then set a reminder for the due date. Keep a copy of each one for your records and your tax return.
"""


def good_blog() -> BlogPost:
    """A blog post that passes every guardrail and SEO check of `BRIEF`."""
    return BlogPost(
        title="Invoice software for freelancers: get paid on time",
        meta_description=(
            "How freelancers use invoice software to send clear invoices and get paid sooner, "
            "in three simple steps."
        ),
        slug="invoice-software-for-freelancers",
        body_markdown=BLOG_BODY,
        disclaimer="Results vary by client.",
    )


def good_landing() -> LandingPage:
    """A landing page that passes every guardrail and SEO check of `BRIEF`."""
    return LandingPage(
        title="Invoice software for freelancers who want to get paid",
        meta_description=(
            "Send clear invoices in minutes and get paid sooner. Simple invoice software made "
            "for freelance work."
        ),
        headline="Get paid on time, every time you send an invoice",
        subheadline="Simple tools for freelance designers and developers.",
        sections=[
            LandingSection(
                heading="Send an invoice in two minutes",
                body=(
                    "Pick a client, add your hours and press send. Your invoice software keeps "
                    "the totals and the due dates right."
                ),
            ),
            LandingSection(
                heading="Know who still owes you",
                body=(
                    "See open invoices at a glance. Send a polite reminder when a payment is "
                    "late, and keep your records tidy for tax time."
                ),
            ),
        ],
        call_to_action="Start a free trial",
        disclaimer="Results vary by client.",
    )


def good_email() -> EmailMessage:
    """An email that passes every guardrail and SEO check of `BRIEF`."""
    return EmailMessage(
        subject="Get paid sooner with clear invoices",
        preheader="Three small habits that help freelancers get paid on time.",
        body_markdown=(
            "Hi there,\n\nLate payments hurt a small business. Clear invoices help you get paid "
            "sooner. Send each invoice the day the work is done. Add the due date in bold. "
            "Follow up kindly a day after it passes."
        ),
        call_to_action="Start a free trial",
        disclaimer="Results vary by client.",
    )


def good_social() -> SocialPosts:
    """Posts that pass every guardrail and SEO check of `BRIEF`."""
    return SocialPosts(
        posts=[
            SocialPost(
                platform="x",
                text="Clear invoices help freelancers get paid sooner. Results vary by client.",
                hashtags=["freelance", "invoicing"],
            ),
            SocialPost(
                platform="linkedin",
                text=(
                    "Freelancers: send each invoice the day the work is done, with the due date "
                    "in plain sight. Good invoice software makes that a habit. Results vary by "
                    "client."
                ),
            ),
        ]
    )


GOOD = {
    "blog_post": good_blog,
    "landing_page": good_landing,
    "email": good_email,
    "social_posts": good_social,
}


def as_json(draft: Any) -> str:
    """The draft as the JSON a model would answer with."""
    text: str = draft.model_dump_json()
    return text
