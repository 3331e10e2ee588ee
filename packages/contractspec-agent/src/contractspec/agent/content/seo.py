"""SEO checks of a draft, reported as a typed `SeoReport` with pass/fail thresholds.

| check | kinds | rule (default thresholds, `SeoThresholds`) | source |
|---|---|---|---|
| `title_length` | blog post, landing page | 30-60 characters | Google truncates titles past ~60 characters (Yoast, Moz) |
| `meta_description_length` | blog post, landing page | 70-160 characters | Google's snippet width (Yoast) |
| `heading_structure` | blog post, landing page | exactly one H1, first; no level skipped (H1 → H3); at least 2 H2 | HTML heading outline, WCAG 2.x technique G141 |
| `keyword_density` | blog post, landing page | primary keyword 0.5-3.0 % of the words | Yoast's keyphrase density |
| `subject_length` | email | 10-60 characters | Litmus / Mailchimp subject guidance |
| `preheader_length` | email | 40-130 characters | Litmus preview text guidance |
| `keyword_present` | social posts | a keyword (or hashtag) in at least one post | |
| `readability` | all | Automated Readability Index ≤ grade 10 | Senter & Smith (1967), via `textstat` |

Readability uses ARI (characters per word, words per sentence) rather than Flesch reading ease:
textstat's Flesch needs syllable counts from NLTK's CMU dictionary, which textstat downloads at
first use; ARI needs no download, so it runs offline and gives the same answer everywhere.
The Coleman-Liau index (also syllable-free) is reported alongside as `coleman_liau`.

Requires the `content` extra: `pip install 'contractspec-agent[content]'`.
"""

from __future__ import annotations

import itertools
import re
from functools import cache
from typing import Any

from attrs import define, field

from contractspec.agent.content._text import WORD, normalize_text, phrase_pattern
from contractspec.agent.content.brief import ContentBrief
from contractspec.agent.content.drafts import (
    BlogPost,
    Draft,
    EmailMessage,
    LandingPage,
    SocialPosts,
    headings,
    plain_text,
)
from contractspec.core import SpecDefinitionError


@cache
def _textstat() -> Any:
    """textstat, imported on the first readability check (it imports NLTK: ~1 s, kept off
    `import contractspec.agent.content`).

    Raises:
        ImportError: textstat is not installed; the message names the extra.
    """
    try:
        import textstat  # type: ignore[import-untyped]  # textstat ships no type information
    except ImportError as exc:  # pragma: no cover - the extra is installed in the workspace
        raise ImportError(
            "contractspec.agent.content needs textstat for readability scores: "
            "pip install 'contractspec-agent[content]'"
        ) from exc
    return textstat


__all__ = ["SeoCheck", "SeoReport", "SeoThresholds", "seo_report"]


def _positive_range(low: float, high: float, name: str) -> None:
    if isinstance(low, bool) or isinstance(high, bool) or not 0 <= low <= high:
        raise SpecDefinitionError(
            f"SeoThresholds: {name} needs 0 <= min <= max, got {low!r}..{high!r}",
            details={"field": name},
        )


