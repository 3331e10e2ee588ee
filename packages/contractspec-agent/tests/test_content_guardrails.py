"""Content guardrails: brand voice, banned claims, disclaimers and channel limits, as invariants
over the structured draft; every rule is tested with a draft that breaks it."""

from __future__ import annotations

from typing import Any

import pytest
from content_support import BRIEF, GOOD, good_blog, good_email, good_landing, good_social
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contractspec.agent.content import (
    BlogPost,
    ContentBrief,
    SocialPost,
    SocialPosts,
    check_guardrails,
    coerce_brief,
    draft_from_dict,
    guardrail_invariants,
    normalize_text,
)
from contractspec.core import SpecDefinitionError, SpecValidationError

ALL = (
    "no_banned_claims",
    "required_disclaimers",
    "brand_forbidden_words",
    "brand_exclamations",
    "brand_sentence_length",
    "brand_no_shouting",
    "channel_limits",
)


def _with_body(extra: str) -> BlogPost:
    blog = good_blog()
    return blog.model_copy(update={"body_markdown": blog.body_markdown + "\n\n" + extra})


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_good_drafts_pass_every_guardrail(kind: str) -> None:
    """A compliant draft of each kind gets a PASS for all seven invariants."""
    report = check_guardrails(GOOD[kind](), BRIEF)
    assert [r.name for r in report.proof] == list(ALL)
    assert [r.verdict for r in report.proof] == ["PASS"] * 7
    assert report.passed
    assert report.failed == ()
    assert report.feedback() == ""


@pytest.mark.parametrize(
    ("extra", "failed", "evidence_key", "found"),
    [
        (
            "Our plan gives guaranteed results.",
            "no_banned_claims",
            "banned_claims",
            [{"phrase": "guaranteed results", "field": "body_markdown"}],
        ),
        ("It is totally Risk-Free.", "no_banned_claims", "banned_claims",
         [{"phrase": "risk-free", "field": "body_markdown"}]),
        ("We are the #1 tool.", "no_banned_claims", "banned_claims",
         [{"phrase": "#1", "field": "body_markdown"}]),
        ("Great synergy with your bank.", "brand_forbidden_words", "off_brand_matches",
         [{"phrase": "synergy", "field": "body_markdown"}]),
        ("Start now! It is easy! Really!", "brand_exclamations", None, None),
        ("Try it for FREE today.", "brand_no_shouting", "shouting", ["body_markdown: FREE"]),
        (" ".join(["word"] * 26) + ".", "brand_sentence_length", None, None),
    ],
)  # fmt: skip
def test_each_voice_or_claim_violation_fails_its_invariant(
    extra: str, failed: str, evidence_key: str | None, found: Any
) -> None:
    """A draft breaking one rule fails exactly that invariant, and the evidence says where."""
    report = check_guardrails(_with_body(extra), BRIEF)
    assert report.failed == (failed,)
    assert not report.passed
    if evidence_key is not None:
        assert report.evidence[evidence_key] == found
    assert failed in report.feedback()


def test_sentence_length_reports_the_longest_sentence() -> None:
    """The longest sentence's word count is the value the invariant compares."""
    report = check_guardrails(_with_body(" ".join(["word"] * 26) + "."), BRIEF)
    (result,) = [r for r in report.proof if r.name == "brand_sentence_length"]
    assert dict(result.values) == {"longest_sentence_words": 26}
    assert result.expression == "longest_sentence_words <= 25"


def test_allowed_acronyms_are_not_shouting() -> None:
    """ALL-CAPS words in `allowed_caps` (and short ones like 'API') pass."""
    report = check_guardrails(_with_body("We follow GDPR and offer an API."), BRIEF)
    assert report.passed


def test_missing_disclaimer_fails() -> None:
    """A draft without the required disclaimer fails `required_disclaimers`."""
    draft = good_blog().model_copy(update={"disclaimer": ""})
    report = check_guardrails(draft, BRIEF)
    assert report.failed == ("required_disclaimers",)
    assert report.evidence["missing_disclaimer_texts"] == ["Results vary by client."]


def test_disclaimer_matches_across_case_and_whitespace() -> None:
    """The disclaimer counts when only case and whitespace differ."""
    draft = good_blog().model_copy(update={"disclaimer": "results   Vary\nBY client."})
    assert check_guardrails(draft, BRIEF).passed


