"""SEO checks: a typed report with pass/fail thresholds; every rule is tested with a draft that
breaks it."""

from __future__ import annotations

import itertools

import pytest
from content_support import BRIEF, GOOD, good_blog, good_email, good_landing, good_social
from hypothesis import given, settings
from hypothesis import strategies as st

from contractspec.agent.content import (
    SeoThresholds,
    SocialPost,
    SocialPosts,
    seo_report,
)
from contractspec.agent.content.drafts import headings, plain_text


@pytest.mark.parametrize(
    ("kind", "names"),
    [
        ("blog_post", ("title_length", "meta_description_length", "heading_structure",
                       "keyword_density", "readability")),
        ("landing_page", ("title_length", "meta_description_length", "heading_structure",
                          "keyword_density", "readability")),
        ("email", ("subject_length", "preheader_length", "readability")),
        ("social_posts", ("keyword_present", "readability")),
    ],
)  # fmt: skip
def test_good_drafts_pass_every_check_of_their_kind(kind: str, names: tuple[str, ...]) -> None:
    """Each kind gets its own checks, in table order, and the compliant draft passes them all."""
    report = seo_report(GOOD[kind](), BRIEF)
    assert report.kind == kind
    assert report.names() == names
    assert report.passed
    assert report.failed == ()


def test_blog_values_are_measured_exactly() -> None:
    """Lengths are characters, density is occurrences per 100 words, readability is ARI."""
    report = seo_report(good_blog(), BRIEF)
    assert report.check("title_length").value == 50
    assert report.check("meta_description_length").value == 103
    assert report.check("heading_structure").details["headings"] == [
        "H1 Invoice software that helps freelancers get paid",
        "H2 Why clear invoices matter",
        "H2 How to start in a day",
    ]
    density = report.check("keyword_density")
    words = density.details["words"]
    assert density.value == round(100 * 2 / words, 3)
    readability = report.check("readability")
    assert readability.details["automated_readability_index"] == readability.value
    assert "coleman_liau" in readability.details


def _failed(draft: object, thresholds: SeoThresholds | None = None) -> tuple[str, ...]:
    return seo_report(draft, BRIEF, thresholds).failed  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "title", ["Invoices", "Invoice software for freelancers who want to get paid on time, always"]
)
def test_title_outside_30_to_60_characters_fails(title: str) -> None:
    """A title under 30 or over 60 characters fails `title_length`."""
    assert _failed(good_blog().model_copy(update={"title": title})) == ("title_length",)


@pytest.mark.parametrize("meta", ["Send invoices.", "Invoice software helps. " * 8])
def test_meta_description_outside_70_to_160_fails(meta: str) -> None:
    """A meta description under 70 or over 160 characters fails `meta_description_length`."""
    failed = _failed(good_landing().model_copy(update={"meta_description": meta}))
    assert failed == ("meta_description_length",)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("Intro text.\n\n## A\n\nx.\n\n## B\n\ny.", "the first heading is H2"),
        ("## A\n\nx.\n\n# Title\n\n## B\n\ny.", "the first heading is H2"),
        ("# One\n\n## A\n\nx.\n\n# Two\n\n## B\n\ny.", "2 H1 headings"),
        ("# One\n\n### Deep\n\nx.\n\n## A\n\n## B\n\ny.", "H1 is followed by H3"),
        ("# One\n\n## Only one section\n\nx.", "1 H2 sections (at least 2 needed)"),
        ("Plain text without headings.", "no headings"),
    ],
)
def test_bad_heading_structure_fails(body: str, problem: str) -> None:
    """H1 missing, not first, doubled; a skipped level; too few H2: `heading_structure` fails
    and says which."""
    blog = good_blog()
    text = body + "\n\n" + blog.body_markdown.split("\n", 1)[1].replace("## ", "")
    check = seo_report(blog.model_copy(update={"body_markdown": text}), BRIEF).check(
        "heading_structure"
    )
    assert not check.passed
    assert problem in check.message


def test_headings_in_code_fences_do_not_count() -> None:
    """A `#` line inside a fenced code block is code, not a heading."""
    assert headings("# A\n\n```\n# not a heading\n```\n\n## B") == [(1, "A"), (2, "B")]


def test_keyword_stuffing_fails_density() -> None:
    """The primary keyword above 3 % of the words fails `keyword_density` as stuffing."""
    blog = good_blog()
    body = blog.body_markdown + "\n\nInvoice software. Invoice software. Invoice software."
    check = seo_report(blog.model_copy(update={"body_markdown": body}), BRIEF).check(
        "keyword_density"
    )
    assert not check.passed
    assert "keyword stuffing" in check.message