@define(frozen=True)
class SeoThresholds:
    """Pass/fail thresholds of the SEO checks (characters, percent of words, grade levels).

    Attributes:
        title_min_chars, title_max_chars: Page title length.
        meta_min_chars, meta_max_chars: Meta description length.
        subject_min_chars, subject_max_chars: Email subject length.
        preheader_min_chars, preheader_max_chars: Email preheader length.
        min_h2: H2 sections a page needs.
        keyword_density_min_pct, keyword_density_max_pct: Occurrences of the primary keyword
            per 100 words of the page (percent, not a fraction).
        max_grade_level: Highest Automated Readability Index (a US school grade).

    Raises:
        SpecDefinitionError: A minimum above its maximum, or a negative threshold.
    """

    title_min_chars: int = 30
    title_max_chars: int = 60
    meta_min_chars: int = 70
    meta_max_chars: int = 160
    subject_min_chars: int = 10
    subject_max_chars: int = 60
    preheader_min_chars: int = 40
    preheader_max_chars: int = 130
    min_h2: int = 2
    keyword_density_min_pct: float = 0.5
    keyword_density_max_pct: float = 3.0
    max_grade_level: float = 10.0

    def __attrs_post_init__(self) -> None:
        _positive_range(self.title_min_chars, self.title_max_chars, "title_min_chars")
        _positive_range(self.meta_min_chars, self.meta_max_chars, "meta_min_chars")
        _positive_range(self.subject_min_chars, self.subject_max_chars, "subject_min_chars")
        _positive_range(self.preheader_min_chars, self.preheader_max_chars, "preheader_min_chars")
        _positive_range(
            self.keyword_density_min_pct, self.keyword_density_max_pct, "keyword_density_min_pct"
        )
        _positive_range(0, self.min_h2, "min_h2")
        _positive_range(0, self.max_grade_level, "max_grade_level")


@define(frozen=True)
class SeoCheck:
    """One SEO check.

    Attributes:
        name: `title_length`, `meta_description_length`, `heading_structure`,
            `keyword_density`, `subject_length`, `preheader_length`, `keyword_present` or
            `readability`.
        passed: Whether the value is within the threshold.
        value: What was measured (characters, percent, grade level, or a count).
        expected: The threshold in words (`"30-60 characters"`).
        message: What is wrong (`""` when it passed).
        details: Extra measurements (headings seen, per-keyword densities, other indices).
    """

    name: str
    passed: bool
    value: float | int | None
    expected: str
    message: str = ""
    details: dict[str, Any] = field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "expected": self.expected,
            "message": self.message,
            "details": self.details,
        }


@define(frozen=True)
class SeoReport:
    """The SEO checks of one draft.

    Attributes:
        kind: The draft's `ContentKind`.
        checks: The checks that apply to the kind, in table order.
    """

    kind: str
    checks: tuple[SeoCheck, ...]

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[str, ...]:
        """Names of the failed checks."""
        return tuple(c.name for c in self.checks if not c.passed)

    def check(self, name: str) -> SeoCheck:
        """The check called `name`.

        Raises:
            KeyError: The check does not apply to this kind.
        """
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"{name!r} is not checked for {self.kind} (checks: {self.names()})")

    def names(self) -> tuple[str, ...]:
        """Names of the checks, in order."""
        return tuple(c.name for c in self.checks)

    def feedback(self) -> str:
        """The failed checks in words a writer can act on."""
        return "\n".join(
            f"- {c.name}: {c.message} (expected {c.expected})" for c in self.checks if not c.passed
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind,
            "passed": self.passed,
            "failed": list(self.failed),
            "checks": [c.to_dict() for c in self.checks],
        }


def _length(name: str, text: str, low: int, high: int, what: str) -> SeoCheck:
    n = len(normalize_text(text))
    ok = low <= n <= high
    return SeoCheck(
        name, ok, n, f"{low}-{high} characters",
        "" if ok else f"the {what} has {n} characters",
    )  # fmt: skip


def _headings(markdown: str, min_h2: int) -> SeoCheck:
    found = headings(markdown)
    problems: list[str] = []
    levels = [level for level, _ in found]
    if not found:
        problems.append("no headings")
    else:
        if levels[0] != 1:
            problems.append(f"the first heading is H{levels[0]}, not the H1")
        if levels.count(1) != 1:
            problems.append(f"{levels.count(1)} H1 headings (one is needed)")
        for prev, cur in itertools.pairwise(levels):
            if cur > prev + 1:
                problems.append(f"H{prev} is followed by H{cur} (a level is skipped)")
                break
        if levels.count(2) < min_h2:
            problems.append(f"{levels.count(2)} H2 sections (at least {min_h2} needed)")
    return SeoCheck(
        "heading_structure",
        not problems,
        levels.count(2),
        f"one H1 first, no skipped level, at least {min_h2} H2",
        "; ".join(problems),
        {"headings": [f"H{level} {text}" for level, text in found]},
    )