def test_every_social_post_must_carry_the_disclaimer() -> None:
    """Posts go out one by one: a post without the disclaimer fails even if another has it."""
    posts = good_social()
    bare = posts.posts[1].model_copy(update={"text": "Send each invoice on the day."})
    report = check_guardrails(posts.model_copy(update={"posts": [posts.posts[0], bare]}), BRIEF)
    assert report.failed == ("required_disclaimers",)
    assert report.evidence["missing_disclaimer_texts"] == ["posts.1: Results vary by client."]


def test_social_post_over_platform_limit_fails_channel_limits() -> None:
    """A post longer than its platform allows (hashtags counted) fails `channel_limits`."""
    text = "Clear invoices help. Results vary by client. " + "Yes. " * 50
    draft = SocialPosts(posts=[SocialPost(platform="x", text=text.strip(), hashtags=["tag"])])
    report = check_guardrails(draft, BRIEF)
    assert report.failed == ("channel_limits",)
    length = len(draft.posts[0].rendered())
    assert report.evidence["channel_problems"] == [f"posts.0: {length} characters on x (limit 280)"]


def test_unknown_platform_fails_channel_limits() -> None:
    """A platform the brief has no limit for is refused rather than guessed."""
    draft = SocialPosts(posts=[SocialPost(platform="myspace", text="Results vary by client.")])
    report = check_guardrails(draft, BRIEF)
    assert report.failed == ("channel_limits",)
    assert "platform 'myspace' has no limit" in report.evidence["channel_problems"][0]


def test_email_subject_over_limit_fails_channel_limits() -> None:
    """An email subject past `email_subject_max_chars` fails `channel_limits`."""
    draft = good_email().model_copy(update={"subject": "Get paid " + "sooner " * 12})
    report = check_guardrails(draft, BRIEF)
    assert report.failed == ("channel_limits",)


@pytest.mark.parametrize("words", [10, 500])
def test_blog_length_outside_the_channel_range_fails(words: int) -> None:
    """A blog body shorter or longer than the brief's word range fails `channel_limits`."""
    body = "# Invoice software\n\n" + " ".join(f"Word{i % 7}." for i in range(words))
    draft = good_blog().model_copy(update={"body_markdown": body})
    report = check_guardrails(draft, BRIEF)
    assert "channel_limits" in report.failed


def test_banned_claim_inside_another_word_does_not_match() -> None:
    """Word boundaries: banning '#1' does not ban '#10', banning 'cure' does not ban 'secure'."""
    brief = BRIEF.model_copy(update={"banned_claims": ["#1", "cure"]})
    report = check_guardrails(_with_body("We made #10 secure steps."), brief)
    assert report.passed


def test_banned_claim_in_any_landing_field_is_found() -> None:
    """Every text field is checked: a claim in a section heading is found with its path."""
    page = good_landing()
    sections = list(page.sections)
    sections[1] = sections[1].model_copy(update={"heading": "Guaranteed results"})
    report = check_guardrails(page.model_copy(update={"sections": sections}), BRIEF)
    assert report.failed == ("no_banned_claims",)
    assert report.evidence["banned_claims"] == [
        {"phrase": "guaranteed results", "field": "sections.1.heading"}
    ]


@pytest.mark.parametrize(
    "spelling",
    [
        "risk free",
        "riskfree",
        "Risk\u2011Free",
        "risk\u2013free",
        "risk \u2014 free",
        "risk\n-free",
    ],
)
def test_banned_claim_with_other_separators_is_found(spelling: str) -> None:
    """Dash variants, spaces or no separator between a claim's words still match it."""
    report = check_guardrails(_with_body(f"Switching is {spelling} for you."), BRIEF)
    assert "no_banned_claims" in report.failed
    assert report.evidence["banned_claims"] == [{"phrase": "risk-free", "field": "body_markdown"}]


def test_a_sentence_break_between_claim_words_is_not_the_claim() -> None:
    """'guaranteed. Results' across two sentences is not the claim 'guaranteed results'."""
    report = check_guardrails(_with_body("Payment is guaranteed. Results vary by client."), BRIEF)
    assert report.passed


def test_zero_width_characters_do_not_hide_shouting() -> None:
    """'F\u200bREE' is still the shouted word FREE."""
    report = check_guardrails(_with_body("Try it F\u200bREE today."), BRIEF)
    assert report.failed == ("brand_no_shouting",)
    assert report.evidence["shouting"] == ["body_markdown: FREE"]


def test_fullwidth_exclamation_marks_count() -> None:
    """Fullwidth '\uff01' is an exclamation mark after NFKC."""
    report = check_guardrails(_with_body("Start now\uff01 Really\uff01"), BRIEF)
    assert report.failed == ("brand_exclamations",)