def test_missing_keyword_fails_density() -> None:
    """The primary keyword absent (0 %) fails `keyword_density`."""
    blog = good_blog()
    body = blog.body_markdown.replace("Invoice software", "A tool").replace(
        "invoice software", "a tool"
    )
    check = seo_report(blog.model_copy(update={"body_markdown": body}), BRIEF).check(
        "keyword_density"
    )
    assert (check.passed, check.value) == (False, 0.0)


def test_hard_to_read_text_fails_readability() -> None:
    """Long words in long sentences push ARI past grade 10: `readability` fails."""
    hard = (
        "Notwithstanding comprehensive organizational considerations, multidisciplinary "
        "implementation methodologies necessitate extraordinarily sophisticated "
        "administrative infrastructure, particularly regarding internationalization."
    )
    blog = good_blog()
    body = blog.body_markdown + "\n\n" + " ".join([hard] * 3)
    check = seo_report(blog.model_copy(update={"body_markdown": body}), BRIEF).check("readability")
    assert not check.passed
    assert check.value is not None
    assert check.value > 10


@pytest.mark.parametrize(
    ("update", "failed"),
    [
        ({"subject": "Hi"}, ("subject_length",)),
        ({"subject": "Get paid sooner with clear invoices and kind reminders now"
                     " please"}, ("subject_length",)),
        ({"preheader": "Short."}, ("preheader_length",)),
    ],
)  # fmt: skip
def test_email_subject_and_preheader_lengths(update: dict[str, str], failed: tuple[str]) -> None:
    """An email subject outside 10-60 or a preheader outside 40-130 characters fails."""
    assert _failed(good_email().model_copy(update=update)) == failed


def test_social_posts_without_a_keyword_fail() -> None:
    """Posts that mention no keyword and carry no keyword hashtag fail `keyword_present`."""
    posts = SocialPosts(posts=[SocialPost(platform="x", text="Have a nice day.")])
    assert _failed(posts) == ("keyword_present",)
    tagged = SocialPosts(
        posts=[SocialPost(platform="x", text="Have a nice day.", hashtags=["InvoiceSoftware"])]
    )
    assert _failed(tagged) == ()


def test_thresholds_are_configurable() -> None:
    """Stricter thresholds turn a passing draft into a failing one."""
    strict = SeoThresholds(max_grade_level=1.0, min_h2=3)
    assert _failed(good_blog(), strict) == ("heading_structure", "readability")
    assert _failed(good_social(), strict) == ("readability",)


def test_report_to_dict_and_feedback() -> None:
    """The JSON form lists every check; the feedback names each failure and its threshold."""
    report = seo_report(good_blog().model_copy(update={"title": "Invoices"}), BRIEF)
    data = report.to_dict()
    assert data["passed"] is False
    assert data["failed"] == ["title_length"]
    assert len(data["checks"]) == 5
    assert report.feedback() == (
        "- title_length: the title has 8 characters (expected 30-60 characters)"
    )
    with pytest.raises(KeyError):
        report.check("subject_length")


def _reference(levels: list[int], min_h2: int) -> bool:
    if not levels or levels[0] != 1 or levels.count(1) != 1:
        return False
    if any(b > a + 1 for a, b in itertools.pairwise(levels)):
        return False
    return levels.count(2) >= min_h2


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 6), max_size=12), st.integers(0, 3))
def test_heading_structure_matches_its_rule(levels: list[int], min_h2: int) -> None:
    """For any heading outline, the check passes exactly when: one H1, first; no skipped level;
    at least `min_h2` H2."""
    body = "\n\n".join(f"{'#' * n} Heading {i}\n\nSome text." for i, n in enumerate(levels))
    blog = good_blog().model_copy(update={"body_markdown": body or "Text."})
    check = seo_report(blog, BRIEF, SeoThresholds(min_h2=min_h2)).check("heading_structure")
    assert check.passed is _reference(levels, min_h2)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 8), st.integers(20, 300))
def test_keyword_density_is_occurrences_per_100_words(hits: int, filler: int) -> None:
    """Density is exactly occurrences / words x 100, whatever the mix."""
    words = ["word"] * filler
    text = " ".join(words) + " " + " ".join(["invoice software"] * hits)
    blog = good_blog().model_copy(update={"body_markdown": f"# T\n\n{text}.", "disclaimer": ""})
    check = seo_report(blog, BRIEF).check("keyword_density")
    total = 1 + filler + 2 * hits  # the H1 "T", the filler, two words per occurrence
    assert check.value == round(100 * hits / total, 3)


def test_plain_text_strips_markup() -> None:
    """Markdown markup goes; link texts stay; headings end as sentences."""
    assert plain_text("# Title\n\n**Bold** and [a link](http://x).\n- item") == (
        "Title.\n\nBold and a link.\nitem"
    )