def _density(text: str, brief: ContentBrief, low: float, high: float) -> SeoCheck:
    normalized = normalize_text(text)
    words = len(WORD.findall(normalized))
    densities = {}
    for keyword in brief.keywords:
        count = len(phrase_pattern(keyword).findall(normalized))
        densities[keyword] = round(100.0 * count / words, 3) if words else 0.0
    primary = densities[brief.primary_keyword]
    ok = low <= primary <= high
    message = ""
    if not ok:
        message = (
            f"the primary keyword {brief.primary_keyword!r} is {primary} % of {words} words"
            + (" (keyword stuffing)" if primary > high else "")
        )
    return SeoCheck(
        "keyword_density", ok, primary, f"{low}-{high} % of the words", message,
        {"words": words, "densities_pct": densities},
    )  # fmt: skip


def _present(draft: SocialPosts, brief: ContentBrief) -> SeoCheck:
    text = normalize_text(draft.markdown())
    tags = {t.casefold() for p in draft.posts for t in p.hashtags}
    hits = [
        k
        for k in brief.keywords
        if phrase_pattern(k).search(text) or re.sub(r"\W", "", k).casefold() in tags
    ]
    return SeoCheck(
        "keyword_present", bool(hits), len(hits), "at least one keyword or hashtag",
        "" if hits else "no post mentions a keyword of the brief", {"keywords_found": hits},
    )  # fmt: skip


def _readability(text: str, max_grade: float) -> SeoCheck:
    textstat = _textstat()
    ari = float(textstat.automated_readability_index(text))
    cli = float(textstat.coleman_liau_index(text))
    ok = ari <= max_grade
    return SeoCheck(
        "readability", ok, round(ari, 2), f"Automated Readability Index <= {max_grade}",
        "" if ok else f"reads at grade {ari:.1f}: use shorter words and sentences",
        {"automated_readability_index": round(ari, 2), "coleman_liau": round(cli, 2)},
    )  # fmt: skip


def seo_report(
    draft: Draft, brief: ContentBrief, thresholds: SeoThresholds | None = None
) -> SeoReport:
    """Run the SEO checks that apply to `draft`'s kind (see the module docs' table).

    Args:
        draft: A `BlogPost`, `LandingPage`, `EmailMessage` or `SocialPosts`.
        brief: The brief (its keywords; the first is the primary one).
        thresholds: `SeoThresholds` (defaults when `None`).

    Returns:
        The `SeoReport`.
    """
    t = thresholds or SeoThresholds()
    page = draft.markdown()
    text = plain_text(page)
    checks: list[SeoCheck] = []
    if isinstance(draft, BlogPost | LandingPage):
        checks.append(
            _length("title_length", draft.title, t.title_min_chars, t.title_max_chars, "title")
        )
        checks.append(
            _length(
                "meta_description_length",
                draft.meta_description,
                t.meta_min_chars,
                t.meta_max_chars,
                "meta description",
            )
        )
        checks.append(_headings(page, t.min_h2))
        checks.append(_density(text, brief, t.keyword_density_min_pct, t.keyword_density_max_pct))
    elif isinstance(draft, EmailMessage):
        checks.append(
            _length(
                "subject_length",
                draft.subject,
                t.subject_min_chars,
                t.subject_max_chars,
                "subject",
            )
        )
        checks.append(
            _length(
                "preheader_length",
                draft.preheader,
                t.preheader_min_chars,
                t.preheader_max_chars,
                "preheader",
            )
        )
    else:
        checks.append(_present(draft, brief))
    checks.append(_readability(text, t.max_grade_level))
    return SeoReport(draft.kind, tuple(checks))