def test_a_banned_claim_in_the_slug_is_found() -> None:
    """URLs are read too: 'guaranteed-results' in the slug is the claim."""
    draft = good_blog().model_copy(update={"slug": "guaranteed-results-for-freelancers"})
    report = check_guardrails(draft, BRIEF)
    assert report.failed == ("no_banned_claims",)
    assert report.evidence["banned_claims"] == [{"phrase": "guaranteed results", "field": "slug"}]


def test_invariants_are_the_brief_s_numbers() -> None:
    """The invariants carry the brief's limits in their expressions."""
    exprs = {i.name: i.expression.text for i in guardrail_invariants(BRIEF)}
    assert exprs["brand_exclamations"] == "exclamations <= 1"
    assert exprs["brand_sentence_length"] == "longest_sentence_words <= 25"
    assert exprs["brand_no_shouting"] == "shouting_words <= 0"


_CF = st.sampled_from(["\u200b", "\u200c", "\u200d", "\u00ad", "\u2060", "\ufeff"])
_SPACE = st.sampled_from([" ", "  ", "\t", "\n", " \n ", "-", "\u2011", " \u2013 "])


@st.composite
def _obfuscated(draw: st.DrawFn, claim: str) -> str:
    out = []
    for i, word in enumerate(claim.split(" ")):
        if i:
            out.append(draw(_SPACE))
        for ch in word:
            out.append(ch.upper() if draw(st.booleans()) else ch.lower())
            if draw(st.integers(0, 4)) == 0:
                out.append(draw(_CF))
    return "".join(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    claim=st.sampled_from(["guaranteed results", "risk-free", "#1"]),
    field=st.sampled_from(["title", "meta_description", "body_markdown", "disclaimer"]),
)
def test_obfuscated_banned_claims_are_still_found(
    data: st.DataObject, claim: str, field: str
) -> None:
    """Hostile spelling (case, whitespace runs, zero-width and soft-hyphen characters) does not
    hide a banned claim in any field."""
    hidden = data.draw(_obfuscated(claim))
    blog = good_blog()
    value = getattr(blog, field) + " " + hidden + " now."
    report = check_guardrails(blog.model_copy(update={field: value}), BRIEF)
    assert "no_banned_claims" in report.failed
    assert {"phrase": claim, "field": field} in report.evidence["banned_claims"]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_normalize_text_is_idempotent_and_strips_format_characters(text: str) -> None:
    """Normalising twice changes nothing; no format character or whitespace run survives."""
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert "\u200b" not in once
    assert "  " not in once


def test_a_brief_mapping_with_a_bad_field_names_it() -> None:
    """A bad brief is a `SpecValidationError` naming the field."""
    data = BRIEF.model_dump(mode="json")
    data["keywords"] = []
    with pytest.raises(SpecValidationError) as info:
        coerce_brief(data)
    assert info.value.details["field"] == "brief.keywords"
    data = {**BRIEF.model_dump(mode="json"), "banned_claims": ["ok", "   "]}
    with pytest.raises(SpecValidationError) as info:
        coerce_brief(data)
    assert info.value.details["field"] == "brief.banned_claims"


def test_brief_phrases_are_deduplicated_and_trimmed() -> None:
    """Phrases are whitespace-collapsed and deduplicated case-insensitively."""
    brief = ContentBrief(
        id="b", topic="t", audience="a", keywords=["Invoice  software", "invoice software"]
    )
    assert brief.keywords == ["Invoice software"]


def test_draft_from_dict_names_the_kind_or_the_field() -> None:
    """An unknown kind names `kind`; an invalid draft names `draft.<path>`."""
    with pytest.raises(SpecValidationError) as info:
        draft_from_dict("poem", {})
    assert info.value.details["field"] == "kind"
    data = good_blog().model_dump(mode="json")
    data["slug"] = "Not A Slug"
    with pytest.raises(SpecValidationError) as info:
        draft_from_dict("blog_post", data)
    assert info.value.details["field"] == "draft.slug"


def test_social_posts_render_hashtags() -> None:
    """A post is published as its text then `#tag` per hashtag."""
    assert good_social().posts[0].rendered().endswith("#freelance #invoicing")


def test_seo_thresholds_refuse_inverted_ranges() -> None:
    """`SeoThresholds` with min above max is a definition error naming the field."""
    from contractspec.agent.content import SeoThresholds

    with pytest.raises(SpecDefinitionError) as info:
        SeoThresholds(title_min_chars=70, title_max_chars=60)
    assert info.value.details["field"] == "title_min_chars"
