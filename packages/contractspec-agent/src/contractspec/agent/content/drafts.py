"""The structured outputs of the generators: blog post, landing page, email, social posts.

Every draft gives its readable parts (`parts()`: field path → text) for the guardrails, and its
page as Markdown (`markdown()`: `#` H1, `##` H2, ...) for the SEO checks.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contractspec.core import SpecValidationError

__all__ = [
    "DRAFT_MODELS",
    "BlogPost",
    "ContentKind",
    "Draft",
    "EmailMessage",
    "LandingPage",
    "LandingSection",
    "SocialPost",
    "SocialPosts",
    "draft_from_dict",
    "headings",
    "plain_text",
]

#: What a generator writes.
ContentKind: TypeAlias = Literal["blog_post", "landing_page", "email", "social_posts"]

_HEADING: Final = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE: Final = re.compile(r"^ {0,3}(```|~~~)")
_LINK: Final = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MARKUP: Final = re.compile(
    r"(\*\*|__|\*|_|`|^ {0,3}#{1,6}[ \t]+|^ {0,3}[-*+>][ \t]+|^ {0,3}\d+\.[ \t]+)", re.M
)


def headings(markdown: str) -> list[tuple[int, str]]:
    """ATX headings (`# Title`, `## Section`) of a Markdown text, in order, as `(level, text)`;
    lines inside fenced code blocks are skipped (CommonMark's ATX heading rule)."""
    out: list[tuple[int, str]] = []
    fenced = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        match = _HEADING.match(line)
        if match:
            out.append((len(match.group(1)), match.group(2).strip()))
    return out


def plain_text(markdown: str) -> str:
    """Markdown without its markup (heading marks, emphasis, list bullets, link targets), each
    heading ending as a sentence so readability formulas see it as one."""
    lines = []
    for line in markdown.splitlines():
        text = _LINK.sub(r"\1", line)
        is_heading = _HEADING.match(line) is not None
        text = _MARKUP.sub("", text).strip()
        if is_heading and text and text[-1] not in ".!?:":
            text += "."
        lines.append(text)
    return "\n".join(lines)


class _Draft(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: The `ContentKind` this model is the output of.
    kind: ClassVar[str] = ""

    def parts(self) -> dict[str, str]:
        """Readable text by field path (what the guardrails check)."""
        raise NotImplementedError

    def markdown(self) -> str:
        """The draft as one Markdown page."""
        raise NotImplementedError

    @property
    def title_text(self) -> str:
        """The title the SEO checks measure (page title, email subject)."""
        raise NotImplementedError

    @property
    def meta_text(self) -> str:
        """The summary the SEO checks measure (meta description, email preheader)."""
        raise NotImplementedError


_Title = Annotated[str, Field(min_length=1, max_length=300)]
_Meta = Annotated[str, Field(max_length=1000)]
_Body = Annotated[str, Field(min_length=1, max_length=200_000)]


class BlogPost(_Draft):
    """A blog post.

    Attributes:
        title: The page title (`<title>`, search results headline).
        meta_description: The search-result snippet.
        slug: URL path segment (`how-to-send-invoices`).
        body_markdown: The article in Markdown: one `#` H1 first, then `##` sections.
        disclaimer: Legal text shown under the article.
    """

    kind: ClassVar[str] = "blog_post"

    title: _Title
    meta_description: _Meta
    slug: str = Field(min_length=1, max_length=120, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    body_markdown: _Body
    disclaimer: str = Field(default="", max_length=2000)

    def parts(self) -> dict[str, str]:
        """Title, meta description, slug (readers see URLs too), body and disclaimer."""
        return {
            "title": self.title,
            "meta_description": self.meta_description,
            "slug": self.slug,
            "body_markdown": self.body_markdown,
            "disclaimer": self.disclaimer,
        }

    def markdown(self) -> str:
        """The body, then the disclaimer."""
        return self.body_markdown + (f"\n\n{self.disclaimer}" if self.disclaimer else "")

    @property
    def title_text(self) -> str:
        """`title`."""
        return self.title

    @property
    def meta_text(self) -> str:
        """`meta_description`."""
        return self.meta_description


class LandingSection(BaseModel):
    """One section of a landing page (rendered as an H2 and its text)."""

    model_config = ConfigDict(extra="forbid")

    heading: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=20_000)


class LandingPage(_Draft):
    """A landing page.

    Attributes:
        title: The page title.
        meta_description: The search-result snippet.
        headline: The H1.
        subheadline: The line under the H1.
        sections: The sections (each an H2).
        call_to_action: The button text.
        disclaimer: Legal text in the footer.
    """

    kind: ClassVar[str] = "landing_page"

    title: _Title
    meta_description: _Meta
    headline: str = Field(min_length=1, max_length=200)
    subheadline: str = Field(default="", max_length=500)
    sections: list[LandingSection] = Field(min_length=1, max_length=30)
    call_to_action: str = Field(min_length=1, max_length=100)
    disclaimer: str = Field(default="", max_length=2000)

    def parts(self) -> dict[str, str]:
        """Every text field, sections as `sections.<i>.heading` / `.body`."""
        out = {
            "title": self.title,
            "meta_description": self.meta_description,
            "headline": self.headline,
            "subheadline": self.subheadline,
        }
        for i, s in enumerate(self.sections):
            out[f"sections.{i}.heading"] = s.heading
            out[f"sections.{i}.body"] = s.body
        out["call_to_action"] = self.call_to_action
        out["disclaimer"] = self.disclaimer
        return out

    def markdown(self) -> str:
        """`# headline`, the subheadline, `## heading` + body per section, the call to action
        and the disclaimer."""
        blocks = [f"# {self.headline}"]
        if self.subheadline:
            blocks.append(self.subheadline)
        blocks.extend(f"## {s.heading}\n\n{s.body}" for s in self.sections)
        blocks.append(self.call_to_action)
        if self.disclaimer:
            blocks.append(self.disclaimer)
        return "\n\n".join(blocks)

    @property
    def title_text(self) -> str:
        """`title`."""
        return self.title

    @property
    def meta_text(self) -> str:
        """`meta_description`."""
        return self.meta_description


class EmailMessage(_Draft):
    """A marketing email.

    Attributes:
        subject: The subject line.
        preheader: The preview text shown after the subject.
        body_markdown: The message in Markdown.
        call_to_action: The button text.
        disclaimer: Footer text (legal, unsubscribe wording).
    """

    kind: ClassVar[str] = "email"

    subject: str = Field(min_length=1, max_length=998)
    preheader: str = Field(default="", max_length=500)
    body_markdown: _Body
    call_to_action: str = Field(min_length=1, max_length=100)
    disclaimer: str = Field(default="", max_length=2000)

    def parts(self) -> dict[str, str]:
        """Subject, preheader, body, call to action and disclaimer."""
        return {
            "subject": self.subject,
            "preheader": self.preheader,
            "body_markdown": self.body_markdown,
            "call_to_action": self.call_to_action,
            "disclaimer": self.disclaimer,
        }

    def markdown(self) -> str:
        """The body, the call to action, the disclaimer."""
        blocks = [self.body_markdown, self.call_to_action]
        if self.disclaimer:
            blocks.append(self.disclaimer)
        return "\n\n".join(blocks)

    @property
    def title_text(self) -> str:
        """`subject`."""
        return self.subject

    @property
    def meta_text(self) -> str:
        """`preheader`."""
        return self.preheader


class SocialPost(BaseModel):
    """One post for one platform.

    Attributes:
        platform: A key of `ChannelConstraints.social_max_chars` (`x`, `linkedin`, ...).
        text: The post, without the hashtags.
        hashtags: Tags without `#` (`invoicing`).
    """

    model_config = ConfigDict(extra="forbid")

    platform: str = Field(min_length=1, max_length=40, pattern=r"^[a-z0-9_]+$")
    text: str = Field(min_length=1, max_length=100_000)
    hashtags: list[Annotated[str, Field(min_length=1, max_length=100, pattern=r"^\w+$")]] = Field(
        default_factory=list, max_length=30
    )

    def rendered(self) -> str:
        """The post as published: the text, then `#tag` for each hashtag."""
        tags = " ".join(f"#{t}" for t in self.hashtags)
        return f"{self.text} {tags}" if tags else self.text


class SocialPosts(_Draft):
    """Posts for social platforms (a disclaimer, when required, goes in each post's text).

    Attributes:
        posts: One or more posts.
    """

    kind: ClassVar[str] = "social_posts"

    posts: list[SocialPost] = Field(min_length=1, max_length=20)

    def parts(self) -> dict[str, str]:
        """`posts.<i>` → the rendered post."""
        return {f"posts.{i}": p.rendered() for i, p in enumerate(self.posts)}

    def markdown(self) -> str:
        """The rendered posts, one paragraph each."""
        return "\n\n".join(p.rendered() for p in self.posts)

    @property
    def title_text(self) -> str:
        """Empty (posts have no title)."""
        return ""

    @property
    def meta_text(self) -> str:
        """Empty (posts have no summary)."""
        return ""


#: Any structured draft.
Draft: TypeAlias = BlogPost | LandingPage | EmailMessage | SocialPosts

#: The output model of each kind.
DRAFT_MODELS: Final[dict[str, type[Draft]]] = {
    "blog_post": BlogPost,
    "landing_page": LandingPage,
    "email": EmailMessage,
    "social_posts": SocialPosts,
}


def draft_from_dict(kind: str, data: Any) -> Draft:
    """Validate `data` as the draft model of `kind`.

    Raises:
        SpecValidationError: Unknown kind (field `kind`), or data that does not match the model
            (field `draft.<path>`).
    """
    model = DRAFT_MODELS.get(kind)
    if model is None:
        raise SpecValidationError(
            f"unknown content kind {kind!r}; use one of {', '.join(DRAFT_MODELS)}",
            details={"field": "kind"},
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
        raise SpecValidationError(
            f"the {kind} draft is not valid: {errors[0]['msg'] if errors else exc} "
            f"(at draft.{where}); fix the field and try again",
            details={"field": f"draft.{where}" if where else "draft"},
        ) from None
